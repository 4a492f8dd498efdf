//! What a node remembers while it runs: its name, sessions and their users, sign-in memory,
//! telemetry and counters. Shared by the listeners and the request handlers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::auth::{SignIn, SimUser};
use crate::EngineTelemetry;

/// Counters of one node since it was created (they survive `stop`/`restart`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests answered (any status and port, health checks and upgrades included).
    pub requests: u64,
    /// Sessions created (first request, ticket, SAML, anonymous or the REST API).
    pub sessions_issued: u64,
    /// Requests carrying a session cookie this node does not know (refused with 401 in [`crate::Auth::FirstRequest`], sent to sign in otherwise), and upgrades refused for want of a session of this node.
    pub foreign_rejections: u64,
    /// WebSockets accepted (101 sent).
    pub ws_accepted: u64,
    /// WebSockets open now.
    pub ws_open: u64,
    /// Redirects of an unauthenticated user to sign in (authentication port, forms or identity provider).
    pub login_redirects: u64,
    /// Requests refused with 401 for want of a session where no redirect is possible (not a `GET`, or a WebSocket).
    pub unauthenticated: u64,
    /// Tickets issued (authentication port, forms login or REST API).
    pub tickets_issued: u64,
    /// Tickets exchanged for a session on the user port.
    pub tickets_redeemed: u64,
    /// Tickets refused on the user port: unknown here, used, or expired.
    pub ticket_rejections: u64,
    /// NTLM handshakes completed (type 3 verified against this connection's challenge).
    pub ntlm_logins: u64,
    /// NTLM type 3 messages refused (no challenge on this connection, or a wrong response).
    pub ntlm_failures: u64,
    /// Kerberos (`Negotiate`) sign-ins accepted.
    pub kerberos_logins: u64,
    /// Kerberos tokens refused (malformed, or for another service name).
    pub kerberos_failures: u64,
    /// Forms logins accepted.
    pub form_logins: u64,
    /// Forms logins refused.
    pub form_failures: u64,
    /// SAML assertions accepted at `samlauthn`.
    pub saml_logins: u64,
    /// SAML posts refused: a RelayState or request this node did not start.
    pub saml_rejections: u64,
    /// Sign-ins that named a targetId this node did not issue (the user is sent to the hub).
    pub unknown_targets: u64,
    /// Sessions made for the user a header-authentication header named.
    pub header_logins: u64,
}

/// The live counters behind [`SimStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) sessions_issued: AtomicU64,
    pub(crate) foreign_rejections: AtomicU64,
    pub(crate) ws_accepted: AtomicU64,
    pub(crate) ws_open: AtomicU64,
    pub(crate) login_redirects: AtomicU64,
    pub(crate) unauthenticated: AtomicU64,
    pub(crate) tickets_issued: AtomicU64,
    pub(crate) tickets_redeemed: AtomicU64,
    pub(crate) ticket_rejections: AtomicU64,
    pub(crate) ntlm_logins: AtomicU64,
    pub(crate) ntlm_failures: AtomicU64,
    pub(crate) kerberos_logins: AtomicU64,
    pub(crate) kerberos_failures: AtomicU64,
    pub(crate) form_logins: AtomicU64,
    pub(crate) form_failures: AtomicU64,
    pub(crate) saml_logins: AtomicU64,
    pub(crate) saml_rejections: AtomicU64,
    pub(crate) unknown_targets: AtomicU64,
    pub(crate) header_logins: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> SimStats {
        SimStats {
            requests: self.requests.load(Ordering::Relaxed),
            sessions_issued: self.sessions_issued.load(Ordering::Relaxed),
            foreign_rejections: self.foreign_rejections.load(Ordering::Relaxed),
            ws_accepted: self.ws_accepted.load(Ordering::Relaxed),
            ws_open: self.ws_open.load(Ordering::Relaxed),
            login_redirects: self.login_redirects.load(Ordering::Relaxed),
            unauthenticated: self.unauthenticated.load(Ordering::Relaxed),
            tickets_issued: self.tickets_issued.load(Ordering::Relaxed),
            tickets_redeemed: self.tickets_redeemed.load(Ordering::Relaxed),
            ticket_rejections: self.ticket_rejections.load(Ordering::Relaxed),
            ntlm_logins: self.ntlm_logins.load(Ordering::Relaxed),
            ntlm_failures: self.ntlm_failures.load(Ordering::Relaxed),
            kerberos_logins: self.kerberos_logins.load(Ordering::Relaxed),
            kerberos_failures: self.kerberos_failures.load(Ordering::Relaxed),
            form_logins: self.form_logins.load(Ordering::Relaxed),
            form_failures: self.form_failures.load(Ordering::Relaxed),
            saml_logins: self.saml_logins.load(Ordering::Relaxed),
            saml_rejections: self.saml_rejections.load(Ordering::Relaxed),
            unknown_targets: self.unknown_targets.load(Ordering::Relaxed),
            header_logins: self.header_logins.load(Ordering::Relaxed),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A session as a node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSession {
    /// The session id: the cookie's value.
    pub id: String,
    /// Whom the session belongs to.
    pub user: SimUser,
}

/// What the session cookies of a request mean to this node.
pub(crate) enum Lookup {
    /// No cookie named like the node's session cookie.
    Missing,
    /// A session of this node.
    Known(SimSession),
    /// Only cookies this node did not issue (or that expired with a restart).
    Foreign,
}

/// The state of one node, shared by its listeners and connections.
pub(crate) struct NodeShared {
    pub(crate) name: String,
    pub(crate) name_value: HeaderValue,
    pub(crate) cookie_name: String,
    pub(crate) telemetry: Mutex<EngineTelemetry>,
    /// Session id (a lower-case GUID when it is one) to its user and last use.
    pub(crate) sessions: Mutex<HashMap<String, Entry>>,
    /// Inactivity after which a session is gone (`None`: never).
    pub(crate) session_timeout: Option<Duration>,
    pub(crate) signin: SignIn,
    pub(crate) hang: AtomicBool,
    pub(crate) stats: Counters,
}

/// A session in a node's memory.
pub(crate) struct Entry {
    pub(crate) user: SimUser,
    /// When it was last used, on the sign-in clock.
    last_seen: Duration,
}

/// The key a session id is stored under: GUIDs in their lower-case hyphenated form.
fn session_key(v: &str) -> String {
    match uuid::Uuid::parse_str(v) {
        Ok(u) => u.hyphenated().to_string(),
        Err(_) => v.to_string(),
    }
}

impl NodeShared {
    /// Creates a session for `user` with a new GUID; returns it and its `Set-Cookie`.
    pub(crate) fn new_session(&self, user: SimUser) -> (SimSession, Option<HeaderValue>) {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        self.add_session(&id, user.clone());
        let cookie = self.set_cookie(&id);
        (SimSession { id, user }, cookie)
    }

    /// Creates (or replaces) the session `id` for `user`.
    pub(crate) fn add_session(&self, id: &str, user: SimUser) {
        let last_seen = self.signin.clock.now();
        self.sessions
            .lock()
            .unwrap()
            .insert(session_key(id), Entry { user, last_seen });
        inc(&self.stats.sessions_issued);
    }

    /// Ends the session `id`; whether it existed.
    pub(crate) fn remove_session(&self, id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap()
            .remove(&session_key(id))
            .is_some()
    }

    fn expired(&self, e: &Entry, now: Duration) -> bool {
        self.session_timeout
            .is_some_and(|t| now.saturating_sub(e.last_seen) >= t)
    }

    /// The user of live session `id`.
    pub(crate) fn session(&self, id: &str) -> Option<SimUser> {
        let now = self.signin.clock.now();
        let s = self.sessions.lock().unwrap();
        let e = s.get(&session_key(id))?;
        (!self.expired(e, now)).then(|| e.user.clone())
    }

    /// Marks session `id` as used now (a request or WebSocket traffic); whether it is live.
    pub(crate) fn touch(&self, id: &str) -> bool {
        let now = self.signin.clock.now();
        let mut s = self.sessions.lock().unwrap();
        let key = session_key(id);
        match s.get_mut(&key) {
            Some(e) if !self.expired(e, now) => {
                e.last_seen = now;
                true
            }
            Some(_) => {
                s.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Forgets sessions past their inactivity timeout; returns the live ones.
    pub(crate) fn live_sessions(&self) -> Vec<SimSession> {
        let now = self.signin.clock.now();
        let mut s = self.sessions.lock().unwrap();
        s.retain(|_, e| !self.expired(e, now));
        s.iter()
            .map(|(id, e)| SimSession {
                id: id.clone(),
                user: e.user.clone(),
            })
            .collect()
    }

    /// `Set-Cookie` for session `id`.
    /// `Secure` is added when the node's URLs are `https` (TLS terminated in front of it).
    pub(crate) fn set_cookie(&self, id: &str) -> Option<HeaderValue> {
        let secure = if self.signin.scheme == "https" {
            "; Secure"
        } else {
            ""
        };
        let c = format!("{}={id}; Path=/; HttpOnly{secure}", self.cookie_name);
        HeaderValue::from_str(&c).ok()
    }

    /// What the request's session cookies mean here.
    pub(crate) fn lookup(&self, headers: &HeaderMap) -> Lookup {
        let values = cookie_values(headers, &self.cookie_name);
        if values.is_empty() {
            return Lookup::Missing;
        }
        let now = self.signin.clock.now();
        let mut sessions = self.sessions.lock().unwrap();
        for v in values {
            let key = session_key(v);
            let Some(e) = sessions.get_mut(&key) else {
                continue;
            };
            if self.expired(e, now) {
                sessions.remove(&key);
                continue;
            }
            e.last_seen = now;
            return Lookup::Known(SimSession {
                id: key,
                user: e.user.clone(),
            });
        }
        Lookup::Foreign
    }
}

/// Values of every cookie named `name` in all `Cookie` headers.
pub fn cookie_values<'a>(headers: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for h in headers.get_all(header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for pair in s.split(';') {
            let pair = pair.trim();
            if let Some((k, v)) = pair.split_once('=') {
                if k.trim() == name {
                    out.push(v.trim().trim_matches('"'));
                }
            }
        }
    }
    out
}
