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
    app_key, mix64, rank_placed, unit_from_bits, EngineState, EngineView, Pending, Placement,
    PlacementCost, RankPolicy,
};
use crate::sample::EngineSample;

/// The ledger key of the engine at `host` and `port`, as the module API uses it: `host:port`
/// with the host lowercased (and IPv6 without brackets). A caller that ranks the same engines
/// elsewhere (e.g. least-loaded node selection) and uses these keys shares their accounting.
pub fn engine_key(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    format!("{}:{port}", host.to_ascii_lowercase())
}

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
    /// In placement order.
    entries: VecDeque<Entry>,
    /// The sum of `entries`, kept up to date so a ranking does not walk them.
    totals: Pending,
    touched: Instant,
}

impl EngineEntries {
    fn add(&mut self, x: &Entry) {
        if !x.accounted {
            self.totals.sessions = self.totals.sessions.saturating_add(1);
            self.totals.ram_mb += x.ram_mb;
            if let Some(app) = &x.app {
                if !self.totals.holds_app_key(app) {
                    self.totals.apps.push(app.clone());
                }
            }
        }
        self.totals.cpu_percent += x.cpu_left;
    }

    fn pop_front(&mut self) {
        let Some(x) = self.entries.pop_front() else {
            return;
        };
        if self.entries.is_empty() {
            self.totals = Pending::default();
            return;
        }
        if !x.accounted {
            self.totals.sessions = self.totals.sessions.saturating_sub(1);
            self.totals.ram_mb = (self.totals.ram_mb - x.ram_mb).max(0.0);
            if self.totals.sessions == 0 {
                self.totals.ram_mb = 0.0;
            }
            if let Some(app) = &x.app {
                let still = self
                    .entries
                    .iter()
                    .any(|y| !y.accounted && y.app.as_ref() == Some(app));
                if !still {
                    self.totals.apps.retain(|a| a != app);
                }
            }
        }
        self.totals.cpu_percent = (self.totals.cpu_percent - x.cpu_left).max(0.0);
    }

    /// Drop the placements older than `ttl` (from the front: they are in placement order).
    fn expire(&mut self, ttl: Duration, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|x| now.saturating_duration_since(x.at) >= ttl)
        {
            self.pop_front();
        }
    }

    fn recompute(&mut self) {
        self.totals = Pending::default();
        let entries = std::mem::take(&mut self.entries);
        for x in &entries {
            self.add(x);
        }
        self.entries = entries;
    }
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
        // A golden-ratio (Weyl) sequence from the seed: uniform, and evenly spread over any run
        // of calls, so the shares of a burst stay close to the headroom proportions.
        let draw =
            unit_from_bits(mix64(self.seed).wrapping_add(call.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
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
            draw,
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
                inner.record(
                    key,
                    sample,
                    entry,
                    now,
                    (self.max_engines, self.max_per_engine),
                );
            }
        }
        order
    }

    /// The load pending on the engine `key` at `now`, as the next ranking would see it (with
    /// the sample last seen for it).
    pub fn pending(&self, key: &str, policy: &RankPolicy, now: Instant) -> Pending {
        let mut inner = self.lock();
        match inner.engines.get_mut(key) {
            Some(e) => {
                e.expire(ttl(policy), now);
                e.totals.clone()
            }
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
        e.expire(ttl(policy), now);
        if let EngineState::Fresh(sample) = &view.state {
            let is_new = e
                .sample
                .as_ref()
                .is_none_or(|old| !Arc::ptr_eq(old, sample));
            if is_new {
                if policy.placement_learn {
                    if let Some(old) = &e.sample {
                        let placed = e.totals.sessions as usize;
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
                e.recompute();
                e.sample = Some(sample.clone());
            }
        }
        e.totals.clone()
    }

    /// Record a placement on `key`, made on `sample` (the sample the ranking saw).
    fn record(
        &mut self,
        key: &str,
        sample: &Arc<EngineSample>,
        entry: Entry,
        now: Instant,
        (max_engines, max_per): (usize, usize),
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
                totals: Pending::default(),
                touched: now,
            });
        e.touched = now;
        if e.sample.is_none() {
            e.sample = Some(sample.clone());
        }
        while e.entries.len() >= max_per {
            e.pop_front();
        }
        e.add(&entry);
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

#[cfg(test)]
mod tests {
    use super::*;

    const GB: f64 = 1024.0;
    const APP: &str = "0b2a3c4d-1111-2222-3333-444455556666";

    fn sample(cpu: f64, free_gb: f64) -> Arc<EngineSample> {
        Arc::new(EngineSample {
            mem_free: free_gb * GB,
            mem_total_physical: Some(64.0 * GB),
            cpu_total: cpu,
            saturated: Some(false),
            ..EngineSample::default()
        })
    }

    fn views(samples: &[Arc<EngineSample>]) -> Vec<EngineView> {
        samples.iter().cloned().map(EngineView::fresh).collect()
    }

    const KEYS: [&str; 3] = ["a:4747", "b:4747", "c:4747"];

    fn burst(ledger: &PlacementLedger, views: &[EngineView], n: usize, t0: Instant) -> [u32; 3] {
        let policy = RankPolicy::default();
        let mut firsts = [0; 3];
        for _ in 0..n {
            let order = ledger.place(&KEYS, views, Some(APP), &policy, None, t0);
            firsts[order[0]] += 1;
        }
        firsts
    }

    #[test]
    fn a_burst_spreads_by_headroom() {
        let v = views(&[sample(10.0, 60.0), sample(40.0, 40.0), sample(70.0, 20.0)]);
        let firsts = burst(&PlacementLedger::new(), &v, 60, Instant::now());
        assert!(firsts.iter().all(|&n| n <= 40), "{firsts:?}");
        assert!(firsts[2] < firsts[1] && firsts[2] < firsts[0], "{firsts:?}");
        assert!(firsts[0] > firsts[1], "{firsts:?}");
    }

    #[test]
    fn placements_count_until_a_new_sample() {
        let policy = RankPolicy::default();
        let ledger = PlacementLedger::new();
        let t0 = Instant::now();
        let s = [sample(10.0, 60.0), sample(10.0, 60.0), sample(10.0, 60.0)];
        let v = views(&s);
        for _ in 0..30 {
            ledger.place(&KEYS, &v, Some(APP), &policy, None, t0);
        }
        let total: u32 = KEYS
            .iter()
            .map(|k| ledger.pending(k, &policy, t0).sessions)
            .sum();
        assert_eq!(total, 30);
        let a = ledger.pending("a:4747", &policy, t0);
        // The first session on an engine loads the app; later ones only add a session.
        let expected = f64::from(a.sessions) * policy.placement_session_ram_mb
            + if a.sessions > 0 {
                policy.placement_app_ram_mb
            } else {
                0.0
            };
        assert!((a.ram_mb - expected).abs() < 1e-6, "{a:?}");

        // A new sample of engine a, 15 s later: its RAM and sessions are replaced; half of the
        // CPU is still to come in the engine's 30 s average.
        let mut s2 = s.clone();
        // The new sample shows the app loaded.
        s2[0] = Arc::new(EngineSample {
            loaded_docs: vec![APP.to_owned()],
            ..(*sample(30.0, 50.0)).clone()
        });
        let v2 = views(&s2);
        let t1 = t0 + Duration::from_secs(15);
        ledger.place(&KEYS[1..], &v2[1..], Some(APP), &policy, None, t1);
        let before = ledger.pending("a:4747", &policy, t1);
        assert_eq!(before.sessions, a.sessions, "not observed yet");
        let _ = ledger.place(&KEYS[..1], &v2[..1], Some(APP), &policy, None, t1);
        let after = ledger.pending("a:4747", &policy, t1);
        // One new session was placed on a by that call (the only engine offered).
        assert_eq!(after.sessions, 1, "{a:?} {before:?} {after:?}");
        assert!((after.ram_mb - policy.placement_session_ram_mb).abs() < 1e-6);
        let old_cpu = f64::from(a.sessions) * policy.placement_session_cpu_percent * 0.5;
        let want = old_cpu + policy.placement_session_cpu_percent;
        assert!(
            (after.cpu_percent - want).abs() < 1e-6,
            "{after:?} want cpu {want}"
        );
    }

    #[test]
    fn a_sample_long_after_replaces_everything() {
        let policy = RankPolicy::default();
        let ledger = PlacementLedger::new();
        let t0 = Instant::now();
        let v = views(&[sample(10.0, 60.0)]);
        for _ in 0..5 {
            ledger.place(&KEYS[..1], &v, None, &policy, None, t0);
        }
        let t1 = t0 + Duration::from_secs(40);
        let fresh = views(&[sample(20.0, 58.0)]);
        // Observing happens inside place; pass no key for the new session's record by giving
        // an engine list where the first place goes to an untracked engine.
        let mut with_unknown = fresh.clone();
        with_unknown.push(EngineView::unknown());
        ledger.place(&KEYS[..1], &with_unknown, None, &policy, Some(0), t1);
        let p = ledger.pending("a:4747", &policy, t1);
        assert_eq!(p.sessions, 1, "only the new one: {p:?}");
        assert!((p.cpu_percent - policy.placement_session_cpu_percent).abs() < 1e-9);
    }

    #[test]
    fn estimates_expire() {
        let policy = RankPolicy::default();
        let ledger = PlacementLedger::new();
        let t0 = Instant::now();
        let v = views(&[sample(10.0, 60.0)]);
        ledger.place(&KEYS[..1], &v, None, &policy, None, t0);
        assert_eq!(ledger.pending("a:4747", &policy, t0).sessions, 1);
        let later = t0 + Duration::from_secs_f64(policy.placement_ttl_secs + 1.0);
        assert!(ledger.pending("a:4747", &policy, later).is_empty());
    }

    #[test]
    fn bounded() {
        let policy = RankPolicy::default();
        let ledger = PlacementLedger::with_seed(3).with_limits(2, 5);
        let t0 = Instant::now();
        let v = views(&[sample(10.0, 60.0)]);
        for (i, key) in ["x:1", "y:1", "z:1"].iter().enumerate() {
            for _ in 0..10 {
                ledger.place(
                    &[key],
                    &v,
                    None,
                    &policy,
                    None,
                    t0 + Duration::from_secs(i as u64),
                );
            }
        }
        assert_eq!(ledger.engines(), 2);
        assert!(
            ledger.pending("x:1", &policy, t0).is_empty(),
            "least recent forgotten"
        );
        assert_eq!(
            ledger
                .pending("z:1", &policy, t0 + Duration::from_secs(2))
                .sessions,
            5
        );
    }

    #[test]
    fn same_seed_same_picks() {
        let v = views(&[sample(10.0, 60.0), sample(40.0, 40.0), sample(70.0, 20.0)]);
        let t0 = Instant::now();
        let run = |seed| {
            let ledger = PlacementLedger::with_seed(seed);
            let policy = RankPolicy::default();
            (0..40)
                .map(|_| ledger.place(&KEYS, &v, Some(APP), &policy, None, t0)[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn untracked_engines_are_not_recorded() {
        let policy = RankPolicy::default();
        let ledger = PlacementLedger::new();
        let v = vec![EngineView::unknown(), EngineView::unknown()];
        let order = ledger.place(&KEYS[..2], &v, Some(APP), &policy, None, Instant::now());
        assert_eq!(order.len(), 2);
        assert_eq!(ledger.engines(), 0);
    }

    #[test]
    fn learns_ram_from_deltas() {
        let policy = RankPolicy {
            placement_learn: true,
            ..RankPolicy::default()
        };
        let ledger = PlacementLedger::new();
        let mut t = Instant::now();
        let mut free = 60.0 * GB;
        let mut sessions = 0;
        let docs = vec![APP.to_owned()];
        for _ in 0..6 {
            let s = Arc::new(EngineSample {
                mem_free: free,
                mem_total_physical: Some(64.0 * GB),
                cpu_total: 10.0,
                sessions_active: sessions,
                loaded_docs: docs.clone(),
                in_memory_docs: Some(docs.clone()),
                ..EngineSample::default()
            });
            let v = views(&[s]);
            for _ in 0..4 {
                ledger.place(&KEYS[..1], &v, Some(APP), &policy, None, t);
            }
            // The engine shows 4 more sessions of 500 MB each on the next sample.
            sessions += 4;
            free -= 4.0 * 500.0;
            t += Duration::from_secs(5);
        }
        let cost = ledger.cost(&policy);
        assert!((cost.session_ram_mb - 500.0).abs() < 1.0, "{cost:?}");
        assert_eq!(cost.app_ram_mb, policy.placement_app_ram_mb);
        // Without learning the configured estimate stays.
        let cost = ledger.cost(&RankPolicy::default());
        assert_eq!(cost.session_ram_mb, 200.0);
    }
}
