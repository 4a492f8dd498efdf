//! The admin API over real sockets: `/status` after traffic, drain / ready / maint of a node,
//! unknown nodes, `/metrics`, `/ready`, `/reload` and the bearer token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lb_bench::client::{self, WsConnect};
use lb_tests::{start_lb, SimCluster, SimOptions, User};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "[server]\naccess_log = false\n[admin]\naddress = \"127.0.0.1:0\"\n";
const T: Duration = Duration::from_secs(10);

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn call(addr: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = tokio::time::timeout(T, client.request(req.body(Full::default()).unwrap()))
        .await
        .expect("admin answered in time")
        .expect("admin request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn status(admin: SocketAddr) -> Value {
    let a = call(admin, Method::GET, "/status", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.json()
}

fn node<'a>(s: &'a Value, id: &str) -> &'a Value {
    s["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("node {id} in {s}"))
}

/// Polls `/status` until `pred` holds (the figures are updated by other tasks).
async fn status_until(admin: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = status(admin).await;
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `qpsN` is the balancer's id of the simulated `nodeN`.
fn sim_name(id: &str) -> String {
    id.replace("qps", "node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_traffic() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), ADMIN).await;
    let admin = lb.admin_addr().expect("admin listener");

    let mut users = Vec::new();
    let mut per_node: HashMap<String, u64> = HashMap::new();
    for _ in 0..6 {
        let mut u = User::new(lb.proxy_addr()).await;
        let n = u.get("/hub").await.node().unwrap().to_string();
        assert_eq!(u.get("/qmc").await.node(), Some(n.as_str()));
        *per_node.entry(n).or_default() += 1;
        users.push(u);
    }
    let (mut ws, ws_node) = match client::ws_connect(
        &users[0].target,
        "/app/status-test",
        &users[0].jar,
        None,
        1 << 16,
    )
    .await
    .unwrap()
    {
        WsConnect::Open(ws, node) => (*ws, node.unwrap()),
        WsConnect::Refused(s, _) => panic!("websocket refused: {s}"),
    };
    ws.send(Message::text("hello")).await.unwrap();

    let s = status_until(admin, "the websocket to show", |s| {
        s["open_websockets"] == 1
    })
    .await;
    assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(s["reload"]["ok"], true);
    assert!(s["reload"]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert!(s["reload"]["at_unix_ms"].as_u64().is_some());
    assert!(s["uptime_seconds"].as_u64().is_some());
    // Six users' keep-alive connections plus the WebSocket's.
    assert!(s["open_connections"].as_i64().unwrap() >= 6, "{s}");
    assert!(s["sticky"]["sessions"].as_u64().unwrap() >= 6, "{s}");
    assert!(s["sticky"]["evictions"].as_u64().is_some());
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let mut pinned = 0;
    for (i, n) in nodes.iter().enumerate() {
        let id = format!("qps{}", i + 1);
        assert_eq!(n["id"], id.as_str());
        assert_eq!(n["address"], sim.node(i).addr().to_string().as_str());
        assert_eq!(n["health"], "up");
        assert_eq!(n["admin_state"], "ready");
        assert_eq!(n["retiring"], false);
        assert_eq!(n["accepts_new"], true);
        assert_eq!(n["in_flight"], 0);
        assert!(n["engine"].is_null(), "no telemetry configured: {n}");
        let users_here = per_node.get(&sim_name(&id)).copied().unwrap_or(0);
        // Each user made two requests; the health checks do not go through the proxy.
        let requests = n["requests_total"].as_u64().unwrap();
        assert!(
            (2 * users_here..=2 * users_here + 1).contains(&requests),
            "{n}"
        );
        assert_eq!(n["pinned_sessions"].as_u64().unwrap(), users_here, "{n}");
        assert_eq!(n["failures_total"], 0);
        assert_eq!(n["redispatches_total"], 0);
        let ws_here = u64::from(sim_name(&id) == ws_node);
        assert_eq!(n["open_websockets"].as_u64().unwrap(), ws_here, "{n}");
        pinned += n["pinned_sessions"].as_u64().unwrap();
    }
    assert_eq!(pinned, 6);

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    status_until(admin, "the websocket to close", |s| {
        s["open_websockets"] == 0
    })
    .await;
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ready_and_maint() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), ADMIN).await;
    let admin = lb.admin_addr().unwrap();

    let mut users = Vec::new();
    for _ in 0..9 {
        let mut u = User::new(lb.proxy_addr()).await;
        let n = u.get("/hub").await.node().unwrap().to_string();
        users.push((u, n));
    }
    assert!(users.iter().any(|(_, n)| n == "node2"), "a user on node2");

    // Drain: pinned users stay, new users go elsewhere.
    let a = call(admin, Method::POST, "/nodes/qps2/drain", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let n = a.json();
    assert_eq!(n["id"], "qps2");
    assert_eq!(n["admin_state"], "drain");
    assert_eq!(n["accepts_new"], false);
    assert_eq!(n["health"], "up");
    for (u, n) in users.iter_mut() {
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.node(),
            Some(n.as_str()),
            "a pinned user moved during drain"
        );
    }
    for _ in 0..9 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_ne!(
            r.node(),
            Some("node2"),
            "a new session went to a draining node"
        );
    }
    assert_eq!(node(&status(admin).await, "qps2")["admin_state"], "drain");

    // Ready: back in rotation.
    let a = call(admin, Method::POST, "/nodes/qps2/ready", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["admin_state"], "ready");
    assert_eq!(a.json()["accepts_new"], true);
    let mut seen = false;
    for _ in 0..9 {
        let mut u = User::new(lb.proxy_addr()).await;
        seen |= u.get("/hub").await.node() == Some("node2");
    }
    assert!(seen, "no new session on node2 after ready");

    // Maint: pinned users are redispatched, the node takes nothing.
    let a = call(admin, Method::POST, "/nodes/qps2/maint", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["admin_state"], "maint");
    assert_eq!(a.json()["accepts_new"], false);
    let before = sim.node(1).stats().requests;
    for (u, n) in users.iter_mut() {
        let r = u.get("/hub").await;
        assert_ne!(
            r.node(),
            Some("node2"),
            "a request reached a node in maintenance"
        );
        if n != "node2" {
            assert_eq!(r.node(), Some(n.as_str()), "a user of another node moved");
        }
    }
    for _ in 0..6 {
        let mut u = User::new(lb.proxy_addr()).await;
        assert_ne!(u.get("/hub").await.node(), Some("node2"));
    }
    assert_eq!(
        sim.node(1).stats().requests,
        before,
        "node2 got traffic in maint"
    );
    let s = status(admin).await;
    assert_eq!(node(&s, "qps2")["admin_state"], "maint");
    assert_eq!(
        node(&s, "qps2")["health"],
        "up",
        "maint is not a health verdict"
    );
    let moved: u64 = ["qps1", "qps3"]
        .iter()
        .map(|id| node(&s, id)["redispatches_total"].as_u64().unwrap())
        .sum();
    assert!(moved >= 1, "{s}");

    // The admin state survives a reload of the same nodes.
    lb.reload(lb_tests::config(
        &sim.addrs(),
        &format!("{ADMIN}\n# changed\n"),
    ))
    .unwrap();
    assert_eq!(node(&status(admin).await, "qps2")["admin_state"], "maint");

    let a = call(admin, Method::POST, "/nodes/qps2/ready", None).await;
    assert_eq!(a.json()["admin_state"], "ready");
    lb.shutdown().await;
}

#[tokio::test]
async fn unknown_nodes_and_routes_are_404_json() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), ADMIN).await;
    let admin = lb.admin_addr().unwrap();
    for action in ["drain", "ready", "maint"] {
        let a = call(admin, Method::POST, &format!("/nodes/nope/{action}"), None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert!(
            a.json()["error"].as_str().unwrap().contains("nope"),
            "{}",
            a.body
        );
    }
    let a = call(admin, Method::GET, "/nodes/qps1", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["id"], "qps1");
    let a = call(admin, Method::GET, "/no/such/route", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.json()["error"].is_string());
    // Actions are POST only.
    let a = call(admin, Method::GET, "/nodes/qps1/drain", None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(node(&status(admin).await, "qps1")["admin_state"], "ready");
    lb.shutdown().await;
}

#[tokio::test]
async fn metrics_and_ready() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), ADMIN).await;
    let admin = lb.admin_addr().unwrap();
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);

    let m = call(admin, Method::GET, "/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
    let ct = m.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(m.body.contains("lb_requests_total{"), "{}", m.body);
    assert!(m.body.contains("lb_open_websockets"), "{}", m.body);

    let r = call(admin, Method::GET, "/ready", None).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    for id in ["qps1", "qps2"] {
        call(admin, Method::POST, &format!("/nodes/{id}/drain"), None).await;
    }
    let r = call(admin, Method::GET, "/ready", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    call(admin, Method::POST, "/nodes/qps1/ready", None).await;
    assert_eq!(
        call(admin, Method::GET, "/ready", None).await.status,
        StatusCode::OK
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn reload_answers_ok_or_the_errors() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("lb-admin-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, lb_tests::config_text(&sim.addrs(), ADMIN)).unwrap();
    let config = lb_config::Config::from_file(&path).unwrap();
    let lb = lb::Server::start_with_path(config, Some(path.clone()))
        .await
        .unwrap();
    let admin = lb.admin_addr().unwrap();
    let v0 = status(admin).await["reload"]["version"]
        .as_str()
        .unwrap()
        .to_string();

    std::fs::write(
        &path,
        lb_tests::config_text(&sim.addrs(), &format!("{ADMIN}[health]\nrise = 3\n")),
    )
    .unwrap();
    let a = call(admin, Method::POST, "/reload", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let j = a.json();
    assert_eq!(j["ok"], true);
    let v1 = j["version"].as_str().unwrap().to_string();
    assert_ne!(v1, v0);
    let s = status(admin).await;
    assert_eq!(s["reload"]["version"], v1.as_str());
    assert_eq!(s["reload"]["ok"], true);

    std::fs::write(
        &path,
        lb_tests::config_text(&sim.addrs(), &format!("{ADMIN}[health]\nrise = 0\n")),
    )
    .unwrap();
    let a = call(admin, Method::POST, "/reload", None).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    let j = a.json();
    assert_eq!(j["ok"], false);
    assert!(j["error"].as_str().unwrap().contains("health.rise"), "{j}");
    let s = status(admin).await;
    assert_eq!(s["reload"]["ok"], false);
    assert_eq!(
        s["reload"]["version"],
        v1.as_str(),
        "the running config stays"
    );
    assert!(s["reload"]["error"]
        .as_str()
        .unwrap()
        .contains("health.rise"));
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

const TOKEN: &str = "correct-horse-battery-staple";

async fn assert_token_required(admin: SocketAddr) {
    for (method, path) in [
        (Method::GET, "/status"),
        (Method::GET, "/metrics"),
        (Method::POST, "/nodes/qps1/drain"),
        (Method::POST, "/reload"),
    ] {
        for token in [None, Some("wrong-token"), Some("")] {
            let a = call(admin, method.clone(), path, token).await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert!(a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            assert!(a.json()["error"].is_string());
        }
    }
    // Readiness says only yes or no: a load balancer in front asks without a token.
    assert_eq!(
        call(admin, Method::GET, "/ready", None).await.status,
        StatusCode::OK
    );
    let a = call(admin, Method::GET, "/status", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        node(&a.json(), "qps1")["admin_state"],
        "ready",
        "nothing was drained"
    );
    let a = call(admin, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(admin, Method::POST, "/nodes/qps1/drain", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["admin_state"], "drain");
    // The page holds no data and asks for the token itself.
    let a = call(admin, Method::GET, "/", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("<html"));
}

#[tokio::test]
async fn token_from_the_config() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
    )
    .await;
    assert_token_required(lb.admin_addr().unwrap()).await;
    lb.shutdown().await;
}

#[tokio::test]
async fn router_built_with_a_token() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    // A balancer without an admin listener; its admin router served here.
    let lb = start_lb(&sim.addrs(), "").await;
    assert!(lb.admin_addr().is_none());
    let metrics = lb::admin::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let router = lb::admin::router(lb.test_handle().admin_ctx(
        Arc::new(|| Err("reload: not from a file".into())),
        metrics,
        Some(TOKEN.into()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lb::admin::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    assert_token_required(admin).await;
    let a = call(admin, Method::POST, "/reload", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.json()["error"], "reload: not from a file");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    lb.shutdown().await;
}
