//! A narrow, read-mostly view of a running balancer for the end-to-end tests
//! ([`Server::test_handle`](crate::Server::test_handle)). Not a stable API.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin::AdminCtx;
use crate::state::State;
use crate::telemetry::EngineStatus;
use crate::upstream::NodeState;

/// See the module documentation.
pub struct TestHandle<'a> {
    state: &'a Arc<State>,
}

impl<'a> TestHandle<'a> {
    pub(crate) fn new(state: &'a Arc<State>) -> Self {
        TestHandle { state }
    }

    /// The live state of node `id`, if it was ever configured.
    pub fn node(&self, id: &str) -> Option<Arc<NodeState>> {
        self.state.registry.get(id)
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> i64 {
        self.state.open_connections.load(Ordering::Relaxed)
    }

    /// WebSocket tunnels open now.
    pub fn open_tunnels(&self) -> i64 {
        self.state.open_tunnels.load(Ordering::Relaxed)
    }

    /// The Prometheus text of this process's metrics.
    pub fn metrics_text(&self) -> String {
        crate::durations::render(&self.state.metrics)
    }

    /// Whether the sticky table holds a live pin for session cookie value `value`.
    pub fn learned_node(&self, value: &str) -> Option<String> {
        let idx = self.state.sticky.lookup(value.as_bytes())?;
        let snap = self.state.snapshot.load();
        let pos = snap.pos_of_idx(crate::upstream::NodeIdx(idx))?;
        Some(snap.node(pos).id.to_string())
    }

    /// The route cookie value that pins to node `id`.
    pub fn route_value(&self, id: &str) -> String {
        self.state.route_key.value_for(id)
    }

    /// Nodes of the snapshot in force that are configured (not removed and draining).
    pub fn configured_nodes(&self) -> usize {
        let snap = self.state.snapshot.load();
        snap.nodes
            .iter()
            .filter(|n| n.retiring_until_ms.is_none())
            .count()
    }

    /// Idle connections in node `id`'s pool behind the users' listener (0 for an unknown node).
    pub fn idle_node_connections(&self, id: &str) -> usize {
        let snap = self.state.snapshot.load();
        snap.pos_of_id(id)
            .map_or(0, |pos| snap.node(pos).pool.idle_count())
    }

    /// Every engine's telemetry status, sorted by node id.
    pub fn engines(&self) -> Vec<(String, EngineStatus)> {
        self.state.telemetry.all()
    }

    /// What the admin router needs, with its own reload, metrics and token.
    pub fn admin_ctx(
        &self,
        reload: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
        metrics: PrometheusHandle,
        token: Option<String>,
    ) -> AdminCtx {
        AdminCtx {
            state: self.state.clone(),
            reload,
            metrics,
            token,
        }
    }
}
