//! One simulated node: its listeners (user port, and with sign-in the authentication and REST
//! API ports), its lifecycle (bind, stop, restart) and the accept loop they share.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::windows::{handle_auth, ConnAuth};
use crate::auth::{SignIn, SimUser};
use crate::handle::handle;
use crate::rest::handle_rest;
use crate::state::{Counters, NodeShared, SimSession, SimStats};
use crate::{EngineTelemetry, SimOptions, NODE_HEADER};

static X_SIM_NODE: HeaderName = HeaderName::from_static(NODE_HEADER);

/// Which of a node's listeners a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    User,
    Auth,
    Rest,
}

pub(crate) struct Running {
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Running {
    pub(crate) fn new() -> Running {
        Running {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Cancels everything and waits for the tasks to end.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// One simulated Qlik Sense node.
pub struct SimNode {
    shared: Arc<NodeShared>,
    addr: SocketAddr,
    auth_addr: Option<SocketAddr>,
    rest_addr: Option<SocketAddr>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("auth_addr", &self.auth_addr)
            .field("rest_addr", &self.rest_addr)
            .finish()
    }
}

impl SimNode {
    /// Binds `addr` and starts serving, without sign-in ([`crate::Auth::FirstRequest`]).
    pub async fn bind(name: &str, addr: SocketAddr, cookie_name: &str) -> io::Result<SimNode> {
        let opts = SimOptions {
            cookie_name: cookie_name.to_string(),
            ..SimOptions::default()
        };
        SimNode::start(name, addr, None, None, &opts).await
    }

    /// Binds the user port `addr` and, when given, the authentication port `auth` and the
    /// REST API port `rest`, and starts serving with `opts` (its `auth` decides the sign-in).
    pub async fn start(
        name: &str,
        addr: SocketAddr,
        auth: Option<SocketAddr>,
        rest: Option<SocketAddr>,
        opts: &SimOptions,
    ) -> io::Result<SimNode> {
        let shared = Arc::new(NodeShared {
            name: name.to_string(),
            name_value: HeaderValue::from_str(name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            cookie_name: opts.cookie_name.clone(),
            telemetry: Mutex::new(EngineTelemetry::default()),
            sessions: Mutex::new(HashMap::new()),
            session_timeout: opts.session_timeout,
            signin: SignIn::new(opts),
            hang: AtomicBool::new(false),
            stats: Counters::default(),
        });
        let mut listeners = vec![(Port::User, bind_reuse(addr)?)];
        if let Some(a) = auth {
            listeners.push((Port::Auth, bind_reuse(a)?));
        }
        if let Some(a) = rest {
            listeners.push((Port::Rest, bind_reuse(a)?));
        }
        let bound = |p: Port| -> io::Result<Option<SocketAddr>> {
            listeners
                .iter()
                .find(|(k, _)| *k == p)
                .map(|(_, l)| l.local_addr())
                .transpose()
        };
        let addr = bound(Port::User)?.unwrap_or(addr);
        let (auth_addr, rest_addr) = (bound(Port::Auth)?, bound(Port::Rest)?);
        if let Some(a) = auth_addr {
            shared
                .signin
                .own_auth_port
                .store(a.port(), Ordering::Relaxed);
        }
        if let Some(a) = rest_addr {
            shared
                .signin
                .own_rest_port
                .store(a.port(), Ordering::Relaxed);
        }
        let running = spawn_node(&shared, listeners);
        Ok(SimNode {
            shared,
            addr,
            auth_addr,
            rest_addr,
            running: Mutex::new(Some(running)),
        })
    }

    /// The node's name (`node1`, ...).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address of the user port (the QPS's 443).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the authentication port (the QPS's 4244), when it has one.
    pub fn auth_addr(&self) -> Option<SocketAddr> {
        self.auth_addr
    }

    /// The address of the REST API port (the QPS's 4243), when it has one.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        self.rest_addr
    }

    /// Whether the node is listening (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Kills the node: closes its listeners and every open connection and WebSocket.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(r) = running {
            r.stop().await;
        }
    }

    /// Listens again on the same ports with a fresh memory of sessions, targets and tickets
    /// (a restarted QPS). A running node is stopped first.
    pub async fn restart(&self) -> io::Result<()> {
        self.stop().await;
        self.shared.sessions.lock().unwrap().clear();
        self.shared.signin.clear();
        let mut listeners = vec![(Port::User, bind_reuse(self.addr)?)];
        if let Some(a) = self.auth_addr {
            listeners.push((Port::Auth, bind_reuse(a)?));
        }
        if let Some(a) = self.rest_addr {
            listeners.push((Port::Rest, bind_reuse(a)?));
        }
        let running = spawn_node(&self.shared, listeners);
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
        self.shared.stats.snapshot()
    }

    /// When on, the node accepts connections and reads requests but never answers.
    pub fn set_hang(&self, on: bool) {
        self.shared.hang.store(on, Ordering::Relaxed);
    }

    /// Number of sessions this node currently remembers.
    pub fn session_count(&self) -> usize {
        self.shared.live_sessions().len()
    }

    /// The sessions this node remembers, sorted by user then id.
    pub fn sessions(&self) -> Vec<SimSession> {
        let mut v = self.shared.live_sessions();
        v.sort_by(|a, b| (&a.user, &a.id).cmp(&(&b.user, &b.id)));
        v
    }

    /// Number of sessions of `user` on this node.
    pub fn sessions_of(&self, user: &SimUser) -> usize {
        let s = self.shared.live_sessions();
        s.iter().filter(|s| s.user == *user).count()
    }

    /// The port that redirects to Windows authentication name: what a QPS is configured with
    /// (its own authentication port by default; a balancer's authentication listener when one
    /// is in front). 0 restores the node's own.
    pub fn set_advertised_auth_port(&self, port: u16) {
        self.shared
            .signin
            .advertised_auth_port
            .store(port, Ordering::Relaxed);
    }

    /// The REST API port an external module is told in `proxyRestUri`; 0 restores the node's
    /// own.
    pub fn set_advertised_rest_port(&self, port: u16) {
        self.shared
            .signin
            .advertised_rest_port
            .store(port, Ordering::Relaxed);
    }

    /// Moves the node's sign-in clock forward (tickets expire by it).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.signin.clock.advance(by);
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

/// Binds `addr` with `SO_REUSEADDR` (a restarted node gets its port back at once).
pub(crate) fn bind_reuse(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts connections on `listener` until `running` is cancelled, handing each to `serve`.
pub(crate) fn accept_loop<F, Fut>(running: &Running, listener: TcpListener, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (c, t) = (running.cancel.clone(), running.tracker.clone());
    running.tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = c.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = serve(stream, peer);
                    let c = c.clone();
                    t.spawn(async move {
                        tokio::select! {
                            _ = c.cancelled() => {}
                            _ = conn => {}
                        }
                    });
                }
                Err(_) => {
                    // Out of file descriptors or similar: back off briefly.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    });
}

fn spawn_node(shared: &Arc<NodeShared>, listeners: Vec<(Port, TcpListener)>) -> Running {
    let running = Running::new();
    for (port, listener) in listeners {
        let shared = shared.clone();
        let (c, t) = (running.cancel.clone(), running.tracker.clone());
        accept_loop(&running, listener, move |stream, peer| {
            serve_conn(shared.clone(), port, stream, peer, c.clone(), t.clone())
        });
    }
    running
}

async fn serve_conn(
    shared: Arc<NodeShared>,
    port: Port,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    // What the authentication port knows about this connection (HTTP.sys keeps it per TCP
    // connection).
    let conn_auth = Arc::new(Mutex::new(ConnAuth::default()));
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let (c, t) = (cancel.clone(), tracker.clone());
        let conn_auth = conn_auth.clone();
        async move {
            if shared.hang.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            crate::state::inc(&shared.stats.requests);
            let mut resp = match port {
                Port::User => handle(&shared, req, peer, c, t).await,
                Port::Auth => handle_auth(&shared, &req, &conn_auth),
                Port::Rest => handle_rest(&shared, req).await,
            };
            resp.headers_mut()
                .insert(X_SIM_NODE.clone(), shared.name_value.clone());
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
}
