//! Connections to one node: a small LIFO pool of HTTP/1.1 connections (hyper's `SendRequest`
//! handles), each driven by its own task.
//!
//! [`Pool::sweep`] runs each second: it closes the idle connections that the node closed or
//! that are idle longer than `pool_idle_timeout`, and half of those that no request needed
//! since the last sweep, so that resident memory and node sockets follow a burst down.
//!
//! A connection goes back to the pool when the response body it carried has been read to its
//! end; a body dropped half way, an upgraded connection or one in an unknown state is not
//! reused. A request that hyper could not send (a pooled connection that the node had just
//! closed) comes back whole, so it is sent again on a fresh connection without having been
//! copied.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::clock;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::NodeConnector;

pub use super::request_body::{BodyEnd, UpBody};

/// Why a node could not take a request.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: the request was not sent and comes back.
    Connect(String, Box<Request<UpBody>>),
    /// The node failed after the request was sent.
    Failed(hyper::Error),
    /// The connection private to this client (connection-bound authentication) is gone; the
    /// request was not sent and comes back.
    PrivateLost(Box<Request<UpBody>>),
}

/// Whether the connection of a request becomes private to its client: never back to the pool,
/// never used for another client (connection-bound authentication such as NTLM).
#[derive(Clone, Copy)]
pub enum Private {
    No,
    Yes,
    /// When the response head says so.
    If(fn(&http::HeaderMap) -> bool),
}

/// A node's answer: the response, the handle of an upgraded connection (kept until the
/// upgrade completes) and the connection that stays private to the client.
pub type Answer = (
    Response<PooledBody>,
    Option<SendRequest<UpBody>>,
    Option<SendRequest<UpBody>>,
);

/// Idle connections of one node.
pub struct Pool {
    idle: Mutex<Idle>,
    max_idle: usize,
    idle_timeout: Duration,
    connect: NodeConnector,
}

/// The idle connections, oldest first, and the fewest there were since the last sweep.
#[derive(Default)]
struct Idle {
    /// Each with the clock millisecond ([`clock::now_ms`]) it came back.
    conns: Vec<(SendRequest<UpBody>, u64)>,
    low: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.connect.addr)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(connect: NodeConnector, max_idle: usize, idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Idle::default()),
            max_idle,
            idle_timeout,
            connect,
        })
    }

    /// An idle connection that is still open and fresh enough, newest first.
    fn checkout(&self) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock::now_ms();
        let timeout = self.idle_timeout.as_millis() as u64;
        while let Some((s, since)) = idle.conns.pop() {
            if !s.is_closed() && now.saturating_sub(since) < timeout {
                idle.low = idle.low.min(idle.conns.len());
                return Some(s);
            }
        }
        idle.low = 0;
        None
    }

    fn checkin(&self, s: SendRequest<UpBody>) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.conns.len() < self.max_idle {
            idle.conns.push((s, clock::now_ms()));
        }
    }

    /// Idle connections: how many.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .len()
    }

    /// Run each second: closes the idle connections that the node closed or that are idle
    /// longer than `pool_idle_timeout`, and half (rounded up) of those that no request needed
    /// since the last sweep (the fewest idle at any moment), oldest first. A steady load keeps
    /// what it uses; after a burst the surplus halves each second.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock::now_ms();
        let timeout = self.idle_timeout.as_millis() as u64;
        idle.conns
            .retain(|(s, since)| !s.is_closed() && now.saturating_sub(*since) < timeout);
        let surplus = idle.low.min(idle.conns.len()).div_ceil(2);
        // Dropping a handle ends its connection's task, which closes the connection.
        idle.conns.drain(..surplus);
        idle.low = idle.conns.len();
        // The list a burst grew is given back once it is mostly empty: kept, it would hold on
        // to the allocator page it came from.
        if idle.conns.capacity() > 4 * idle.conns.len().max(4) {
            idle.conns.shrink_to_fit();
        }
    }

    /// Back to the pool once the response has ended, but only when the request body has ended
    /// too: a node that answered early (a 302 or 401 before reading an upload) still has the
    /// rest of the body coming on that connection, and a request sent behind it would wait.
    /// Such a connection is closed instead.
    fn checkin_after(&self, s: SendRequest<UpBody>, body_end: &BodyEnd) {
        if body_end.complete() {
            self.checkin(s);
        }
    }

    /// How this pool connects to its node.
    pub fn connector(&self) -> &NodeConnector {
        &self.connect
    }

    /// Sends `req` on a pooled or new connection. The response body hands the connection back
    /// to the pool once read to its end.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpBody>,
    ) -> Result<(Response<PooledBody>, Option<SendRequest<UpBody>>), SendError> {
        let (resp, upgrade, _) = self.send_private(req, None, Private::No).await?;
        Ok((resp, upgrade))
    }

    /// Sends `req` on `held`, a connection already private to this client, or like
    /// [`Pool::send`] on a pooled or new one. A connection that is or becomes private
    /// (`private`) comes back in the answer instead of going to the pool; the caller keeps it
    /// for its client connection alone and drops it when that ends.
    pub async fn send_private(
        self: &Arc<Self>,
        mut req: Request<UpBody>,
        mut held: Option<SendRequest<UpBody>>,
        private: Private,
    ) -> Result<Answer, SendError> {
        let was_private = held.is_some();
        let body_end = req.body().end();
        loop {
            let (mut sender, reused) = match held.take() {
                Some(s) => (s, false),
                None if was_private => return Err(SendError::PrivateLost(Box::new(req))),
                None => match self.checkout() {
                    Some(s) => (s, true),
                    // Boxed: the connect future (TLS handshake included) is large, and in line
                    // it would be copied with every request's future though rarely run.
                    None => match Box::pin(self.connect.http1()).await {
                        Ok(s) => (s, false),
                        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                    },
                },
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                if was_private {
                    return Err(SendError::PrivateLost(Box::new(req)));
                }
                return Err(SendError::Connect(
                    "connection closed at once".into(),
                    Box::new(req),
                ));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let upgrade = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let (parts, body) = resp.into_parts();
                    if upgrade {
                        // The connection is the tunnel's now; the handle stays with the caller
                        // until the upgrade completes.
                        let body = PooledBody {
                            inner: body,
                            back: None,
                        };
                        return Ok((Response::from_parts(parts, body), Some(sender), None));
                    }
                    let private = was_private
                        || match private {
                            Private::No => false,
                            Private::Yes => true,
                            Private::If(f) => f(&parts.headers),
                        };
                    if private {
                        let body = PooledBody {
                            inner: body,
                            back: None,
                        };
                        return Ok((Response::from_parts(parts, body), None, Some(sender)));
                    }
                    let body = if body.is_end_stream() {
                        self.checkin_after(sender, &body_end);
                        PooledBody {
                            inner: body,
                            back: None,
                        }
                    } else {
                        PooledBody {
                            inner: body,
                            back: Some((sender, self.clone(), body_end)),
                        }
                    };
                    return Ok((Response::from_parts(parts, body), None, None));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent (the pooled connection was closing): again, on another one.
                    Some(r) if reused => req = r,
                    Some(r) if was_private => return Err(SendError::PrivateLost(Box::new(r))),
                    Some(r) => {
                        return Err(SendError::Connect(e.into_error().to_string(), Box::new(r)))
                    }
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }
}

/// A node's response body; hands its connection back to the pool at its end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(SendRequest<UpBody>, Arc<Pool>, BodyEnd)>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        // The end: no more frames, or the last one (hyper may not ask again after a body
        // whose length it knows).
        let done = match &r {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if done {
            if let Some((s, pool, body_end)) = self.back.take() {
                pool.checkin_after(s, &body_end);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
