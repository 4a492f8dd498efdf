//! The user port's decision before a request is served: which session it belongs to, or what
//! to answer instead (a redirect to sign in, or `401`).
//!
//! In [`Auth::FirstRequest`] a request without a session cookie gets a new anonymous session
//! and a foreign cookie is refused with `401`. In the sign-in modes, as a QPS does:
//! 1. `qlikTicket=<K>` (any case) that this node issued, unused and unexpired: a new session
//!    for the ticket's user (`Set-Cookie`), and the request is served;
//! 2. otherwise a session cookie of this node: served as its user;
//! 3. otherwise ([`Auth::Anonymous`] without `forceAuthentication=yes`) a new anonymous session;
//! 4. otherwise a `GET` that is no WebSocket upgrade is redirected to sign in (a new targetId
//!    for the URL it asked for), and anything else is refused with `401`.
//!
//! [`Auth::Header`] instead trusts its header: a session for the user it names (kept while
//! the header names the same user), `401` without header nor session.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{saml, Auth, SimUser};
use crate::body::{text, SimBody};
use crate::state::{inc, Lookup, NodeShared, SimSession};
use crate::url;

/// Name of the query parameter that carries a ticket.
pub const TICKET_PARAM: &str = "qlikTicket";

/// What the gate decided.
pub(crate) enum Gate {
    /// Serve the request as this session's user; `set_cookie` when the session is new.
    Pass {
        session: SimSession,
        set_cookie: Option<HeaderValue>,
    },
    /// Answer this instead.
    Answer(Response<SimBody>),
}

fn pass(shared: &NodeShared, user: SimUser) -> Gate {
    let (session, set_cookie) = shared.new_session(user);
    Gate::Pass {
        session,
        set_cookie,
    }
}

/// The gate of the user port for `req` (`upgrade`: it asks for a WebSocket).
pub(crate) fn gate(shared: &NodeShared, req: &Request<Incoming>, upgrade: bool) -> Gate {
    let si = &shared.signin;
    if !si.mode.signs_in() {
        return match shared.lookup(req.headers()) {
            Lookup::Known(session) => Gate::Pass {
                session,
                set_cookie: None,
            },
            Lookup::Missing if !upgrade => pass(shared, SimUser::anonymous()),
            Lookup::Missing => {
                // No session of this node: refuse the upgrade like a QPS does.
                inc(&shared.stats.foreign_rejections);
                Gate::Answer(text(StatusCode::UNAUTHORIZED, "no session\n"))
            }
            Lookup::Foreign => {
                inc(&shared.stats.foreign_rejections);
                Gate::Answer(text(StatusCode::UNAUTHORIZED, "unknown session\n"))
            }
        };
    }
    if let Auth::Header { name, directory } = &si.mode {
        return header_gate(shared, req, name, directory);
    }
    if let Some(ticket) = url::param(req.uri().query(), TICKET_PARAM) {
        match si.redeem(&ticket) {
            Ok((user, _target)) => {
                inc(&shared.stats.tickets_redeemed);
                return pass(shared, user);
            }
            Err(_) => inc(&shared.stats.ticket_rejections),
        }
    }
    match shared.lookup(req.headers()) {
        Lookup::Known(session) => {
            return Gate::Pass {
                session,
                set_cookie: None,
            }
        }
        Lookup::Foreign => inc(&shared.stats.foreign_rejections),
        Lookup::Missing => {}
    }
    let forced = url::param(req.uri().query(), "forceAuthentication")
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    if si.mode == Auth::Anonymous && !forced && !upgrade {
        return pass(shared, SimUser::anonymous());
    }
    if upgrade || req.method() != Method::GET {
        inc(&shared.stats.unauthenticated);
        return Gate::Answer(text(StatusCode::UNAUTHORIZED, "not signed in\n"));
    }
    Gate::Answer(login_redirect(shared, req))
}

/// Header authentication: the header names the user; a session of that user is kept.
fn header_gate(shared: &NodeShared, req: &Request<Incoming>, name: &str, directory: &str) -> Gate {
    let claimed = req
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|id| SimUser::new(directory, id));
    match (shared.lookup(req.headers()), claimed) {
        (Lookup::Known(session), None) => Gate::Pass {
            session,
            set_cookie: None,
        },
        (Lookup::Known(session), Some(user)) if session.user == user => Gate::Pass {
            session,
            set_cookie: None,
        },
        (_, Some(user)) => {
            inc(&shared.stats.header_logins);
            pass(shared, user)
        }
        (lookup, None) => {
            if matches!(lookup, Lookup::Foreign) {
                inc(&shared.stats.foreign_rejections);
            }
            inc(&shared.stats.unauthenticated);
            Gate::Answer(text(StatusCode::UNAUTHORIZED, "no user in the header\n"))
        }
    }
}

/// The request's `Host` header (or the URI's authority), as the user addressed the site.
pub(crate) fn host_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// `302` to `location`.
pub(crate) fn redirect(location: &str) -> Response<SimBody> {
    let mut r = text(StatusCode::FOUND, "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Sends an unauthenticated user to sign in, remembering where they were going.
fn login_redirect(shared: &NodeShared, req: &Request<Incoming>) -> Response<SimBody> {
    let si = &shared.signin;
    let host = host_of(req);
    let mut target = format!("{}://{host}{}", si.scheme, req.uri().path());
    if let Some(q) = url::without_param(req.uri().query(), TICKET_PARAM) {
        target.push('?');
        target.push_str(&q);
    }
    let target_id = si.new_target(target);
    inc(&shared.stats.login_redirects);
    let location = match &si.mode {
        Auth::Saml { idp_sso_url } => {
            let (relay, request_id) = si.new_relay(target_id);
            let acs = format!("{}://{host}{}/samlauthn/", si.scheme, si.prefix);
            saml::redirect_url(idp_sso_url, &request_id, &acs, &shared.name, &relay)
        }
        Auth::External { url: module } => {
            let rest = format!(
                "{}://{}:{}/qps{}/",
                si.scheme,
                url::host_without_port(&host),
                si.rest_port(),
                si.prefix
            );
            let u = url::with_param(module, "targetId", &target_id);
            url::with_param(&u, "proxyRestUri", &rest)
        }
        _ => {
            let ua = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !si.windows_pattern.is_empty() && ua.contains(&si.windows_pattern) {
                format!(
                    "{}://{}:{}/windows_authentication/?targetId={target_id}",
                    si.scheme,
                    url::host_without_port(&host),
                    si.auth_port()
                )
            } else {
                format!(
                    "{}://{host}{}/internal_forms_authentication/?targetId={target_id}",
                    si.scheme, si.prefix
                )
            }
        }
    };
    redirect(&location)
}
