//! Smoke tests: the simulator's behaviour and every scenario for about a second against it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use lb_bench::client::{ws_connect, CookieJar, HttpConn, Target, WsConnect};
use lb_bench::scenario::{self, Scenario, ScenarioOpts};
use lb_sim::{EngineTelemetry, SimCluster, SimOptions};
use tokio_tungstenite::tungstenite::Message;

fn target(addr: std::net::SocketAddr) -> Target {
    Target::parse(&format!("http://{addr}"), false).unwrap()
}

async fn json(conn: &mut HttpConn, path: &str, jar: Option<&CookieJar>) -> serde_json::Value {
    let r = conn.get(path, jar).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{path}");
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn sessions_and_foreign_cookies() {
    let c = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c.node(0).name(), "node1");
    let (t1, t2) = (target(c.addrs()[0]), target(c.addrs()[1]));
    let mut conn1 = HttpConn::connect(&t1).await.unwrap();
    let mut jar = CookieJar::default();
    let r = conn1.get("/hub", Some(&jar)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.node(), Some("node1"));
    let sc = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        sc.starts_with("X-Qlik-Session=") && sc.contains("Path=/; HttpOnly"),
        "{sc}"
    );
    jar.store_all(&r.headers);
    jar.store("QLB_ROUTE=abc; Path=/");

    // Same node, valid session: served, no new cookie.
    let r = conn1.get("/qmc", Some(&jar)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("set-cookie").is_none());
    assert_eq!(&r.body[..], b"ok node1\n");

    // Another node: 401, with the node header.
    let mut conn2 = HttpConn::connect(&t2).await.unwrap();
    let r = conn2.get("/hub", Some(&jar)).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.node(), Some("node2"));
    assert_eq!(c.node(1).stats().foreign_rejections, 1);
    // A WebSocket there is refused too, with no session it is refused as well.
    match ws_connect(&t2, "/app/x", &jar, None, 4096).await.unwrap() {
        WsConnect::Refused(s, n) => {
            assert_eq!(s, StatusCode::UNAUTHORIZED);
            assert_eq!(n.as_deref(), Some("node2"));
        }
        WsConnect::Open(..) => panic!("foreign session upgraded"),
    }
    match ws_connect(&t2, "/app/x", &CookieJar::default(), None, 4096)
        .await
        .unwrap()
    {
        WsConnect::Refused(s, _) => assert_eq!(s, StatusCode::UNAUTHORIZED),
        WsConnect::Open(..) => panic!("upgrade without a session"),
    }

    // The right node upgrades, echoes, and picks the first offered protocol.
    match ws_connect(&t1, "/hdr/app/abc?reloadUri=x", &jar, Some("a, b"), 4096)
        .await
        .unwrap()
    {
        WsConnect::Open(ws, n) => {
            assert_eq!(n.as_deref(), Some("node1"));
            let mut ws = *ws;
            let big = Bytes::from(vec![7u8; 16 << 20]);
            ws.send(Message::Binary(big.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(big));
            ws.send(Message::text("hi")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
            assert_eq!(c.node(0).stats().ws_open, 1);
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        }
        WsConnect::Refused(s, _) => panic!("refused: {s}"),
    }

    // Headers echo.
    let v = json(&mut conn1, "/_sim/headers", Some(&jar)).await;
    assert!(v["cookie"][0].as_str().unwrap().contains("QLB_ROUTE=abc"));
    assert!(v["_peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let s = c.node(0).stats();
    assert_eq!(s.sessions_issued, 1);
    assert_eq!(s.ws_accepted, 1);
}

#[tokio::test]
async fn healthcheck_shapes_and_telemetry() {
    let c = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let t = target(c.addrs()[0]);
    let mut conn = HttpConn::connect(&t).await.unwrap();
    for path in [
        "/engine/healthcheck",
        "/engine/healthcheck/",
        "/hdr/engine/healthcheck/",
    ] {
        let r = conn.get(path, None).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers.get("set-cookie").is_none(), "{path}");
        assert_eq!(r.node(), Some("node1"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for k in ["committed", "allocated", "free", "totalPhysical"] {
            assert!(v["mem"][k].is_number(), "{k}");
        }
        assert!(v["cpu"]["total"].is_number());
        assert!(v["apps"]["in_memory_docs"].is_array());
        assert_eq!(v["saturated"], false);
    }

    let body = Bytes::from(r#"{"cpu": 95.5, "saturated": true, "loaded_apps": ["abc"]}"#);
    let r = conn
        .request(Method::PUT, "/_sim/telemetry", None, body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let tel = c.node(0).telemetry();
    assert_eq!(tel.cpu, 95.5);
    assert_eq!(tel.saturated, Some(true));
    assert_eq!(tel.mem_free_mb, EngineTelemetry::default().mem_free_mb);
    let v = json(&mut conn, "/_sim/telemetry", None).await;
    assert_eq!(v["cpu"], 95.5);
    let v = json(&mut conn, "/engine/healthcheck", None).await;
    assert_eq!(v["cpu"]["total"], 95.5);
    assert_eq!(v["saturated"], true);
    assert_eq!(v["apps"]["loaded_docs"][0], "abc");

    c.node(0).set_telemetry(EngineTelemetry {
        old_format: true,
        saturated: None,
        ..EngineTelemetry::default()
    });
    let v = json(&mut conn, "/engine/healthcheck", None).await;
    assert!(v["mem"]["comitted"].is_number());
    assert!(v["mem"].get("committed").is_none());
    assert!(v["mem"].get("totalPhysical").is_none());
    assert!(v["apps"].get("in_memory_docs").is_none());
    assert!(v.get("saturated").is_none());
    assert_eq!(c.node(0).stats().sessions_issued, 0);
}

#[tokio::test]
async fn upload_download_and_stop() {
    let c = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let t = target(c.addrs()[0]);
    let mut conn = HttpConn::connect(&t).await.unwrap();
    let mut jar = CookieJar::default();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 13) as u8).collect();
    let r = conn
        .request(Method::POST, "/_sim/upload", Some(&jar), Bytes::from(data))
        .await
        .unwrap();
    jar.store_all(&r.headers);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["bytes"], 1_000_000);
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);

    let r = conn
        .get("/_sim/download?bytes=200000", Some(&jar))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-length"], "200000");
    assert_eq!(r.body.len(), 200_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
    let r = conn.get("/_sim/slow?ms=20", Some(&jar)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);

    // Open WebSocket, then kill the node: the socket and the connection close.
    let WsConnect::Open(ws, _) = ws_connect(&t, "/app/a", &jar, None, 4096).await.unwrap() else {
        panic!("not upgraded");
    };
    let mut ws = *ws;
    c.node(0).stop().await;
    assert!(tokio::net::TcpStream::connect(c.addrs()[0]).await.is_err());
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(!matches!(
        end,
        Some(Ok(Message::Text(_) | Message::Binary(_)))
    ));
    assert!(conn.get("/hub", Some(&jar)).await.is_err());
    assert_eq!(c.node(0).stats().ws_open, 0);

    // Restarted: same port, the old session is unknown.
    c.node(0).restart().await.unwrap();
    let mut conn = HttpConn::connect(&t).await.unwrap();
    let r = conn.get("/hub", Some(&jar)).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn hang_mode_never_answers() {
    let c = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    c.node(0).set_hang(true);
    let mut conn = HttpConn::connect(&target(c.addrs()[0])).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(300), conn.get("/hub", None)).await;
    assert!(r.is_err(), "a hanging node answered");
    c.node(0).set_hang(false);
    let mut conn = HttpConn::connect(&target(c.addrs()[0])).await.unwrap();
    assert_eq!(conn.get("/hub", None).await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn scenarios_run_clean_against_one_node() {
    // One node: a sticky client can only see one node, so there must be no violation.
    let c = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let url = format!("http://{}", c.addrs()[0]);
    for s in Scenario::ALL {
        let opts = ScenarioOpts {
            url: url.clone(),
            duration: Duration::from_millis(700),
            connections: if s == Scenario::WsIdle { 50 } else { 4 },
            concurrency: 8,
            requests_per_user: 3,
            messages_per_user: 4,
            message_size: 512,
            ..ScenarioOpts::default()
        };
        let r = scenario::run(s, &opts).await.unwrap();
        assert_eq!(r.violations, 0, "{}: {}", s.name(), r.table());
        assert_eq!(r.errors, 0, "{}: {}", s.name(), r.table());
        assert!(r.requests > 0, "{}", s.name());
        assert_eq!(r.users_served, opts.connections as u64, "{}", s.name());
        match s {
            Scenario::Qlik | Scenario::WsEcho => assert!(r.messages > 0),
            Scenario::WsIdle => {
                assert_eq!(r.ws_opened, 50);
                assert_eq!(r.ws_open_at_end, 50);
            }
            Scenario::Http | Scenario::Churn => {}
        }
    }
    assert_eq!(c.node(0).stats().foreign_rejections, 0);
}

#[test]
fn non_loopback_targets_are_refused() {
    assert!(Target::parse("http://192.0.2.1:80", false).is_err());
    assert!(Target::parse("http://192.0.2.1:80", true).is_ok());
    // https:// and wss:// are targets too now; other schemes are refused.
    assert!(Target::parse("https://127.0.0.1:80", false).is_ok());
    assert!(Target::parse("wss://192.0.2.1", false).is_err());
    assert!(Target::parse("ftp://127.0.0.1:80", false).is_err());
    let t = Target::parse("http://localhost:18000/hdr/", false).unwrap();
    assert_eq!(t.path("/hub"), "/hdr/hub");
    assert_eq!(t.authority, "localhost:18000");
}
