//! The REST API listener (`role = "rest-api"`, in front of the QPS REST API, Qlik's port 4243):
//! what `lb` learns from a portal's (an external authentication module's) calls.
//!
//! - `POST /qps/[<prefix>/]ticket` answered `2xx {"Ticket": "<id>", ...}`: the ticket pins
//!   `qlikTicket=<id>` to the node that made it for `sticky.ticket_lifetime`
//!   ([`Tickets::learn_ticket`](crate::sticky::Tickets::learn_ticket));
//! - `POST /qps/[<prefix>/]session` answered `2xx {"SessionId": "<id>", ...}`: the session id
//!   pins like a learned session cookie ([`StickyTable::learn`](crate::sticky::StickyTable::learn)).
//!
//! Which node a call goes to: the node named by the `X-Lb-Node: <node id>` request header when
//! it is configured and usable, else a new pick by `balance.strategy` (a portal's call carries
//! no pin; the user follows the node that made the ticket or session).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, Response};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::RespBody;
use crate::snapshot::Node;
use crate::state::State;
use crate::sticky::shared::Kind;

/// Names a node for a REST API call.
pub static X_LB_NODE: HeaderName = HeaderName::from_static("x-lb-node");

/// The largest ticket or session answer that is read to learn from it.
const MAX_ANSWER: usize = 64 * 1024;

/// A call `lb` learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    Ticket,
    Session,
}

/// `POST /qps/ticket`, `/qps/<prefix>/ticket` (and `session`), a trailing `/` allowed.
pub fn learns_from(method: &Method, path: &str) -> Option<Learn> {
    if method != Method::POST {
        return None;
    }
    let rest = path.strip_prefix("/qps/")?.trim_end_matches('/');
    let last = match rest.split_once('/') {
        None => rest,
        Some((prefix, last)) if !prefix.is_empty() && !last.contains('/') => last,
        Some(_) => return None,
    };
    match last.to_ascii_lowercase().as_str() {
        "ticket" => Some(Learn::Ticket),
        "session" => Some(Learn::Session),
        _ => None,
    }
}

/// Reads a successful ticket or session answer (bounded in size and by `timeout`), learns its
/// id for `node` (and writes it to the shared store, if any: a ticket for `ticket_ms`, a
/// portal session as a Qlik session for `session_idle`; the answer waits for the store at most
/// `lookup_timeout`, so that the portal's browser finds it at another balancer), and passes
/// the same answer on. An answer that cannot be read whole in time is
/// a `502` of the caller's.
pub async fn learn(
    state: &State,
    node: &Node,
    what: Learn,
    ticket_ms: u64,
    session_idle: Duration,
    timeout: Duration,
    resp: Response<RespBody>,
) -> Result<Response<RespBody>, String> {
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let read = tokio::time::timeout(timeout, Limited::new(body, MAX_ANSWER).collect()).await;
    let bytes: Bytes = match read {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => return Err(format!("REST API answer unreadable: {e}")),
        Err(_) => return Err("REST API answer timed out".into()),
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        let node_idx = node.state.idx.0;
        match what {
            Learn::Ticket => {
                if let Some(t) = v.get("Ticket").and_then(|t| t.as_str()) {
                    state
                        .tickets
                        .learn_ticket(t.as_bytes(), node_idx, ticket_ms);
                    if let Some(store) = &state.shared {
                        let life = Duration::from_millis(ticket_ms);
                        store
                            .put_acked(Kind::Ticket, t.as_bytes(), &node.id, life)
                            .await;
                    }
                    metrics::counter!("lb_rest_learned_total", "kind" => "ticket").increment(1);
                }
            }
            Learn::Session => {
                if let Some(s) = v.get("SessionId").and_then(|t| t.as_str()) {
                    if !s.is_empty() {
                        state.sticky.learn(s.as_bytes(), node_idx);
                        if let Some(store) = &state.shared {
                            store
                                .put_acked(Kind::Session, s.as_bytes(), &node.id, session_idle)
                                .await;
                        }
                        metrics::counter!("lb_rest_learned_total", "kind" => "session")
                            .increment(1);
                    }
                }
            }
        }
    }
    Ok(Response::from_parts(parts, Either::Right(Full::new(bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_learned_from() {
        let post = Method::POST;
        assert_eq!(learns_from(&post, "/qps/ticket"), Some(Learn::Ticket));
        assert_eq!(
            learns_from(&post, "/qps/portal/ticket/"),
            Some(Learn::Ticket)
        );
        assert_eq!(learns_from(&post, "/qps/session"), Some(Learn::Session));
        assert_eq!(learns_from(&post, "/qps/vp/session"), Some(Learn::Session));
        assert_eq!(learns_from(&post, "/qps/vp/session/abc"), None);
        assert_eq!(learns_from(&post, "/qps/a/b/ticket"), None);
        assert_eq!(learns_from(&post, "/qrs/ticket"), None);
        assert_eq!(learns_from(&Method::GET, "/qps/ticket"), None);
    }
}
