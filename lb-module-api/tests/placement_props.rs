//! Properties of `rank_placed()` and the `PlacementLedger` over generated engines, pending
//! load and seeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_module_api::{
    draw_from_seed, rank, rank_placed, EngineSample, EngineState, EngineView, Pending, Placement,
    PlacementCost, PlacementLedger, RankPolicy,
};
use proptest::prelude::*;

const APP: &str = "0b2a3c4d-1111-2222-3333-444455556666";

fn sample_strategy() -> impl Strategy<Value = EngineSample> {
    (
        0.0f64..70000.0,
        prop::option::of(1.0f64..70000.0),
        0.0f64..100.0,
        0u64..300,
        prop::option::of(any::<bool>()),
        any::<bool>(),
    )
        .prop_map(
            |(free, total, cpu, sessions, saturated, holds)| EngineSample {
                mem_free: free,
                mem_total_physical: total,
                cpu_total: cpu,
                sessions_active: sessions,
                saturated,
                loaded_docs: if holds { vec![APP.to_owned()] } else { vec![] },
                ..EngineSample::default()
            },
        )
}

fn view_strategy() -> impl Strategy<Value = EngineView> {
    prop_oneof![
        4 => (sample_strategy(), prop::option::of(0.0f64..100.0)).prop_map(|(s, smoothed)| EngineView {
            state: EngineState::Fresh(Arc::new(s)),
            smoothed_cpu: smoothed,
        }),
        1 => Just(EngineView::with_state(EngineState::Stale)),
        1 => Just(EngineView::with_state(EngineState::Unreachable)),
        1 => Just(EngineView::unknown()),
    ]
}

fn pending_strategy() -> impl Strategy<Value = Pending> {
    (
        0u32..100,
        prop_oneof![0.0f64..50000.0, Just(f64::NAN), Just(-1.0)],
        prop_oneof![0.0f64..200.0, Just(f64::INFINITY)],
        any::<bool>(),
    )
        .prop_map(|(sessions, ram_mb, cpu_percent, app)| Pending {
            sessions,
            ram_mb,
            cpu_percent,
            apps: if app { vec![APP.to_owned()] } else { vec![] },
        })
}

fn saturated_in_sample(v: &EngineView, policy: &RankPolicy) -> Option<bool> {
    match &v.state {
        EngineState::Fresh(s) => Some(policy.is_saturated(s, v.cpu_percent().unwrap())),
        _ => None,
    }
}

fn cost() -> PlacementCost {
    PlacementCost::from_policy(&RankPolicy::default())
}

proptest! {
    /// Never drops or repeats an engine, whatever the pending load and seed.
    #[test]
    fn never_drops_an_engine(
        views in proptest::collection::vec(view_strategy(), 0..24),
        pending in proptest::collection::vec(pending_strategy(), 0..24),
        seed in any::<u64>(),
        rotation in any::<usize>(),
        with_app in any::<bool>(),
    ) {
        let p = Placement { pending: &pending, cost: cost(), rotation, draw: draw_from_seed(seed) };
        let order = rank_placed(&views, with_app.then_some(APP), &RankPolicy::default(), &p);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..views.len()).collect::<Vec<_>>());
    }

    /// An engine saturated by its own sample never comes before a fresh engine that is not
    /// saturated and not pushed over a threshold by pending load; stale, unknown and
    /// unreachable engines come after every fresh one.
    #[test]
    fn saturated_still_last(
        views in proptest::collection::vec(view_strategy(), 1..24),
        seed in any::<u64>(),
        with_app in any::<bool>(),
    ) {
        let policy = RankPolicy::default();
        let p = Placement { pending: &[], cost: cost(), rotation: 0, draw: draw_from_seed(seed) };
        let order = rank_placed(&views, with_app.then_some(APP), &policy, &p);
        let pos = |i: usize| order.iter().position(|&k| k == i).unwrap();
        for (i, vi) in views.iter().enumerate() {
            for (j, vj) in views.iter().enumerate() {
                match (saturated_in_sample(vi, &policy), saturated_in_sample(vj, &policy)) {
                    (Some(false), Some(true)) => prop_assert!(pos(i) < pos(j)),
                    (Some(_), None) => prop_assert!(pos(i) < pos(j)),
                    _ => {}
                }
            }
        }
    }

    /// The same inputs and seed give the same order; no pending load and no spread give
    /// `rank()`'s order.
    #[test]
    fn deterministic_and_compatible(
        views in proptest::collection::vec(view_strategy(), 0..24),
        pending in proptest::collection::vec(pending_strategy(), 0..24),
        seed in any::<u64>(),
        rotation in any::<usize>(),
    ) {
        let policy = RankPolicy::default();
        let p = Placement { pending: &pending, cost: cost(), rotation, draw: draw_from_seed(seed) };
        prop_assert_eq!(
            rank_placed(&views, Some(APP), &policy, &p),
            rank_placed(&views, Some(APP), &policy, &p)
        );
        let strict = RankPolicy { placement_spread: 0.0, ..RankPolicy::default() };
        let none = Placement { pending: &[], cost: cost(), rotation, draw: draw_from_seed(seed) };
        let base = rank(&views, None, &strict, rotation);
        prop_assert_eq!(rank_placed(&views, None, &strict, &none), base);
    }

    /// A ledger never drops an engine either, over a sequence of calls with samples that come
    /// and go, and stays within its bounds.
    #[test]
    fn ledger_sequences(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(view_strategy(), 0..6), 0u64..20_000),
            1..40,
        ),
        seed in any::<u64>(),
    ) {
        let policy = RankPolicy::default();
        let ledger = PlacementLedger::with_seed(seed).with_limits(4, 8);
        let keys = ["e1", "e2", "e3", "e4", "e5", "e6"];
        let mut now = Instant::now();
        for (views, step_ms) in rounds {
            now += Duration::from_millis(step_ms);
            let order = ledger.place(&keys[..views.len()], &views, Some(APP), &policy, None, now);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..views.len()).collect::<Vec<_>>());
            prop_assert!(ledger.engines() <= 4);
            for k in keys {
                prop_assert!(ledger.pending(k, &policy, now).sessions <= 8);
            }
        }
    }
}

fn burst_engines() -> Vec<EngineView> {
    [(10.0, 60.0), (40.0, 40.0), (70.0, 20.0)]
        .iter()
        .map(|&(cpu, free_gb)| {
            EngineView::fresh(Arc::new(EngineSample {
                mem_free: free_gb * 1024.0,
                mem_total_physical: Some(65536.0),
                cpu_total: cpu,
                saturated: Some(false),
                ..EngineSample::default()
            }))
        })
        .collect()
}

/// The burst target holds for every seed tried: of 60 sessions on one sample, no engine gets
/// more than two thirds, and the most loaded engine gets the fewest.
#[test]
fn burst_target_for_many_seeds() {
    let views = burst_engines();
    let policy = RankPolicy::default();
    let keys = ["a", "b", "c"];
    let now = Instant::now();
    let mut worst_max = 0;
    for seed in 0..500u64 {
        let ledger = PlacementLedger::with_seed(seed);
        let mut firsts = [0u32; 3];
        for _ in 0..60 {
            firsts[ledger.place(&keys, &views, Some(APP), &policy, None, now)[0]] += 1;
        }
        assert!(firsts.iter().all(|&n| n <= 40), "seed {seed}: {firsts:?}");
        assert!(
            firsts[2] < firsts[0] && firsts[2] < firsts[1],
            "seed {seed}: {firsts:?}"
        );
        worst_max = worst_max.max(firsts[0]);
    }
    assert!(worst_max <= 40);
}

/// Without the ledger (the plain ranking), the same burst herds: the baseline the ledger fixes.
#[test]
fn plain_ranking_herds() {
    let views = burst_engines();
    let policy = RankPolicy::default();
    let firsts: Vec<usize> = (0..60)
        .map(|r| rank(&views, Some(APP), &policy, r)[0])
        .collect();
    assert!(firsts.iter().all(|&i| i == 0));
}

/// Headroom-weighted picks among equal engines are fair on average.
#[test]
fn equal_engines_share() {
    let s = Arc::new(EngineSample {
        mem_free: 60000.0,
        mem_total_physical: Some(65536.0),
        cpu_total: 10.0,
        ..EngineSample::default()
    });
    let views = vec![EngineView::fresh(s.clone()), EngineView::fresh(s)];
    let policy = RankPolicy::default();
    let mut a = 0;
    for seed in 0..1000u64 {
        let p = Placement {
            pending: &[],
            cost: cost(),
            rotation: 0,
            draw: draw_from_seed(seed),
        };
        if rank_placed(&views, None, &policy, &p)[0] == 0 {
            a += 1;
        }
    }
    assert!((400..=600).contains(&a), "{a}");
}

fn weird() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0f64..100_000.0,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        Just(0.0),
    ]
}

proptest! {
    /// No policy value, however odd, makes the ledger panic or drop an engine.
    #[test]
    fn ledger_survives_odd_policies(
        ram in weird(), app_ram in weird(), cpu in weird(), ttl in weird(), window in weird(),
        spread in weird(), min_headroom in weird(), learn in any::<bool>(),
        views in proptest::collection::vec(view_strategy(), 0..6),
        calls in 1usize..20,
    ) {
        let policy = RankPolicy {
            placement_session_ram_mb: ram,
            placement_app_ram_mb: app_ram,
            placement_session_cpu_percent: cpu,
            placement_ttl_secs: ttl,
            placement_cpu_window_secs: window,
            placement_spread: spread,
            affinity_min_headroom: min_headroom,
            placement_learn: learn,
            ..RankPolicy::default()
        };
        let ledger = PlacementLedger::new();
        let keys = ["e1", "e2", "e3", "e4", "e5", "e6"];
        let mut now = Instant::now();
        for _ in 0..calls {
            now += Duration::from_secs(1);
            let order = ledger.place(&keys[..views.len()], &views, Some(APP), &policy, None, now);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..views.len()).collect::<Vec<_>>());
        }
    }

    /// A new sample taken a CPU window or more after the last placement leaves nothing pending
    /// from before it.
    #[test]
    fn a_late_sample_clears_the_estimates(
        placements in 1usize..50,
        gap_s in 30u64..500,
        seed in any::<u64>(),
    ) {
        let policy = RankPolicy::default();
        let ledger = PlacementLedger::with_seed(seed);
        let views = burst_engines();
        let keys = ["a", "b", "c"];
        let t0 = Instant::now();
        for _ in 0..placements {
            ledger.place(&keys, &views, Some(APP), &policy, None, t0);
        }
        // New samples for every engine (new Arcs), seen by a ranking whose first place goes to
        // another, idle engine.
        let fresh = burst_engines();
        let t1 = t0 + Duration::from_secs(gap_s);
        let mut offered = fresh.clone();
        offered.insert(0, EngineView::fresh(Arc::new(EngineSample {
            mem_free: 1e9,
            mem_total_physical: Some(1e9),
            cpu_total: 0.0,
            ..EngineSample::default()
        })));
        let keys_with_other = ["other", "a", "b", "c"];
        let strict = RankPolicy { placement_spread: 0.0, ..RankPolicy::default() };
        let order = ledger.place(&keys_with_other, &offered, Some(APP), &strict, None, t1);
        prop_assert_eq!(order[0], 0);
        for k in keys {
            prop_assert!(ledger.pending(k, &policy, t1).is_empty(), "{}", k);
        }
    }
}
