//! `POST .../loadbalancing/prioritize` bodies: parsing and ranking against a fixed set of engines.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lb_module_api::{
    parse_healthcheck, prioritize, EngineState, EngineView, PrioritizeRequest, RankPolicy,
    StaticEngineSource,
};

const APP: &str = "f2b68d0c-e0f0-47fb-8fd6-60a95237db78";

fn sample(free: f64, cpu: f64, sessions: u64, saturated: Option<bool>, docs: &[&str]) -> EngineView {
    let mut body = serde_json::json!({
        "version": "12.612.0",
        "mem": {"committed": 1843.5, "allocated": 2245.1, "free": free, "totalPhysical": 32768.0},
        "cpu": {"total": cpu},
        "session": {"active": sessions, "total": sessions},
        "apps": {"active_docs": docs, "in_memory_docs": docs, "loaded_docs": docs},
        "users": {"active": sessions, "total": sessions},
    });
    if let Some(s) = saturated {
        body["saturated"] = s.into();
    }
    let s = parse_healthcheck(body.to_string().as_bytes()).expect("fixed sample parses");
    EngineView::fresh(Arc::new(s))
}

fn source() -> &'static StaticEngineSource {
    static SOURCE: OnceLock<StaticEngineSource> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let mut smoothed = sample(8000.0, 40.0, 9, None, &[]);
        smoothed.smoothed_cpu = Some(25.0);
        StaticEngineSource::new(RankPolicy::default())
            .with("qlik1.example.com", 4747, sample(27012.3, 12.0, 3, Some(false), &[APP]))
            .with("qlik2.example.com", 4747, sample(20000.0, 12.5, 3, Some(false), &[]))
            .with("qlik3.example.com", 4747, sample(1000.0, 95.0, 40, Some(true), &[APP]))
            .with("qlik4.example.com", 4747, smoothed)
            .with("qlik5.example.com", 4747, EngineView::with_state(EngineState::Stale))
            .with("qlik6.example.com", 4747, EngineView::with_state(EngineState::Unreachable))
            .with("10.0.0.7", 4747, sample(16000.0, 5.0, 0, None, &["C:\\ProgramData\\Qlik\\Sense\\Apps\\Sales.qvf"]))
            .with("::1", 4747, sample(4000.0, 50.0, 1, Some(false), &[]))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<PrioritizeRequest>(data) else {
        return;
    };
    let mut offered = req.qlik_sense_engines.clone();
    let app = req.app_name.clone();
    let answer = prioritize(source(), req);
    assert_eq!(answer.app_name, app, "AppName must come back unchanged");
    let mut got = answer.qlik_sense_engines;
    assert_eq!(got.len(), offered.len(), "an engine was dropped or duplicated");
    offered.sort();
    got.sort();
    assert_eq!(got, offered, "the answer is not a reordering of the offered engines");
});
