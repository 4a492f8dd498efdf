//! The authentication port: Windows authentication at `/windows_authentication/?targetId=T`,
//! as HTTP.sys runs it in front of the QPS's internal module.
//!
//! - no `Authorization` on a fresh connection: `401` with `WWW-Authenticate: NTLM` and
//!   `WWW-Authenticate: Negotiate`;
//! - `NTLM <type 1>` (or `Negotiate <type 1>`): `401` with a type 2 whose challenge is bound to
//!   this TCP connection;
//! - `NTLM <type 3>` on the same connection, answering that challenge: the connection is
//!   authenticated as the type 3's user; on any other connection it is refused (`401`);
//! - `Negotiate <Kerberos token>` for `HTTP/<host>`: one leg, the connection is authenticated;
//! - on an authenticated connection, a request without `Authorization` acts as its user.
//!
//! A signed-in user gets `302` to the URL they were going to (the targetId's, or the hub) with
//! `qlikTicket=<K>` appended; the ticket lives in this node only.

use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::gate::{host_of, redirect, TICKET_PARAM};
use super::{kerberos, ntlm, SimUser};
use crate::body::{text, SimBody};
use crate::state::{inc, NodeShared};
use crate::url;

/// Where one connection to the authentication port stands.
#[derive(Debug, Default)]
pub(crate) enum ConnAuth {
    /// Nothing yet (or a failed attempt).
    #[default]
    Fresh,
    /// A type 2 with this challenge was sent on this connection.
    Challenged([u8; 8]),
    /// The connection is authenticated as this user.
    Authenticated(SimUser),
}

/// `401` asking for NTLM or Negotiate.
fn ask(headers: &[&str]) -> Response<SimBody> {
    let mut r = text(StatusCode::UNAUTHORIZED, "authentication required\n");
    for h in headers {
        if let Ok(v) = HeaderValue::from_str(h) {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

fn ask_both() -> Response<SimBody> {
    ask(&["NTLM", "Negotiate"])
}

/// One request on the authentication port; `conn` is its connection's state.
pub(crate) fn handle_auth(
    shared: &NodeShared,
    req: &Request<Incoming>,
    conn: &Mutex<ConnAuth>,
) -> Response<SimBody> {
    let path = req.uri().path();
    if path != "/windows_authentication/" && path != "/windows_authentication" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut state = conn.lock().unwrap();
    let Some(authorization) = authorization else {
        return match &*state {
            ConnAuth::Authenticated(user) => signed_in(shared, req, user.clone(), None),
            _ => ask_both(),
        };
    };
    let (scheme, token) = authorization
        .trim()
        .split_once(' ')
        .unwrap_or((authorization.trim(), ""));
    let bytes = B64.decode(token.trim()).unwrap_or_default();
    if scheme.eq_ignore_ascii_case("Negotiate") && kerberos::is_token(&bytes) {
        return kerberos_leg(shared, req, &mut state, token);
    }
    if !scheme.eq_ignore_ascii_case("NTLM") && !scheme.eq_ignore_ascii_case("Negotiate") {
        *state = ConnAuth::Fresh;
        return ask_both();
    }
    match ntlm::Message::decode(&bytes) {
        Some(ntlm::Message::Negotiate { .. }) => {
            let challenge: [u8; 8] = rand::random();
            *state = ConnAuth::Challenged(challenge);
            let type2 = ntlm::Message::Challenge {
                challenge,
                target: "QLIK".to_string(),
            };
            ask(&[&format!("{scheme} {}", type2.to_base64())])
        }
        Some(ntlm::Message::Authenticate {
            domain,
            user,
            response,
            ..
        }) => {
            let ok = match &*state {
                ConnAuth::Challenged(c) => response == ntlm::response_for(*c, &domain, &user),
                _ => false,
            };
            if !ok || user.is_empty() {
                inc(&shared.stats.ntlm_failures);
                *state = ConnAuth::Fresh;
                return ask_both();
            }
            inc(&shared.stats.ntlm_logins);
            let user = SimUser::new(&domain.to_ascii_uppercase(), &user);
            *state = ConnAuth::Authenticated(user.clone());
            signed_in(shared, req, user, None)
        }
        _ => {
            *state = ConnAuth::Fresh;
            ask_both()
        }
    }
}

/// A `Negotiate` leg carrying a Kerberos token.
fn kerberos_leg(
    shared: &NodeShared,
    req: &Request<Incoming>,
    state: &mut ConnAuth,
    token: &str,
) -> Response<SimBody> {
    let host = host_of(req);
    let user = kerberos::parse(token)
        .filter(|t| t.is_for_host(url::host_without_port(&host)))
        .and_then(|t| t.user());
    let Some(user) = user else {
        inc(&shared.stats.kerberos_failures);
        *state = ConnAuth::Fresh;
        return ask_both();
    };
    inc(&shared.stats.kerberos_logins);
    *state = ConnAuth::Authenticated(user.clone());
    signed_in(shared, req, user, Some(kerberos::mutual_reply()))
}

/// `302` back to the target with a new ticket for `user`.
fn signed_in(
    shared: &NodeShared,
    req: &Request<Incoming>,
    user: SimUser,
    www_authenticate: Option<String>,
) -> Response<SimBody> {
    let si = &shared.signin;
    let target_id = url::param(req.uri().query(), "targetId");
    let (ticket, target) = si.issue_ticket(user, target_id.as_deref());
    inc(&shared.stats.tickets_issued);
    let target = target.unwrap_or_else(|| {
        inc(&shared.stats.unknown_targets);
        si.hub_uri(url::host_without_port(&host_of(req)))
    });
    let mut r = redirect(&url::with_param(&target, TICKET_PARAM, &ticket));
    if let Some(v) = www_authenticate.and_then(|v| HeaderValue::from_str(&v).ok()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}
