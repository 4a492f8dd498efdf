//! Active health checks over real sockets: a stopped node goes down after `fall` failed
//! checks and its users move; restarted, it comes back after `rise` passed checks and takes a
//! small share of new sessions during slow start. Drain and maintenance are independent of the
//! health verdict.
//!
//! Every test names its nodes with its own prefix: the metrics registry is shared by the tests
//! of this binary.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lb::upstream::NodeState;
use lb::Server;
use lb_tests::{SimCluster, SimOptions, User};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

/// Checks every 100 ms; a failed request keeps a node out for only 100 ms, so that what the
/// tests see is the active checks' verdict.
const FAST: &str = "interval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 3\n\
                    passive_fail_timeout = \"100ms\"\n";

/// A balancer with an admin listener in front of `sim`, nodes named `<prefix>1`, ...
async fn start(prefix: &str, sim: &SimCluster, health: &str) -> Server {
    let mut s = String::from(
        "[listener]\naddress = \"127.0.0.1:0\"\n[server]\naccess_log = false\n\
         [admin]\naddress = \"127.0.0.1:0\"\n[health]\n",
    );
    s.push_str(health);
    s.push('\n');
    for (i, a) in sim.addrs().iter().enumerate() {
        s.push_str(&format!(
            "[[nodes]]\nid = \"{prefix}{}\"\naddress = \"{a}\"\n",
            i + 1
        ));
    }
    let config = lb_config::Config::from_toml(&s, Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{s}"));
    Server::start(config).await.expect("balancer starts")
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    let resp = tokio::time::timeout(T, client.request(req))
        .await
        .expect("admin answered in time")
        .expect("admin request");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn post(addr: SocketAddr, path: &str) -> Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    let resp = client.request(req).await.expect("admin request");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

async fn node_status(lb: &Server, id: &str) -> Value {
    let (code, body) = get(lb.admin_addr().unwrap(), &format!("/nodes/{id}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The value of `lb_health_checks_total` of `node` and `result` in the `/metrics` text.
async fn checks(lb: &Server, node: &str, result: &str) -> u64 {
    let (_, text) = get(lb.admin_addr().unwrap(), "/metrics").await;
    let (n, r) = (format!("node=\"{node}\""), format!("result=\"{result}\""));
    text.lines()
        .filter(|l| l.starts_with("lb_health_checks_total{") && l.contains(&n) && l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits until the active health verdict of `state` is `up`.
async fn wait_health(state: &Arc<NodeState>, up: bool) {
    tokio::time::timeout(T, async {
        while state.healthy() != up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} never became {}",
            state.id,
            if up { "up" } else { "down" }
        )
    });
}

/// Pins `n` users; returns them with the simulated node that serves each.
async fn users(lb: &Server, n: usize) -> Vec<(User, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        let node = r.node().unwrap().to_string();
        out.push((u, node));
    }
    out
}

/// New sessions per simulated node, for `n` new users.
async fn new_sessions(lb: &Server, n: usize) -> std::collections::HashMap<String, usize> {
    let mut per = std::collections::HashMap::new();
    for (_, node) in users(lb, n).await {
        *per.entry(node).or_insert(0) += 1;
    }
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_after_fall_up_after_rise_then_slow_start() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start("fall", &sim, &format!("{FAST}slow_start = \"300s\"\n")).await;
    let state = lb.test_handle().node("fall2").unwrap();
    let mut pinned = users(&lb, 9).await;
    assert!(pinned.iter().any(|(_, n)| n == "node2"));
    assert!(state.healthy());

    sim.node(1).stop().await;
    wait_health(&state, false).await;
    assert!(
        checks(&lb, "fall2", "fail").await >= 3,
        "down before `fall` failed checks"
    );
    let s = node_status(&lb, "fall2").await;
    assert_eq!(s["health"], "down");
    assert_eq!(s["accepts_new"], false);
    assert_eq!(s["admin_state"], "ready");
    // Its users are served elsewhere; the others stay where they are.
    for (u, node) in pinned.iter_mut() {
        let r = u.get("/hub").await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
            "{}",
            r.status
        );
        assert_ne!(r.node(), Some("node2"));
        if node != "node2" {
            assert_eq!(r.node(), Some(node.as_str()), "a user of a live node moved");
        }
    }
    let per = new_sessions(&lb, 6).await;
    assert!(!per.contains_key("node2"), "{per:?}");
    let (code, _) = get(lb.admin_addr().unwrap(), "/ready").await;
    assert_eq!(code, StatusCode::OK, "two nodes still take sessions");

    let ok_before = checks(&lb, "fall2", "ok").await;
    sim.node(1).restart().await.unwrap();
    wait_health(&state, true).await;
    assert!(
        checks(&lb, "fall2", "ok").await >= ok_before + 2,
        "up before `rise` passed checks"
    );
    assert!(lb::upstream::in_slow_start(
        &state,
        lb::clock::now_ms(),
        Duration::from_secs(300)
    ));
    // Wait until the node takes new sessions again (a passive mark may linger briefly).
    tokio::time::timeout(T, async {
        while node_status(&lb, "fall2").await["accepts_new"] != true {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node takes new sessions again");

    // Slow start: a small share of new sessions at first.
    let per = new_sessions(&lb, 60).await;
    let back = per.get("node2").copied().unwrap_or(0);
    let peers = ["node1", "node3"].map(|n| per.get(n).copied().unwrap_or(0));
    assert!(
        back < peers[0] && back < peers[1],
        "during slow start the node took as many new sessions as its peers: {per:?}"
    );
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_zero_means_full_share_at_once() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start("nosl", &sim, &format!("{FAST}slow_start = \"0s\"\n")).await;
    let state = lb.test_handle().node("nosl2").unwrap();
    sim.node(1).stop().await;
    wait_health(&state, false).await;
    sim.node(1).restart().await.unwrap();
    wait_health(&state, true).await;
    tokio::time::timeout(T, async {
        while node_status(&lb, "nosl2").await["accepts_new"] != true {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node takes new sessions again");
    let per = new_sessions(&lb, 10).await;
    // An even share: about half of the new sessions.
    assert!(per.get("node2").copied().unwrap_or(0) >= 4, "{per:?}");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_check_with_an_empty_path() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start("tcp", &sim, &format!("{FAST}path = \"\"\n")).await;
    let state = lb.test_handle().node("tcp1").unwrap();
    tokio::time::timeout(T, async {
        while checks(&lb, "tcp1", "ok").await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a connect check passes");
    // A TCP check sends no request: the node has seen none.
    assert_eq!(sim.node(0).stats().requests, 0);
    sim.node(0).stop().await;
    wait_health(&state, false).await;
    sim.node(0).restart().await.unwrap();
    wait_health(&state, true).await;
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_outside_the_expected_range_fail() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    // The simulated nodes answer 200 to an anonymous GET /.
    let lb = start(
        "range",
        &sim,
        &format!("{FAST}expect_status = \"500-599\"\n"),
    )
    .await;
    for id in ["range1", "range2"] {
        wait_health(&lb.test_handle().node(id).unwrap(), false).await;
    }
    let (code, body) = get(lb.admin_addr().unwrap(), "/ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::SERVICE_UNAVAILABLE);

    // Checks switched off by a reload: the nodes are up again.
    let mut text = String::from(
        "[listener]\naddress = \"127.0.0.1:0\"\n[server]\naccess_log = false\n\
         [admin]\naddress = \"127.0.0.1:0\"\n[health]\nenabled = false\n",
    );
    for (i, a) in sim.addrs().iter().enumerate() {
        text.push_str(&format!(
            "[[nodes]]\nid = \"range{}\"\naddress = \"{a}\"\n",
            i + 1
        ));
    }
    lb.reload(lb_config::Config::from_toml(&text, Path::new(".")).unwrap())
        .unwrap();
    for id in ["range1", "range2"] {
        wait_health(&lb.test_handle().node(id).unwrap(), true).await;
    }
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_maint_are_kept_across_health_changes() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start("adm", &sim, FAST).await;
    let admin = lb.admin_addr().unwrap();
    let mut pinned = users(&lb, 9).await;

    // Drain node2: its users stay, new users avoid it.
    assert_eq!(
        post(admin, "/nodes/adm2/drain").await["admin_state"],
        "drain"
    );
    for (u, node) in pinned.iter_mut() {
        assert_eq!(u.get("/hub").await.node(), Some(node.as_str()));
    }
    assert!(!new_sessions(&lb, 6).await.contains_key("node2"));

    // Maint node3: its users move, the others stay.
    assert_eq!(
        post(admin, "/nodes/adm3/maint").await["admin_state"],
        "maint"
    );
    for (u, node) in pinned.iter_mut() {
        let r = u.get("/hub").await;
        assert_ne!(r.node(), Some("node3"));
        if node != "node3" {
            assert_eq!(r.node(), Some(node.as_str()));
        }
    }
    assert_eq!(
        new_sessions(&lb, 6).await.keys().collect::<Vec<_>>(),
        ["node1"]
    );

    // Both nodes go down and come back: checks go on whatever the admin state, and the admin
    // state is kept.
    for i in [1, 2] {
        sim.node(i).stop().await;
    }
    for id in ["adm2", "adm3"] {
        wait_health(&lb.test_handle().node(id).unwrap(), false).await;
    }
    assert_eq!(node_status(&lb, "adm2").await["health"], "down");
    for i in [1, 2] {
        sim.node(i).restart().await.unwrap();
    }
    for id in ["adm2", "adm3"] {
        wait_health(&lb.test_handle().node(id).unwrap(), true).await;
    }
    let s2 = node_status(&lb, "adm2").await;
    let s3 = node_status(&lb, "adm3").await;
    assert_eq!(
        (&s2["admin_state"], &s2["accepts_new"]),
        (&"drain".into(), &false.into())
    );
    assert_eq!(
        (&s3["admin_state"], &s3["accepts_new"]),
        (&"maint".into(), &false.into())
    );
    assert_eq!(
        new_sessions(&lb, 6).await.keys().collect::<Vec<_>>(),
        ["node1"]
    );
    lb.shutdown().await;
}
