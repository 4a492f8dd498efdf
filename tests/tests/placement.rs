//! A login storm against three simulated engines with fresh telemetry (10% CPU / 60 GB free,
//! 40% / 40 GB, 70% / 20 GB): 60 new sessions in a burst, all ranked on the same samples.
//! Through least-loaded node selection (new users) and through the module API (the QPS's
//! prioritize calls), no node gets more than two thirds of the burst and the most loaded one
//! gets the fewest: the balancer counts its own recent placements instead of herding onto the
//! node that looked best.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use lb_sim::EngineTelemetry;
use lb_tests::{start_lb_with_engines, SimCluster, SimOptions, User};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "5c1f7a2e-3b4d-4e6f-8a9b-0c1d2e3f4a5b";
const BURST: usize = 60;
const GB: f64 = 1024.0;

/// Telemetry samples are taken once at start and not again during the burst (the next poll
/// is 27 s or more away), as when a storm arrives between two samples.
const TELEMETRY: &str = "[telemetry]\ninterval = \"30s\"\ntimeout = \"2s\"\n";

fn telemetry(cpu: f64, free_gb: f64) -> EngineTelemetry {
    EngineTelemetry {
        cpu,
        mem_free_mb: free_gb * GB,
        mem_total_mb: Some(64.0 * GB),
        saturated: Some(false),
        ..EngineTelemetry::default()
    }
}

async fn three_engines() -> SimCluster {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    sim.node(0).set_telemetry(telemetry(10.0, 60.0));
    sim.node(1).set_telemetry(telemetry(40.0, 40.0));
    sim.node(2).set_telemetry(telemetry(70.0, 20.0));
    sim
}

/// Waits (bounded) until the balancer holds a sample of every engine.
async fn wait_for_telemetry(lb: &lb::Server) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = lb
            .test_handle()
            .engines()
            .iter()
            .filter(|(_, s)| s.sample.is_some())
            .count();
        if fresh == 3 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "telemetry of 3 engines within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The burst's targets: every session placed, none on more than two thirds, the most loaded
/// engine (index 2) the fewest.
fn assert_spread(counts: [usize; 3], what: &str) {
    eprintln!("{what}: sessions per node {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), BURST, "{what}: {counts:?}");
    assert!(
        counts.iter().all(|&n| n * 3 <= BURST * 2),
        "{what}: a node got more than two thirds of the burst: {counts:?}"
    );
    assert!(
        counts[2] < counts[0] && counts[2] < counts[1],
        "{what}: the most loaded node did not get the fewest: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_users_spreads_over_least_loaded_nodes() {
    let sim = three_engines().await;
    let lb = start_lb_with_engines(
        &sim.addrs(),
        &format!(
            "[server]\naccess_log = false\n[balance]\nstrategy = \"least-loaded\"\n{TELEMETRY}"
        ),
    )
    .await;
    wait_for_telemetry(&lb).await;

    // 60 new users at once, each with its own connection and no cookie.
    let proxy = lb.proxy_addr();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        burst.spawn(async move {
            let mut u = User::new(proxy).await;
            let r = u.get("/hub").await;
            assert_eq!(r.status, StatusCode::OK);
            let node = r.node().expect("answered by a node").to_string();
            (node, u)
        });
    }
    let mut counts = [0usize; 3];
    let mut users = Vec::new();
    while let Some(done) = burst.join_next().await {
        let (node, u) = done.expect("user task");
        let i = ["node1", "node2", "node3"]
            .iter()
            .position(|n| *n == node)
            .unwrap_or_else(|| panic!("unknown node {node}"));
        counts[i] += 1;
        users.push((node, u));
    }
    assert_spread(counts, "least-loaded selection");

    // Each user stays on the node it was placed on.
    for (node, u) in users.iter_mut().take(10) {
        let r = u.get("/hub").await;
        assert_eq!(r.node(), Some(node.as_str()), "pinned user moved");
    }
    lb.shutdown().await;
}

async fn prioritize(addr: SocketAddr, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /loadbalancing/prioritize HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.find("\r\n\r\n").map_or("", |i| &text[i + 4..]);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_prioritize_calls_spreads_over_engines() {
    let sim = three_engines().await;
    let lb = start_lb_with_engines(
        &sim.addrs(),
        &format!("[server]\naccess_log = false\n[module]\naddress = \"127.0.0.1:0\"\n{TELEMETRY}"),
    )
    .await;
    wait_for_telemetry(&lb).await;

    let module = lb.module_addr().expect("module listener");
    let engines: Vec<String> = sim.addrs().iter().map(|a| format!("wss://{a}")).collect();
    let body = json!({"AppName": APP, "QlikSenseEngines": engines}).to_string();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let body = body.clone();
        burst.spawn(async move { prioritize(module, &body).await });
    }
    let mut firsts: HashMap<String, usize> = HashMap::new();
    while let Some(done) = burst.join_next().await {
        let (status, v) = done.expect("prioritize task");
        assert_eq!(status, 200, "{v}");
        let order = v["QlikSenseEngines"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut sorted: Vec<String> = order
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_string())
            .collect();
        sorted.sort();
        let mut offered = engines.clone();
        offered.sort();
        assert_eq!(sorted, offered, "every engine offered comes back once");
        assert_eq!(v["AppName"], APP);
        *firsts
            .entry(order[0].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let counts = [0, 1, 2].map(|i| firsts.get(&engines[i]).copied().unwrap_or(0));
    assert_spread(counts, "module API first choices");
    lb.shutdown().await;
}
