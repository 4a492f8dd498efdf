//! One simulated node: its state, its lifecycle (bind, stop, restart) and its accept loop.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handle::handle;
use crate::state::NodeShared;
use crate::{EngineTelemetry, NODE_HEADER};

static X_SIM_NODE: HeaderName = HeaderName::from_static(NODE_HEADER);

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
