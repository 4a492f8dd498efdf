//! What `/metrics` reads at each scrape rather than on the hot path: the open tunnels' bytes,
//! open WebSockets and drain progress per node, the balancer's drain flag and the process
//! figures.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::process;
use super::users::{self, Users};
use crate::clock;
use crate::state::State;

/// Brings the scrape-time metrics up to date.
pub(super) fn collect(state: &State) {
    state.ws_meters.collect();
    metrics::gauge!("lb_draining").set(if state.drain.is_draining() { 1.0 } else { 0.0 });
    process::record(&process::read());

    let now = clock::now_ms();
    let snap = state.snapshot.load();
    let counts = users::session_counts(state);
    let mut seen = HashMap::new();
    for n in &snap.nodes {
        let u = Users::of(state, n, &counts, now);
        seen.insert(n.state.idx, ());
        set_node(&n.id, u.open_websockets, u.recent_sessions, u.drained());
    }
    // Nodes removed by a reload: their WebSockets close at the drain deadline; show them to 0.
    for st in state.registry.all() {
        if !seen.contains_key(&st.idx) {
            set_node(&st.id, st.open_tunnels.load(Ordering::Relaxed), 0, false);
        }
    }
}

fn set_node(id: &str, open_websockets: i64, recent_sessions: usize, drained: bool) {
    let node = id.to_string();
    metrics::gauge!("lb_node_open_websockets", "node" => node.clone()).set(open_websockets as f64);
    metrics::gauge!("lb_node_recent_sessions", "node" => node.clone()).set(recent_sessions as f64);
    metrics::gauge!("lb_node_drained", "node" => node).set(if drained { 1.0 } else { 0.0 });
}
