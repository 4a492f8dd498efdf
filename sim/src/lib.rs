//! lb-sim: simulated Qlik Sense nodes for the tests and benchmarks of `lb`.
//!
//! A [`SimNode`] plays one node of a Qlik site: a Proxy Service (QPS) that issues and checks
//! session cookies, an engine health check, and a few test endpoints on its user port, and,
//! when asked to, signs users in as a QPS does (below).
//! A [`SimCluster`] starts several of them on 127.0.0.1.
//!
//! Every response carries `X-Sim-Node: <name>` ([`NODE_HEADER`]) so a client behind a balancer
//! can tell which node answered. Behaviour, per request:
//! - no cookie named `cookie_name`: a new session is issued (`Set-Cookie`) and the request served;
//! - a cookie named `cookie_name` that this node did not issue: `401` (a QPS logs the user out);
//! - otherwise `200 ok <name>`.
//!
//! `GET [/<prefix>]/engine/healthcheck[/]` answers the engine health check JSON (no session).
//! `PUT|GET /_sim/telemetry` set or read the engine telemetry (no session).
//! `GET /_sim/whoami`, `GET /_sim/headers`, `POST|PUT /_sim/upload`, `GET /_sim/download?bytes=N`,
//! `GET /_sim/slow?ms=N` follow the session rules.
//! WebSocket upgrades at `[/<prefix>]/app/<anything>` need a session of this node; the socket
//! echoes every message.
//!
//! ## Signing in as a QPS does
//! With [`SimOptions::auth`] other than [`Auth::FirstRequest`] (the default, above), a node
//! also listens on an authentication port (Windows authentication, Qlik's 4244/4248) and a
//! REST API port (Qlik's 4243, plain HTTP here), and treats users as a QPS does:
//! - an unauthenticated `GET` on the user port is redirected to
//!   `<scheme>://<host of the Host header>:<advertised auth port>/windows_authentication/?targetId=<T>`
//!   (User-Agent with the Windows authentication pattern), to the forms login
//!   `[/<prefix>]/internal_forms_authentication/?targetId=<T>` (other User-Agents), or to the
//!   identity provider ([`Auth::Saml`]); `T` lives only in that node's memory;
//! - the authentication port runs NTLM (three legs bound to one TCP connection, which stays
//!   authenticated) or Kerberos (`Negotiate`, one leg) and redirects back with
//!   `qlikTicket=<K>`: single use, [`SimOptions::ticket_lifetime`] (60 s), this node only;
//! - a valid ticket on the user port creates a session of the ticket's user (`Set-Cookie`); an
//!   invalid, used, expired or foreign ticket, or a foreign session cookie, means signing in
//!   again; requests that cannot be redirected (not `GET`, WebSockets) get `401`;
//! - the REST API makes tickets and sessions (`POST /qps/[<prefix>/]ticket|session`);
//! - [`Auth::External`] sends the user to an external module with `targetId` and
//!   `proxyRestUri`; [`Auth::Header`] trusts a header's user id; [`Auth::Anonymous`] gives
//!   anonymous sessions unless `forceAuthentication=yes`;
//! - `GET [/<prefix>]/_sim/whoami` reports the node and the session's user; every session
//!   belongs to a [`SimUser`] ([`SimNode::sessions`], [`SimCluster::sessions_of`]) and, with
//!   [`SimOptions::session_timeout`], ends after that much inactivity (requests and
//!   WebSocket messages are activity).
//!
//! [`browser::Browser`] plays a user through all of it; [`ntlm`], [`kerberos`] and [`saml`]
//! make and read the messages for tests that drive each leg by hand; [`SimIdp`] is the SAML
//! identity provider.
//!
//! Modules:
//! - `cluster`: [`SimOptions`] and [`SimCluster`], a set of nodes on consecutive or ephemeral ports.
//! - `node`: [`SimNode`] (bind, stop, restart, counters), its listeners and the accept loop.
//! - `state`: what a node remembers (sessions and their users, counters), shared by its handlers.
//! - `handle`: what a node answers to one request on its user port.
//! - `auth`: the sign-in: the user port's gate, the authentication port, forms, SAML, and the
//!   [`ntlm`] and [`kerberos`] formats.
//! - `rest`: the REST API port (tickets and sessions).
//! - `idp`: [`SimIdp`], a SAML identity provider.
//! - [`browser`]: a user's browser (connections per origin, cookies, redirects, sign-in).
//! - [`url`]: percent-encoding, query strings, host names.
//! - `telemetry`: [`EngineTelemetry`] and the engine health check document.
//! - `body`: response helpers and the deterministic download pattern ([`pattern_byte`]).
//! - `ws`: the app WebSocket (upgrade and echo).

mod auth;
mod body;
pub mod browser;
mod cluster;
mod handle;
mod idp;
mod node;
mod rest;
mod state;
mod telemetry;
pub mod url;
mod ws;

pub use auth::gate::TICKET_PARAM;
pub use auth::{kerberos, ntlm, saml, Auth, SimUser};
pub use body::{hex, pattern_byte};
pub use cluster::{SimCluster, SimOptions};
pub use idp::SimIdp;
pub use node::SimNode;
pub use state::{cookie_values, SimSession, SimStats};
pub use telemetry::EngineTelemetry;

/// Name of the header that tells which simulated node answered.
pub const NODE_HEADER: &str = "x-sim-node";

/// Largest WebSocket message and frame a simulated node accepts (64 MiB).
pub const MAX_WS_MESSAGE: usize = 64 << 20;
