//! Engine `GET /engine/healthcheck` bodies, current and old shapes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use lb_module_api::{parse_healthcheck, rank, EngineState, EngineView, RankPolicy};

const GUID: &str = "f2b68d0c-e0f0-47fb-8fd6-60a95237db78";

fuzz_target!(|data: &[u8]| {
    let Ok(sample) = parse_healthcheck(data) else {
        return;
    };
    let _ = sample.holds_app(GUID);
    let _ = sample.holds_app(&GUID.to_ascii_uppercase());
    let _ = sample.holds_app("C:\\ProgramData\\Qlik\\Sense\\Apps\\Sales.qvf");
    let _ = sample.holds_app("/apps/Sales");
    // Each app entry of the sample is held by it.
    for doc in sample.active_docs.iter().chain(&sample.loaded_docs).take(4) {
        let _ = sample.holds_app(doc);
    }
    if let Some(f) = sample.free_fraction() {
        assert!((0.0..=1.0).contains(&f), "free_fraction {f} out of [0, 1]");
    }

    // The parsed sample ranked among fixed engines: always a permutation.
    let s = Arc::new(sample);
    let mut smoothed = EngineView::fresh(s.clone());
    smoothed.smoothed_cpu = Some(50.0);
    let views = [
        EngineView::fresh(s.clone()),
        EngineView::with_state(EngineState::Stale),
        smoothed,
        EngineView::unknown(),
        EngineView::fresh(s),
    ];
    for app in [Some(GUID), None] {
        let mut order = rank(&views, app, &RankPolicy::default(), data.len());
        order.sort_unstable();
        assert_eq!(order, (0..views.len()).collect::<Vec<_>>());
    }
});
