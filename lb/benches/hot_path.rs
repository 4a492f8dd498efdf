//! Hot-path pieces in isolation: node selection for a new session, learned-session lookup,
//! route cookie check, cookie header parsing.
//!
//! `cargo bench -p lb --bench hot_path`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use lb::snapshot::Snapshot;
use lb::sticky::{cookie, route, RouteKey, StickyTable};
use lb::upstream::NodeRegistry;

fn snapshot(nodes: usize, strategy: &str) -> Snapshot {
    let mut t =
        format!("[listener]\naddress = \"127.0.0.1:0\"\n[balance]\nstrategy = \"{strategy}\"\n");
    for i in 0..nodes {
        t.push_str(&format!(
            "[[nodes]]\nid = \"qps{i}\"\naddress = \"10.0.0.{}:443\"\n",
            i + 1
        ));
    }
    let c = lb_config::Config::from_toml(&t, Path::new(".")).unwrap();
    let tls = lb::tls::load(&c).unwrap();
    Snapshot::build(
        c,
        tls,
        None,
        &NodeRegistry::default(),
        RouteKey::new(b"bench-route-key-0123456789"),
        None,
    )
}

fn guid(i: u64) -> String {
    format!("f2b68d0c-e0f0-47fb-8fd6-{i:012x}")
}

fn bench(c: &mut Criterion) {
    let now = lb::clock::now_ms();
    for (n, strategy) in [
        (3, "round-robin"),
        (8, "round-robin"),
        (8, "least-connections"),
    ] {
        let snap = snapshot(n, strategy);
        c.bench_function(&format!("select_new/{strategy}/{n}"), |b| {
            b.iter(|| black_box(snap.select_new(black_box(now), None)))
        });
    }

    let table = StickyTable::new(2_000_000, 3600);
    for i in 0..1_000_000u64 {
        table.learn(guid(i).as_bytes(), (i % 8) as u32);
    }
    let hit = guid(123_457);
    let miss = guid(9_999_999);
    c.bench_function("sticky_lookup/hit_1M", |b| {
        b.iter(|| black_box(table.lookup(black_box(hit.as_bytes()))))
    });
    c.bench_function("sticky_lookup/miss_1M", |b| {
        b.iter(|| black_box(table.lookup(black_box(miss.as_bytes()))))
    });

    let key = RouteKey::new(b"bench-route-key-0123456789");
    let value = key.value_for("qps3");
    let expected = value.clone().into_bytes();
    c.bench_function("route_cookie/check_prepared", |b| {
        b.iter(|| {
            black_box(route::matches(
                black_box(&expected),
                black_box(value.as_bytes()),
            ))
        })
    });
    c.bench_function("route_cookie/verify_hmac", |b| {
        b.iter(|| black_box(key.verify(black_box(value.as_bytes()))))
    });

    let header = format!(
        "_ga=GA1.2.3; X-Qlik-Session={}; QLB_ROUTE={value}; theme=dark",
        guid(42)
    );
    c.bench_function("cookie/pairs_4", |b| {
        b.iter(|| black_box(cookie::pairs(black_box(header.as_bytes())).count()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
