//! The running balancer: shared state, listeners, background tasks and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use lb_config::{Config, ProxyProtocolMode};
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{self, tunnel, ConnInfo};
use crate::runtime::Runtime;
use crate::sticky::{RouteKey, StickyTable};
use crate::telemetry::{EngineTarget, PollerSettings, Telemetry, TelemetryState, TlsClientFiles};
use crate::upstream::{LoadRanking, NodeRegistry};

/// State shared by every connection, surviving reloads.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub telemetry: Arc<Telemetry>,
    pub reload_status: ArcSwap<ReloadStatus>,
    /// The configuration file, when the balancer was started from one (for reloads).
    pub config_path: Option<PathBuf>,
    pub metrics: PrometheusHandle,
    pub started: std::time::Instant,
    /// Addresses the listeners are bound to (proxy, admin, module): a configuration naming
    /// either the configured or the bound address keeps its listener.
    bound: std::sync::Mutex<[Option<SocketAddr>; 3]>,
    pub registry: NodeRegistry,
    pub sticky: StickyTable,
    pub route_key: RouteKey,
    /// Cancelled when the balancer stops accepting (shutdown begins).
    pub shutdown: CancellationToken,
    /// Cancelled when open tunnels must close (drain deadline passed).
    pub tunnels_close: CancellationToken,
    pub conns: TaskTracker,
    pub tunnels: TaskTracker,
    pub open_connections: AtomicI64,
    pub open_tunnels: AtomicI64,
    /// Open connections per client address (only with `listener.max_connections_per_client`).
    per_client: dashmap::DashMap<std::net::IpAddr, u32>,
    pub learned_total: Counter,
    m_open_connections: Gauge,
    m_open_tunnels: Gauge,
    m_ws_bytes_to_node: Counter,
    m_ws_bytes_to_client: Counter,
}

/// The outcome of the last configuration load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Version of the configuration in force.
    pub version: String,
    pub at_unix_ms: u64,
    pub ok: bool,
    /// Why the last attempt was refused (the configuration in force stays).
    pub error: Option<String>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The ranking of nodes for least-loaded selection, from engine telemetry.
#[derive(Debug)]
struct TelemetryRanking(Arc<Telemetry>);

impl LoadRanking for TelemetryRanking {
    fn rank(&self, ids: &[&str]) -> Option<Vec<usize>> {
        let fresh = ids.iter().any(|id| {
            self.0
                .status(id)
                .is_some_and(|s| matches!(s.state, TelemetryState::Fresh))
        });
        if !fresh {
            return None;
        }
        let policy = self.0.policy();
        Some(self.0.rank_ids(ids, None, &policy))
    }
}

/// The Prometheus recorder of this process (installed once; several servers in one test
/// process share it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::debug!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

impl Shared {
    pub fn new(
        config: Config,
        tls: crate::tls::Loaded,
        config_path: Option<PathBuf>,
    ) -> Arc<Shared> {
        let metrics_handle = prometheus();
        let route_key = match &config.sticky.route_key {
            Some(k) => RouteKey::new(k),
            None => {
                tracing::warn!(
                    "no sticky.route_key or sticky.route_key_file: using a random key; route cookies \
                     will not survive a restart nor be shared with other balancers"
                );
                RouteKey::random()
            }
        };
        let registry = NodeRegistry::default();
        let sticky = StickyTable::new(
            config.sticky.max_sessions,
            config.sticky.session_idle_timeout.as_secs() as u32,
        );
        let telemetry = Telemetry::new();
        telemetry.set_policy(config.ranking.clone());
        let ranking: Arc<dyn LoadRanking> = Arc::new(TelemetryRanking(telemetry.clone()));
        let reload_status = ReloadStatus {
            version: config.version.clone(),
            at_unix_ms: unix_ms(),
            ok: true,
            error: None,
        };
        let rt = Runtime::build(
            config,
            tls,
            None,
            &registry,
            route_key.clone(),
            Some(ranking),
        );
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(rt),
            telemetry,
            reload_status: ArcSwap::from_pointee(reload_status),
            config_path,
            metrics: metrics_handle,
            started: std::time::Instant::now(),
            bound: std::sync::Mutex::new([None; 3]),
            registry,
            sticky,
            route_key,
            shutdown: CancellationToken::new(),
            tunnels_close: CancellationToken::new(),
            conns: TaskTracker::new(),
            tunnels: TaskTracker::new(),
            open_connections: AtomicI64::new(0),
            open_tunnels: AtomicI64::new(0),
            per_client: dashmap::DashMap::new(),
            learned_total: metrics::counter!("lb_sticky_learned_total"),
            m_open_connections: metrics::gauge!("lb_open_connections"),
            m_open_tunnels: metrics::gauge!("lb_open_websockets"),
            m_ws_bytes_to_node: metrics::counter!("lb_websocket_bytes_total", "direction" => "to_node"),
            m_ws_bytes_to_client: metrics::counter!("lb_websocket_bytes_total", "direction" => "to_client"),
        })
    }
}

/// A running balancer.
pub struct Server {
    pub shared: Arc<Shared>,
    proxy_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    module_addr: Option<SocketAddr>,
    tasks: TaskTracker,
}

impl Server {
    /// Binds the listeners and starts serving. Returns once every listener is bound.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        Server::start_with_path(config, None).await
    }

    /// Like [`Server::start`]; `path` is the file that reloads re-read (SIGHUP, admin
    /// `POST /reload`, and changes of the file itself).
    pub async fn start_with_path(config: Config, path: Option<PathBuf>) -> anyhow::Result<Server> {
        let proxy_addr = config.listener.address;
        let admin_cfg = config.admin.clone();
        let module_cfg = config.module.clone();
        let tls = crate::tls::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let module_tls = tls.module.clone();
        let redirect = config.listener.redirect_address;
        warn_insecure(&config);
        let shared = Shared::new(config, tls, path.clone());
        {
            let cfg = shared.runtime.load().config.clone();
            set_telemetry_targets(&shared.telemetry, &cfg).map_err(anyhow::Error::msg)?;
        }
        let listener = bind(proxy_addr)
            .with_context(|| format!("cannot listen on {proxy_addr} (listener.address)"))?;
        let proxy_addr = listener.local_addr()?;
        let tasks = TaskTracker::new();

        let module_addr = match module_cfg {
            Some(m) => {
                let l = bind(m.address)
                    .with_context(|| format!("cannot listen on {} (module.address)", m.address))?;
                let addr = l.local_addr()?;
                let router = lb_module_api::router(
                    shared.telemetry.module_source(),
                    &m.base_path,
                    lb_module_api::RouterOptions {
                        body_limit: m.body_limit,
                    },
                );
                match module_tls {
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                        tasks.spawn(serve_router_tls(l, router, acceptor, shared.clone()));
                    }
                    None => {
                        tasks.spawn(serve_axum(l, router, shared.shutdown.clone(), "module"));
                    }
                }
                tracing::info!(%addr, "Qlik load balancing module API ready");
                Some(addr)
            }
            None => None,
        };
        let admin_addr = match admin_cfg {
            Some(a) => {
                let l = bind(a.address)
                    .with_context(|| format!("cannot listen on {} (admin.address)", a.address))?;
                let addr = l.local_addr()?;
                let reload_shared = shared.clone();
                let router = crate::admin::router(crate::admin::AdminCtx {
                    shared: shared.clone(),
                    reload: Arc::new(move || reload_shared.reload_file()),
                    metrics: shared.metrics.clone(),
                    token: a.token.clone(),
                });
                tasks.spawn(serve_axum(l, router, shared.shutdown.clone(), "admin"));
                tracing::info!(%addr, "admin listener ready");
                Some(addr)
            }
            None => None,
        };
        if let Some(addr) = redirect {
            let l = bind(addr)
                .with_context(|| format!("cannot listen on {addr} (listener.redirect_address)"))?;
            tasks.spawn(redirect_loop(l, shared.clone()));
            tracing::info!(%addr, "HTTP-to-HTTPS redirect listener ready");
        }
        *shared.bound.lock().unwrap_or_else(|e| e.into_inner()) =
            [Some(proxy_addr), admin_addr, module_addr];
        tasks.spawn(accept_loop(listener, shared.clone()));
        tasks.spawn(sweeper(shared.clone()));
        tasks.spawn(crate::health::run(shared.clone()));
        if let Some(p) = path {
            tasks.spawn(watch_config(shared.clone(), p));
        }
        tracing::info!(%proxy_addr, "proxy listener ready");
        Ok(Server {
            shared,
            proxy_addr,
            admin_addr,
            module_addr,
            tasks,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Reads, checks and applies the configuration file; on any error the running one stays.
    pub fn reload_from(&self, path: &std::path::Path) -> Result<(), String> {
        self.shared.reload_from(path)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn module_addr(&self) -> Option<SocketAddr> {
        self.module_addr
    }

    /// Stops accepting, lets requests in flight finish, keeps tunnels open until the drain
    /// deadline (`shutdown.drain_timeout`), then closes them.
    pub async fn shutdown(self) {
        let drain = self.shared.runtime.load().config.shutdown.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain;
        tracing::info!("shutting down: draining for up to {drain:?}");
        self.shared.shutdown.cancel();
        self.tasks.close();
        self.shared.conns.close();
        self.shared.tunnels.close();
        let _ = tokio::time::timeout_at(deadline, self.shared.conns.wait()).await;
        let _ = tokio::time::timeout_at(deadline, self.shared.tunnels.wait()).await;
        self.shared.tunnels_close.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.tunnels.wait()).await;
        self.shared.telemetry.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        tracing::info!("stopped");
    }
}

impl Shared {
    /// Reads, checks and applies a configuration file; on any error the running one stays.
    pub fn reload_from(&self, path: &std::path::Path) -> Result<(), String> {
        match Config::from_file(path) {
            Ok(c) => self.reload(c),
            Err(e) => Err(self.refuse(e.to_string())),
        }
    }

    /// Re-reads the file the balancer was started from.
    pub fn reload_file(&self) -> Result<(), String> {
        match &self.config_path {
            Some(p) => self.reload_from(p),
            None => Err("the balancer was not started from a file".into()),
        }
    }

    fn refuse(&self, msg: String) -> String {
        tracing::error!("reload refused, the running configuration stays:\n{msg}");
        metrics::counter!("lb_reloads_total", "result" => "error").increment(1);
        let cur = self.reload_status.load();
        self.reload_status.store(Arc::new(ReloadStatus {
            version: cur.version.clone(),
            at_unix_ms: unix_ms(),
            ok: false,
            error: Some(msg.clone()),
        }));
        msg
    }

    /// Applies a checked configuration: compiles a new snapshot and swaps it in. In-flight
    /// requests and open tunnels keep the snapshot they started with; node state, learned
    /// sessions and tunnels survive. Listener addresses cannot change without a restart.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let old = self.runtime.load_full();
        let bound = *self.bound.lock().unwrap_or_else(|e| e.into_inner());
        let addrs = |c: &Config| {
            [
                Some(c.listener.address),
                c.admin.as_ref().map(|a| a.address),
                c.module.as_ref().map(|m| m.address),
            ]
        };
        let (was, now) = (addrs(&old.config), addrs(&config));
        let mut moved = Vec::new();
        for (i, key) in ["listener.address", "admin.address", "module.address"]
            .iter()
            .enumerate()
        {
            if now[i] != was[i] && (now[i].is_none() || now[i] != bound[i]) {
                let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
                moved.push(format!("{key}: {} -> {}", show(was[i]), show(now[i])));
            }
        }
        if !moved.is_empty() {
            return Err(self.refuse(format!(
                "{}: a listener address change needs a restart",
                moved.join("; ")
            )));
        }
        if config.sticky.route_key.is_some()
            && config.sticky.route_key != old.config.sticky.route_key
        {
            tracing::warn!("sticky.route_key changed: it applies after a restart");
        }
        let tls = match crate::tls::load(&config) {
            Ok(t) => t,
            Err(e) => return Err(self.refuse(e.to_string())),
        };
        if let Err(e) = set_telemetry_targets(&self.telemetry, &config) {
            return Err(self.refuse(e));
        }
        warn_insecure(&config);
        self.telemetry.set_policy(config.ranking.clone());
        self.sticky.set_limits(
            config.sticky.max_sessions,
            config.sticky.session_idle_timeout.as_secs() as u32,
        );
        let version = config.version.clone();
        let ranking: Arc<dyn LoadRanking> = Arc::new(TelemetryRanking(self.telemetry.clone()));
        let rt = Runtime::build(
            config,
            tls,
            Some(&old),
            &self.registry,
            self.route_key.clone(),
            Some(ranking),
        );
        self.runtime.store(Arc::new(rt));
        self.reload_status.store(Arc::new(ReloadStatus {
            version: version.clone(),
            at_unix_ms: unix_ms(),
            ok: true,
            error: None,
        }));
        metrics::counter!("lb_reloads_total", "result" => "ok").increment(1);
        tracing::info!(%version, "configuration reloaded");
        Ok(())
    }
}

/// Engine telemetry targets from the nodes that name an engine.
fn set_telemetry_targets(telemetry: &Arc<Telemetry>, config: &Config) -> Result<(), String> {
    let mut targets = Vec::new();
    for (i, n) in config.nodes.iter().enumerate() {
        let Some(url) = &n.engine else { continue };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("nodes[{i}].engine: invalid URL {url:?}: {e}"))?;
        let mut t = EngineTarget::new(n.id.clone(), uri);
        for (k, v) in &config.telemetry.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("telemetry.headers.{k}: {e}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|e| format!("telemetry.headers.{k}: {e}"))?;
            t.headers.insert(name, value);
        }
        // The QPS names engines by host and the engine port: the node's own address is an
        // alias when no other node shares its IP.
        if config
            .nodes
            .iter()
            .filter(|o| o.address.ip() == n.address.ip())
            .count()
            == 1
        {
            t.aliases.push((n.address.ip().to_string(), 4747));
        }
        targets.push(t);
    }
    let t = &config.telemetry;
    let settings = PollerSettings {
        interval: t.interval,
        timeout: t.timeout,
        tls: TlsClientFiles {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            insecure_skip_verify: t.insecure_skip_verify,
        },
    };
    telemetry
        .set_targets(targets, settings)
        .map_err(|e| format!("telemetry: {e}"))
}

/// A listening socket with address reuse and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let max = shared.runtime.load().config.listener.max_connections as i64;
        if shared.open_connections.load(Ordering::Relaxed) >= max {
            metrics::counter!("lb_connections_refused_total", "reason" => "max_connections")
                .increment(1);
            tokio::spawn(refuse(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        shared.conns.spawn(start_conn(stream, peer, shared.clone()));
    }
}

const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n\
    Connection: close\r\n\r\n503 Service Unavailable: too busy\n";
const TOO_MANY: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 51\r\n\
    Connection: close\r\n\r\n429 Too Many Requests: too many connections from you\n";

/// Answers 503 on a connection over the limit, without reading it.
async fn refuse(stream: TcpStream) {
    refuse_with(stream, BUSY).await;
}

async fn refuse_with(mut stream: TcpStream, answer: &'static [u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(answer)).await;
}

/// One connection of a client address, counted against `listener.max_connections_per_client`.
struct ClientSlot<'a> {
    shared: &'a Shared,
    ip: std::net::IpAddr,
    counted: bool,
}

impl<'a> ClientSlot<'a> {
    fn take(shared: &'a Shared, ip: std::net::IpAddr) -> Option<ClientSlot<'a>> {
        let max = shared
            .runtime
            .load()
            .config
            .listener
            .max_connections_per_client;
        if max == 0 {
            return Some(ClientSlot {
                shared,
                ip,
                counted: false,
            });
        }
        let mut n = shared.per_client.entry(ip).or_insert(0);
        if *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            shared,
            ip,
            counted: true,
        })
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.shared.per_client.remove_if_mut(&self.ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

/// Reads the PROXY protocol header when required, then serves the connection.
async fn start_conn(mut stream: TcpStream, mut peer: SocketAddr, shared: Arc<Shared>) {
    let (mode, timeout) = {
        let rt = shared.runtime.load();
        (
            rt.config.listener.proxy_protocol,
            rt.config.listener.header_read_timeout,
        )
    };
    if mode == ProxyProtocolMode::Required {
        match tokio::time::timeout(timeout, crate::proxy_protocol::read(&mut stream)).await {
            Ok(Ok(source)) => peer = source.unwrap_or(peer),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "connection refused: {e}");
                metrics::counter!("lb_connections_refused_total", "reason" => "proxy_protocol")
                    .increment(1);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "connection refused: no PROXY protocol header in time");
                metrics::counter!("lb_connections_refused_total", "reason" => "proxy_protocol")
                    .increment(1);
                return;
            }
        }
    }
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .expect("an IP address is a valid header value");
    let (acceptor, trusted) = {
        let rt = shared.runtime.load();
        let trusted = rt
            .config
            .listener
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip()));
        (rt.listener_tls.clone(), trusted)
    };
    let slot_shared = shared.clone();
    let _slot = match ClientSlot::take(&slot_shared, peer.ip()) {
        Some(s) => s,
        None => {
            metrics::counter!("lb_connections_refused_total", "reason" => "max_connections_per_client").increment(1);
            refuse_with(stream, TOO_MANY).await;
            return;
        }
    };
    match acceptor {
        None => {
            let info = Arc::new(ConnInfo {
                peer,
                peer_ip,
                trusted,
                tls: false,
            });
            serve_conn(stream, info, shared).await;
        }
        Some(acceptor) => {
            let tls = match tokio::time::timeout(timeout, acceptor.0.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    metrics::counter!("lb_tls_handshake_failures_total").increment(1);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    metrics::counter!("lb_tls_handshake_failures_total").increment(1);
                    return;
                }
            };
            let info = Arc::new(ConnInfo {
                peer,
                peer_ip,
                trusted,
                tls: true,
            });
            serve_conn(tls, info, shared).await;
        }
    }
}

async fn serve_conn<I>(stream: I, info: Arc<ConnInfo>, shared: Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    shared.open_connections.fetch_add(1, Ordering::Relaxed);
    shared.m_open_connections.increment(1.0);
    let (header_timeout, max_header) = {
        let rt = shared.runtime.load();
        (
            rt.config.listener.header_read_timeout,
            rt.config.listener.max_header_bytes,
        )
    };
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| proxy::serve(svc_shared.clone(), info.clone(), req));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_header)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("client connection ended: {e}");
            }
        }
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
    shared.m_open_connections.decrement(1.0);
}

/// Runs the tunnel of an upgraded request once both sides have switched protocols.
pub fn spawn_tunnel(
    shared: &Arc<Shared>,
    rt: &Runtime,
    pos: usize,
    client: OnUpgrade,
    node: OnUpgrade,
    node_conn: Option<hyper::client::conn::http1::SendRequest<crate::runtime::UpBody>>,
) {
    let node_rt = &rt.nodes[pos];
    let state = node_rt.state.clone();
    let idle = rt.config.websocket.idle_timeout;
    let close = state.tunnels_token();
    let tracker = shared.tunnels.clone();
    let shared = shared.clone();
    let fut = async move {
        let upgraded = tokio::try_join!(client, node);
        // The node connection's handle was kept until the upgrade completed.
        drop(node_conn);
        let (c, n) = match upgraded {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(node = %state.id, "upgrade failed: {e}");
                return;
            }
        };
        state.open_tunnels.fetch_add(1, Ordering::Relaxed);
        shared.open_tunnels.fetch_add(1, Ordering::Relaxed);
        shared.m_open_tunnels.increment(1.0);
        let counts = tunnel::Counts::default();
        let end = tunnel::splice(c, n, idle, &close, &shared.tunnels_close, &counts).await;
        let to_node = counts.to_node.load(Ordering::Relaxed);
        let to_client = counts.to_client.load(Ordering::Relaxed);
        shared.m_ws_bytes_to_node.increment(to_node);
        shared.m_ws_bytes_to_client.increment(to_client);
        state.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        shared.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        shared.m_open_tunnels.decrement(1.0);
        metrics::counter!("lb_websockets_closed_total", "reason" => end.as_str()).increment(1);
        tracing::debug!(node = %state.id, end = end.as_str(), to_node, to_client, "websocket closed");
    };
    tracker.spawn(fut);
}

/// `upstream.insecure_skip_verify` is loud at every start and reload.
fn warn_insecure(config: &Config) {
    if config.upstream.insecure_skip_verify && config.nodes.iter().any(|n| n.tls) {
        tracing::warn!(
            "upstream.insecure_skip_verify = true: the certificates of HTTPS nodes are NOT verified; \
             anyone on the path to the nodes can impersonate them"
        );
    }
}

/// Serves an axum router over TLS (the module listener with certificates).
async fn serve_router_tls(
    l: TcpListener,
    router: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let svc = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("module accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let svc = svc.clone();
        let stop = shared.shutdown.clone();
        shared.conns.spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(%peer, "module TLS handshake failed");
                    metrics::counter!("lb_tls_handshake_failures_total").increment(1);
                    return;
                }
            };
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// The optional plain HTTP listener: every request is redirected (308) to HTTPS.
async fn redirect_loop(l: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            Ok::<_, std::convert::Infallible>(crate::proxy::redirect_to_https(&req))
        });
        shared.conns.spawn(async move {
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn serve_axum(
    l: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
    what: &'static str,
) {
    let r = axum::serve(l, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!("{what} listener failed: {e}");
    }
}

/// Reloads when the configuration file changes. The folder is watched, not the file, since
/// editors and deploy tools replace files by rename; events are debounced.
async fn watch_config(shared: Arc<Shared>, path: PathBuf) {
    use notify_debouncer_full::notify::RecursiveMode;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let file_name = path.file_name().map(|f| f.to_os_string());
    let debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(200),
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            if let Ok(events) = res {
                let hit = events.iter().any(|e| {
                    e.paths
                        .iter()
                        .any(|p| p.file_name().map(|f| f.to_os_string()) == file_name)
                });
                if hit {
                    let _ = tx.send(());
                }
            }
        },
    );
    let mut debouncer = match debouncer {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                "cannot watch {}: {e}; reload with SIGHUP or the admin API",
                dir.display()
            );
            return;
        }
    };
    if let Err(e) = debouncer.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(
            "cannot watch {}: {e}; reload with SIGHUP or the admin API",
            dir.display()
        );
        return;
    }
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            ev = rx.recv() => if ev.is_none() { return },
        }
        // Only a change of content reloads (a touch or a rename of the same text does not).
        let now = std::fs::read(&path).ok();
        if now.is_some() && now != last {
            last = now;
            tracing::info!("{} changed: reloading", path.display());
            let _ = shared.reload_from(&path);
        }
    }
}

/// Expires idle learned sessions and keeps the table within its bound.
async fn sweeper(shared: Arc<Shared>) {
    let size = metrics::gauge!("lb_sticky_sessions");
    let evictions = metrics::counter!("lb_sticky_evictions_total");
    let expirations = metrics::counter!("lb_sticky_expirations_total");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_full = tokio::time::Instant::now();
    // Nodes removed by a reload whose tunnels were closed at their drain deadline.
    let mut retired = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Bound checks are cheap and run often; idle expiry scans the table every 10 s.
        if shared.sticky.over_limit() || last_full.elapsed() >= Duration::from_secs(10) {
            last_full = tokio::time::Instant::now();
            let (expired, evicted) = shared.sticky.sweep();
            expirations.increment(expired);
            evictions.increment(evicted);
        }
        size.set(shared.sticky.len() as f64);
        close_retired_tunnels(&shared, &mut retired);
        sync_saturation(&shared);
        shared.metrics.run_upkeep();
    }
}

/// Copies engine saturation from telemetry into node state (the selection gate).
fn sync_saturation(shared: &Shared) {
    let rt = shared.runtime.load();
    let policy = shared.telemetry.policy();
    for n in &rt.nodes {
        if n.engine.is_none() {
            continue;
        }
        let saturated = shared.telemetry.status(&n.id).is_some_and(|s| {
            matches!(s.state, TelemetryState::Fresh)
                && s.sample.as_ref().is_some_and(|sample| {
                    policy.is_saturated(sample, s.smoothed_cpu.unwrap_or(sample.cpu_total))
                })
        });
        if saturated != n.state.saturated() {
            tracing::info!(node = %n.id, saturated, "engine saturation changed");
            n.state.set_saturated(saturated);
        }
    }
}

/// Closes the tunnels of nodes removed by a reload once their drain deadline has passed
/// (clients get close code 1001); their later requests are redispatched.
fn close_retired_tunnels(shared: &Shared, retired: &mut std::collections::HashSet<u32>) {
    let rt = shared.runtime.load();
    let now = crate::clock::now_ms();
    for n in &rt.nodes {
        match n.retiring_until_ms {
            Some(t) if t <= now => {
                if retired.insert(n.state.idx) {
                    tracing::info!(node = %n.id, "drain deadline of a removed node: closing its websockets");
                    n.state.close_tunnels();
                }
            }
            _ => {
                retired.remove(&n.state.idx);
            }
        }
    }
}
