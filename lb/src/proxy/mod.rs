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
mod respond;
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
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Result<(Response<RespBody>, NodePos, Decision), Failed> {
    let admitted = admit::admit(snap, &req)?;
    let mut choice = choose::choose(state, snap, req.headers())?;
    let client_upgrade = admitted.upgrade.then(|| hyper::upgrade::on(&mut req));
    let had_route_cookie = choice.pins.route != choose::RoutePin::Absent;
    let req = headers::rewrite(snap, conn, had_route_cookie, admitted.upgrade, req);
    let sent = send::send(state, snap, &mut choice, req).await?;
    let resp = respond::respond(state, snap, conn, &choice, sent, client_upgrade);
    Ok((resp, choice.pos, choice.decision))
}
