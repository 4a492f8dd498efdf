//! lb-sim: simulated Qlik Sense nodes for the tests and benchmarks of `lb`.
//!
//! A [`SimNode`] plays one node of a Qlik site: a Proxy Service (QPS) that issues and checks
//! session cookies, an engine health check, and a few test endpoints, all on one port.
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
//! `GET /_sim/headers`, `POST|PUT /_sim/upload`, `GET /_sim/download?bytes=N`,
//! `GET /_sim/slow?ms=N` follow the session rules.
//! WebSocket upgrades at `[/<prefix>]/app/<anything>` need a session of this node; the socket
//! echoes every message.
//!
//! Modules:
//! - `cluster`: [`SimOptions`] and [`SimCluster`], a set of nodes on consecutive or ephemeral ports.
//! - `node`: [`SimNode`] (bind, stop, restart, counters) and its accept loop.
//! - `state`: what a node remembers (sessions, telemetry, counters), shared by its handlers.
//! - `handle`: what a node answers to one request on its user port.
//! - `telemetry`: [`EngineTelemetry`] and the engine health check document.
//! - `body`: response helpers and the deterministic download pattern ([`pattern_byte`]).
//! - `ws`: the app WebSocket (upgrade and echo).

mod body;
mod cluster;
mod handle;
mod node;
mod state;
mod telemetry;
mod ws;

pub use body::{hex, pattern_byte};
pub use cluster::{SimCluster, SimOptions};
pub use handle::cookie_values;
pub use node::{SimNode, SimStats};
pub use telemetry::EngineTelemetry;

/// Name of the header that tells which simulated node answered.
pub const NODE_HEADER: &str = "x-sim-node";

/// Largest WebSocket message and frame a simulated node accepts (64 MiB).
pub const MAX_WS_MESSAGE: usize = 64 << 20;
