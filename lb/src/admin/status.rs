//! The JSON of `GET /status` and of one node.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::process;
use super::users::{self, Users};
use crate::clock;
use crate::snapshot::Node;
use crate::state::State;
use crate::telemetry::{EngineStatus, TelemetryState};
use crate::upstream::AdminState;

pub(super) fn admin_str(s: AdminState) -> &'static str {
    match s {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

/// The whole status document.
pub(super) fn status(state: &State, uptime_seconds: u64) -> Value {
    let now = clock::now_ms();
    let snap = state.snapshot.load();
    let pinned = users::session_counts(state);
    let reload = state.reload_status.load();
    let nodes: Vec<Value> = snap
        .nodes
        .iter()
        .map(|n| node(state, n, &pinned, now))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_version": snap.config.version,
        "reload": {
            "version": reload.version,
            "at_unix_ms": reload.at_unix_ms,
            "ok": reload.ok,
            "error": reload.error,
        },
        "uptime_seconds": uptime_seconds,
        "shutting_down": state.shutdown.is_cancelled(),
        "open_connections": state.open_connections.load(Ordering::Relaxed),
        "open_websockets": state.open_tunnels.load(Ordering::Relaxed),
        "websocket_bytes": websocket_bytes(state),
        "drain": balancer_drain(state),
        "process": process::read(),
        "build": { "version": env!("CARGO_PKG_VERSION"), "commit": crate::metrics_catalog::COMMIT },
        "sticky": {
            "sessions": state.sticky.len(),
            "evictions": state.sticky.evictions(),
            "shared_store": state.shared.as_ref().map(|s| s.status()),
        },
        "nodes": nodes,
    })
}

/// One node as the status shows it. `pinned` is the sticky table's count by node index.
pub(super) fn node(
    state: &State,
    n: &Node,
    pinned: &HashMap<u32, (usize, usize)>,
    now: u64,
) -> Value {
    let st = &n.state;
    let passively_down = st.passively_down(now);
    let up = st.healthy() && !passively_down;
    let engine = state
        .telemetry
        .status(&n.id)
        .map(|e| engine(&e, st.saturated()));
    json!({
        "id": &*n.id,
        "address": n.authority.as_str(),
        "zone": n.zone,
        "health": if up { "up" } else { "down" },
        "checks_ok": st.healthy(),
        "passively_down": passively_down,
        "admin_state": admin_str(st.admin_state()),
        "retiring": n.retiring_until_ms.is_some(),
        "accepts_new": n.accepts_new(now),
        "in_flight": st.in_flight.load(Ordering::Relaxed),
        "open_websockets": st.open_tunnels.load(Ordering::Relaxed),
        "pinned_sessions": pinned.get(&st.idx.0).map_or(0, |c| c.0),
        "drain": Users::of(state, n, pinned, now).json(),
        "requests_total": st.requests_total.load(Ordering::Relaxed),
        "failures_total": st.failures_total.load(Ordering::Relaxed),
        "redispatches_total": st.redispatches_total.load(Ordering::Relaxed),
        "engine": engine,
    })
}

fn websocket_bytes(state: &State) -> Value {
    let (to_node, to_client) = state.ws_meters.totals();
    json!({ "to_node": to_node, "to_client": to_client })
}

/// The balancer-wide drain: whether it runs, since when, its deadline, and what is left.
/// Drained: no client connection and no WebSocket left.
pub(super) fn balancer_drain(state: &State) -> Value {
    let i = state.drain.info();
    let conns = state.open_connections.load(Ordering::Relaxed);
    let ws = state.open_tunnels.load(Ordering::Relaxed);
    json!({
        "draining": i.draining,
        "since_unix_ms": i.since_unix_ms,
        "deadline_unix_ms": i.deadline_unix_ms,
        "deadline_passed": i.deadline_passed,
        "open_connections": conns,
        "open_websockets": ws,
        "drained": i.draining && conns <= 0 && ws <= 0,
        "rule": "draining, and no client connection and no WebSocket left",
        "node_rule": users::RULE,
    })
}

fn engine(e: &EngineStatus, node_saturated: bool) -> Value {
    let (state, reason) = match &e.state {
        TelemetryState::Fresh => ("fresh", None),
        TelemetryState::Stale => ("stale", e.last_error.clone()),
        TelemetryState::Unreachable { reason } => ("unreachable", Some(reason.clone())),
        TelemetryState::Unknown => ("unknown", e.last_error.clone()),
    };
    let s = e.sample.as_deref();
    json!({
        "state": state,
        "reason": reason,
        "cpu": s.map(|s| s.cpu_total),
        "cpu_smoothed": e.smoothed_cpu,
        "mem_free_mb": s.map(|s| s.mem_free),
        "mem_total_mb": s.and_then(|s| s.mem_total_physical),
        "saturated": node_saturated || s.and_then(|s| s.saturated).unwrap_or(false),
        "sessions_active": s.map(|s| s.sessions_active),
        "age_ms": e.at.map(|at| at.elapsed().as_millis() as u64),
    })
}
