//! The soak scenario (`lb-bench soak`): mixed Qlik users while a fault script works on the
//! balancer, with the invariants a correct balancer keeps checked all along.
//!
//! Users (each a browser: keep-alive connection, cookie jar, an app WebSocket) request hub
//! pages, upload small files and echo on their WebSocket. Meanwhile the fault script, every
//! `fault_every`: reloads the configuration (alternating two valid files), drains a node and
//! readies it again, sends malformed chunked uploads, slow uploads and a slowloris burst; once,
//! a third of the way in, it kills a node and restarts it two seconds later.
//!
//! Checked: no user loses their session (a 401 from the simulator: the session went to another
//! node) unless they were on the killed node (those sign in again on another node: re-pinned);
//! no request fails that a correct balancer would have served (any failure not explained by
//! the kill); at the end the balancer's open connections, WebSockets and requests in flight
//! return to zero, and its memory is compared with the baseline taken after the warm-up.
//! Loopback only, bounded in time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use lb_sim::SimCluster;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ws_connect, CookieJar, HttpConn, Target, WsConnect, WsStream};

/// The balancer under test.
pub struct SoakTarget {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The configuration file it watches; the fault script rewrites it with `configs`.
    pub config_path: PathBuf,
    /// Two valid configurations, written in turn to reload.
    pub configs: [String; 2],
    /// The balancer's process, for its memory (`/proc/<pid>/status`).
    pub pid: u32,
    /// Balancer node ids of the simulator's nodes, in order (`qps1`, ...).
    pub node_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SoakOpts {
    pub duration: Duration,
    pub users: usize,
    pub fault_every: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct Faults {
    pub reloads: u64,
    pub drains: u64,
    pub kills: u64,
    pub malformed: u64,
    pub slow_uploads: u64,
    pub slowloris: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct SoakReport {
    pub duration_secs: f64,
    pub users: usize,
    pub requests: u64,
    pub uploads: u64,
    pub ws_messages: u64,
    pub faults: Faults,
    /// Users of the killed node that signed in again elsewhere.
    pub repinned: u64,
    /// Invariant: a session lost by a user not on the killed node.
    pub sessions_lost: u64,
    /// Invariant: requests a correct balancer would have served that failed.
    pub failed_requests: u64,
    /// What failed, first ones (for the operator).
    pub failures: Vec<String>,
    pub open_connections_end: i64,
    pub open_websockets_end: i64,
    pub in_flight_end: i64,
    pub rss_kb_before: u64,
    pub rss_kb_after: u64,
}

impl SoakReport {
    /// The invariants held.
    pub fn ok(&self) -> bool {
        self.sessions_lost == 0
            && self.failed_requests == 0
            && self.open_connections_end == 0
            && self.open_websockets_end == 0
            && self.in_flight_end == 0
    }
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    uploads: AtomicU64,
    ws_messages: AtomicU64,
    repinned: AtomicU64,
    sessions_lost: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 20 {
            f.push(what);
        }
    }
}

/// What users need to know about the kill: which node.
struct Kill {
    victim: Mutex<Option<String>>,
}

impl Kill {
    fn explains(&self, node: &str) -> bool {
        self.victim
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(node)
    }
}

const T: Duration = Duration::from_secs(10);

/// Runs the soak against `target` in front of `cluster`.
pub async fn run(
    cluster: &SimCluster,
    target: &SoakTarget,
    opts: &SoakOpts,
) -> anyhow::Result<SoakReport> {
    let start = Instant::now();
    let deadline = start + opts.duration;
    let tally = Arc::new(Tally::default());
    let kill = Arc::new(Kill {
        victim: Mutex::new(None),
    });
    let t = Target::parse(&format!("http://{}", target.proxy), false)?;
    let mut users = Vec::new();
    for i in 0..opts.users {
        let (t, tally, kill) = (t.clone(), tally.clone(), kill.clone());
        users.push(tokio::spawn(async move {
            user(i, t, deadline, &tally, &kill).await;
        }));
    }
    // Baseline memory once every user is in.
    tokio::time::sleep(Duration::from_secs(2).min(opts.duration / 4)).await;
    let rss_kb_before = rss_kb(target.pid);
    let faults = fault_script(cluster, target, opts, deadline, &kill).await;
    for u in users {
        let _ = u.await;
    }
    // Every user is gone: the balancer's counters must come back to zero.
    let settle = Instant::now() + T;
    let (mut conns, mut ws, mut in_flight) = (i64::MAX, i64::MAX, i64::MAX);
    while Instant::now() < settle {
        if let Ok(s) = admin(target.admin, Method::GET, "/status").await {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
            conns = v["open_connections"].as_i64().unwrap_or(-1);
            ws = v["open_websockets"].as_i64().unwrap_or(-1);
            in_flight = v["nodes"]
                .as_array()
                .map(|n| n.iter().map(|n| n["in_flight"].as_i64().unwrap_or(0)).sum())
                .unwrap_or(-1);
            if conns == 0 && ws == 0 && in_flight == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failures = tally
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(SoakReport {
        duration_secs: start.elapsed().as_secs_f64(),
        users: opts.users,
        requests: tally.requests.load(Ordering::Relaxed),
        uploads: tally.uploads.load(Ordering::Relaxed),
        ws_messages: tally.ws_messages.load(Ordering::Relaxed),
        faults,
        repinned: tally.repinned.load(Ordering::Relaxed),
        sessions_lost: tally.sessions_lost.load(Ordering::Relaxed),
        failed_requests: tally.failed.load(Ordering::Relaxed),
        failures,
        open_connections_end: conns,
        open_websockets_end: ws,
        in_flight_end: in_flight,
        rss_kb_before,
        rss_kb_after: rss_kb(target.pid),
    })
}

/// One user until `deadline`: hub pages, an upload every fourth round, an echo on its app
/// WebSocket every round.
async fn user(i: usize, t: Target, deadline: Instant, tally: &Tally, kill: &Kill) {
    let mut jar = CookieJar::default();
    let mut conn: Option<HttpConn> = None;
    let mut ws: Option<WsStream> = None;
    let mut node: Option<String> = None;
    let upload = Bytes::from(vec![b'u'; 32 * 1024]);
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        // Only the users of the killed node may see failures, and sign in again elsewhere.
        let explained = |node: &Option<String>| node.as_deref().is_some_and(|n| kill.explains(n));
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = HttpConn::connect(&t).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            tally.fail(format!("user {i}: cannot connect"));
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (method, path, body) = if round.is_multiple_of(4) {
            (Method::POST, "/_sim/upload", upload.clone())
        } else {
            (Method::GET, "/hub", Bytes::new())
        };
        let r = tokio::time::timeout(T, c.request(method.clone(), path, Some(&jar), body)).await;
        tally.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(Ok(r)) if r.status == StatusCode::OK => {
                jar.store_all(&r.headers);
                if method == Method::POST {
                    tally.uploads.fetch_add(1, Ordering::Relaxed);
                }
                let now = r.node().map(str::to_string);
                if node.is_some() && now != node && !explained(&node) {
                    tally.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    tally.fail(format!("user {i}: moved from {node:?} to {now:?}"));
                }
                if now != node {
                    ws = None;
                }
                node = now;
            }
            Ok(Ok(r)) if r.status == StatusCode::UNAUTHORIZED => {
                // The session is not known where the request went: it moved.
                if explained(&node) {
                    tally.repinned.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    tally.fail(format!("user {i}: 401 on {:?} (was {node:?})", r.node()));
                }
                jar = CookieJar::default();
                node = None;
                ws = None;
            }
            other => {
                if !explained(&node) {
                    let what = match other {
                        Ok(Ok(r)) => format!("status {}", r.status),
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(_) => "no answer in time".into(),
                    };
                    tally.fail(format!("user {i}: {method} {path}: {what} (node {node:?})"));
                }
                conn = None;
            }
        }
        if node.is_some() {
            echo(i, &t, &jar, &mut ws, tally, explained(&node)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn echo(
    i: usize,
    t: &Target,
    jar: &CookieJar,
    ws: &mut Option<WsStream>,
    tally: &Tally,
    explained: bool,
) {
    if ws.is_none() {
        match ws_connect(t, &format!("/app/soak-{i}"), jar, None, 4096).await {
            Ok(WsConnect::Open(s, _)) => *ws = Some(*s),
            Ok(WsConnect::Refused(s, n)) if !explained => {
                tally.fail(format!("user {i}: websocket refused {s} by {n:?}"))
            }
            Err(e) if !explained => tally.fail(format!("user {i}: websocket: {e:#}")),
            _ => {}
        }
    }
    let Some(s) = ws.as_mut() else { return };
    let text = format!("soak {i}");
    let ok = async {
        s.send(Message::text(text.clone()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        match tokio::time::timeout(T, s.next()).await {
            Ok(Some(Ok(m))) if m == Message::text(text.clone()) => Ok(()),
            Ok(Some(Ok(m))) => Err(format!("answered {m:?}")),
            Ok(Some(Err(e))) => Err(format!("read: {e}")),
            Ok(None) => Err("closed".to_string()),
            Err(_) => Err(format!("no echo within {T:?}")),
        }
    }
    .await;
    match ok {
        Ok(()) => {
            tally.ws_messages.fetch_add(1, Ordering::Relaxed);
        }
        Err(why) => {
            if !explained {
                tally.fail(format!("user {i}: websocket echo failed: {why}"));
            }
            *ws = None;
        }
    }
}

/// The faults, in turn, every `fault_every` until the deadline.
async fn fault_script(
    cluster: &SimCluster,
    target: &SoakTarget,
    opts: &SoakOpts,
    deadline: Instant,
    kill: &Kill,
) -> Faults {
    let mut f = Faults::default();
    let kill_at = Instant::now() + opts.duration / 3;
    let mut killed = false;
    let mut step = 0usize;
    let drained = target.node_ids.last().cloned().unwrap_or_default();
    while Instant::now() + opts.fault_every < deadline {
        tokio::time::sleep(opts.fault_every).await;
        step += 1;
        // A reload of the watched file, alternating two valid configurations.
        if std::fs::write(&target.config_path, &target.configs[step % 2]).is_ok() {
            f.reloads += 1;
        }
        match step % 3 {
            0 => {
                let _ = admin(
                    target.admin,
                    Method::POST,
                    &format!("/nodes/{drained}/drain"),
                )
                .await;
                tokio::time::sleep(opts.fault_every / 2).await;
                let _ = admin(
                    target.admin,
                    Method::POST,
                    &format!("/nodes/{drained}/ready"),
                )
                .await;
                f.drains += 1;
            }
            1 => {
                f.malformed += malformed(target.proxy, 10).await;
                f.slowloris += slowloris(target.proxy, 50).await;
            }
            _ => f.slow_uploads += slow_uploads(target.proxy, 3).await,
        }
        if !killed && Instant::now() >= kill_at && cluster.len() > 1 {
            killed = true;
            let victim = cluster.node(0);
            *kill.victim.lock().unwrap_or_else(|e| e.into_inner()) = Some(victim.name().into());
            victim.stop().await;
            f.kills += 1;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = victim.restart().await;
        }
    }
    f
}

/// Malformed chunked uploads without a cookie.
async fn malformed(proxy: SocketAddr, n: u64) -> u64 {
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(proxy).await {
            let _ = s
                .write_all(
                    b"POST /_sim/upload HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5\r\nhello\r\nZZ\r\n\r\n",
                )
                .await;
            let mut buf = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        }
    }
    n
}

/// Request heads trickled one byte at a time, then abandoned.
async fn slowloris(proxy: SocketAddr, n: u64) -> u64 {
    let mut socks = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(proxy).await {
            let _ = s
                .write_all(b"GET /hub HTTP/1.1\r\nHost: soak\r\nX-a: ")
                .await;
            socks.push(s);
        }
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for s in &mut socks {
            let _ = s.write_all(b"a").await;
        }
    }
    n
}

/// Uploads sent a byte every 100 ms, then abandoned half way.
async fn slow_uploads(proxy: SocketAddr, n: u64) -> u64 {
    let mut socks = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(proxy).await {
            let _ = s
                .write_all(
                    b"POST /_sim/upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 100\r\n\r\n",
                )
                .await;
            socks.push(s);
        }
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for s in &mut socks {
            let _ = s.write_all(b"x").await;
        }
    }
    n
}

/// A configuration for the soak: the proxy and admin listeners on fixed loopback addresses (a
/// reload keeps them), `nodes` as `qps1`, ...; `variant` 0 or 1 changes only the health check
/// interval, so the two files reload in turn.
pub fn config(
    proxy: SocketAddr,
    admin: SocketAddr,
    nodes: &[SocketAddr],
    variant: usize,
) -> String {
    let interval = if variant.is_multiple_of(2) {
        "300ms"
    } else {
        "400ms"
    };
    let mut s = format!(
        "[server]\naccess_log = false\n[listener]\naddress = \"{proxy}\"\n\
         [admin]\naddress = \"{admin}\"\n[health]\ninterval = \"{interval}\"\nrise = 1\nfall = 2\n\
         [upstream]\nconnect_timeout = \"1s\"\n"
    );
    for (i, a) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\n",
            i + 1
        ));
    }
    s
}

/// One admin API request (`Connection: close`); the body of a 2xx answer.
pub async fn admin(addr: SocketAddr, method: Method, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).to_string();
    let ok = text
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    anyhow::ensure!(ok, "{method} {path}: {}", text.lines().next().unwrap_or(""));
    Ok(body)
}

/// Resident memory of a process in KiB (0 where /proc is not readable).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
