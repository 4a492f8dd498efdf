//! Placement simulator: how well engine placement policies hold up over a Qlik Sense day.
//!
//! A model of a Qlik cluster, in simulated time (one step per second, no wall clock):
//!
//! * **Engines** with RAM and cores (default: two with 256 GB / 32 cores, two with 128 GB /
//!   16 cores). An engine uses 4% of its RAM and 2% CPU idle.
//! * **Apps** with in-memory sizes drawn from a log-normal distribution (median 1.5 GB,
//!   sigma 1.0, 100 MB to 32 GB) and Zipf popularity. An app is loaded once per engine: the
//!   first session of the app on an engine costs the app's size in RAM and a load
//!   (2 s + size / 300 MB/s, 2 cores meanwhile); later sessions share it. Loaded apps stay
//!   (Qlik's app cache time is 8 hours) unless the engine goes over 90% RAM, when apps without
//!   sessions are dropped, least recently used first, down to 80%.
//! * **Sessions** cost RAM (5% of the app's size + 30 MB, times 0.5..1.5) and CPU while active
//!   (0.1..0.5 core, plus 2 cores for the first 10 s while the sheets compute), and last a
//!   log-normal time (median 15 min, sigma 0.8, 1 to 180 min).
//! * **Users** arrive by a day's curve, 07:00 to 19:00: a ramp to 08:00, a morning plateau,
//!   a lunch dip, an afternoon plateau, a ramp down, and a storm at 9:00 (a Gaussian of
//!   4 minutes' sigma, 6 times the plateau's rate). The load level scales the arrivals so the
//!   expected peak of concurrent sessions is that fraction of the cluster's capacity: the
//!   sessions its cores hold at 90% CPU.
//! * **Telemetry**: each engine is sampled every 5 s (engines staggered), with CPU averaged over
//!   the last 30 s, as Qlik's health check reports it; an engine is saturated at 90% CPU (30 s
//!   average) or 90% RAM.
//!
//! Policies decide on the latest samples only: round robin (the QPS's default), random (public
//! sample modules), least `apps.calls` (a public module), the plain ranking ([`rank`]) and ours
//! ([`PlacementLedger::place`], the code the module API runs). Every policy sees the same
//! seeded workload. Figures per run: peak RAM per engine, saturated engine-minutes, sessions
//! placed on an engine saturated at that moment, cold app loads and their total load time,
//! and the spread of sessions over the engines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_module_api::{rank, EngineSample, EngineView, PlacementLedger, RankPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One engine of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineSpec {
    /// Physical RAM, MB.
    pub ram_mb: f64,
    /// Cores.
    pub cores: f64,
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    /// Seed of the workload and of the random policies.
    pub seed: u64,
    /// The engines.
    pub engines: Vec<EngineSpec>,
    /// Number of apps.
    pub apps: usize,
    /// Simulated day from this hour...
    pub start_hour: f64,
    /// ...to this hour.
    pub end_hour: f64,
    /// Load levels, as fractions of cluster capacity (1.0 = 100%).
    pub levels: Vec<f64>,
    /// The ranking policy of the "rank, no ledger" and "ours" policies.
    pub ranking: RankPolicy,
}

impl Default for SimConfig {
    fn default() -> Self {
        let big = EngineSpec {
            ram_mb: 262_144.0,
            cores: 32.0,
        };
        let small = EngineSpec {
            ram_mb: 131_072.0,
            cores: 16.0,
        };
        Self {
            seed: 1,
            engines: vec![big.clone(), big, small.clone(), small],
            apps: 30,
            start_hour: 7.0,
            end_hour: 19.0,
            levels: vec![0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2],
            ranking: RankPolicy::default(),
        }
    }
}

impl SimConfig {
    /// A small run for smoke tests: 08:30 to 09:30 (the storm), two load levels.
    pub fn quick() -> Self {
        Self {
            start_hour: 8.5,
            end_hour: 9.5,
            levels: vec![0.8, 1.2],
            ..Self::default()
        }
    }
}

/// A placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Policy {
    /// The QPS's own round robin.
    RoundRobin,
    /// A uniformly random engine.
    Random,
    /// The engine with the fewest `apps.calls` in its last sample.
    LeastCalls,
    /// `lb_module_api::rank` on the last samples, without the ledger.
    RankOnly,
    /// `lb_module_api::PlacementLedger::place`: recent placements and headroom-weighted picks.
    Ours,
}

impl Policy {
    /// Every policy, in table order.
    pub const ALL: [Policy; 5] = [
        Policy::RoundRobin,
        Policy::Random,
        Policy::LeastCalls,
        Policy::RankOnly,
        Policy::Ours,
    ];

    /// The name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round robin",
            Policy::Random => "random",
            Policy::LeastCalls => "least apps.calls",
            Policy::RankOnly => "rank, no ledger",
            Policy::Ours => "ours",
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// Load level (fraction of capacity).
    pub level: f64,
    /// Policy name.
    pub policy: &'static str,
    /// Sessions placed.
    pub sessions: u64,
    /// Peak RAM use per engine, percent of physical RAM.
    pub peak_ram_pct: Vec<f64>,
    /// Sum over engines of the minutes each was saturated.
    pub saturated_engine_minutes: f64,
    /// Sessions placed on an engine saturated at that moment.
    pub placed_on_saturated: u64,
    /// App loads (an app's first session on an engine, or after it was dropped).
    pub cold_loads: u64,
    /// Total time of those loads, seconds.
    pub cold_load_seconds: f64,
    /// Share of the sessions placed on each engine, percent.
    pub share_pct: Vec<f64>,
    /// Peak concurrent sessions per engine.
    pub peak_sessions: Vec<u32>,
}

impl RunResult {
    /// The highest peak RAM of any engine, percent.
    pub fn max_peak_ram(&self) -> f64 {
        self.peak_ram_pct.iter().copied().fold(0.0, f64::max)
    }
}

/// How a 60-session burst on three engines was shared (first choices per engine).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BurstResult {
    /// Policy name.
    pub policy: &'static str,
    /// Sessions per engine: (10% CPU, 60 GB free), (40%, 40 GB), (70%, 20 GB).
    pub per_engine: [u32; 3],
}

/// Everything `lb-bench placement` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlacementReport {
    /// The configuration.
    pub config: SimConfig,
    /// Capacity in concurrent sessions.
    pub capacity_sessions: f64,
    /// One result per level and policy.
    pub runs: Vec<RunResult>,
    /// The burst.
    pub burst: Vec<BurstResult>,
    /// Whether ours beats round robin and random at every level (see [`targets`]).
    pub targets_met: bool,
    /// What the target check found.
    pub target_notes: Vec<String>,
}

const IDLE_RAM: f64 = 0.04;
const IDLE_CPU: f64 = 2.0;
const SAT_CPU: f64 = 90.0;
const SAT_RAM: f64 = 0.9;
const EVICT_TO: f64 = 0.8;
const SAMPLE_EVERY: u64 = 5;
const CPU_WINDOW: usize = 30;
const LOAD_CORES: f64 = 2.0;
const LOAD_MB_PER_S: f64 = 300.0;
const SPIKE_CORES: f64 = 2.0;
const SPIKE_S: u64 = 10;
const SESSION_CORES: (f64, f64) = (0.1, 0.5);
const APP_MEDIAN_MB: f64 = 1500.0;
const APP_SIGMA: f64 = 1.0;
const ZIPF_S: f64 = 1.0;
const DURATION_MEDIAN_S: f64 = 900.0;
const DURATION_SIGMA: f64 = 0.8;
const STORM_HOUR: f64 = 9.0;
const STORM_SIGMA_H: f64 = 4.0 / 60.0;
const STORM_HEIGHT: f64 = 6.0;

#[derive(Debug, Clone)]
struct App {
    guid: String,
    size_mb: f64,
    load_s: u64,
}

#[derive(Debug, Clone)]
struct Arrival {
    t: u64,
    app: usize,
    duration_s: u64,
    cores: f64,
    ram_mb: f64,
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 30.0 {
        return (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u64;
    }
    let limit = (-mean).exp();
    let mut k = 0;
    let mut p: f64 = rng.random();
    while p > limit {
        k += 1;
        p *= rng.random::<f64>();
    }
    k
}

fn duration(rng: &mut StdRng) -> u64 {
    lognormal(rng, DURATION_MEDIAN_S, DURATION_SIGMA).clamp(60.0, 10_800.0) as u64
}

/// Relative arrival rate at `hour` (plateau = 1).
fn day_curve(hour: f64) -> f64 {
    let base = if hour < 7.0 {
        0.1
    } else if hour < 8.0 {
        0.1 + 0.9 * (hour - 7.0)
    } else if hour < 12.0 {
        1.0
    } else if hour < 13.0 {
        0.6
    } else if hour < 17.0 {
        0.9
    } else if hour < 19.0 {
        0.9 - 0.4 * (hour - 17.0)
    } else {
        0.1
    };
    let z = (hour - STORM_HOUR) / STORM_SIGMA_H;
    base + STORM_HEIGHT * (-0.5 * z * z).exp()
}

fn apps(cfg: &SimConfig) -> (Vec<App>, Vec<f64>) {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0xA995);
    let apps: Vec<App> = (0..cfg.apps)
        .map(|i| {
            let size_mb = lognormal(&mut rng, APP_MEDIAN_MB, APP_SIGMA).clamp(100.0, 32_768.0);
            App {
                guid: format!("{:08x}-5a1e-4a00-8000-{:012x}", i + 1, i + 1),
                size_mb,
                load_s: 2 + (size_mb / LOAD_MB_PER_S) as u64,
            }
        })
        .collect();
    let weights: Vec<f64> = (0..cfg.apps)
        .map(|i| 1.0 / ((i + 1) as f64).powf(ZIPF_S))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cdf = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect();
    (apps, cdf)
}

/// Concurrent sessions the cluster's cores hold at the CPU saturation threshold.
pub fn capacity_sessions(cfg: &SimConfig) -> f64 {
    let cores: f64 = cfg.engines.iter().map(|e| e.cores).sum();
    let mean_duration = mean_duration();
    let per_session =
        (SESSION_CORES.0 + SESSION_CORES.1) / 2.0 + SPIKE_CORES * SPIKE_S as f64 / mean_duration;
    cores * (SAT_CPU - IDLE_CPU) / 100.0 / per_session
}

fn mean_duration() -> f64 {
    let mut rng = StdRng::seed_from_u64(7);
    let n = 20_000;
    (0..n).map(|_| duration(&mut rng) as f64).sum::<f64>() / n as f64
}

/// Arrivals per second at scale 1 over the simulated span, and the expected peak of
/// concurrent sessions they give.
fn rate_and_peak(cfg: &SimConfig) -> (Vec<f64>, f64) {
    let span = ((cfg.end_hour - cfg.start_hour).max(0.0) * 3600.0) as usize;
    let rate: Vec<f64> = (0..span)
        .map(|t| day_curve(cfg.start_hour + t as f64 / 3600.0) / 60.0)
        .collect();
    // Survival of the session duration by minute, then a minute-resolution convolution.
    let mut rng = StdRng::seed_from_u64(11);
    let n = 20_000;
    let mut alive = vec![0.0f64; 181];
    for _ in 0..n {
        let d = duration(&mut rng) / 60;
        for a in alive.iter_mut().take(d as usize + 1) {
            *a += 1.0 / n as f64;
        }
    }
    // Sessions already running at the start: the rate before start_hour in steady state.
    let minutes = span / 60 + 1;
    let per_minute: Vec<f64> = (0..minutes)
        .map(|m| rate.iter().skip(m * 60).take(60).sum())
        .collect();
    let before = day_curve(cfg.start_hour - 0.01) / 60.0 * 60.0;
    let mut peak: f64 = 0.0;
    for m in 0..minutes {
        let mut c = 0.0;
        for (lag, a) in alive.iter().enumerate() {
            c += a * if lag <= m {
                per_minute[m - lag]
            } else {
                before
            };
        }
        peak = peak.max(c);
    }
    (rate, peak)
}

fn workload(
    cfg: &SimConfig,
    level: f64,
    apps: &[App],
    cdf: &[f64],
) -> (Vec<Arrival>, Vec<Arrival>) {
    let (rate, peak) = rate_and_peak(cfg);
    let scale = if peak > 0.0 {
        level * capacity_sessions(cfg) / peak
    } else {
        0.0
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ (level * 1000.0) as u64 ^ 0x3E55_1011);
    let session = |rng: &mut StdRng, t: u64, duration_s: u64| {
        let u: f64 = rng.random();
        let app = cdf.iter().position(|c| u <= *c).unwrap_or(cdf.len() - 1);
        let cores = rng.random_range(SESSION_CORES.0..SESSION_CORES.1);
        let ram_mb = (apps[app].size_mb * 0.05 + 30.0) * rng.random_range(0.5..1.5);
        Arrival {
            t,
            app,
            duration_s,
            cores,
            ram_mb,
        }
    };
    // Sessions already open when the simulated span starts (steady state of the rate then).
    let before = day_curve(cfg.start_hour - 0.01) / 60.0 * scale;
    let open = poisson(&mut rng, before * mean_duration());
    let initial: Vec<Arrival> = (0..open)
        .map(|_| {
            let d = duration(&mut rng);
            let left = rng.random_range(1..=d.max(1));
            session(&mut rng, 0, left)
        })
        .collect();
    let mut arrivals = Vec::new();
    for (t, r) in rate.iter().enumerate() {
        for _ in 0..poisson(&mut rng, r * scale) {
            let d = duration(&mut rng);
            arrivals.push(session(&mut rng, t as u64, d));
        }
    }
    (initial, arrivals)
}

#[derive(Debug, Clone, Copy)]
enum Event {
    SpikeOver {
        engine: usize,
    },
    Closed {
        engine: usize,
        app: usize,
        cores: f64,
        ram_mb: f64,
    },
    Loaded {
        engine: usize,
    },
}

#[derive(Debug, Default, Clone)]
struct AppOnEngine {
    sessions: u32,
    last_used: u64,
}

#[derive(Debug)]
struct EngineSim {
    spec: EngineSpec,
    apps: HashMap<usize, AppOnEngine>,
    ram_used: f64,
    demand_cores: f64,
    cpu_hist: [f64; CPU_WINDOW],
    cpu30: f64,
    sessions: u32,
    calls: f64,
    sample: Option<(Arc<EngineSample>, f64)>,
    peak_ram: f64,
    peak_sessions: u32,
    placed: u64,
    next_sample: u64,
}

impl EngineSim {
    fn new(spec: EngineSpec) -> Self {
        let ram_used = spec.ram_mb * IDLE_RAM;
        Self {
            spec,
            apps: HashMap::new(),
            ram_used,
            demand_cores: 0.0,
            cpu_hist: [IDLE_CPU; CPU_WINDOW],
            cpu30: IDLE_CPU,
            sessions: 0,
            calls: 0.0,
            sample: None,
            peak_ram: IDLE_RAM,
            peak_sessions: 0,
            placed: 0,
            next_sample: 0,
        }
    }

    fn ram_fraction(&self) -> f64 {
        self.ram_used / self.spec.ram_mb
    }

    fn saturated(&self) -> bool {
        self.cpu30 > SAT_CPU || self.ram_fraction() > SAT_RAM
    }

    fn take_sample(&mut self, apps: &[App]) {
        let mut docs: Vec<String> = self.apps.keys().map(|&a| apps[a].guid.clone()).collect();
        docs.sort();
        let s = EngineSample {
            version: "14.0.0".into(),
            mem_free: self.spec.ram_mb - self.ram_used,
            mem_total_physical: Some(self.spec.ram_mb),
            cpu_total: self.cpu30,
            sessions_active: u64::from(self.sessions),
            users_active: u64::from(self.sessions),
            active_docs: Vec::new(),
            in_memory_docs: Some(docs.clone()),
            loaded_docs: docs,
            saturated: Some(self.saturated()),
            ..EngineSample::default()
        };
        self.sample = Some((Arc::new(s), self.calls));
    }

    fn evict(&mut self, apps: &[App]) {
        if self.ram_fraction() <= SAT_RAM {
            return;
        }
        let mut idle: Vec<(u64, usize)> = self
            .apps
            .iter()
            .filter(|(_, a)| a.sessions == 0)
            .map(|(&id, a)| (a.last_used, id))
            .collect();
        idle.sort_unstable();
        for (_, id) in idle {
            if self.ram_fraction() <= EVICT_TO {
                break;
            }
            self.apps.remove(&id);
            self.ram_used -= apps[id].size_mb;
        }
    }
}

struct Chooser {
    policy: Policy,
    rng: StdRng,
    next: usize,
    ledger: PlacementLedger,
    rank_policy: RankPolicy,
    keys: Vec<String>,
    t0: Instant,
}

impl Chooser {
    fn new(policy: Policy, seed: u64, engines: usize, ranking: &RankPolicy) -> Self {
        Self {
            policy,
            rng: StdRng::seed_from_u64(seed ^ 0xC0FF_EE00),
            next: 0,
            ledger: PlacementLedger::with_seed(seed),
            rank_policy: ranking.clone(),
            keys: (0..engines).map(|i| format!("engine{}", i + 1)).collect(),
            t0: Instant::now(),
        }
    }

    fn choose(&mut self, engines: &[EngineSim], app: &str, t: u64) -> usize {
        let n = engines.len();
        match self.policy {
            Policy::RoundRobin => {
                let i = self.next % n;
                self.next += 1;
                i
            }
            Policy::Random => self.rng.random_range(0..n),
            Policy::LeastCalls => (0..n)
                .min_by(|&a, &b| {
                    let calls = |i: usize| engines[i].sample.as_ref().map_or(0.0, |s| s.1);
                    calls(a).total_cmp(&calls(b)).then(a.cmp(&b))
                })
                .unwrap_or(0),
            Policy::RankOnly | Policy::Ours => {
                let views: Vec<EngineView> = engines
                    .iter()
                    .map(|e| match &e.sample {
                        Some((s, _)) => EngineView::fresh(s.clone()),
                        None => EngineView::unknown(),
                    })
                    .collect();
                let order = if self.policy == Policy::Ours {
                    let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
                    let now = self.t0 + Duration::from_secs(t);
                    self.ledger
                        .place(&keys, &views, Some(app), &self.rank_policy, None, now)
                } else {
                    let r = self.next;
                    self.next += 1;
                    rank(&views, Some(app), &self.rank_policy, r)
                };
                order.first().copied().unwrap_or(0)
            }
        }
    }
}

/// Simulate one policy at one load level.
pub fn run(cfg: &SimConfig, level: f64, policy: Policy) -> RunResult {
    let (apps, cdf) = apps(cfg);
    let (initial, arrivals) = workload(cfg, level, &apps, &cdf);
    simulate(cfg, level, policy, &apps, &initial, &arrivals)
}

fn simulate(
    cfg: &SimConfig,
    level: f64,
    policy: Policy,
    apps: &[App],
    initial: &[Arrival],
    arrivals: &[Arrival],
) -> RunResult {
    let n = cfg.engines.len().max(1);
    let mut engines: Vec<EngineSim> = cfg.engines.iter().cloned().map(EngineSim::new).collect();
    let mut chooser = Chooser::new(policy, cfg.seed, n, &cfg.ranking);
    let mut events: Vec<Event> = Vec::new();
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let span = ((cfg.end_hour - cfg.start_hour).max(0.0) * 3600.0) as u64;
    let mut placed_on_saturated = 0;
    let mut cold_loads = 0;
    let mut cold_load_seconds = 0.0;
    let mut saturated_seconds = 0u64;
    let mut sessions = 0;

    // Sessions open at the start: spread as the previous day left them (round robin), apps
    // loaded, samples taken.
    for (k, a) in initial.iter().enumerate() {
        let e = &mut engines[k % n];
        let entry = e.apps.entry(a.app).or_default();
        if entry.sessions == 0 && entry.last_used == 0 {
            e.ram_used += apps[a.app].size_mb;
        }
        entry.sessions += 1;
        entry.last_used = 1;
        e.sessions += 1;
        e.ram_used += a.ram_mb;
        e.demand_cores += a.cores;
        events.push(Event::Closed {
            engine: k % n,
            app: a.app,
            cores: a.cores,
            ram_mb: a.ram_mb,
        });
        queue.push(Reverse((a.duration_s, events.len() - 1)));
    }
    for (k, e) in engines.iter_mut().enumerate() {
        // Engines are sampled in turn, not all in the same second.
        e.next_sample = k as u64 % SAMPLE_EVERY;
        let cpu = cpu_percent(e);
        e.cpu_hist = [cpu; CPU_WINDOW];
        e.cpu30 = cpu;
        e.take_sample(apps);
    }

    let mut next_arrival = 0;
    let mut cpu_slot = 0;
    for t in 0..span {
        while let Some(Reverse((at, idx))) = queue.peek().copied() {
            if at > t {
                break;
            }
            queue.pop();
            match events[idx] {
                Event::SpikeOver { engine } => engines[engine].demand_cores -= SPIKE_CORES,
                Event::Loaded { engine } => engines[engine].demand_cores -= LOAD_CORES,
                Event::Closed {
                    engine,
                    app,
                    cores,
                    ram_mb,
                } => {
                    let e = &mut engines[engine];
                    e.demand_cores -= cores;
                    e.ram_used -= ram_mb;
                    e.sessions = e.sessions.saturating_sub(1);
                    if let Some(a) = e.apps.get_mut(&app) {
                        a.sessions = a.sessions.saturating_sub(1);
                        a.last_used = t;
                    }
                }
            }
        }
        while next_arrival < arrivals.len() && arrivals[next_arrival].t <= t {
            let a = &arrivals[next_arrival];
            next_arrival += 1;
            let i = chooser.choose(&engines, &apps[a.app].guid, t).min(n - 1);
            sessions += 1;
            let e = &mut engines[i];
            e.placed += 1;
            if e.saturated() {
                placed_on_saturated += 1;
            }
            if !e.apps.contains_key(&a.app) {
                cold_loads += 1;
                cold_load_seconds += apps[a.app].load_s as f64;
                e.ram_used += apps[a.app].size_mb;
                e.demand_cores += LOAD_CORES;
                events.push(Event::Loaded { engine: i });
                queue.push(Reverse((t + apps[a.app].load_s, events.len() - 1)));
            }
            let entry = e.apps.entry(a.app).or_default();
            entry.sessions += 1;
            entry.last_used = t;
            e.sessions += 1;
            e.ram_used += a.ram_mb;
            e.demand_cores += a.cores + SPIKE_CORES;
            events.push(Event::SpikeOver { engine: i });
            queue.push(Reverse((t + SPIKE_S, events.len() - 1)));
            events.push(Event::Closed {
                engine: i,
                app: a.app,
                cores: a.cores,
                ram_mb: a.ram_mb,
            });
            queue.push(Reverse((t + a.duration_s, events.len() - 1)));
        }
        for e in engines.iter_mut() {
            e.evict(apps);
            let cpu = cpu_percent(e);
            e.cpu_hist[cpu_slot] = cpu;
            e.cpu30 = e.cpu_hist.iter().sum::<f64>() / CPU_WINDOW as f64;
            e.calls += f64::from(e.sessions) * 0.5;
            e.peak_ram = e.peak_ram.max(e.ram_fraction());
            e.peak_sessions = e.peak_sessions.max(e.sessions);
            if e.saturated() {
                saturated_seconds += 1;
            }
            if t >= e.next_sample {
                e.take_sample(apps);
                e.next_sample = t + SAMPLE_EVERY;
            }
        }
        cpu_slot = (cpu_slot + 1) % CPU_WINDOW;
    }

    let placed: u64 = engines.iter().map(|e| e.placed).sum();
    RunResult {
        level,
        policy: policy.name(),
        sessions,
        peak_ram_pct: engines.iter().map(|e| round1(e.peak_ram * 100.0)).collect(),
        saturated_engine_minutes: round1(saturated_seconds as f64 / 60.0),
        placed_on_saturated,
        cold_loads,
        cold_load_seconds,
        share_pct: engines
            .iter()
            .map(|e| round1(e.placed as f64 * 100.0 / placed.max(1) as f64))
            .collect(),
        peak_sessions: engines.iter().map(|e| e.peak_sessions).collect(),
    }
}

fn cpu_percent(e: &EngineSim) -> f64 {
    (IDLE_CPU + 100.0 * e.demand_cores.max(0.0) / e.spec.cores).min(100.0)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The burst of the issue: 60 new sessions of one new app, ranked on one set of samples from
/// three fresh 64 GB engines (10% CPU / 60 GB free, 40% / 40 GB, 70% / 20 GB).
pub fn burst(policy: Policy, seed: u64, ranking: &RankPolicy) -> BurstResult {
    let engine = |cpu: f64, free_gb: f64| EngineSim {
        sample: Some((
            Arc::new(EngineSample {
                mem_free: free_gb * 1024.0,
                mem_total_physical: Some(65_536.0),
                cpu_total: cpu,
                saturated: Some(false),
                ..EngineSample::default()
            }),
            0.0,
        )),
        ..EngineSim::new(EngineSpec {
            ram_mb: 65_536.0,
            cores: 16.0,
        })
    };
    let engines = [engine(10.0, 60.0), engine(40.0, 40.0), engine(70.0, 20.0)];
    let mut chooser = Chooser::new(policy, seed, engines.len(), ranking);
    let mut per_engine = [0u32; 3];
    for _ in 0..60 {
        let i = chooser.choose(&engines, "0b2a3c4d-1111-2222-3333-444455556666", 0);
        per_engine[i.min(2)] += 1;
    }
    BurstResult {
        policy: policy.name(),
        per_engine,
    }
}

/// Run every policy at every level, the burst, and check the targets.
pub fn report(cfg: &SimConfig) -> PlacementReport {
    let (apps, cdf) = apps(cfg);
    let mut runs = Vec::new();
    for &level in &cfg.levels {
        let (initial, arrivals) = workload(cfg, level, &apps, &cdf);
        for policy in Policy::ALL {
            runs.push(simulate(cfg, level, policy, &apps, &initial, &arrivals));
        }
    }
    let burst = Policy::ALL
        .iter()
        .map(|&p| burst(p, cfg.seed, &cfg.ranking))
        .collect();
    let (targets_met, target_notes) = targets(&runs);
    PlacementReport {
        config: cfg.clone(),
        capacity_sessions: round1(capacity_sessions(cfg)),
        runs,
        burst,
        targets_met,
        target_notes,
    }
}

/// Whether ours beats round robin and random on saturated engine-minutes, sessions placed on
/// a saturated engine and cold loads at every level (ties at zero count as met), without a
/// higher peak RAM. Returns the verdict and one note per miss.
pub fn targets(runs: &[RunResult]) -> (bool, Vec<String>) {
    let mut notes = Vec::new();
    let ours_name = Policy::Ours.name();
    for ours in runs.iter().filter(|r| r.policy == ours_name) {
        for other in [Policy::RoundRobin.name(), Policy::Random.name()] {
            let Some(o) = runs
                .iter()
                .find(|r| r.policy == other && r.level == ours.level)
            else {
                continue;
            };
            let level = format!("{:.0}%", ours.level * 100.0);
            let beats = |a: f64, b: f64| a < b || (a == 0.0 && b == 0.0);
            if !beats(ours.saturated_engine_minutes, o.saturated_engine_minutes) {
                notes.push(format!(
                    "{level}: saturated engine-minutes {} vs {other} {}",
                    ours.saturated_engine_minutes, o.saturated_engine_minutes
                ));
            }
            if !beats(
                ours.placed_on_saturated as f64,
                o.placed_on_saturated as f64,
            ) {
                notes.push(format!(
                    "{level}: placed on saturated {} vs {other} {}",
                    ours.placed_on_saturated, o.placed_on_saturated
                ));
            }
            if !beats(ours.cold_loads as f64, o.cold_loads as f64) {
                notes.push(format!(
                    "{level}: cold loads {} vs {other} {}",
                    ours.cold_loads, o.cold_loads
                ));
            }
            if ours.max_peak_ram() > o.max_peak_ram() {
                notes.push(format!(
                    "{level}: peak RAM {}% vs {other} {}%",
                    ours.max_peak_ram(),
                    o.max_peak_ram()
                ));
            }
        }
    }
    (notes.is_empty(), notes)
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The report as markdown: the sweep table, the burst and the target verdict.
pub fn markdown(r: &PlacementReport) -> String {
    let mut out = String::new();
    let engines = r
        .config
        .engines
        .iter()
        .map(|e| format!("{:.0} GB/{:.0} cores", e.ram_mb / 1024.0, e.cores))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "Seed {}, {:02.0}:00-{:02.0}:00, engines: {engines}; {} apps; capacity {:.0} concurrent sessions.\n",
        r.config.seed, r.config.start_hour, r.config.end_hour, r.config.apps, r.capacity_sessions
    );
    let _ = writeln!(
        out,
        "| load | policy | sessions | peak RAM % per engine | saturated engine-min | placed on saturated | cold loads | load time s | share % per engine |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---:|---:|---:|---:|---|");
    for run in &r.runs {
        let _ = writeln!(
            out,
            "| {:.0}% | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            run.level * 100.0,
            run.policy,
            run.sessions,
            list(&run.peak_ram_pct),
            run.saturated_engine_minutes,
            run.placed_on_saturated,
            run.cold_loads,
            run.cold_load_seconds,
            list(&run.share_pct),
        );
    }
    let _ = writeln!(
        out,
        "\nBurst: 60 sessions of one new app on three fresh engines (10% CPU / 60 GB free, 40% / 40 GB, 70% / 20 GB):\n"
    );
    let _ = writeln!(out, "| policy | sessions per engine |");
    let _ = writeln!(out, "|---|---|");
    for b in &r.burst {
        let _ = writeln!(out, "| {} | {} |", b.policy, list(&b.per_engine));
    }
    let _ = writeln!(
        out,
        "\nTargets (ours beats round robin and random on saturated engine-minutes, sessions placed on a saturated engine and cold loads at every level, peak RAM not higher): {}",
        if r.targets_met { "met" } else { "not met" }
    );
    for n in &r.target_notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

/// The sweep in one row per load level: each figure as round robin / random / least
/// `apps.calls` / rank without ledger / ours.
pub fn summary_markdown(r: &PlacementReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Each cell: round robin / random / least apps.calls / rank without ledger / **ours**.\n"
    );
    let _ = writeln!(
        out,
        "| load | saturated engine-min | placed on saturated | cold loads (load time s) | highest peak RAM % |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for &level in &r.config.levels {
        let at: Vec<&RunResult> = Policy::ALL
            .iter()
            .filter_map(|p| {
                r.runs
                    .iter()
                    .find(|x| x.level == level && x.policy == p.name())
            })
            .collect();
        let cell = |f: &dyn Fn(&RunResult) -> String| {
            let mut parts: Vec<String> = at.iter().map(|x| f(x)).collect();
            if let Some(last) = parts.last_mut() {
                *last = format!("**{last}**");
            }
            parts.join(" / ")
        };
        let _ = writeln!(
            out,
            "| {:.0}% | {} | {} | {} | {} |",
            level * 100.0,
            cell(&|x| x.saturated_engine_minutes.to_string()),
            cell(&|x| x.placed_on_saturated.to_string()),
            cell(&|x| format!("{} ({:.0})", x.cold_loads, x.cold_load_seconds)),
            cell(&|x| x.max_peak_ram().to_string()),
        );
    }
    out
}

/// An SVG line chart: one panel per figure, load level on x, one line per policy.
pub fn svg(r: &PlacementReport) -> String {
    type Metric = (&'static str, fn(&RunResult) -> f64);
    let metrics: [Metric; 4] = [
        ("saturated engine-minutes", |x| x.saturated_engine_minutes),
        ("sessions placed on a saturated engine", |x| {
            x.placed_on_saturated as f64
        }),
        ("cold app loads", |x| x.cold_loads as f64),
        ("peak RAM of any engine, %", RunResult::max_peak_ram),
    ];
    let colors = ["#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#1f77b4"];
    let (pw, ph, margin, top) = (420.0, 240.0, 50.0, 60.0);
    let width = 2.0 * pw + 3.0 * 20.0;
    let height = top + 2.0 * (ph + 20.0) + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="20" y="24" font-size="15">Engine placement over a simulated Qlik day (seed {}), by load level</text>"#,
        r.config.seed
    );
    for (k, p) in Policy::ALL.iter().enumerate() {
        let x = 20.0 + k as f64 * 150.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="36" width="12" height="12" fill="{}"/><text x="{}" y="46">{}</text>"#,
            colors[k],
            x + 16.0,
            p.name()
        );
    }
    let levels = &r.config.levels;
    let (lmin, lmax) = (
        levels.iter().copied().fold(f64::INFINITY, f64::min),
        levels.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    for (m, (title, f)) in metrics.iter().enumerate() {
        let ox = 20.0 + (m % 2) as f64 * (pw + 20.0);
        let oy = top + (m / 2) as f64 * (ph + 20.0);
        let ymax = r.runs.iter().map(f).fold(0.0, f64::max).max(1.0) * 1.05;
        let _ = writeln!(
            s,
            r##"<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/><text x="{}" y="{}" font-size="12">{title}</text>"##,
            ox + 8.0,
            oy + 16.0
        );
        let (px, py, w, h) = (ox + margin, oy + 28.0, pw - margin - 12.0, ph - 28.0 - 30.0);
        let xpos = |l: f64| {
            if lmax > lmin {
                px + (l - lmin) / (lmax - lmin) * w
            } else {
                px + w / 2.0
            }
        };
        let ypos = |v: f64| py + h - v / ymax * h;
        let _ = writeln!(
            s,
            r##"<line x1="{px}" y1="{}" x2="{}" y2="{}" stroke="#888"/><line x1="{px}" y1="{py}" x2="{px}" y2="{}" stroke="#888"/>"##,
            py + h,
            px + w,
            py + h,
            py + h
        );
        for &l in levels {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.0}%</text>"#,
                xpos(l),
                py + h + 14.0,
                l * 100.0
            );
        }
        for frac in [0.0, 0.5, 1.0] {
            let v = ymax / 1.05 * frac;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
                px - 4.0,
                ypos(v) + 4.0,
                v
            );
        }
        for (k, p) in Policy::ALL.iter().enumerate() {
            let pts: Vec<String> = r
                .runs
                .iter()
                .filter(|x| x.policy == p.name())
                .map(|x| format!("{:.1},{:.1}", xpos(x.level), ypos(f(x))))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="{}" points="{}"/>"#,
                colors[k],
                if *p == Policy::Ours { 2.5 } else { 1.5 },
                pts.join(" ")
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}">x: load level (expected peak concurrent sessions / capacity). Generated by lb-bench placement.</text></svg>"#,
        height - 10.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_has_a_storm() {
        assert!(day_curve(9.0) > 5.0 * day_curve(10.5));
        assert!(day_curve(12.5) < day_curve(10.5));
    }

    #[test]
    fn capacity_is_positive() {
        assert!(capacity_sessions(&SimConfig::default()) > 100.0);
    }
}
