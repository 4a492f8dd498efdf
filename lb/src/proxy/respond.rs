//! The respond step: the node's answer as the client gets it. A protocol switch hands both
//! connections to a tunnel; otherwise hop-by-hop headers go, HSTS is added on HTTPS, the Qlik
//! session cookies the node sets are learned (or forgotten) and the route cookie is set when
//! the request did not already carry the right one.

use http::header;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Either;
use hyper::upgrade::OnUpgrade;
use lb_config::{ListenerRole, SameSite};
use std::sync::Arc;

use super::choose::Choice;
use super::send::Sent;
use super::{headers, tunnel, ConnInfo, RespBody};
use crate::snapshot::{Node, Snapshot};
use crate::state::State;
use crate::sticky::cookie;
use crate::sticky::shared::{self, Kind};

/// Turns the node's answer into the client's.
pub fn respond(
    state: &Arc<State>,
    snap: &Snapshot,
    conn: &Arc<ConnInfo>,
    choice: &Choice,
    sent: Sent,
    client_upgrade: Option<OnUpgrade>,
) -> Response<RespBody> {
    let (mut resp, upgrade_handle) = sent;
    let node = snap.node(choice.pos);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let node_upgrade = hyper::upgrade::on(&mut resp);
            tunnel::spawn(
                state,
                snap,
                node,
                tunnel::Upgrade {
                    client: client_upgrade,
                    node: node_upgrade,
                    node_conn: upgrade_handle,
                },
                // The client connection stays counted in the limits while its tunnel lives.
                conn.clone(),
                choice.pins.learned.as_ref().map(|(_, key)| key.clone()),
            );
        }
        return resp.map(Either::Left);
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    // The balancer drains: the connection closes after this answer, so the client's next one
    // goes through the load balancer in front. Not on a 401: an NTLM challenge is bound to
    // its connection.
    if state.drain.is_draining() && resp.status() != StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    if conn.tls {
        if let Some(v) = &snap.hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
    }
    learn(state, snap, node, resp.headers(), choice);
    let users = snap.config.listener_at(conn.listener).role == ListenerRole::Users;
    if users && !choice.route_cookie_current() {
        let v = if conn.secure_cookies || snap.config.sticky.same_site == SameSite::None {
            &node.set_cookie_secure
        } else {
            &node.set_cookie
        };
        resp.headers_mut().append(header::SET_COOKIE, v.clone());
    }
    resp.map(Either::Left)
}

/// Records the Qlik session cookies a node sets, and forgets the ones it removes.
fn learn(state: &State, snap: &Snapshot, node: &Node, headers: &HeaderMap, choice: &Choice) {
    for v in headers.get_all(header::SET_COOKIE) {
        let Some(c) = cookie::parse_set_cookie(v.as_bytes()) else {
            continue;
        };
        if !snap.session_names.matches(c.name) {
            continue;
        }
        if c.removes {
            // Forget the session the request carried under the removed cookie's name (another
            // session cookie of the request stays pinned).
            if let Some(value) = choice.request_cookie(c.name).filter(|v| !v.is_empty()) {
                state.sticky.forget(value);
                if let Some(store) = &state.shared {
                    let key = crate::sticky::table::SessionKey::from_value(value);
                    store.forget(Kind::Session, &shared::session_value(&key));
                }
            }
        } else {
            state.sticky.learn(c.value, node.state.idx.0);
            state.metrics_handles.learned_total.increment(1);
            if let Some(store) = &state.shared {
                let idle = snap.config.sticky.session_idle_timeout;
                store.put_session(c.value, &node.id, idle);
            }
        }
    }
}
