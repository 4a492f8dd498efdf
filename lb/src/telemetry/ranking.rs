//! The adapter between telemetry and the proxy's least-loaded selection.

use std::sync::Arc;

use super::Telemetry;
use crate::upstream::LoadRanking;

/// The ranking of nodes for least-loaded selection, from engine telemetry and the recent node
/// picks ([`Telemetry::place_ids`]: each call records a new session on the node it puts
/// first): `None` (the selector falls back to round robin) while no engine of the candidates
/// is fresh.
#[derive(Debug)]
pub struct TelemetryRanking(pub Arc<Telemetry>);

impl LoadRanking for TelemetryRanking {
    fn rank(&self, ids: &[&str]) -> Option<Vec<usize>> {
        if !self.0.any_fresh(ids) {
            return None;
        }
        let policy = self.0.policy();
        Some(self.0.place_ids(ids, None, &policy))
    }
}
