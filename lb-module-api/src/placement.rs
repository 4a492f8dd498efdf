//! The ledger of recent placements: what this balancer sent to each engine that the engine's
//! telemetry does not show yet.
//!
//! Telemetry is a few seconds old at best, and Qlik's CPU figure is a 30-second average, so a
//! burst of new sessions ranked on the same sample would all go to the engine that looked best.
//! [`PlacementLedger::place`] ranks with [`rank_placed`], then records an estimate of the new
//! session's cost on the engine ranked first:
//!
//! * RAM: `placement_session_ram_mb`, plus `placement_app_ram_mb` when the engine neither holds
//!   the app in its sample nor had it placed recently;
//! * CPU: `placement_session_cpu_percent`;
//! * one session, and the app (for affinity while the engine's sample does not list it yet).
//!
//! The estimate counts until a sample taken after the placement is seen: a sample is new when
//! its `Arc<EngineSample>` is not the one seen before (an [`EngineSource`](crate::EngineSource)
//! hands out the same `Arc` until it polls again). A new sample replaces the RAM, session and
//! app estimates of every earlier placement; their CPU stays counted for the part the engine's
//! CPU average cannot show yet, `cpu * (1 - age / placement_cpu_window_secs)`. Estimates also
//! expire after `placement_ttl_secs` whatever the telemetry does.
//!
//! With `placement_learn`, the session and app RAM estimates are learned from telemetry: when
//! a new sample shows `d` more sessions and no new app, `used RAM delta / d` is a session
//! sample; when it shows `k` new apps, `(used RAM delta - sessions delta * session RAM) / k`
//! is an app sample. Both are smoothed (EWMA, weight 0.2), clamped to a sane range and used
//! once three samples were seen.
//!
//! Thread-safe: one `std::sync::Mutex` held for the few microseconds of one ranking, never
//! across an `.await`. Bounded: at most `max_engines` engines (the least recently used one is
//! forgotten first) and `max_per_engine` placements per engine (the oldest goes first).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rank::{
    app_key, rank_placed, EngineState, EngineView, Pending, Placement, PlacementCost, RankPolicy,
};
use crate::sample::EngineSample;

/// Default bound on the number of engines a ledger tracks.
pub const DEFAULT_MAX_ENGINES: usize = 1024;
/// Default bound on the placements remembered per engine.
pub const DEFAULT_MAX_PER_ENGINE: usize = 4096;
/// Learned estimates are used after this many deltas.
const LEARN_MIN_SAMPLES: u32 = 3;
/// Weight of a new delta in the learned estimates.
const LEARN_WEIGHT: f64 = 0.2;

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    ram_mb: f64,
    cpu_percent: f64,
    /// CPU still not shown by the newest sample (all of it until a sample is seen).
    cpu_left: f64,
    app: Option<String>,
    /// Whether a sample taken after this placement was seen.
    accounted: bool,
}

#[derive(Debug)]
struct EngineEntries {
    sample: Option<Arc<EngineSample>>,
    entries: VecDeque<Entry>,
    touched: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct Learned {
    value: f64,
    count: u32,
}

impl Learned {
    fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.value = if self.count == 0 {
            v
        } else {
            self.value + LEARN_WEIGHT * (v - self.value)
        };
        self.count = self.count.saturating_add(1);
    }

    fn get(&self) -> Option<f64> {
        (self.count >= LEARN_MIN_SAMPLES).then_some(self.value)
    }
}

#[derive(Debug, Default)]
struct Inner {
    engines: HashMap<String, EngineEntries>,
    session_ram: Learned,
    app_ram: Learned,
}

/// Recent placements per engine, shared by every ranking of one balancer. See the
/// [module docs](self).
#[derive(Debug)]
pub struct PlacementLedger {
    inner: Mutex<Inner>,
    seed: u64,
    calls: AtomicU64,
    rotation: AtomicU64,
    max_engines: usize,
    max_per_engine: usize,
}

impl Default for PlacementLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl PlacementLedger {
    /// An empty ledger with a fixed seed and the default bounds.
    pub fn new() -> Self {
        Self::with_seed(0x5EED_0F1B)
    }

    /// An empty ledger whose random picks derive from `seed` (same seed and calls, same picks).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            seed,
            calls: AtomicU64::new(0),
            rotation: AtomicU64::new(0),
            max_engines: DEFAULT_MAX_ENGINES,
            max_per_engine: DEFAULT_MAX_PER_ENGINE,
        }
    }

    /// The same ledger with other bounds (each at least 1).
    pub fn with_limits(mut self, max_engines: usize, max_per_engine: usize) -> Self {
        self.max_engines = max_engines.max(1);
        self.max_per_engine = max_per_engine.max(1);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rank `views` (engine `keys[i]` has view `views[i]`) for a new session of `app` with
    /// [`rank_placed`], counting this ledger's recent placements, and record the new session
    /// on the engine ranked first when its view is fresh. Returns the order (a permutation of
    /// `0..views.len()`); `keys` shorter than `views` leave the extra engines untracked.
    ///
    /// `rotation` breaks ties as in [`rank`](crate::rank()); pass `None` to use the ledger's
    /// own counter. `now` is the caller's clock (`Instant::now()`, or a simulated one).
    pub fn place(
        &self,
        keys: &[&str],
        views: &[EngineView],
        app: Option<&str>,
        policy: &RankPolicy,
        rotation: Option<usize>,
        now: Instant,
    ) -> Vec<usize> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let rotation =
            rotation.unwrap_or_else(|| self.rotation.fetch_add(1, Ordering::Relaxed) as usize);
        let seed = self.seed ^ call.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let app = app.filter(|a| !a.is_empty());
        let mut inner = self.lock();
        let cost = inner.cost(policy);
        let pending: Vec<Pending> = views
            .iter()
            .enumerate()
            .map(|(i, view)| match keys.get(i) {
                Some(key) => inner.observe(key, view, policy, now),
                None => Pending::default(),
            })
            .collect();
        let placement = Placement {
            pending: &pending,
            cost,
            rotation,
            seed,
        };
        let order = rank_placed(views, app, policy, &placement);
        if let Some(&first) = order.first() {
            if let (
                Some(key),
                Some(EngineView {
                    state: EngineState::Fresh(sample),
                    ..
                }),
            ) = (keys.get(first), views.get(first))
            {
                let key_app = app.and_then(app_key);
                let holds = app.is_some_and(|a| sample.holds_app(a))
                    || key_app
                        .as_deref()
                        .is_some_and(|k| pending[first].holds_app_key(k));
                let entry = Entry {
                    at: now,
                    ram_mb: cost.ram_for(holds),
                    cpu_percent: cost.session_cpu_percent.max(0.0),
                    cpu_left: cost.session_cpu_percent.max(0.0),
                    app: if holds { None } else { key_app },
                    accounted: false,
                };
                inner.record(key, entry, now, self.max_engines, self.max_per_engine);
            }
        }
        order
    }

    /// The load pending on the engine `key` at `now`, as the next ranking would see it (with
    /// the sample last seen for it).
    pub fn pending(&self, key: &str, policy: &RankPolicy, now: Instant) -> Pending {
        let inner = self.lock();
        match inner.engines.get(key) {
            Some(e) => sum(&e.entries, policy, now),
            None => Pending::default(),
        }
    }

    /// The estimates a new placement would use now: the configured ones, or the learned ones
    /// with `placement_learn`.
    pub fn cost(&self, policy: &RankPolicy) -> PlacementCost {
        self.lock().cost(policy)
    }

    /// Number of engines tracked.
    pub fn engines(&self) -> usize {
        self.lock().engines.len()
    }

    /// Forget everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        *inner = Inner::default();
    }
}

fn ttl(policy: &RankPolicy) -> Duration {
    let secs = policy.placement_ttl_secs;
    if secs.is_finite() && secs > 0.0 {
        Duration::from_secs_f64(secs.min(86_400.0))
    } else {
        Duration::ZERO
    }
}

fn sum(entries: &VecDeque<Entry>, policy: &RankPolicy, now: Instant) -> Pending {
    let ttl = ttl(policy);
    let mut p = Pending::default();
    for e in entries {
        if now.saturating_duration_since(e.at) >= ttl {
            continue;
        }
        if !e.accounted {
            p.sessions = p.sessions.saturating_add(1);
            p.ram_mb += e.ram_mb;
            if let Some(app) = &e.app {
                if !p.holds_app_key(app) {
                    p.apps.push(app.clone());
                }
            }
        }
        p.cpu_percent += e.cpu_left;
    }
    p
}

impl Inner {
    fn cost(&self, policy: &RankPolicy) -> PlacementCost {
        let mut cost = PlacementCost::from_policy(policy);
        if policy.placement_learn {
            let clamp = |v: f64, configured: f64| {
                let hi = (configured * 16.0).max(1.0);
                v.clamp(0.0, hi)
            };
            if let Some(v) = self.session_ram.get() {
                cost.session_ram_mb = clamp(v, policy.placement_session_ram_mb);
            }
            if let Some(v) = self.app_ram.get() {
                cost.app_ram_mb = clamp(v, policy.placement_app_ram_mb);
            }
        }
        cost
    }

    /// Note the engine's current view (a new sample accounts for earlier placements), drop
    /// expired entries, and return what is pending.
    fn observe(
        &mut self,
        key: &str,
        view: &EngineView,
        policy: &RankPolicy,
        now: Instant,
    ) -> Pending {
        let Some(e) = self.engines.get_mut(key) else {
            return Pending::default();
        };
        e.touched = now;
        let ttl = ttl(policy);
        e.entries
            .retain(|x| now.saturating_duration_since(x.at) < ttl);
        if let EngineState::Fresh(sample) = &view.state {
            let is_new = e
                .sample
                .as_ref()
                .is_none_or(|old| !Arc::ptr_eq(old, sample));
            if is_new {
                if policy.placement_learn {
                    if let Some(old) = &e.sample {
                        let placed = e.entries.iter().filter(|x| !x.accounted).count();
                        learn(
                            &mut self.session_ram,
                            &mut self.app_ram,
                            old,
                            sample,
                            placed,
                            policy,
                        );
                    }
                }
                let window = policy.placement_cpu_window_secs;
                for x in e.entries.iter_mut() {
                    x.accounted = true;
                    x.app = None;
                    let age = now.saturating_duration_since(x.at).as_secs_f64();
                    let left = if window.is_finite() && window > 0.0 {
                        (1.0 - age / window).clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    x.cpu_left = x.cpu_percent * left;
                }
                e.entries.retain(|x| x.cpu_left > 0.0);
                e.sample = Some(sample.clone());
            }
        }
        sum(&e.entries, policy, now)
    }

    fn record(
        &mut self,
        key: &str,
        entry: Entry,
        now: Instant,
        max_engines: usize,
        max_per: usize,
    ) {
        if !self.engines.contains_key(key) && self.engines.len() >= max_engines {
            if let Some(oldest) = self
                .engines
                .iter()
                .min_by_key(|(_, e)| e.touched)
                .map(|(k, _)| k.clone())
            {
                self.engines.remove(&oldest);
            }
        }
        let e = self
            .engines
            .entry(key.to_owned())
            .or_insert_with(|| EngineEntries {
                sample: None,
                entries: VecDeque::new(),
                touched: now,
            });
        e.touched = now;
        while e.entries.len() >= max_per {
            e.entries.pop_front();
        }
        e.entries.push_back(entry);
    }
}

/// Learn from the delta between two samples of one engine with `placed` placements between.
fn learn(
    session_ram: &mut Learned,
    app_ram: &mut Learned,
    old: &EngineSample,
    new: &EngineSample,
    placed: usize,
    policy: &RankPolicy,
) {
    if placed == 0 {
        return;
    }
    let d_sessions = new.sessions_active as f64 - old.sessions_active as f64;
    let used = old.mem_free - new.mem_free;
    if !used.is_finite() || d_sessions < 0.0 {
        return;
    }
    let apps = |s: &EngineSample| {
        s.in_memory_docs
            .as_ref()
            .map_or(s.loaded_docs.len(), Vec::len)
    };
    let d_apps = apps(new) as f64 - apps(old) as f64;
    if d_apps > 0.0 {
        let per_session = session_ram.get().unwrap_or(policy.placement_session_ram_mb);
        let v = (used - d_sessions * per_session) / d_apps;
        if v > 0.0 {
            app_ram.add(v);
        }
    } else if d_apps == 0.0 && d_sessions >= 1.0 && used > 0.0 {
        session_ram.add(used / d_sessions);
    }
}
