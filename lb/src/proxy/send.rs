//! The send step: the request to the chosen node through its pool, bounded by
//! `upstream.response_timeout`. A request that could not be sent at all (no connection) goes
//! to another node (a redispatch); an error answer counts towards passive health.

use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::client::conn::http1::SendRequest;

use super::choose::{redispatched, Choice};
use super::pair::{self, Paired};
use super::{ConnInfo, Failed};
use crate::clock;
use crate::snapshot::{Node, Snapshot};
use crate::state::State;
use crate::status::ProxyError;
use crate::sticky::Decision;
use crate::upstream::pool::{BodyEnd, PooledBody, Private, SendError, UpBody};
use crate::upstream::request_body::ClientFault;

/// The node's answer, and for a protocol switch the handle that keeps its connection until the
/// upgrade completes.
pub type Sent = (Response<PooledBody>, Option<SendRequest<UpBody>>);

/// Sends `req` to `choice`'s node; a redispatch updates `choice`.
pub async fn send(
    state: &State,
    snap: &Snapshot,
    conn: &ConnInfo,
    choice: &mut Choice,
    mut req: Request<UpBody>,
) -> Result<Sent, Failed> {
    let timeout = snap.config.upstream.response_timeout;
    let mut tried = 0usize;
    let private = if pair::request_binds(req.headers()) {
        Private::Yes
    } else {
        Private::If(pair::response_binds)
    };
    let mut held = conn.paired.take();
    let had_pair = held.is_some();
    loop {
        let node = snap.node(choice.pos);
        let held_conn = match held.take() {
            Some(p) if p.node == node.id => Some(p.conn),
            // Paired with a node this configuration no longer has: the pair ends with this
            // client connection.
            Some(_) => {
                conn.paired.set_broken();
                None
            }
            None => None,
        };
        if !req.headers().contains_key(header::HOST) {
            if let Ok(h) = HeaderValue::from_str(node.authority.as_str()) {
                req.headers_mut().insert(header::HOST, h);
            }
        }
        let guard = InFlight::new(node);
        node.state.requests_total.fetch_add(1, Ordering::Relaxed);
        let body_end = req.body().end();
        let pool = node.pool_for(conn.listener);
        let res = answer_within(
            timeout,
            &body_end,
            pool.send_private(req, held_conn, private),
        )
        .await;
        drop(guard);
        let error = match res {
            Ok(Ok((resp, upgrade, kept))) => {
                if resp.status().is_server_error() {
                    passive_error(snap, node);
                } else {
                    node.state.mark_ok();
                }
                if let Some(c) = kept {
                    if !conn.paired.is_broken() {
                        if !had_pair {
                            state.metrics_handles.auth_paired.increment(1);
                        }
                        conn.paired.put(Paired {
                            node: node.id.clone(),
                            conn: c,
                        });
                    }
                }
                return Ok((resp, upgrade));
            }
            Ok(Err(SendError::PrivateLost(_))) => {
                // The node closed the connection paired with this client: no other connection
                // may carry the request (it would lack the identity, or carry another's); the
                // client connection closes after this answer and the browser starts over.
                conn.paired.set_broken();
                return Err(failed(
                    ProxyError::Upstream("the node closed the paired connection".into()),
                    choice,
                ));
            }
            Ok(Err(SendError::Connect(e, unsent))) => {
                // Nothing was sent: the same request may go to another node.
                node.state.mark_failed(snap.passive_fail_ms);
                tried += 1;
                let next = if tried < snap.nodes.len() {
                    snap.select_new(clock::now_ms(), Some(choice.pos))
                } else {
                    None
                };
                let Some(next) = next else {
                    return Err(failed(ProxyError::Connect(e), choice));
                };
                tracing::debug!(node = %node.id, "connect failed, redispatching: {e}");
                req = *unsent;
                choice.pos = next;
                choice.decision = Decision::Redispatch;
                redispatched(state, snap, next, &choice.pins);
                continue;
            }
            Ok(Err(SendError::Failed(e))) => match body_end.client_fault() {
                // The client broke its own request: not the node's fault.
                Some(fault) => return Err(failed(ProxyError::from(fault), choice)),
                None if e.is_user() => {
                    return Err(failed(ProxyError::from(ClientFault::Broken), choice))
                }
                None => ProxyError::Upstream(e.to_string()),
            },
            Err(_) => match body_end.client_fault() {
                Some(fault) => return Err(failed(ProxyError::from(fault), choice)),
                None => ProxyError::Timeout,
            },
        };
        if had_pair {
            // The paired node connection went with the failed request: close the client's.
            conn.paired.set_broken();
        }
        passive_error(snap, node);
        return Err(failed(error, choice));
    }
}

/// Waits for the node's answer: `timeout` counts from the end of the request body (a slow
/// upload is bounded by `listener.body_timeout`, not blamed on the node). `Err` when the node
/// did not answer in time, or the body failed first.
async fn answer_within<F: std::future::Future>(
    timeout: std::time::Duration,
    body_end: &BodyEnd,
    fut: F,
) -> Result<F::Output, ()> {
    tokio::pin!(fut);
    let mut wait = timeout;
    loop {
        if let Ok(r) = tokio::time::timeout(wait, fut.as_mut()).await {
            return Ok(r);
        }
        if body_end.client_fault().is_some() {
            return Err(());
        }
        wait = match body_end.completed_at_ms() {
            // The node stopped taking the body and did not answer: its own timeout.
            None if body_end.stalled_by_node(timeout.as_millis() as u64) => return Err(()),
            // Still sending: wait on (the body's own timeout bounds the client).
            None => timeout,
            Some(0) => return Err(()),
            Some(done) => {
                let since = std::time::Duration::from_millis(clock::now_ms().saturating_sub(done));
                match timeout.checked_sub(since) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Err(()),
                }
            }
        };
    }
}

fn failed(error: ProxyError, choice: &Choice) -> Failed {
    Failed {
        error,
        node: Some(choice.pos),
        decision: Some(choice.decision),
    }
}

/// Decrements a node's in-flight count however the request ends.
struct InFlight<'a>(&'a Node);

impl<'a> InFlight<'a> {
    fn new(n: &'a Node) -> Self {
        n.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Passive health: an error answer counts towards taking the node out.
fn passive_error(snap: &Snapshot, node: &Node) {
    let h = &snap.config.health;
    node.state.note_error(
        h.passive_errors,
        h.passive_window.as_millis() as u64,
        snap.passive_fail_ms,
    );
}
