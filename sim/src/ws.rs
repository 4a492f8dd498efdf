//! The app WebSocket: upgrade on a session of this node, then echo every message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{full, text, SimBody};
use crate::state::NodeShared;
use crate::MAX_WS_MESSAGE;

pub(crate) fn is_ws_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Upgrades `req` for session `session`; with a session timeout, every message the socket
/// carries keeps the session alive.
pub(crate) fn upgrade(
    shared: &Arc<NodeShared>,
    req: Request<Incoming>,
    session: String,
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
        shared2.stats.ws_open.fetch_add(1, Ordering::Relaxed);
        let _guard = OpenGuard(&shared2.stats.ws_open);
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
            _ = echo(ws, || {
                if shared2.session_timeout.is_some() {
                    shared2.touch(&session);
                }
            }) => {}
        }
    });

    shared.stats.ws_accepted.fetch_add(1, Ordering::Relaxed);
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

async fn echo<S>(mut ws: WebSocketStream<S>, activity: impl Fn())
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        let Ok(msg) = msg else { break };
        activity();
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
