//! The running balancer: shared state, listeners, background tasks and graceful shutdown.

use std::net::SocketAddr;
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
use lb_config::Config;
use metrics::{Counter, Gauge};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{self, tunnel, ConnInfo};
use crate::runtime::Runtime;
use crate::sticky::{RouteKey, StickyTable};
use crate::upstream::NodeRegistry;

/// State shared by every connection, surviving reloads.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
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
    pub learned_total: Counter,
    m_open_connections: Gauge,
    m_open_tunnels: Gauge,
    m_ws_bytes_to_node: Counter,
    m_ws_bytes_to_client: Counter,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
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
        let rt = Runtime::build(config, None, &registry, route_key.clone(), None);
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(rt),
            registry,
            sticky,
            route_key,
            shutdown: CancellationToken::new(),
            tunnels_close: CancellationToken::new(),
            conns: TaskTracker::new(),
            tunnels: TaskTracker::new(),
            open_connections: AtomicI64::new(0),
            open_tunnels: AtomicI64::new(0),
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
    tasks: TaskTracker,
}

impl Server {
    /// Binds the listeners and starts serving. Returns once every listener is bound.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let proxy_addr = config.listener.address;
        let shared = Shared::new(config);
        let listener = bind(proxy_addr)
            .with_context(|| format!("cannot listen on {proxy_addr} (listener.address)"))?;
        let proxy_addr = listener.local_addr()?;
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(listener, shared.clone()));
        tasks.spawn(sweeper(shared.clone()));
        tracing::info!(%proxy_addr, "proxy listener ready");
        Ok(Server {
            shared,
            proxy_addr,
            tasks,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Reads, checks and applies a configuration file; on any error the running one stays.
    pub fn reload_from(&self, path: &std::path::Path) -> Result<(), String> {
        match Config::from_file(path) {
            Ok(c) => self.reload(c),
            Err(e) => {
                let msg = e.to_string();
                tracing::error!("reload refused, the running configuration stays:\n{msg}");
                metrics::counter!("lb_reloads_total", "result" => "error").increment(1);
                Err(msg)
            }
        }
    }

    /// Applies a checked configuration: compiles a new snapshot and swaps it in. In-flight
    /// requests and open tunnels keep the snapshot they started with.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let old = self.shared.runtime.load_full();
        if config.listener.address != old.config.listener.address {
            let msg = format!(
                "listener.address: changing {} to {} needs a restart; the running configuration stays",
                old.config.listener.address, config.listener.address
            );
            tracing::error!("reload refused: {msg}");
            metrics::counter!("lb_reloads_total", "result" => "error").increment(1);
            return Err(msg);
        }
        self.shared.sticky.set_limits(
            config.sticky.max_sessions,
            config.sticky.session_idle_timeout.as_secs() as u32,
        );
        let version = config.version.clone();
        let rt = Runtime::build(
            config,
            Some(&old),
            &self.shared.registry,
            self.shared.route_key.clone(),
            None,
        );
        self.shared.runtime.store(Arc::new(rt));
        metrics::counter!("lb_reloads_total", "result" => "ok").increment(1);
        tracing::info!(%version, "configuration reloaded");
        Ok(())
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
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        tracing::info!("stopped");
    }
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
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value");
        let info = Arc::new(ConnInfo {
            peer,
            peer_ip,
            tls: false,
        });
        shared.conns.spawn(serve_conn(stream, info, shared.clone()));
    }
}

/// Answers 503 on a connection over the limit, without reading it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        stream.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n\
              Connection: close\r\n\r\n503 Service Unavailable: too busy\n",
        ),
    )
    .await;
}

async fn serve_conn(stream: TcpStream, info: Arc<ConnInfo>, shared: Arc<Shared>) {
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
) {
    let node_rt = &rt.nodes[pos];
    let state = node_rt.state.clone();
    let idle = rt.config.websocket.idle_timeout;
    let close = state.tunnels_token().child_token();
    let all = shared.tunnels_close.clone();
    let shared = shared.clone();
    shared.clone().tunnels.spawn(async move {
        let (c, n) = match tokio::try_join!(client, node) {
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
        let watch_all = async {
            all.cancelled().await;
            close.cancel();
            std::future::pending::<()>().await
        };
        let end = tokio::select! {
            end = tunnel::splice(c, n, idle, &close, &counts) => end,
            _ = watch_all => unreachable!("pending never completes"),
        };
        let to_node = counts.to_node.load(Ordering::Relaxed);
        let to_client = counts.to_client.load(Ordering::Relaxed);
        shared.m_ws_bytes_to_node.increment(to_node);
        shared.m_ws_bytes_to_client.increment(to_client);
        state.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        shared.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        shared.m_open_tunnels.decrement(1.0);
        metrics::counter!("lb_websockets_closed_total", "reason" => end.as_str()).increment(1);
        tracing::debug!(node = %state.id, end = end.as_str(), to_node, to_client, "websocket closed");
    });
}

/// Expires idle learned sessions and keeps the table within its bound.
async fn sweeper(shared: Arc<Shared>) {
    let size = metrics::gauge!("lb_sticky_sessions");
    let evictions = metrics::counter!("lb_sticky_evictions_total");
    let expirations = metrics::counter!("lb_sticky_expirations_total");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_full = tokio::time::Instant::now();
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
    }
}
