//! QPS nodes: their live state (kept across reloads, keyed by node id), slow start, the
//! selection of a node for a new session, and the one connector every client to a node uses.
//!
//! A node's configuration lives in the snapshot; what happens to it (health, admin state, open
//! requests and tunnels) lives in a [`NodeState`] found through the [`NodeRegistry`].
//!
//! - `node`: [`NodeState`], [`AdminState`], [`NodeIdx`].
//! - `registry`: [`NodeRegistry`], one state per node id.
//! - `slow_start`: the growing share of new sessions of a node that came back.
//! - `select`: [`Selector`]s (round robin, least connections, least loaded).
//! - `connect`: [`NodeConnector`], TCP (+ TLS) and the HTTP/1.1 handshake to one node, used by
//!   the proxy's pool and by the health checks.
//! - `pool`: the proxy's per-node pool of connections.
//! - `request_body`: the client's request body as a node gets it, watched to its end.

pub mod connect;
mod node;
pub mod pool;
mod registry;
pub mod request_body;
mod select;
mod slow_start;

pub use connect::NodeConnector;
pub use node::{AdminState, NodeIdx, NodeState};
pub use registry::NodeRegistry;
pub use select::{Candidate, LeastConnections, LeastLoaded, LoadRanking, RoundRobin, Selector};
pub use slow_start::{in_slow_start, slow_start_admits, SLOW_START_MIN_SHARE};
