//! The Qlik load balancing module API and least-loaded selection, end to end: simulated
//! engines report telemetry, the balancer polls it, the module ranks engines for the QPS and
//! the proxy picks nodes for new users.

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use lb_sim::EngineTelemetry;
use lb_tests::{start_lb_with_engines, SimCluster, SimOptions, User};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "8a4f1b3c-1d2e-4f50-9a6b-7c8d9e0f1a2b";

fn telemetry(cpu: f64, free: f64) -> EngineTelemetry {
    EngineTelemetry {
        cpu,
        mem_free_mb: free,
        mem_total_mb: Some(32_768.0),
        saturated: Some(false),
        ..EngineTelemetry::default()
    }
}

async fn prioritize(addr: std::net::SocketAddr, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /loadbalancing/prioritize HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n\
         X-Qlik-User: UserDirectory=CORP; UserId=jane\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text[9..12].parse().unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Polls `f` until it returns true or the bound passes.
async fn eventually(bound: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_ranks_engines_from_live_telemetry() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    sim.node(0).set_telemetry(telemetry(70.0, 8_000.0));
    sim.node(1).set_telemetry(telemetry(10.0, 30_000.0));
    sim.node(2).set_telemetry(telemetry(40.0, 16_000.0));
    let lb = start_lb_with_engines(
        &sim.addrs(),
        "[module]\naddress = \"127.0.0.1:0\"\n[telemetry]\ninterval = \"100ms\"\ntimeout = \"500ms\"\n",
    )
    .await;
    let m = lb.module_addr().unwrap();
    let engines: Vec<String> = sim.addrs().iter().map(|a| format!("wss://{a}")).collect();
    let body = json!({"AppName": APP, "QlikSenseEngines": engines, "Extra": 1}).to_string();
    let want =
        |order: [usize; 3]| -> Vec<String> { order.iter().map(|&i| engines[i].clone()).collect() };

    // Least loaded first: node2, then node3, then node1.
    assert!(
        eventually(Duration::from_secs(5), async || {
            let (status, v) = prioritize(m, &body).await;
            status == 200 && v["QlikSenseEngines"] == json!(want([1, 2, 0]))
        })
        .await,
        "initial order"
    );
    let (_, v) = prioritize(m, &body).await;
    assert_eq!(v["AppName"], APP);

    // Load moves: node2 busy. The order follows within two poll intervals (plus slack).
    sim.node(1).set_telemetry(telemetry(85.0, 2_000.0));
    assert!(
        eventually(Duration::from_millis(2_000), async || {
            prioritize(m, &body).await.1["QlikSenseEngines"] == json!(want([2, 0, 1]))
        })
        .await,
        "order follows telemetry"
    );

    // An engine holding the app comes first (it has enough free memory).
    let mut t = telemetry(60.0, 6_000.0);
    t.loaded_apps = vec![APP.to_string()];
    sim.node(0).set_telemetry(t);
    assert!(
        eventually(Duration::from_secs(2), async || {
            prioritize(m, &body).await.1["QlikSenseEngines"][0] == json!(engines[0])
        })
        .await,
        "app holder first"
    );

    // A saturated engine goes last.
    let mut t = telemetry(5.0, 30_000.0);
    t.saturated = Some(true);
    sim.node(2).set_telemetry(t);
    assert!(
        eventually(Duration::from_secs(2), async || {
            prioritize(m, &body).await.1["QlikSenseEngines"][2] == json!(engines[2])
        })
        .await,
        "saturated last"
    );

    // A stopped engine goes after the live ones; unknown engines stay in the answer.
    sim.node(0).stop().await;
    let mut offered = engines.clone();
    offered.push("wss://unknown.example.com:4747".into());
    let body2 = json!({"AppName": APP, "QlikSenseEngines": offered}).to_string();
    assert!(
        eventually(Duration::from_secs(3), async || {
            let v = prioritize(m, &body2).await.1;
            let order = v["QlikSenseEngines"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            order.len() == 4
                && order[0] == json!(engines[1])
                && order.iter().position(|e| *e == json!(engines[0]))
                    > order.iter().position(|e| *e == json!(engines[2]))
        })
        .await,
        "stopped engine after live ones"
    );

    // Malformed input: 400 with a JSON error.
    let (status, v) = prioritize(m, "{\"AppName\": 5}").await;
    assert_eq!(status, 400);
    assert!(v["error"].is_string());
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_selection_follows_load_and_avoids_saturated_nodes() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    sim.node(0).set_telemetry(telemetry(50.0, 10_000.0));
    sim.node(1).set_telemetry(telemetry(5.0, 30_000.0));
    sim.node(2).set_telemetry(telemetry(50.0, 10_000.0));
    // `placement_spread = 0`: the best node always comes first (the default draws the first
    // place among close nodes by headroom, see tests/placement.rs).
    let lb = start_lb_with_engines(
        &sim.addrs(),
        "[balance]\nstrategy = \"least-loaded\"\n[telemetry]\ninterval = \"100ms\"\n\
         [ranking]\nplacement_spread = 0\n",
    )
    .await;
    // Wait for telemetry to arrive.
    assert!(
        eventually(Duration::from_secs(5), async || {
            lb.test_handle()
                .engines()
                .iter()
                .filter(|(_, s)| s.sample.is_some())
                .count()
                == 3
        })
        .await
    );
    let mut pinned = Vec::new();
    for _ in 0..5 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(
            r.node(),
            Some("node2"),
            "new users go to the least loaded node"
        );
        pinned.push(u);
    }
    // node2 saturates: no new sessions there while others are free; its users stay.
    let mut t = telemetry(95.0, 1_000.0);
    t.saturated = Some(true);
    sim.node(1).set_telemetry(t);
    assert!(
        eventually(Duration::from_secs(3), async || {
            lb.test_handle().node("qps2").is_some_and(|s| s.saturated())
        })
        .await
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        *seen.entry(r.node().unwrap().to_string()).or_default() += 1;
    }
    assert!(
        !seen.contains_key("node2"),
        "a saturated node took new users: {seen:?}"
    );
    assert!(
        seen.len() == 2,
        "equal engines share the new users: {seen:?}"
    );
    for u in pinned.iter_mut() {
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.node(), Some("node2"), "pinned users stay on their node");
    }
    lb.shutdown().await;
}
