//! What a node remembers while it runs: its name, sessions, telemetry and counters. Shared by
//! the accept loop and the request handlers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;

use http::header::HeaderValue;

use crate::EngineTelemetry;

/// The state of one node, shared by its listeners and connections.
pub(crate) struct NodeShared {
    pub(crate) name: String,
    pub(crate) name_value: HeaderValue,
    pub(crate) cookie_name: String,
    pub(crate) telemetry: Mutex<EngineTelemetry>,
    pub(crate) sessions: Mutex<HashSet<u128>>,
    pub(crate) hang: AtomicBool,
    pub(crate) requests: AtomicU64,
    pub(crate) sessions_issued: AtomicU64,
    pub(crate) foreign: AtomicU64,
    pub(crate) ws_accepted: AtomicU64,
    pub(crate) ws_open: AtomicU64,
}
