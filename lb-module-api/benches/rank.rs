//! `rank()` and `PlacementLedger::place()` for 2, 8 and 64 engines, and a whole prioritize
//! call through the router.

use std::hint::black_box;
use std::sync::Arc;

use axum::body::Body;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Request;
use http_body_util::BodyExt;
use lb_module_api::{
    rank, router, EngineSample, EngineView, PlacementLedger, RankPolicy, RouterOptions,
    StaticEngineSource,
};
use tower::ServiceExt;

const APP: &str = "0b2a3c4d-1111-2222-3333-444455556666";

fn sample(i: usize) -> EngineSample {
    let docs: Vec<String> = (0..20)
        .map(|d| format!("{:08x}-1111-2222-3333-{:012x}", i * 31 + d, d))
        .chain(matches!(i % 3, 0).then(|| APP.to_owned()))
        .collect();
    EngineSample {
        version: "12.612.0".into(),
        mem_free: 4000.0 + (i * 977 % 28000) as f64,
        mem_total_physical: Some(32768.0),
        cpu_total: (i * 37 % 95) as f64,
        sessions_active: (i * 13 % 120) as u64,
        in_memory_docs: Some(docs.clone()),
        loaded_docs: docs,
        saturated: None,
        ..EngineSample::default()
    }
}

fn views(n: usize) -> Vec<EngineView> {
    (0..n)
        .map(|i| EngineView::fresh(Arc::new(sample(i))))
        .collect()
}

fn bench_rank(c: &mut Criterion) {
    let policy = RankPolicy::default();
    let mut group = c.benchmark_group("rank");
    for n in [2usize, 8, 64] {
        let v = views(n);
        let mut rotation = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(n), &v, |b, v| {
            b.iter(|| {
                rotation = rotation.wrapping_add(1);
                black_box(rank(black_box(v), Some(APP), &policy, rotation))
            })
        });
    }
    group.finish();
}

/// The ledger's whole placement (observe, rank with pending load, record) on fixed samples: a
/// burst, with the ledger holding up to `placement_ttl_secs` of placements.
fn bench_place(c: &mut Criterion) {
    let policy = RankPolicy::default();
    let mut group = c.benchmark_group("place");
    for n in [2usize, 8, 64] {
        let v = views(n);
        let keys: Vec<String> = (0..n).map(|i| format!("node{i}:4747")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ledger = PlacementLedger::new().with_limits(1024, 512);
        let now = std::time::Instant::now();
        group.bench_with_input(BenchmarkId::from_parameter(n), &v, |b, v| {
            b.iter(|| black_box(ledger.place(&keys, black_box(v), Some(APP), &policy, None, now)))
        });
    }
    group.finish();
}

/// A router over 8 engines and a prioritize body naming them.
fn prioritize_setup() -> (axum::Router, String) {
    let mut source = StaticEngineSource::new(RankPolicy::default());
    let mut engines = Vec::new();
    for (i, v) in views(8).into_iter().enumerate() {
        let host = format!("node{i}.example.com");
        engines.push(format!("wss://{host}:4747"));
        source.insert(&host, 4747, v);
    }
    let app = router(Arc::new(source), "/", RouterOptions::default());
    let body = serde_json::json!({"AppName": APP, "QlikSenseEngines": engines}).to_string();
    (app, body)
}

/// One whole prioritize call through the router, in process.
fn prioritize_once(rt: &tokio::runtime::Runtime, app: &axum::Router, body: &str) {
    rt.block_on(async {
        let req = Request::post("/loadbalancing/prioritize")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        black_box(resp.into_body().collect().await.unwrap().to_bytes())
    });
}

fn bench_prioritize(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (app, body) = prioritize_setup();
    c.bench_function("prioritize_router_oneshot/8", |b| {
        b.iter(|| prioritize_once(&rt, &app, &body))
    });
}

/// Per-call latency distribution of the whole in-process prioritize call for 8 engines (the
/// target is a p99 under 100 us): 20,000 timed calls, printed as percentiles.
fn prioritize_percentiles(_: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (app, body) = prioritize_setup();
    let mut times = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = std::time::Instant::now();
        prioritize_once(&rt, &app, &body);
        times.push(t.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "prioritize_router_oneshot/8 per call over {} calls: p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        times.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        times[times.len() - 1]
    );
}

criterion_group!(
    benches,
    bench_rank,
    bench_place,
    bench_prioritize,
    prioritize_percentiles
);
criterion_main!(benches);
