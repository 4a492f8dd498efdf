//! Listening sockets and the one accept loop every listener runs (proxy, module API, admin
//! API, HTTP-to-HTTPS redirect).
//!
//! The loop stops at shutdown, backs off when `accept` fails (out of file descriptors and the
//! like), answers a refused connection with its raw status ([`Refusal`]) and runs every
//! accepted connection in the tracker that shutdown drains. What a connection does is the
//! listener's: [`proxy`] for user traffic (PROXY protocol header, client slot, TLS, hyper with
//! upgrades), [`serve_http`] for the small HTTP services (a router or the redirect).

mod head_watch;
pub mod proxy;
pub mod proxy_protocol;
mod write_watch;

pub(crate) use write_watch::WriteWatch;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::State;
use crate::status::Refusal;

/// Header read and TLS handshake limit of the module, admin and redirect listeners.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What a listener makes of an accepted connection: the future that serves it, or a refusal.
pub type Accepted<F> = Result<F, (TcpStream, Refusal)>;

/// When a listener stops accepting, and where its connections run (so that shutdown can wait
/// for them).
#[derive(Clone)]
pub struct Lifetime {
    pub stop: CancellationToken,
    pub conns: TaskTracker,
}

impl Lifetime {
    /// The balancer's: its shutdown token and connection tracker.
    pub fn of(state: &State) -> Lifetime {
        Lifetime {
            stop: state.shutdown.clone(),
            conns: state.conns.clone(),
        }
    }
}

/// Accepts until `life.stop`; `on_accept` decides about each connection.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    what: &'static str,
    life: Lifetime,
    mut on_accept: H,
) where
    H: FnMut(TcpStream, SocketAddr) -> Accepted<F>,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = life.stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        match on_accept(stream, peer) {
            Ok(serve) => {
                life.conns.spawn(serve);
            }
            Err((stream, refusal)) => {
                tokio::spawn(refuse(stream, refusal));
            }
        }
    }
}

/// Answers a refused connection with its status, without reading it.
pub async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    metrics::counter!("lb_connections_refused_total", "reason" => refusal.reason()).increment(1);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(refusal.bytes())).await;
}

/// Serves one HTTP/1.1 connection of a small service (no upgrades) until it ends; at `stop`,
/// lets the request in flight finish and closes.
pub async fn serve_http<I, S, B>(io: I, svc: S, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(SERVICE_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serves an axum router on `listener`, over TLS when `tls` is set.
pub async fn serve_router(
    listener: TcpListener,
    what: &'static str,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    life: Lifetime,
) {
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let stop = life.stop.clone();
    accept_loop(listener, what, life, move |stream, peer| {
        let (svc, stop, tls) = (svc.clone(), stop.clone(), tls.clone());
        Ok(async move {
            match tls {
                None => serve_http(stream, svc, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(SERVICE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_http(tls, svc, stop).await,
                        _ => {
                            tracing::debug!(%peer, "{what} TLS handshake failed");
                            metrics::counter!("lb_tls_handshake_failures_total").increment(1);
                        }
                    }
                }
            }
        })
    })
    .await;
}

/// The optional plain HTTP listener: every request is redirected (308) to HTTPS.
pub async fn serve_redirect(listener: TcpListener, life: Lifetime) {
    let stop = life.stop.clone();
    accept_loop(listener, "redirect", life, move |stream, _| {
        let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(crate::proxy::headers::strip_port);
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            Ok::<_, std::convert::Infallible>(crate::status::redirect_to_https(host, pq))
        });
        Ok(serve_http(stream, svc, stop.clone()))
    })
    .await;
}
