//! One connection of the proxy listener: the connection limits, the PROXY protocol header when
//! required, the client's slot, TLS, then hyper (HTTP/1.1 with upgrades) running
//! [`proxy::serve`](crate::proxy::serve) for each request until the connection ends or a
//! shutdown closes it gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use lb_config::ProxyProtocolMode;
use tokio::net::TcpStream;

use super::head_watch::{HeadWatch, Watched};
use super::write_watch::WriteWatch;
use super::{refuse, Accepted};
use crate::limits::ConnHold;
use crate::proxy::{self, ConnInfo};
use crate::state::State;
use crate::status::Refusal;
use crate::wake::OnWake;

/// Takes or refuses an accepted connection of listener `listener` (0: `[listener]`, `i`:
/// `listeners[i - 1]`) by its `max_connections`. A connection counts from here to its very
/// end: through the PROXY header and the TLS handshake, and on in its WebSocket tunnel after
/// an upgrade.
pub fn accept(
    state: &Arc<State>,
    listener: usize,
    stream: TcpStream,
    peer: SocketAddr,
) -> Accepted<impl Future<Output = ()> + Send + 'static> {
    let (max, tls) = {
        let snap = state.snapshot.load();
        (
            snap.config.listener_at(listener).max_connections as i64,
            snap.tls_of(listener).is_some(),
        )
    };
    let busy = state.open_connections.load(Ordering::Relaxed) >= max;
    if busy && !tls {
        return Err((stream, Refusal::Busy));
    }
    let hold = (!busy).then(|| ConnHold::new(state));
    let _ = stream.set_nodelay(true);
    let state = state.clone();
    Ok(async move {
        match hold {
            Some(hold) => connection(stream, peer, state, hold, listener).await,
            None => close_tls(stream, Refusal::Busy),
        }
    })
}

/// A refused connection on an HTTPS listener: closed without a word (a plain-text status would
/// be garbage to a client in its TLS handshake), and counted.
fn close_tls(stream: TcpStream, refusal: Refusal) {
    metrics::counter!("lb_connections_refused_total", "reason" => refusal.reason()).increment(1);
    drop(stream);
}

/// Reads the PROXY protocol header when required: the client's address, or `None` when the
/// connection is refused.
async fn proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    state: &State,
    listener: usize,
) -> Option<SocketAddr> {
    let (mode, timeout) = {
        let snap = state.snapshot.load();
        let l = snap.config.listener_at(listener);
        (l.proxy_protocol, l.header_read_timeout)
    };
    if mode != ProxyProtocolMode::Required {
        return Some(peer);
    }
    let refused = || {
        metrics::counter!("lb_connections_refused_total", "reason" => "proxy_protocol")
            .increment(1);
    };
    match tokio::time::timeout(timeout, super::proxy_protocol::read(stream)).await {
        Ok(Ok(source)) => Some(source.unwrap_or(peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, "connection refused: {e}");
            refused();
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "connection refused: no PROXY protocol header in time");
            refused();
            None
        }
    }
}

/// Reads the PROXY protocol header when required, then serves the connection.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    mut hold: ConnHold,
    listener: usize,
) {
    let Some(peer) = proxy_header(&mut stream, peer, &state, listener).await else {
        return;
    };
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .expect("an IP address is a valid header value");
    let (acceptor, trusted, timeout, tls_front) = {
        let snap = state.snapshot.load();
        let l = snap.config.listener_at(listener);
        let trusted = l.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
        (
            snap.tls_of(listener).cloned(),
            trusted,
            l.header_read_timeout,
            l.tls_front,
        )
    };
    if !hold.take_slot(peer.ip(), listener) {
        if acceptor.is_some() {
            close_tls(stream, Refusal::TooManyFromClient);
        } else {
            refuse(stream, Refusal::TooManyFromClient).await;
        }
        return;
    }
    let mut info = ConnInfo {
        peer,
        peer_ip,
        trusted,
        tls: false,
        _hold: hold,
        secure_cookies: tls_front,
        listener,
        paired: Default::default(),
    };
    match acceptor {
        None => serve(stream, Arc::new(info), state).await,
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
            info.tls = true;
            info.secure_cookies = true;
            serve(tls, Arc::new(info), state).await;
        }
    }
}

/// Runs hyper on the connection, each request through [`proxy::serve`].
async fn serve<I>(stream: I, info: Arc<ConnInfo>, state: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (header_timeout, max_header, send_timeout) = {
        let snap = state.snapshot.load();
        let l = snap.config.listener_at(info.listener);
        (l.header_read_timeout, l.max_header_bytes, l.send_timeout)
    };
    let svc_state = state.clone();
    // The request-head clock (`header_read_timeout`): one lazily re-armed timer for the
    // connection, not one per request inside hyper.
    let watch = HeadWatch::new();
    let svc_watch = watch.clone();
    let svc = service_fn(move |req| {
        let in_flight = svc_watch.begin();
        let answer = proxy::serve(svc_state.clone(), info.clone(), req);
        async move {
            let resp = answer.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| Watched::new(b, in_flight)))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(max_header)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(WriteWatch::new(stream, send_timeout)), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // The connection is what wakes the task; the other two are polled only when they woke it.
    let mut expired = OnWake::new(watch.expired(header_timeout));
    let mut shutdown = OnWake::new(state.shutdown.cancelled());
    tokio::select! {
        biased;
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("client connection ended: {e}");
            }
        }
        _ = &mut expired => {
            tracing::debug!("no request head within header_read_timeout: connection closed");
        }
        _ = &mut shutdown => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = &mut expired => {}
            }
        }
    }
}
