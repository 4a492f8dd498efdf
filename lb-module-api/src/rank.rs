//! Ranking engines by live telemetry: a pure function from views to an order.
//!
//! [`rank`] sorts the engines into five groups, in this order, and never drops one:
//!
//! 1. fresh and not saturated,
//! 2. fresh and saturated,
//! 3. stale (telemetry too old),
//! 4. unknown (no telemetry for this engine),
//! 5. unreachable (the last poll failed).
//!
//! An engine is *saturated* when its sample says `"saturated": true`; when the engine does not
//! report the flag, it is derived as `cpu > saturation_cpu_percent` or, when total RAM is known,
//! `(totalPhysical - free) / totalPhysical > saturation_ram_fraction`. When every fresh engine is
//! saturated, group 1 is empty and they are ranked among themselves by load.
//!
//! Within group 1, engines holding the requested app (in `active_docs`, `in_memory_docs` or
//! `loaded_docs`, see [`EngineSample::holds_app`]) come first, unless their free memory is below
//! `affinity_min_free_mb`. Then, within each of those two parts and within group 2, engines are
//! ordered by the load score (lower is better):
//!
//! ```text
//! ram      = 1 - free / totalPhysical                   (when totalPhysical is known and > 0)
//!          = 1 - min(free / free_mb_reference, 1)       (otherwise)
//! cpu      = clamp(cpu_percent / 100, 0, 1)             (smoothed CPU when the view has one)
//! sessions = active / (active + sessions_reference)
//! load     = weight_free_ram * ram + weight_cpu * cpu + weight_sessions * sessions
//! ```
//!
//! Scores are ties when they lie within `tie_epsilon` of the lowest score of their run (a run
//! starts at the best remaining engine and takes every following engine within epsilon of it).
//! Within a tie run, and within each of groups 3 to 5, engines keep their input order rotated
//! left by `rotation % len`, so a caller that increments `rotation` on each call spreads new
//! sessions evenly over equal engines.

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sample::EngineSample;

/// What is known about one engine's health, as the ranking sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineState {
    /// A recent sample. Shared, so callers holding `Arc<EngineSample>` never copy one.
    Fresh(Arc<EngineSample>),
    /// Telemetry exists but is older than the caller's freshness limit.
    Stale,
    /// Polling the engine fails.
    Unreachable,
    /// No telemetry for this engine (not configured, or not polled yet).
    Unknown,
}

/// One engine as the ranking sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineView {
    /// Health state, with the sample when fresh.
    pub state: EngineState,
    /// A smoothed CPU percentage (e.g. an EWMA over recent samples) used instead of the
    /// sample's `cpu_total` when present.
    pub smoothed_cpu: Option<f64>,
}

impl EngineView {
    /// A view of a fresh sample.
    pub fn fresh(sample: Arc<EngineSample>) -> Self {
        Self {
            state: EngineState::Fresh(sample),
            smoothed_cpu: None,
        }
    }

    /// A view with the given state and no smoothed CPU.
    pub fn with_state(state: EngineState) -> Self {
        Self {
            state,
            smoothed_cpu: None,
        }
    }

    /// A view of an engine without telemetry.
    pub fn unknown() -> Self {
        Self::with_state(EngineState::Unknown)
    }

    /// The CPU percentage used by the ranking: the smoothed one if any, else the sample's.
    pub fn cpu_percent(&self) -> Option<f64> {
        match &self.state {
            EngineState::Fresh(s) => Some(self.smoothed_cpu.unwrap_or(s.cpu_total)),
            _ => None,
        }
    }
}

/// Tuning of [`rank`]. Every field has a default; unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankPolicy {
    /// CPU percentage above which an engine that does not report `saturated` is treated as
    /// saturated. Qlik's own threshold is 90.
    pub saturation_cpu_percent: f64,
    /// Fraction of physical RAM in use above which an engine that does not report `saturated`
    /// is treated as saturated (only when `totalPhysical` is known). Qlik's own threshold is 0.9.
    pub saturation_ram_fraction: f64,
    /// An engine that already holds the requested app is preferred only while it has at least
    /// this much free RAM, in MB.
    pub affinity_min_free_mb: f64,
    /// Free RAM, in MB, counted as "fully free" when an engine does not report its total
    /// physical RAM (older engines): the RAM term is `1 - min(free / this, 1)`.
    pub free_mb_reference: f64,
    /// Active sessions at which the sessions term reaches 0.5: the term is
    /// `active / (active + this)`.
    pub sessions_reference: f64,
    /// Weight of the RAM-in-use term (`1 - free fraction`) in the load score.
    pub weight_free_ram: f64,
    /// Weight of the CPU term (`cpu / 100`) in the load score.
    pub weight_cpu: f64,
    /// Weight of the active sessions term in the load score.
    pub weight_sessions: f64,
    /// Load scores closer than this are ties, shared in turn between the engines.
    pub tie_epsilon: f64,
}

impl Default for RankPolicy {
    fn default() -> Self {
        Self {
            saturation_cpu_percent: 90.0,
            saturation_ram_fraction: 0.9,
            affinity_min_free_mb: 1024.0,
            free_mb_reference: 16384.0,
            sessions_reference: 50.0,
            weight_free_ram: 0.5,
            weight_cpu: 0.35,
            weight_sessions: 0.15,
            tie_epsilon: 0.02,
        }
    }
}

impl RankPolicy {
    /// Check the values: every number finite and non-negative, fractions at most 1, and at
    /// least one weight positive. Returns a message naming the first offending key.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("saturation_cpu_percent", self.saturation_cpu_percent),
            ("saturation_ram_fraction", self.saturation_ram_fraction),
            ("affinity_min_free_mb", self.affinity_min_free_mb),
            ("free_mb_reference", self.free_mb_reference),
            ("sessions_reference", self.sessions_reference),
            ("weight_free_ram", self.weight_free_ram),
            ("weight_cpu", self.weight_cpu),
            ("weight_sessions", self.weight_sessions),
            ("tie_epsilon", self.tie_epsilon),
        ];
        for (name, v) in fields {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be a finite number >= 0 (got {v})"));
            }
        }
        if self.saturation_ram_fraction > 1.0 {
            return Err(format!(
                "saturation_ram_fraction must be at most 1 (got {})",
                self.saturation_ram_fraction
            ));
        }
        if self.free_mb_reference == 0.0 {
            return Err("free_mb_reference must be greater than 0".into());
        }
        if self.weight_free_ram + self.weight_cpu + self.weight_sessions <= 0.0 {
            return Err(
                "at least one of weight_free_ram, weight_cpu, weight_sessions must be > 0".into(),
            );
        }
        Ok(())
    }

    /// Whether `sample` (with the given CPU percentage) counts as saturated under this policy.
    pub fn is_saturated(&self, sample: &EngineSample, cpu_percent: f64) -> bool {
        if let Some(flag) = sample.saturated {
            return flag;
        }
        if cpu_percent > self.saturation_cpu_percent {
            return true;
        }
        match sample.free_fraction() {
            Some(free) => 1.0 - free > self.saturation_ram_fraction,
            None => false,
        }
    }

    /// The load score of a fresh sample (lower is better); see the [module docs](self).
    pub fn load_score(&self, sample: &EngineSample, cpu_percent: f64) -> f64 {
        let free = match sample.free_fraction() {
            Some(f) => f,
            None => {
                if self.free_mb_reference > 0.0 && sample.mem_free.is_finite() {
                    (sample.mem_free / self.free_mb_reference).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
        };
        let cpu = if cpu_percent.is_finite() {
            (cpu_percent / 100.0).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let active = sample.sessions_active as f64;
        let sessions = if active <= 0.0 {
            0.0
        } else if self.sessions_reference > 0.0 {
            active / (active + self.sessions_reference)
        } else {
            1.0
        };
        let score = self.weight_free_ram * (1.0 - free)
            + self.weight_cpu * cpu
            + self.weight_sessions * sessions;
        if score.is_nan() {
            f64::INFINITY
        } else {
            score
        }
    }
}

/// Order `engines` for a new session of `app`, most preferred first.
///
/// Returns a permutation of `0..engines.len()`. See the [module docs](self) for the rules and
/// the load score formula. `rotation` breaks ties: pass a counter incremented on each call.
/// Pure and allocation-light: no locks, no I/O, never panics.
pub fn rank(
    engines: &[EngineView],
    app: Option<&str>,
    policy: &RankPolicy,
    rotation: usize,
) -> Vec<usize> {
    // (index, group, affinity: 0 = holds the app, 1 = not, load score)
    let mut keyed: Vec<(usize, u8, u8, f64)> = engines
        .iter()
        .enumerate()
        .map(|(i, view)| match &view.state {
            EngineState::Fresh(sample) => {
                let cpu = view.smoothed_cpu.unwrap_or(sample.cpu_total);
                let saturated = policy.is_saturated(sample, cpu);
                let load = policy.load_score(sample, cpu);
                if saturated {
                    (i, 1, 1, load)
                } else {
                    let affinity = match app {
                        Some(app)
                            if !app.is_empty()
                                && sample.mem_free >= policy.affinity_min_free_mb
                                && sample.holds_app(app) =>
                        {
                            0
                        }
                        _ => 1,
                    };
                    (i, 0, affinity, load)
                }
            }
            EngineState::Stale => (i, 2, 1, 0.0),
            EngineState::Unknown => (i, 3, 1, 0.0),
            EngineState::Unreachable => (i, 4, 1, 0.0),
        })
        .collect();

    keyed.sort_by(|a, b| {
        a.1.cmp(&b.1)
            .then(a.2.cmp(&b.2))
            .then_with(|| a.3.total_cmp(&b.3))
            .then(a.0.cmp(&b.0))
    });

    let epsilon = if policy.tie_epsilon.is_finite() && policy.tie_epsilon > 0.0 {
        policy.tie_epsilon
    } else {
        0.0
    };

    let mut out = Vec::with_capacity(keyed.len());
    let mut start = 0;
    while start < keyed.len() {
        let (_, group, affinity, base) = keyed[start];
        let mut end = start + 1;
        while end < keyed.len() {
            let (_, g, a, load) = keyed[end];
            let same_class = g == group && a == affinity;
            let tied = group >= 2 || load.total_cmp(&(base + epsilon)) != Ordering::Greater;
            if !(same_class && tied) {
                break;
            }
            end += 1;
        }
        let run = &mut keyed[start..end];
        if run.len() > 1 {
            run.sort_by_key(|k| k.0);
            run.rotate_left(rotation % run.len());
        }
        out.extend(run.iter().map(|k| k.0));
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(free: f64, total: Option<f64>, cpu: f64, sessions: u64) -> EngineSample {
        EngineSample {
            mem_free: free,
            mem_total_physical: total,
            cpu_total: cpu,
            sessions_active: sessions,
            ..EngineSample::default()
        }
    }

    fn fresh(s: EngineSample) -> EngineView {
        EngineView::fresh(Arc::new(s))
    }

    const APP: &str = "0b2a3c4d-1111-2222-3333-444455556666";

    struct Case {
        name: &'static str,
        engines: Vec<EngineView>,
        app: Option<&'static str>,
        rotation: usize,
        want: Vec<usize>,
    }

    #[test]
    fn scenarios() {
        let idle = || sample(30000.0, Some(32768.0), 5.0, 0);
        let busy = || sample(8000.0, Some(32768.0), 70.0, 40);
        let with_app = |mut s: EngineSample| {
            s.loaded_docs = vec![format!("C:\\ProgramData\\Qlik\\Sense\\Apps\\{APP}")];
            s
        };
        let flagged = |mut s: EngineSample, f: bool| {
            s.saturated = Some(f);
            s
        };
        let cases = vec![
            Case {
                name: "empty",
                engines: vec![],
                app: None,
                rotation: 0,
                want: vec![],
            },
            Case {
                name: "least loaded first",
                engines: vec![fresh(busy()), fresh(idle())],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "saturated flag goes last among fresh",
                engines: vec![fresh(flagged(idle(), true)), fresh(busy())],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "engine's own false flag wins over high cpu",
                engines: vec![
                    fresh(flagged(sample(30000.0, Some(32768.0), 95.0, 0), false)),
                    fresh(flagged(idle(), true)),
                ],
                app: None,
                rotation: 0,
                want: vec![0, 1],
            },
            Case {
                name: "derived saturation by cpu",
                engines: vec![
                    fresh(sample(30000.0, Some(32768.0), 95.0, 0)),
                    fresh(busy()),
                ],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "derived saturation by ram",
                engines: vec![fresh(sample(1000.0, Some(32768.0), 1.0, 0)), fresh(busy())],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "all saturated: ranked by load",
                engines: vec![fresh(flagged(busy(), true)), fresh(flagged(idle(), true))],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "saturated fresh before stale, unknown, unreachable",
                engines: vec![
                    EngineView::with_state(EngineState::Unreachable),
                    EngineView::unknown(),
                    EngineView::with_state(EngineState::Stale),
                    fresh(flagged(idle(), true)),
                ],
                app: None,
                rotation: 0,
                want: vec![3, 2, 1, 0],
            },
            Case {
                name: "affinity beats lower load",
                engines: vec![fresh(idle()), fresh(with_app(busy()))],
                app: Some(APP),
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "affinity matches case-insensitively",
                engines: vec![fresh(idle()), fresh(with_app(busy()))],
                app: Some("0B2A3C4D-1111-2222-3333-444455556666"),
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "no affinity when free memory is low",
                engines: vec![fresh(idle()), fresh(with_app(sample(900.0, None, 5.0, 0)))],
                app: Some(APP),
                rotation: 0,
                want: vec![0, 1],
            },
            Case {
                name: "no affinity for a saturated engine",
                engines: vec![fresh(busy()), fresh(flagged(with_app(idle()), true))],
                app: Some(APP),
                rotation: 0,
                want: vec![0, 1],
            },
            Case {
                name: "unknown total uses free_mb_reference",
                engines: vec![
                    fresh(sample(2000.0, None, 5.0, 0)),
                    fresh(sample(16384.0, None, 5.0, 0)),
                ],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "sessions break otherwise equal load",
                engines: vec![
                    fresh(sample(16000.0, Some(32000.0), 10.0, 200)),
                    fresh(sample(16000.0, Some(32000.0), 10.0, 0)),
                ],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
            Case {
                name: "ties rotate (rotation 0)",
                engines: vec![fresh(idle()), fresh(idle()), fresh(busy())],
                app: None,
                rotation: 0,
                want: vec![0, 1, 2],
            },
            Case {
                name: "ties rotate (rotation 1)",
                engines: vec![fresh(idle()), fresh(idle()), fresh(busy())],
                app: None,
                rotation: 1,
                want: vec![1, 0, 2],
            },
            Case {
                name: "near scores within epsilon are ties",
                engines: vec![
                    fresh(sample(30000.0, Some(32768.0), 6.0, 0)),
                    fresh(sample(30000.0, Some(32768.0), 5.0, 0)),
                ],
                app: None,
                rotation: 0,
                want: vec![0, 1],
            },
            Case {
                name: "unknown engines rotate too",
                engines: vec![
                    EngineView::unknown(),
                    EngineView::unknown(),
                    EngineView::unknown(),
                ],
                app: None,
                rotation: 4,
                want: vec![1, 2, 0],
            },
            Case {
                name: "smoothed cpu overrides the sample",
                engines: vec![
                    EngineView {
                        smoothed_cpu: Some(80.0),
                        ..fresh(idle())
                    },
                    fresh(sample(30000.0, Some(32768.0), 40.0, 0)),
                ],
                app: None,
                rotation: 0,
                want: vec![1, 0],
            },
        ];
        let policy = RankPolicy::default();
        for case in cases {
            let got = rank(&case.engines, case.app, &policy, case.rotation);
            assert_eq!(got, case.want, "case: {}", case.name);
        }
    }

    #[test]
    fn weird_inputs_do_not_panic() {
        let nan = EngineSample {
            mem_free: f64::NAN,
            mem_total_physical: Some(f64::INFINITY),
            cpu_total: f64::NAN,
            ..EngineSample::default()
        };
        let neg = EngineSample {
            mem_free: -5.0,
            mem_total_physical: Some(-1.0),
            cpu_total: -3.0,
            ..EngineSample::default()
        };
        let policy = RankPolicy {
            tie_epsilon: f64::NAN,
            weight_cpu: f64::INFINITY,
            sessions_reference: 0.0,
            free_mb_reference: 0.0,
            ..RankPolicy::default()
        };
        let views = vec![fresh(nan), fresh(neg), EngineView::unknown()];
        let mut got = rank(&views, Some(""), &policy, usize::MAX);
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2]);
    }

    #[test]
    fn policy_defaults_and_validation() {
        let p: RankPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, RankPolicy::default());
        assert!(p.validate().is_ok());
        let p: RankPolicy = serde_json::from_str(r#"{"weight_cpu": 1.0}"#).unwrap();
        assert_eq!(p.weight_cpu, 1.0);
        assert!(serde_json::from_str::<RankPolicy>(r#"{"wieght_cpu": 1.0}"#).is_err());
        let bad = RankPolicy {
            saturation_ram_fraction: 1.5,
            ..RankPolicy::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("saturation_ram_fraction"));
        let bad = RankPolicy {
            weight_cpu: -1.0,
            ..RankPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("weight_cpu"));
    }
}
