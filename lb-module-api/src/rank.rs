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
//!
//! [`rank_placed`] is the same ranking with recent placements as an input ([`Pending`] load
//! per engine, counted as if it were in the sample) and a headroom-weighted random draw of the
//! first place among close engines; [`PlacementLedger`](crate::PlacementLedger) keeps the
//! placements and feeds it. Both are pure.

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
    /// Estimated RAM, in MB, of one new session, counted on the engine it was placed on until
    /// a sample taken after the placement shows it.
    pub placement_session_ram_mb: f64,
    /// Estimated RAM, in MB, of loading the app on an engine that does not hold it yet.
    pub placement_app_ram_mb: f64,
    /// Estimated CPU, in percentage points of the engine, of one new session.
    pub placement_session_cpu_percent: f64,
    /// Seconds after which a placement's estimate is dropped even if no new sample came.
    pub placement_ttl_secs: f64,
    /// The engine's CPU averaging window in seconds (Qlik: 30). A sample taken `t` seconds
    /// after a placement is taken to show `t / window` of the session's CPU; the rest stays
    /// estimated.
    pub placement_cpu_window_secs: f64,
    /// Engines whose load score (0 to 1) lies within this much of the best one share the first
    /// place at random, each in proportion to its headroom. 0 always puts the best score first.
    pub placement_spread: f64,
    /// An engine holding the app is preferred for it only while its headroom after the new
    /// session (the smaller of its CPU and RAM room up to the saturation thresholds, as a
    /// fraction of that room when idle) is at least this. Used with recent placements only.
    pub affinity_min_headroom: f64,
    /// Learn the session and app RAM estimates from telemetry (RAM and session deltas between
    /// samples) instead of using the configured ones, once a few deltas were seen.
    pub placement_learn: bool,
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
            placement_session_ram_mb: 200.0,
            placement_app_ram_mb: 2048.0,
            placement_session_cpu_percent: 1.0,
            placement_ttl_secs: 60.0,
            placement_cpu_window_secs: 30.0,
            placement_spread: 0.6,
            affinity_min_headroom: 0.25,
            placement_learn: false,
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
            ("placement_session_ram_mb", self.placement_session_ram_mb),
            ("placement_app_ram_mb", self.placement_app_ram_mb),
            (
                "placement_session_cpu_percent",
                self.placement_session_cpu_percent,
            ),
            ("placement_ttl_secs", self.placement_ttl_secs),
            ("placement_cpu_window_secs", self.placement_cpu_window_secs),
            ("placement_spread", self.placement_spread),
            ("affinity_min_headroom", self.affinity_min_headroom),
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
        if self.affinity_min_headroom > 1.0 {
            return Err(format!(
                "affinity_min_headroom must be at most 1 (got {})",
                self.affinity_min_headroom
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
        self.score_parts(
            sample.mem_free,
            sample,
            cpu_percent,
            sample.sessions_active as f64,
        )
    }

    /// The load score of a fresh sample with `pending` load added to it.
    pub fn score_with(&self, sample: &EngineSample, cpu_percent: f64, pending: &Pending) -> f64 {
        if pending.is_empty() {
            return self.load_score(sample, cpu_percent);
        }
        self.score_parts(
            sample.mem_free - pending.ram(),
            sample,
            cpu_percent + pending.cpu(),
            sample.sessions_active as f64 + f64::from(pending.sessions),
        )
    }

    fn score_parts(
        &self,
        mem_free: f64,
        sample: &EngineSample,
        cpu_percent: f64,
        active: f64,
    ) -> f64 {
        let free = match sample.mem_total_physical {
            Some(total) if total > 0.0 && total.is_finite() && mem_free.is_finite() => {
                (mem_free / total).clamp(0.0, 1.0)
            }
            _ => {
                if self.free_mb_reference > 0.0 && mem_free.is_finite() {
                    (mem_free / self.free_mb_reference).clamp(0.0, 1.0)
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

/// Load placed on an engine that its latest sample does not show yet: the sum of the
/// estimates of recent placements (see [`PlacementLedger`](crate::PlacementLedger)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pending {
    /// Sessions placed and not yet seen in a sample.
    pub sessions: u32,
    /// Estimated RAM of those sessions (and of the apps they load), MB.
    pub ram_mb: f64,
    /// Estimated CPU not yet in the sample, percentage points.
    pub cpu_percent: f64,
    /// Apps placed on the engine and not yet seen in a sample, as [`app_key`]s.
    pub apps: Vec<String>,
}

impl Pending {
    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.sessions == 0 && self.ram_mb == 0.0 && self.cpu_percent == 0.0 && self.apps.is_empty()
    }

    /// Whether an app with this [`app_key`] was placed here recently.
    pub fn holds_app_key(&self, key: &str) -> bool {
        self.apps.iter().any(|a| a == key)
    }

    fn ram(&self) -> f64 {
        if self.ram_mb.is_finite() {
            self.ram_mb.max(0.0)
        } else {
            0.0
        }
    }

    fn cpu(&self) -> f64 {
        if self.cpu_percent.is_finite() {
            self.cpu_percent.max(0.0)
        } else {
            0.0
        }
    }
}

/// The estimated cost of one new session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementCost {
    /// RAM of the session, MB.
    pub session_ram_mb: f64,
    /// RAM of loading the app on an engine that does not hold it, MB.
    pub app_ram_mb: f64,
    /// CPU of the session, percentage points.
    pub session_cpu_percent: f64,
}

impl PlacementCost {
    /// The configured estimates of `policy`.
    pub fn from_policy(policy: &RankPolicy) -> Self {
        Self {
            session_ram_mb: policy.placement_session_ram_mb,
            app_ram_mb: policy.placement_app_ram_mb,
            session_cpu_percent: policy.placement_session_cpu_percent,
        }
    }

    /// RAM of a session on an engine that holds the app (`holds`) or not.
    pub fn ram_for(&self, holds: bool) -> f64 {
        let ram = if holds {
            self.session_ram_mb
        } else {
            self.session_ram_mb + self.app_ram_mb
        };
        if ram.is_finite() {
            ram.max(0.0)
        } else {
            0.0
        }
    }

    fn cpu(&self) -> f64 {
        if self.session_cpu_percent.is_finite() {
            self.session_cpu_percent.max(0.0)
        } else {
            0.0
        }
    }
}

/// The inputs of [`rank_placed`] besides the engines: what was placed recently, what a new
/// session costs, the tie-break rotation and the random draw.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// Pending load per engine, in the order of the engines; missing entries count as none.
    pub pending: &'a [Pending],
    /// Estimated cost of the new session.
    pub cost: PlacementCost,
    /// Tie-break rotation, as for [`rank`].
    pub rotation: usize,
    /// The random draw of the first place, in `[0, 1)`: the engine whose share of the
    /// candidates' total headroom covers it wins. The same inputs and draw give the same
    /// order. Any uniform source works ([`draw_from_seed`] hashes a seed);
    /// [`PlacementLedger`](crate::PlacementLedger) uses a golden-ratio sequence from its seed,
    /// so a burst's shares stay close to the headroom proportions.
    pub draw: f64,
}

/// The key under which an app is remembered in [`Pending::apps`]: the lowercased GUID when
/// `app` contains one, else the lowercased file stem. `None` for an empty name.
pub fn app_key(app: &str) -> Option<String> {
    if let Some(guid) = crate::sample::find_guid(app) {
        return Some(guid.to_ascii_lowercase());
    }
    let stem = crate::sample::file_stem(app);
    (!stem.is_empty()).then(|| stem.to_lowercase())
}

/// Order `engines` for a new session of `app`, most preferred first.
///
/// Returns a permutation of `0..engines.len()`. See the [module docs](self) for the rules and
/// the load score formula. `rotation` breaks ties: pass a counter incremented on each call.
/// Pure and allocation-light: no locks, no I/O, never panics. Deterministic: no recent
/// placements and no random pick (see [`rank_placed`] for those).
pub fn rank(
    engines: &[EngineView],
    app: Option<&str>,
    policy: &RankPolicy,
    rotation: usize,
) -> Vec<usize> {
    let placement = Placement {
        pending: &[],
        cost: PlacementCost::from_policy(policy),
        rotation,
        draw: 0.0,
    };
    rank_core(engines, app, policy, &placement, false)
}

/// Order `engines` for a new session of `app`, counting recent placements, most preferred
/// first. Pure: the recent placements, the estimates and the random seed are inputs.
///
/// Differences from [`rank`]:
///
/// * each fresh engine is scored as if its [`Pending`] load were in its sample (less free
///   RAM, more CPU and sessions), and counts as saturated when that load takes it over a
///   saturation threshold it was under;
/// * an engine that holds the app in its sample is preferred for it only while it has
///   headroom for the session (stays under both saturation thresholds with the session's
///   estimated RAM and CPU added, and keeps `affinity_min_free_mb` free); an app placed on an
///   engine recently costs no app RAM there again, but gives no preference until a sample
///   shows it (so a burst on a new app spreads instead of following its first session);
/// * when `policy.placement_spread > 0`, the first place goes by the draw to one of the engines
///   of the best class (same group and affinity) whose score is within `placement_spread` of
///   the best, each with probability proportional to its headroom after the session:
///   `min(cpu room, RAM room)` as fractions of the room up to the saturation thresholds. The
///   other engines follow in [`rank`]'s order.
///
/// With no pending load and `placement_spread = 0`, the result equals [`rank`]'s.
pub fn rank_placed(
    engines: &[EngineView],
    app: Option<&str>,
    policy: &RankPolicy,
    placement: &Placement<'_>,
) -> Vec<usize> {
    rank_core(engines, app, policy, placement, true)
}

/// Headroom of an engine for a session costing `ram` MB and `cpu` points, on top of its
/// sample and pending load: `min(cpu room, RAM room)` in `0..=1`.
pub fn headroom(
    sample: &EngineSample,
    cpu_percent: f64,
    pending: &Pending,
    policy: &RankPolicy,
    ram: f64,
    cpu: f64,
) -> f64 {
    let thr_cpu = policy.saturation_cpu_percent;
    let cpu_now = if cpu_percent.is_finite() {
        cpu_percent.max(0.0)
    } else {
        f64::INFINITY
    };
    let cpu_room = if thr_cpu > 0.0 {
        (thr_cpu - (cpu_now + pending.cpu() + cpu)) / thr_cpu
    } else {
        0.0
    };
    let free = sample.mem_free - pending.ram() - ram;
    let ram_room = match sample.mem_total_physical {
        Some(total) if total > 0.0 && total.is_finite() => {
            let limit = policy.saturation_ram_fraction * total;
            if limit > 0.0 {
                (limit - (total - free)) / limit
            } else {
                0.0
            }
        }
        _ => {
            if policy.free_mb_reference > 0.0 {
                free / policy.free_mb_reference
            } else {
                0.0
            }
        }
    };
    let h = cpu_room.min(ram_room);
    if h.is_nan() {
        0.0
    } else {
        h.clamp(0.0, 1.0)
    }
}

/// A uniform number in `[0, 1)` from a seed (the SplitMix64 finaliser).
pub fn draw_from_seed(seed: u64) -> f64 {
    unit_from_bits(mix64(seed))
}

pub(crate) fn mix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits of `bits` as a number in `[0, 1)`.
pub(crate) fn unit_from_bits(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

struct Keyed {
    index: usize,
    group: u8,
    affinity: u8,
    load: f64,
    headroom: f64,
}

fn rank_core(
    engines: &[EngineView],
    app: Option<&str>,
    policy: &RankPolicy,
    placement: &Placement<'_>,
    placed: bool,
) -> Vec<usize> {
    static NONE: Pending = Pending {
        sessions: 0,
        ram_mb: 0.0,
        cpu_percent: 0.0,
        apps: Vec::new(),
    };
    let app = app.filter(|a| !a.is_empty());
    let key = if placed { app.and_then(app_key) } else { None };
    let cost = placement.cost;
    let mut keyed: Vec<Keyed> = engines
        .iter()
        .enumerate()
        .map(|(i, view)| {
            let plain = |group| Keyed {
                index: i,
                group,
                affinity: 1,
                load: 0.0,
                headroom: 0.0,
            };
            match &view.state {
                EngineState::Fresh(sample) => {
                    let pending = placement.pending.get(i).unwrap_or(&NONE);
                    let cpu = view.smoothed_cpu.unwrap_or(sample.cpu_total);
                    let mut saturated = policy.is_saturated(sample, cpu);
                    if placed && !saturated && !pending.is_empty() {
                        saturated = pushed_over(sample, cpu, pending, policy);
                    }
                    let load = policy.score_with(sample, cpu, pending);
                    let sample_holds = app.is_some_and(|a| sample.holds_app(a));
                    let holds =
                        sample_holds || key.as_deref().is_some_and(|k| pending.holds_app_key(k));
                    let headroom = headroom(
                        sample,
                        cpu,
                        pending,
                        policy,
                        cost.ram_for(holds),
                        cost.cpu(),
                    );
                    if saturated {
                        return Keyed {
                            index: i,
                            group: 1,
                            affinity: 1,
                            load,
                            headroom: 0.0,
                        };
                    }
                    let prefer = if placed {
                        sample_holds
                            && sample.mem_free - pending.ram() - cost.ram_for(true)
                                >= policy.affinity_min_free_mb
                            && headroom > 0.0
                            && headroom >= policy.affinity_min_headroom
                    } else {
                        sample_holds && sample.mem_free >= policy.affinity_min_free_mb
                    };
                    Keyed {
                        index: i,
                        group: 0,
                        affinity: if prefer { 0 } else { 1 },
                        load,
                        headroom,
                    }
                }
                EngineState::Stale => plain(2),
                EngineState::Unknown => plain(3),
                EngineState::Unreachable => plain(4),
            }
        })
        .collect();

    keyed.sort_by(|a, b| {
        a.group
            .cmp(&b.group)
            .then(a.affinity.cmp(&b.affinity))
            .then_with(|| a.load.total_cmp(&b.load))
            .then(a.index.cmp(&b.index))
    });

    let epsilon = if policy.tie_epsilon.is_finite() && policy.tie_epsilon > 0.0 {
        policy.tie_epsilon
    } else {
        0.0
    };

    let rotation = placement.rotation;
    let mut start = 0;
    while start < keyed.len() {
        let (group, affinity, base) =
            (keyed[start].group, keyed[start].affinity, keyed[start].load);
        let mut end = start + 1;
        while end < keyed.len() {
            let k = &keyed[end];
            let same_class = k.group == group && k.affinity == affinity;
            let tied = group >= 2 || k.load.total_cmp(&(base + epsilon)) != Ordering::Greater;
            if !(same_class && tied) {
                break;
            }
            end += 1;
        }
        let run = &mut keyed[start..end];
        if run.len() > 1 {
            run.sort_by_key(|k| k.index);
            run.rotate_left(rotation % run.len());
        }
        start = end;
    }

    let spread = policy.placement_spread;
    if placed && spread.is_finite() && spread > 0.0 && keyed.first().is_some_and(|k| k.group == 0) {
        let (affinity, best) = (
            keyed[0].affinity,
            keyed
                .iter()
                .take_while(|k| k.group == 0 && k.affinity == keyed[0].affinity)
                .map(|k| k.load)
                .fold(f64::INFINITY, f64::min),
        );
        let candidates = keyed
            .iter()
            .take_while(|k| k.group == 0 && k.affinity == affinity)
            .count();
        let weight = |k: &Keyed| {
            if k.load <= best + spread && k.headroom.is_finite() {
                k.headroom.max(0.0)
            } else {
                0.0
            }
        };
        let total: f64 = keyed[..candidates].iter().map(weight).sum();
        if candidates > 1 && total > 0.0 && total.is_finite() {
            let draw = if placement.draw.is_finite() {
                placement.draw.clamp(0.0, 1.0)
            } else {
                0.0
            };
            let mut target = draw * total;
            let mut pick = 0;
            for (j, k) in keyed[..candidates].iter().enumerate() {
                let w = weight(k);
                if w <= 0.0 {
                    continue;
                }
                pick = j;
                if target < w {
                    break;
                }
                target -= w;
            }
            keyed[..=pick].rotate_right(1);
        }
    }
    keyed.into_iter().map(|k| k.index).collect()
}

/// Whether the pending load takes a sample over a saturation threshold it was under.
fn pushed_over(sample: &EngineSample, cpu: f64, pending: &Pending, policy: &RankPolicy) -> bool {
    let thr = policy.saturation_cpu_percent;
    if cpu.is_finite() && cpu <= thr && cpu + pending.cpu() > thr {
        return true;
    }
    match sample.mem_total_physical {
        Some(total) if total > 0.0 && total.is_finite() && sample.mem_free.is_finite() => {
            let used = 1.0 - sample.mem_free / total;
            let after = 1.0 - (sample.mem_free - pending.ram()) / total;
            used <= policy.saturation_ram_fraction && after > policy.saturation_ram_fraction
        }
        _ => false,
    }
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
        // A new value, not `|mut s| { s.loaded_docs = ...; s }`: rustc 1.95's optimised build
        // (opt-level 2 and 3) of that closure here handed a later call the buffer an earlier
        // call had returned (valgrind: read after free; SIGSEGV in `holds_app`).
        let with_app = |s: EngineSample| EngineSample {
            loaded_docs: vec![format!("C:\\ProgramData\\Qlik\\Sense\\Apps\\{APP}")],
            ..s
        };
        let flagged = |s: EngineSample, f: bool| EngineSample {
            saturated: Some(f),
            ..s
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
