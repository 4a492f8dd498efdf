//! Signing users in as a Qlik Proxy Service does: what a node remembers between the legs of a
//! sign-in (targets, tickets, SAML relay states), the users sessions belong to, and the clock
//! tickets expire by.
//!
//! - `gate`: the user port's decision for a request (session, ticket, anonymous or login).
//! - `windows`: the authentication port (`/windows_authentication/`, NTLM and Kerberos).
//! - `form`: the forms login for browsers outside the Windows authentication pattern.
//! - `saml`: SAML messages, the assertion consumer (`/<prefix>/samlauthn/`) and client helpers.
//! - [`ntlm`], [`kerberos`]: the message formats and the client side of the handshakes.

pub(crate) mod form;
pub(crate) mod gate;
pub mod kerberos;
pub mod ntlm;
pub mod saml;
pub(crate) mod windows;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How the nodes of a cluster sign users in ([`crate::SimOptions::auth`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No sign-in: a request without a session cookie gets a new session (for the anonymous
    /// user) and is served; a cookie of another node is refused with `401`. Nodes listen on
    /// their user port only. The behaviour every test had before sign-in was simulated.
    #[default]
    FirstRequest,
    /// Ticket authentication with Qlik's internal module: an unauthenticated `GET` is
    /// redirected to Windows authentication (NTLM or Kerberos) on the node's authentication
    /// port when the User-Agent contains the Windows authentication pattern, to the forms
    /// login otherwise. A ticket brings the user back; the REST API makes tickets and sessions.
    Windows,
    /// SAML: an unauthenticated `GET` is redirected to the identity provider (`idp_sso_url`,
    /// e.g. a [`crate::SimIdp`]'s [`crate::SimIdp::sso_url`]), which posts the assertion back
    /// to `<site>[/<prefix>]/samlauthn/` with the RelayState this node issued.
    Saml {
        /// The identity provider's single sign-on URL.
        idp_sso_url: String,
    },
    /// "Allow anonymous user": an unauthenticated request gets a session of the anonymous
    /// user, unless it asks `forceAuthentication=yes` (then as [`Auth::Windows`]).
    Anonymous,
    /// Ticket authentication with an external module at `url`: an unauthenticated `GET` is
    /// redirected to `url?targetId=<T>&proxyRestUri=<this node's REST API>/qps/[<prefix>/]`;
    /// the module asks that REST API for a ticket and sends the user back with it.
    External {
        /// The authentication module's URL.
        url: String,
    },
    /// Header authentication with a static user directory: the QPS trusts the request header
    /// `name` as the user id (in `directory`) and makes a session for it. A request without
    /// the header and without a session gets `401`.
    Header {
        /// The virtual proxy's "Header authentication header name".
        name: String,
        /// The "Header authentication static user directory".
        directory: String,
    },
}

impl std::str::FromStr for Auth {
    type Err = String;

    /// `first-request`, `windows`, `anonymous`, `saml=<identity provider SSO URL>`,
    /// `external=<module URL>` or `header=<header name>` (user directory `HEADER`).
    fn from_str(s: &str) -> Result<Auth, String> {
        match s {
            "first-request" => Ok(Auth::FirstRequest),
            "windows" => Ok(Auth::Windows),
            "anonymous" => Ok(Auth::Anonymous),
            _ => match s.split_once('=') {
                Some(("saml", url)) if !url.is_empty() => Ok(Auth::Saml {
                    idp_sso_url: url.to_string(),
                }),
                Some(("external", url)) if !url.is_empty() => Ok(Auth::External {
                    url: url.to_string(),
                }),
                Some(("header", name)) if !name.is_empty() => Ok(Auth::Header {
                    name: name.to_string(),
                    directory: "HEADER".to_string(),
                }),
                _ => Err(format!(
                    "unknown sign-in {s:?}: first-request, windows, anonymous, saml=<url>, \
                     external=<url> or header=<name>"
                )),
            },
        }
    }
}

impl Auth {
    /// Whether the nodes run the sign-in (authentication and REST ports, tickets).
    pub fn signs_in(&self) -> bool {
        *self != Auth::FirstRequest
    }
}

/// A user as Qlik names one: user directory and user id (`CORP\alice`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SimUser {
    /// `UserDirectory` (`CORP`).
    pub directory: String,
    /// `UserId` (`alice`).
    pub id: String,
}

impl SimUser {
    /// `directory\id`.
    pub fn new(directory: &str, id: &str) -> SimUser {
        SimUser {
            directory: directory.to_string(),
            id: id.to_string(),
        }
    }

    /// The anonymous user, `ANONYMOUS\anonymous`.
    pub fn anonymous() -> SimUser {
        SimUser::new("ANONYMOUS", "anonymous")
    }

    /// Parses `DIRECTORY\id`; without a backslash the directory is `default_directory`.
    pub fn parse(s: &str, default_directory: &str) -> SimUser {
        match s.split_once('\\') {
            Some((d, i)) => SimUser::new(d, i),
            None => SimUser::new(default_directory, s),
        }
    }
}

impl fmt::Display for SimUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\\{}", self.directory, self.id)
    }
}

/// Time as the sign-in sees it: monotonic, and movable forward by tests.
#[derive(Debug)]
pub(crate) struct Clock {
    start: Instant,
    offset_ms: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            offset_ms: AtomicU64::new(0),
        }
    }

    /// Time since the node was created, plus what tests advanced.
    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed() + Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Where a user was going when sent to sign in.
struct Target {
    uri: String,
    created: Duration,
}

/// A ticket: one use, for one user, until `expires`.
struct Ticket {
    user: SimUser,
    target: Option<String>,
    expires: Duration,
}

/// A SAML login this node started.
pub(crate) struct Relay {
    pub(crate) request_id: String,
    pub(crate) target_id: String,
}

/// Why a ticket was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TicketError {
    /// Never issued here, or already used.
    Unknown,
    /// Issued here, but its lifetime is over.
    Expired,
}

/// Targets older than this are forgotten.
const TARGET_LIFETIME: Duration = Duration::from_secs(600);
/// Above this many remembered targets, old ones are swept on insert.
const TARGET_SWEEP_AT: usize = 10_000;

/// The sign-in settings and memory of one node.
pub(crate) struct SignIn {
    pub(crate) mode: Auth,
    /// `http` or `https`: the scheme of the URLs the node builds.
    pub(crate) scheme: String,
    /// Virtual proxy prefix with a leading `/`, or empty.
    pub(crate) prefix: String,
    pub(crate) windows_pattern: String,
    pub(crate) ticket_lifetime: Duration,
    pub(crate) form_password: String,
    /// The authentication port put in redirects; 0 means the node's own.
    pub(crate) advertised_auth_port: AtomicU16,
    /// The port the node's authentication listener is bound to.
    pub(crate) own_auth_port: AtomicU16,
    /// The REST API port external modules are told (`proxyRestUri`); 0 means the node's own.
    pub(crate) advertised_rest_port: AtomicU16,
    /// The port the node's REST API listener is bound to.
    pub(crate) own_rest_port: AtomicU16,
    pub(crate) clock: Clock,
    targets: Mutex<HashMap<String, Target>>,
    tickets: Mutex<HashMap<String, Ticket>>,
    relays: Mutex<HashMap<String, Relay>>,
}

/// A random id of `n` hex digits (at most 32).
pub(crate) fn random_id(n: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.truncate(n);
    s
}

impl SignIn {
    pub(crate) fn new(opts: &crate::SimOptions) -> SignIn {
        let p = opts.prefix.trim_matches('/');
        SignIn {
            mode: opts.auth.clone(),
            scheme: opts.scheme.clone(),
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("/{p}")
            },
            windows_pattern: opts.windows_pattern.clone(),
            ticket_lifetime: opts.ticket_lifetime,
            form_password: opts.form_password.clone(),
            advertised_auth_port: AtomicU16::new(opts.advertised_auth_port.unwrap_or(0)),
            own_auth_port: AtomicU16::new(0),
            advertised_rest_port: AtomicU16::new(opts.advertised_rest_port.unwrap_or(0)),
            own_rest_port: AtomicU16::new(0),
            clock: Clock::new(),
            targets: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            relays: Mutex::new(HashMap::new()),
        }
    }

    /// The authentication port redirects name.
    pub(crate) fn auth_port(&self) -> u16 {
        match self.advertised_auth_port.load(Ordering::Relaxed) {
            0 => self.own_auth_port.load(Ordering::Relaxed),
            p => p,
        }
    }

    /// The REST API port `proxyRestUri` names.
    pub(crate) fn rest_port(&self) -> u16 {
        match self.advertised_rest_port.load(Ordering::Relaxed) {
            0 => self.own_rest_port.load(Ordering::Relaxed),
            p => p,
        }
    }

    /// Remembers `uri` and returns its new targetId.
    pub(crate) fn new_target(&self, uri: String) -> String {
        let id = random_id(32);
        let now = self.clock.now();
        let mut t = self.targets.lock().unwrap();
        if t.len() >= TARGET_SWEEP_AT {
            t.retain(|_, v| now.saturating_sub(v.created) < TARGET_LIFETIME);
        }
        t.insert(id.clone(), Target { uri, created: now });
        id
    }

    /// Forgets targetId `id`, returning its URI.
    pub(crate) fn take_target(&self, id: &str) -> Option<String> {
        self.targets.lock().unwrap().remove(id).map(|t| t.uri)
    }

    /// Issues a ticket for `user`. A targetId this node knows is consumed and its URI returned.
    pub(crate) fn issue_ticket(
        &self,
        user: SimUser,
        target_id: Option<&str>,
    ) -> (String, Option<String>) {
        let target =
            target_id.and_then(|id| self.targets.lock().unwrap().remove(id).map(|t| t.uri));
        let ticket = random_id(16);
        let expires = self.clock.now() + self.ticket_lifetime;
        self.tickets.lock().unwrap().insert(
            ticket.clone(),
            Ticket {
                user,
                target: target.clone(),
                expires,
            },
        );
        (ticket, target)
    }

    /// Uses up `ticket`: its user and target URI, once, within its lifetime.
    pub(crate) fn redeem(&self, ticket: &str) -> Result<(SimUser, Option<String>), TicketError> {
        let t = self
            .tickets
            .lock()
            .unwrap()
            .remove(ticket)
            .ok_or(TicketError::Unknown)?;
        if self.clock.now() >= t.expires {
            return Err(TicketError::Expired);
        }
        Ok((t.user, t.target))
    }

    /// Starts a SAML login for `target_id`: the RelayState and the AuthnRequest id.
    pub(crate) fn new_relay(&self, target_id: String) -> (String, String) {
        let relay = random_id(24);
        let request_id = format!("_{}", random_id(32));
        self.relays.lock().unwrap().insert(
            relay.clone(),
            Relay {
                request_id: request_id.clone(),
                target_id,
            },
        );
        (relay, request_id)
    }

    /// Ends the SAML login `relay` started here.
    pub(crate) fn take_relay(&self, relay: &str) -> Option<Relay> {
        self.relays.lock().unwrap().remove(relay)
    }

    /// Forgets every target, ticket and login in progress (a restarted QPS).
    pub(crate) fn clear(&self) {
        self.targets.lock().unwrap().clear();
        self.tickets.lock().unwrap().clear();
        self.relays.lock().unwrap().clear();
    }

    /// `<scheme>://<host>[/<prefix>]/hub/`, where an unknown target sends the user.
    pub(crate) fn hub_uri(&self, host: &str) -> String {
        format!("{}://{host}{}/hub/", self.scheme, self.prefix)
    }
}
