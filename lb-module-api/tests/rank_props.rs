//! Properties of `rank()` over generated engines.

use std::sync::Arc;

use lb_module_api::{rank, EngineSample, EngineState, EngineView, RankPolicy};
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

fn is_saturated_fresh(v: &EngineView, policy: &RankPolicy) -> Option<bool> {
    match &v.state {
        EngineState::Fresh(s) => Some(policy.is_saturated(s, v.cpu_percent().unwrap())),
        _ => None,
    }
}

proptest! {
    #[test]
    fn output_is_a_permutation(
        views in proptest::collection::vec(view_strategy(), 0..40),
        rotation in any::<usize>(),
        with_app in any::<bool>(),
    ) {
        let order = rank(&views, with_app.then_some(APP), &RankPolicy::default(), rotation);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..views.len()).collect::<Vec<_>>());
    }

    #[test]
    fn saturated_never_precedes_unsaturated_fresh(
        views in proptest::collection::vec(view_strategy(), 0..40),
        rotation in any::<usize>(),
        with_app in any::<bool>(),
    ) {
        let policy = RankPolicy::default();
        let order = rank(&views, with_app.then_some(APP), &policy, rotation);
        let mut seen_saturated = false;
        let mut seen_not_fresh = false;
        for &i in &order {
            match is_saturated_fresh(&views[i], &policy) {
                Some(true) => {
                    prop_assert!(!seen_not_fresh, "saturated fresh engine after a non-fresh one");
                    seen_saturated = true;
                }
                Some(false) => {
                    prop_assert!(!seen_saturated, "unsaturated engine {} after a saturated one", i);
                    prop_assert!(!seen_not_fresh, "fresh engine {} after a non-fresh one", i);
                }
                None => seen_not_fresh = true,
            }
        }
    }

    #[test]
    fn identical_engines_share_first_place(
        sample in sample_strategy(),
        n in 1usize..12,
        start in 0usize..(usize::MAX / 2),
    ) {
        let shared = Arc::new(sample);
        let views: Vec<EngineView> = (0..n).map(|_| EngineView::fresh(shared.clone())).collect();
        let mut firsts = vec![0usize; n];
        let rounds = 5;
        for r in 0..n * rounds {
            let order = rank(&views, Some(APP), &RankPolicy::default(), start.wrapping_add(r));
            firsts[order[0]] += 1;
        }
        prop_assert!(firsts.iter().all(|&c| c == rounds), "{:?}", firsts);
    }
}
