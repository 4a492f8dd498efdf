//! One connection of the proxy listener: the connection limits, the PROXY protocol header when
//! required, the client's slot, TLS, then hyper (HTTP/1.1 with upgrades) running
//! [`proxy::serve`](crate::proxy::serve) for each request until the connection ends or a
//! shutdown closes it gracefully.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use lb_config::ProxyProtocolMode;
use tokio::net::TcpStream;

use super::{refuse, Accepted};
use crate::proxy::{self, ConnInfo};
use crate::state::State;
use crate::status::Refusal;

/// Takes or refuses an accepted connection (`listener.max_connections`).
pub fn accept(
    state: &Arc<State>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Accepted<impl Future<Output = ()> + Send + 'static> {
    let max = state.snapshot.load().config.listener.max_connections as i64;
    if state.open_connections.load(Ordering::Relaxed) >= max {
        return Err((stream, Refusal::Busy));
    }
    let _ = stream.set_nodelay(true);
    Ok(connection(stream, peer, state.clone()))
}

/// One connection of a client address, counted against `listener.max_connections_per_client`.
struct ClientSlot<'a> {
    state: &'a State,
    ip: IpAddr,
    counted: bool,
}

impl<'a> ClientSlot<'a> {
    fn take(state: &'a State, ip: IpAddr) -> Option<ClientSlot<'a>> {
        let max = state
            .snapshot
            .load()
            .config
            .listener
            .max_connections_per_client;
        if max == 0 {
            return Some(ClientSlot {
                state,
                ip,
                counted: false,
            });
        }
        let mut n = state.per_client.entry(ip).or_insert(0);
        if *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            state,
            ip,
            counted: true,
        })
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.state.per_client.remove_if_mut(&self.ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

/// Reads the PROXY protocol header when required: the client's address, or `None` when the
/// connection is refused.
async fn proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    state: &State,
) -> Option<SocketAddr> {
    let (mode, timeout) = {
        let snap = state.snapshot.load();
        (
            snap.config.listener.proxy_protocol,
            snap.config.listener.header_read_timeout,
        )
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
async fn connection(mut stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let Some(peer) = proxy_header(&mut stream, peer, &state).await else {
        return;
    };
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .expect("an IP address is a valid header value");
    let (acceptor, trusted, timeout) = {
        let snap = state.snapshot.load();
        let trusted = snap
            .config
            .listener
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip()));
        (
            snap.listener_tls.clone(),
            trusted,
            snap.config.listener.header_read_timeout,
        )
    };
    let slot_state = state.clone();
    let Some(_slot) = ClientSlot::take(&slot_state, peer.ip()) else {
        refuse(stream, Refusal::TooManyFromClient).await;
        return;
    };
    let mut info = ConnInfo {
        peer,
        peer_ip,
        trusted,
        tls: false,
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
            serve(tls, Arc::new(info), state).await;
        }
    }
}

/// Runs hyper on the connection, each request through [`proxy::serve`].
async fn serve<I>(stream: I, info: Arc<ConnInfo>, state: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    state.open_connections.fetch_add(1, Ordering::Relaxed);
    state.metrics_handles.open_connections.increment(1.0);
    let (header_timeout, max_header) = {
        let snap = state.snapshot.load();
        (
            snap.config.listener.header_read_timeout,
            snap.config.listener.max_header_bytes,
        )
    };
    let svc_state = state.clone();
    let svc = service_fn(move |req| proxy::serve(svc_state.clone(), info.clone(), req));
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
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    state.open_connections.fetch_sub(1, Ordering::Relaxed);
    state.metrics_handles.open_connections.decrement(1.0);
}
