//! What is known about one engine, and how current it is: [`TelemetryState`] and
//! [`EngineStatus`] for the admin status, [`EngineView`] for the ranking. Freshness is decided
//! in one place ([`Published::freshness`]) for all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use lb_module_api::{EngineSample, EngineState, EngineView};

use super::STALE_AFTER_INTERVALS;

/// Health of an engine's telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelemetryState {
    /// The last poll succeeded within the last three intervals.
    Fresh,
    /// The last poll did not fail, but the last sample is older than three intervals.
    Stale,
    /// The last poll failed.
    Unreachable {
        /// Why, e.g. `timed out after 2s` or `connect to node1:4747: Connection refused`.
        reason: String,
    },
    /// No poll has finished yet.
    Unknown,
}

/// What is known about one engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStatus {
    /// The last good sample (kept while the engine is unreachable).
    pub sample: Option<Arc<EngineSample>>,
    /// When the last good sample arrived.
    pub at: Option<Instant>,
    /// Exponentially weighted moving average of `cpu.total` (weight [`CPU_SMOOTHING`]).
    pub smoothed_cpu: Option<f64>,
    /// The state now.
    pub state: TelemetryState,
    /// The most recent poll error, even if polls have succeeded since.
    pub last_error: Option<String>,
}

impl EngineStatus {
    /// The view the ranking uses.
    pub fn view(&self) -> EngineView {
        let state = match (&self.state, &self.sample) {
            (TelemetryState::Fresh, Some(s)) => EngineState::Fresh(s.clone()),
            (TelemetryState::Fresh, None) | (TelemetryState::Unknown, _) => EngineState::Unknown,
            (TelemetryState::Stale, _) => EngineState::Stale,
            (TelemetryState::Unreachable { .. }, _) => EngineState::Unreachable,
        };
        EngineView {
            state,
            smoothed_cpu: self.smoothed_cpu,
        }
    }
}

/// What a poll task last published; read lock-free.
#[derive(Debug, Default)]
pub(super) struct Published {
    pub(super) sample: Option<Arc<EngineSample>>,
    pub(super) at: Option<Instant>,
    pub(super) smoothed_cpu: Option<f64>,
    /// Set while the last poll failed.
    pub(super) failure: Option<String>,
    pub(super) last_error: Option<String>,
}

/// The published state of one engine.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) snapshot: ArcSwap<Published>,
    pub(super) interval: Duration,
}

/// How current an engine's telemetry is: decided here only, for the status, the ranking and
/// the saturation gate alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freshness {
    Fresh,
    Stale,
    Unreachable,
    Unknown,
}

impl Published {
    /// The last poll failed: unreachable; a good sample within [`STALE_AFTER_INTERVALS`]
    /// intervals: fresh; an older one: stale; none yet: unknown.
    pub(super) fn freshness(&self, interval: Duration, now: Instant) -> Freshness {
        if self.failure.is_some() {
            return Freshness::Unreachable;
        }
        match (&self.sample, self.at) {
            (Some(_), Some(at)) => {
                if now.saturating_duration_since(at) > interval * STALE_AFTER_INTERVALS {
                    Freshness::Stale
                } else {
                    Freshness::Fresh
                }
            }
            _ => Freshness::Unknown,
        }
    }
}

impl Slot {
    pub(super) fn freshness(&self, now: Instant) -> Freshness {
        self.snapshot.load().freshness(self.interval, now)
    }

    pub(super) fn status(&self, now: Instant) -> EngineStatus {
        let snap = self.snapshot.load();
        let state = match snap.freshness(self.interval, now) {
            Freshness::Fresh => TelemetryState::Fresh,
            Freshness::Stale => TelemetryState::Stale,
            Freshness::Unreachable => TelemetryState::Unreachable {
                reason: snap.failure.clone().unwrap_or_default(),
            },
            Freshness::Unknown => TelemetryState::Unknown,
        };
        EngineStatus {
            sample: snap.sample.clone(),
            at: snap.at,
            smoothed_cpu: snap.smoothed_cpu,
            state,
            last_error: snap.last_error.clone(),
        }
    }

    pub(super) fn view(&self, now: Instant) -> EngineView {
        let snap = self.snapshot.load();
        let state = match (snap.freshness(self.interval, now), &snap.sample) {
            (Freshness::Fresh, Some(sample)) => EngineState::Fresh(sample.clone()),
            (Freshness::Stale, _) => EngineState::Stale,
            (Freshness::Unreachable, _) => EngineState::Unreachable,
            (Freshness::Fresh | Freshness::Unknown, _) => EngineState::Unknown,
        };
        EngineView {
            state,
            smoothed_cpu: snap.smoothed_cpu,
        }
    }
}
