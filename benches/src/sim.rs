//! A simulated Qlik Sense node: a Proxy Service (QPS) that issues and checks session cookies,
//! an engine health check, and a few test endpoints, all on one port.
//!
//! Every response carries `X-Sim-Node: <name>` so a client behind a balancer can tell which
//! node answered. Behaviour, per request:
//! - no cookie named `cookie_name`: a new session is issued (`Set-Cookie`) and the request served;
//! - a cookie named `cookie_name` that this node did not issue: `401` (a QPS logs the user out);
//! - otherwise `200 ok <name>`.
//!
//! `GET [/<prefix>]/engine/healthcheck[/]` answers the engine health check JSON (no session).
//! `PUT|GET /_sim/telemetry` set or read the engine telemetry (no session).
//! `GET /_sim/headers`, `POST|PUT /_sim/upload`, `GET /_sim/download?bytes=N`,
//! `GET /_sim/slow?ms=N` follow the session rules.
//! WebSocket upgrades at `[/<prefix>]/app/<anything>` need a session of this node; the socket
//! echoes every message.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Name of the header that tells which simulated node answered.
pub const NODE_HEADER: &str = "x-sim-node";
static X_SIM_NODE: HeaderName = HeaderName::from_static(NODE_HEADER);

/// Largest WebSocket message and frame a simulated node accepts (64 MiB).
pub const MAX_WS_MESSAGE: usize = 64 << 20;

/// Size of one chunk of `/_sim/download`.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

type SimBody = BoxBody<Bytes, io::Error>;

/// Options shared by every node of a [`SimCluster`].
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Name of the session cookie the nodes issue and check (default `X-Qlik-Session`).
    pub cookie_name: String,
    /// Node names are `<name_prefix>1`, `<name_prefix>2`, ... (default `node`).
    pub name_prefix: String,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            cookie_name: "X-Qlik-Session".to_string(),
            name_prefix: "node".to_string(),
        }
    }
}

/// What a node's engine reports in its health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineTelemetry {
    /// CPU use in percent (`cpu.total`).
    pub cpu: f64,
    /// Free physical memory in MB (`mem.free`).
    pub mem_free_mb: f64,
    /// Total physical memory in MB (`mem.totalPhysical`); omitted when `None`.
    pub mem_total_mb: Option<f64>,
    /// Committed memory in MB (`mem.committed`, or `mem.comitted` in the old shape).
    pub mem_committed_mb: f64,
    /// The `saturated` flag; omitted when `None` (and always in the old shape).
    pub saturated: Option<bool>,
    /// Loaded apps (`apps.loaded_docs`, `apps.in_memory_docs`). In the old shape, entries that
    /// are not already paths are reported as `C:\ProgramData\Qlik\Sense\Apps\<entry>`.
    pub loaded_apps: Vec<String>,
    /// Active engine sessions (`session.active`, `users.active`).
    pub active_sessions: u64,
    /// Emit the pre-2019 shape: `comitted`, no `totalPhysical`, `in_memory_docs`, `saturated`.
    pub old_format: bool,
}

impl Default for EngineTelemetry {
    fn default() -> Self {
        EngineTelemetry {
            cpu: 2.0,
            mem_free_mb: 28_000.0,
            mem_total_mb: Some(32_768.0),
            mem_committed_mb: 1_024.0,
            saturated: Some(false),
            loaded_apps: Vec::new(),
            active_sessions: 0,
            old_format: false,
        }
    }
}

impl EngineTelemetry {
    /// The engine health check document (`GET /engine/healthcheck`) for this telemetry.
    pub fn healthcheck_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let allocated = self.mem_committed_mb * 1.2;
        let mut mem = Map::new();
        if self.old_format {
            mem.insert("comitted".into(), json!(self.mem_committed_mb));
        } else {
            mem.insert("committed".into(), json!(self.mem_committed_mb));
        }
        mem.insert("allocated".into(), json!(allocated));
        mem.insert("free".into(), json!(self.mem_free_mb));
        if !self.old_format {
            if let Some(total) = self.mem_total_mb {
                mem.insert("totalPhysical".into(), json!(total));
            }
        }
        let docs: Vec<String> = if self.old_format {
            self.loaded_apps
                .iter()
                .map(|a| {
                    if a.contains('\\') || a.contains('/') {
                        a.clone()
                    } else {
                        format!("C:\\ProgramData\\Qlik\\Sense\\Apps\\{a}")
                    }
                })
                .collect()
        } else {
            self.loaded_apps.clone()
        };
        let active_docs: Vec<String> = if self.active_sessions > 0 {
            docs.clone()
        } else {
            Vec::new()
        };
        let mut apps = Map::new();
        apps.insert("active_docs".into(), json!(active_docs));
        if !self.old_format {
            apps.insert("in_memory_docs".into(), json!(docs));
        }
        apps.insert("loaded_docs".into(), json!(docs));
        apps.insert("calls".into(), json!(self.active_sessions * 10));
        apps.insert("selections".into(), json!(self.active_sessions * 2));
        let mut doc = Map::new();
        doc.insert(
            "version".into(),
            json!(if self.old_format {
                "12.171.0"
            } else {
                "12.612.0"
            }),
        );
        doc.insert("started".into(), json!("20250101T101010.000+0000"));
        doc.insert("mem".into(), Value::Object(mem));
        doc.insert("cpu".into(), json!({ "total": self.cpu }));
        doc.insert(
            "session".into(),
            json!({ "active": self.active_sessions, "total": self.active_sessions }),
        );
        doc.insert("apps".into(), Value::Object(apps));
        doc.insert(
            "users".into(),
            json!({ "active": self.active_sessions, "total": self.active_sessions }),
        );
        doc.insert(
            "cache".into(),
            json!({ "hits": 0, "lookups": 0, "added": 0, "replaced": 0, "bytes_added": 0 }),
        );
        if !self.old_format {
            if let Some(s) = self.saturated {
                doc.insert("saturated".into(), json!(s));
            }
        }
        Value::Object(doc)
    }

    /// This telemetry with the fields present in `patch` (a JSON object) replaced.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<EngineTelemetry, serde_json::Error> {
        let mut current = serde_json::to_value(self)?;
        if let (Some(cur), Some(p)) = (current.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                cur.insert(k.clone(), v.clone());
            }
        } else if !patch.is_object() {
            return Err(serde::de::Error::custom("telemetry must be a JSON object"));
        }
        serde_json::from_value(current)
    }
}

/// Counters of one node since it was created (they survive `stop`/`restart`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests answered (any status, health checks included, upgrades included).
    pub requests: u64,
    /// Session cookies issued.
    pub sessions_issued: u64,
    /// Requests and upgrades refused with 401 for carrying a session of another node.
    pub foreign_rejections: u64,
    /// WebSockets accepted (101 sent).
    pub ws_accepted: u64,
    /// WebSockets open now.
    pub ws_open: u64,
}

struct NodeShared {
    name: String,
    name_value: HeaderValue,
    cookie_name: String,
    telemetry: Mutex<EngineTelemetry>,
    sessions: Mutex<HashSet<u128>>,
    hang: AtomicBool,
    requests: AtomicU64,
    sessions_issued: AtomicU64,
    foreign: AtomicU64,
    ws_accepted: AtomicU64,
    ws_open: AtomicU64,
}

struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// One simulated Qlik Sense node.
pub struct SimNode {
    shared: Arc<NodeShared>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimNode {
    /// Binds `addr` and starts serving.
    pub async fn bind(name: &str, addr: SocketAddr, cookie_name: &str) -> io::Result<SimNode> {
        let listener = bind_reuse(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(NodeShared {
            name: name.to_string(),
            name_value: HeaderValue::from_str(name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            cookie_name: cookie_name.to_string(),
            telemetry: Mutex::new(EngineTelemetry::default()),
            sessions: Mutex::new(HashSet::new()),
            hang: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            sessions_issued: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            ws_accepted: AtomicU64::new(0),
            ws_open: AtomicU64::new(0),
        });
        let running = spawn_node(shared.clone(), listener);
        Ok(SimNode {
            shared,
            addr,
            running: Mutex::new(Some(running)),
        })
    }

    /// The node's name (`node1`, ...).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the node is listening (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Kills the node: closes the listener and every open connection and WebSocket.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(r) = running {
            r.cancel.cancel();
            r.tracker.close();
            r.tracker.wait().await;
        }
    }

    /// Listens again on the same port with a fresh session memory (a restarted QPS).
    /// A running node is stopped first.
    pub async fn restart(&self) -> io::Result<()> {
        self.stop().await;
        self.shared.sessions.lock().unwrap().clear();
        let listener = bind_reuse(self.addr)?;
        let running = spawn_node(self.shared.clone(), listener);
        *self.running.lock().unwrap() = Some(running);
        Ok(())
    }

    /// Replaces the engine telemetry.
    pub fn set_telemetry(&self, t: EngineTelemetry) {
        *self.shared.telemetry.lock().unwrap() = t;
    }

    /// The current engine telemetry.
    pub fn telemetry(&self) -> EngineTelemetry {
        self.shared.telemetry.lock().unwrap().clone()
    }

    /// The node's counters.
    pub fn stats(&self) -> SimStats {
        let s = &self.shared;
        SimStats {
            requests: s.requests.load(Ordering::Relaxed),
            sessions_issued: s.sessions_issued.load(Ordering::Relaxed),
            foreign_rejections: s.foreign.load(Ordering::Relaxed),
            ws_accepted: s.ws_accepted.load(Ordering::Relaxed),
            ws_open: s.ws_open.load(Ordering::Relaxed),
        }
    }

    /// When on, the node accepts connections and reads requests but never answers.
    pub fn set_hang(&self, on: bool) {
        self.shared.hang.store(on, Ordering::Relaxed);
    }

    /// Number of sessions this node currently remembers.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.lock().unwrap().len()
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Ok(mut g) = self.running.lock() {
            if let Some(r) = g.take() {
                r.cancel.cancel();
            }
        }
    }
}

/// A set of simulated nodes on consecutive (or ephemeral) ports of 127.0.0.1.
#[derive(Debug)]
pub struct SimCluster {
    nodes: Vec<SimNode>,
}

impl SimCluster {
    /// Starts `n` nodes. `base_port` 0 binds ephemeral ports on 127.0.0.1, otherwise the
    /// consecutive ports `base_port`, `base_port + 1`, ...
    pub async fn start(n: usize, base_port: u16, opts: SimOptions) -> io::Result<SimCluster> {
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let port = if base_port == 0 {
                0
            } else {
                base_port.checked_add(i as u16).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "port out of range")
                })?
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let name = format!("{}{}", opts.name_prefix, i + 1);
            nodes.push(SimNode::bind(&name, addr, &opts.cookie_name).await?);
        }
        Ok(SimCluster { nodes })
    }

    /// The nodes' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Stops every node.
    pub async fn stop_all(&self) {
        for n in &self.nodes {
            n.stop().await;
        }
    }
}

fn bind_reuse(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn spawn_node(shared: Arc<NodeShared>, listener: TcpListener) -> Running {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (c, t) = (cancel.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = c.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    t.spawn(serve_conn(
                        shared.clone(),
                        stream,
                        peer,
                        c.clone(),
                        t.clone(),
                    ));
                }
                Err(_) => {
                    // Out of file descriptors or similar: back off briefly.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    });
    Running { cancel, tracker }
}

async fn serve_conn(
    shared: Arc<NodeShared>,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let (c2, t2) = (cancel.clone(), tracker.clone());
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let (c, t) = (c2.clone(), t2.clone());
        async move {
            if shared.hang.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let mut resp = handle(&shared, req, peer, c, t).await;
            resp.headers_mut()
                .insert(X_SIM_NODE.clone(), shared.name_value.clone());
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = conn => {}
    }
}

fn full(b: impl Into<Bytes>) -> SimBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_resp(status: StatusCode, v: &serde_json::Value) -> Response<SimBody> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Splits `/<prefix>/rest` into the route relevant part: returns the path itself when it starts
/// with one of the known roots, or the path without its first segment when that does.
fn route_of(path: &str) -> &str {
    const ROOTS: [&str; 3] = ["/_sim/", "/engine/", "/app/"];
    let is_root = |p: &str| ROOTS.iter().any(|r| p.starts_with(r)) || p == "/engine/healthcheck";
    if is_root(path) {
        return path;
    }
    if let Some(rest) = path.strip_prefix('/') {
        if let Some(i) = rest.find('/') {
            let tail = &rest[i..];
            if is_root(tail) {
                return tail;
            }
        }
    }
    path
}

/// Values of every cookie named `name` in all `Cookie` headers.
pub fn cookie_values<'a>(headers: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for h in headers.get_all(header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for pair in s.split(';') {
            let pair = pair.trim();
            if let Some((k, v)) = pair.split_once('=') {
                if k.trim() == name {
                    out.push(v.trim().trim_matches('"'));
                }
            }
        }
    }
    out
}

enum SessionCheck {
    Valid,
    Issued(HeaderValue),
    Foreign,
}

fn check_session(shared: &NodeShared, headers: &http::HeaderMap) -> SessionCheck {
    let values = cookie_values(headers, &shared.cookie_name);
    if values.is_empty() {
        let id = uuid::Uuid::new_v4();
        shared.sessions.lock().unwrap().insert(id.as_u128());
        shared.sessions_issued.fetch_add(1, Ordering::Relaxed);
        let cookie = format!(
            "{}={}; Path=/; HttpOnly",
            shared.cookie_name,
            id.hyphenated()
        );
        return match HeaderValue::from_str(&cookie) {
            Ok(v) => SessionCheck::Issued(v),
            Err(_) => SessionCheck::Foreign,
        };
    }
    let sessions = shared.sessions.lock().unwrap();
    let known = values.iter().any(|v| {
        uuid::Uuid::parse_str(v)
            .map(|u| sessions.contains(&u.as_u128()))
            .unwrap_or(false)
    });
    if known {
        SessionCheck::Valid
    } else {
        SessionCheck::Foreign
    }
}

fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k == key {
            v.parse().ok()
        } else {
            None
        }
    })
}

fn is_ws_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn handle(
    shared: &Arc<NodeShared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Response<SimBody> {
    let path = req.uri().path().to_string();
    let route = route_of(&path);
    let route_trim = route.strip_suffix('/').unwrap_or(route);

    // Session-free endpoints.
    if route_trim == "/engine/healthcheck" && req.method() == Method::GET {
        let t = shared.telemetry.lock().unwrap().clone();
        return json_resp(StatusCode::OK, &t.healthcheck_json());
    }
    if route_trim == "/_sim/telemetry" {
        match *req.method() {
            Method::GET => {
                let t = shared.telemetry.lock().unwrap().clone();
                return json_resp(StatusCode::OK, &serde_json::to_value(t).unwrap_or_default());
            }
            Method::PUT | Method::POST => {
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "bad body\n"),
                };
                let patch: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                };
                let mut guard = shared.telemetry.lock().unwrap();
                return match guard.patched(&patch) {
                    Ok(t) => {
                        *guard = t.clone();
                        json_resp(StatusCode::OK, &serde_json::to_value(t).unwrap_or_default())
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                };
            }
            _ => return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        }
    }

    let session = check_session(shared, req.headers());
    let set_cookie = match session {
        SessionCheck::Foreign => {
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            return text(StatusCode::UNAUTHORIZED, "unknown session\n");
        }
        SessionCheck::Issued(v) => Some(v),
        SessionCheck::Valid => None,
    };

    if route.starts_with("/app/") && is_ws_upgrade(&req) {
        if set_cookie.is_some() {
            // No session of this node: refuse the upgrade like a QPS does.
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            return text(StatusCode::UNAUTHORIZED, "no session\n");
        }
        return upgrade(shared, req, cancel, tracker);
    }

    let mut resp = match (req.method(), route_trim) {
        (_, "/_sim/headers") => {
            let mut map = serde_json::Map::new();
            for (name, value) in req.headers() {
                let v = serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into());
                match map
                    .entry(name.as_str().to_string())
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()))
                {
                    serde_json::Value::Array(a) => a.push(v),
                    _ => unreachable!(),
                }
            }
            map.insert("_peer".into(), serde_json::Value::String(peer.to_string()));
            json_resp(StatusCode::OK, &serde_json::Value::Object(map))
        }
        (&Method::POST | &Method::PUT, "/_sim/upload") => {
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                            hasher.update(d);
                        }
                    }
                    Err(_) => return text(StatusCode::BAD_REQUEST, "body error\n"),
                }
            }
            let digest = hex(&hasher.finalize());
            json_resp(
                StatusCode::OK,
                &serde_json::json!({ "bytes": n, "sha256": digest }),
            )
        }
        (&Method::GET, "/_sim/download") => {
            let n = query_u64(req.uri().query(), "bytes").unwrap_or(0);
            let mut r = Response::new(PatternBody::new(n).boxed());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (_, "/_sim/slow") => {
            let ms = query_u64(req.uri().query(), "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("ok {}\n", shared.name))
        }
        _ => text(StatusCode::OK, format!("ok {}\n", shared.name)),
    };
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The byte at offset `i` of `/_sim/download`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn pattern_block() -> &'static Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BLOCK.get_or_init(|| {
        let v: Vec<u8> = (0..(DOWNLOAD_CHUNK + 251) as u64)
            .map(pattern_byte)
            .collect();
        Bytes::from(v)
    })
}

/// Streams `n` bytes of the deterministic pattern in chunks of 64 KiB.
struct PatternBody {
    pos: u64,
    len: u64,
}

impl PatternBody {
    fn new(len: u64) -> Self {
        PatternBody { pos: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.pos >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.pos).min(DOWNLOAD_CHUNK as u64) as usize;
        let off = (self.pos % 251) as usize;
        let chunk = pattern_block().slice(off..off + n);
        self.pos += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.pos)
    }
}

fn upgrade(
    shared: &Arc<NodeShared>,
    req: Request<Incoming>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Response<SimBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let protocol = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .and_then(|p| HeaderValue::from_str(p).ok());

    let shared2 = shared.clone();
    let on_upgrade = hyper::upgrade::on(req);
    tracker.spawn(async move {
        let upgraded = tokio::select! {
            _ = cancel.cancelled() => return,
            u = on_upgrade => match u { Ok(u) => u, Err(_) => return },
        };
        shared2.ws_open.fetch_add(1, Ordering::Relaxed);
        let _guard = OpenGuard(&shared2.ws_open);
        // A small read buffer keeps thousands of idle sockets cheap; messages still grow to
        // MAX_WS_MESSAGE.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_message_size(Some(MAX_WS_MESSAGE))
            .max_frame_size(Some(MAX_WS_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = echo(ws) => {}
        }
    });

    shared.ws_accepted.fetch_add(1, Ordering::Relaxed);
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    r
}

struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            // Pongs to pings are queued by tungstenite and flushed on the next read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                if ws.flush().await.is_err() {
                    break;
                }
            }
            Message::Close(_) => {
                // tungstenite has queued the echo of the close frame; flush it.
                let _ = ws.flush().await;
                break;
            }
        }
    }
}
