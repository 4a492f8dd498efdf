//! One request, from the client to its node and back, as named steps:
//!
//! 1. [`admit`](admit::admit): head size, host allow list, WebSocket origin, body size;
//! 2. [`choose`](choose::choose): learned session, route cookie, or a new selection;
//! 3. [`rewrite`](headers::rewrite): the request as the node gets it;
//! 4. [`send`](send::send): through the node's pool, redispatching what could not be sent;
//! 5. [`respond`](respond::respond): the tunnel of a protocol switch, or the answer with
//!    learned sessions and the route cookie;
//! 6. [`log`](log::record): metrics and the access log.
//!
//! [`serve`] runs them; a failed step becomes its status in [`crate::status`].

mod admit;
mod choose;
pub mod headers;
mod log;
pub mod pair;
mod respond;
pub mod rest;
mod send;
pub mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use lb_config::ListenerRole;

pub use crate::status::ProxyError;
pub use admit::{host_allowed, origin_allowed};

use crate::snapshot::{NodePos, Snapshot};
use crate::state::State;
use crate::sticky::Decision;
use crate::upstream::pool::PooledBody;
use log::Served;

/// Response body to the client: the node's, streamed, or a short one of ours.
pub type RespBody = Either<PooledBody, Full<Bytes>>;

/// What a connection knows about its client, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub peer_ip: HeaderValue,
    pub tls: bool,
    /// The peer is a trusted proxy: its `X-Forwarded-*` headers are kept and appended to.
    pub trusted: bool,
    /// The connection's place in the connection limits, kept by a tunnel after an upgrade.
    pub(crate) _hold: crate::limits::ConnHold,
    /// Clients reach this connection's listener over HTTPS (its TLS or a trusted front's):
    /// the route cookie is `Secure`.
    pub secure_cookies: bool,
    /// The listener: 0 is `[listener]`, `i` is `listeners[i - 1]`.
    pub listener: usize,
    /// The node connection paired with this one (connection-bound authentication).
    pub paired: pair::PairSlot,
}

/// Serves one request of a client connection.
pub(crate) async fn serve(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let snap = state.snapshot.load_full();
    // Only the access log needs the method and path once the request is handed on.
    let logged = snap
        .config
        .server
        .access_log
        .then(|| (req.method().clone(), req.uri().clone()));
    let (resp, served) = match forward(&state, &snap, &conn, req).await {
        Ok((resp, pos, decision)) => (
            resp,
            Served {
                node: Some(pos),
                decision: Some(decision),
            },
        ),
        Err(e) => (
            e.error.response().map(Either::Right),
            Served {
                node: e.node,
                decision: e.decision,
            },
        ),
    };
    let mut resp = resp;
    if conn.paired.is_broken() {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = resp.status();
    log::record(
        &snap,
        &conn,
        logged.as_ref().map(|(m, u)| (m, u.path())),
        status,
        served,
        start.elapsed(),
    );
    Ok(resp)
}

/// A failed request, with what was known when it failed.
pub struct Failed {
    pub error: ProxyError,
    pub node: Option<NodePos>,
    pub decision: Option<Decision>,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Failed {
            error,
            node: None,
            decision: None,
        }
    }
}

/// The steps between admission and the answer.
async fn forward(
    state: &Arc<State>,
    snap: &Arc<Snapshot>,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<(Response<RespBody>, NodePos, Decision), Failed> {
    let admitted = admit::admit(snap, &req)?;
    let mut choice = if state.shared.is_some() {
        choose::choose_shared(state, snap, req.headers()).await?
    } else {
        choose::choose(state, snap, req.headers())?
    };
    let role = snap.config.listener_at(conn.listener).role;
    let rest_learn = match role {
        ListenerRole::Users => {
            if state.shared.is_some() {
                choose::ticket_pin_shared(state, snap, req.uri(), &mut choice).await;
            } else {
                choose::ticket_pin(state, snap, req.uri(), &mut choice);
            }
            None
        }
        ListenerRole::RestApi => {
            choose::named_node(snap, req.headers(), &mut choice);
            rest::learns_from(req.method(), req.uri().path())
        }
    };
    // A paired client connection stays with its node connection.
    if let Some(pos) = conn.paired.node().and_then(|id| snap.pos_of_id(&id)) {
        choice.pos = pos;
    }
    let client_upgrade = admitted.upgrade.then(|| hyper::upgrade::on(&mut req));
    let had_route_cookie = choice.pins.route != choose::RoutePin::Absent;
    let req = headers::rewrite(snap, conn, had_route_cookie, admitted.upgrade, req);
    let sent = send::send(state, snap, conn, &mut choice, req).await?;
    let resp = respond::respond(state, snap, conn, &choice, sent, client_upgrade);
    let resp = match rest_learn {
        None => resp,
        Some(what) => {
            let c = &snap.config;
            let node = snap.node(choice.pos);
            let ticket_ms = c.sticky.ticket_lifetime.as_millis() as u64;
            let idle = c.sticky.session_idle_timeout;
            let timeout = c.upstream.response_timeout;
            rest::learn(state, node, what, ticket_ms, idle, timeout, resp)
                .await
                .map_err(|e| Failed {
                    error: ProxyError::Upstream(e),
                    node: Some(choice.pos),
                    decision: Some(choice.decision),
                })?
        }
    };
    Ok((resp, choice.pos, choice.decision))
}
