//! Several balancers, zones and the PROXY protocol: what a deployment behind an AWS NLB across
//! Availability Zones relies on.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use lb_bench::client::{self, HttpConn, WsConnect};
use lb_tests::{config_text, start_lb, target, SimCluster, SimOptions, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "[sticky]\nroute_key = \"a-key-shared-by-both-balancers\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_sharing_the_key_route_a_user_identically() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let a = start_lb(&sim.addrs(), KEY).await;
    let b = start_lb(&sim.addrs(), KEY).await;
    let (ta, tb) = (target(a.proxy_addr()), target(b.proxy_addr()));
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for u in 0..30 {
        let mut user = User::new(if u % 2 == 0 {
            a.proxy_addr()
        } else {
            b.proxy_addr()
        })
        .await;
        let first = user.get("/hub").await;
        let node = first.node().unwrap().to_string();
        *per_node.entry(node.clone()).or_default() += 1;
        let mut ca = HttpConn::connect(&ta).await.unwrap();
        let mut cb = HttpConn::connect(&tb).await.unwrap();
        for i in 0..6 {
            let conn = if i % 2 == 0 { &mut cb } else { &mut ca };
            let r = conn.get("/qmc", Some(&user.jar)).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "user {u} request {i}");
            assert_eq!(
                r.node(),
                Some(node.as_str()),
                "user {u} moved between balancers"
            );
            user.jar.store_all(&r.headers);
        }
        // The WebSocket through the other balancer than the login.
        let other = if u % 2 == 0 { &tb } else { &ta };
        match client::ws_connect(other, "/app/x", &user.jar, None, 4096)
            .await
            .unwrap()
        {
            WsConnect::Open(mut ws, ws_node) => {
                assert_eq!(ws_node.as_deref(), Some(node.as_str()));
                ws.send(Message::text("hello")).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
            }
            WsConnect::Refused(s, n) => panic!("user {u}: websocket refused {s} by {n:?}"),
        }
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    for n in sim.nodes() {
        assert_eq!(n.stats().foreign_rejections, 0);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_prefer_the_own_zone_and_fail_over() {
    let sim = SimCluster::start(4, 0, SimOptions::default())
        .await
        .unwrap();
    let addrs = sim.addrs();
    let mut text = String::from(
        "[listener]\naddress = \"127.0.0.1:0\"\n[balance]\nzone = \"eu-west-1a\"\n[health]\nenabled = false\n",
    );
    for (i, a) in addrs.iter().enumerate() {
        let zone = if i < 2 { "eu-west-1a" } else { "eu-west-1b" };
        text.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\nzone = \"{zone}\"\n",
            i + 1
        ));
    }
    let cfg = lb_config::Config::from_toml(&text, std::path::Path::new(".")).unwrap();
    let lb = lb::Server::start(cfg).await.unwrap();
    let mut users = Vec::new();
    for _ in 0..8 {
        let mut u = User::new(lb.proxy_addr()).await;
        let node = u.get("/hub").await.node().unwrap().to_string();
        assert!(
            node == "node1" || node == "node2",
            "new session outside the own zone: {node}"
        );
        users.push((u, node));
    }
    // The whole own zone goes down: new sessions fail over to the other zone.
    sim.node(0).stop().await;
    sim.node(1).stop().await;
    for _ in 0..6 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        let node = r.node().unwrap();
        assert!(node == "node3" || node == "node4", "{node}");
    }
    // A user pinned in the other zone stays there when the own zone comes back.
    let mut far = User::new(lb.proxy_addr()).await;
    let far_node = far.get("/hub").await.node().unwrap().to_string();
    sim.node(0).restart().await.unwrap();
    sim.node(1).restart().await.unwrap();
    // Passive marks expire after `passive_fail_timeout` (10 s by default): new users return
    // to the own zone then; the pinned user must stay meanwhile and after.
    for _ in 0..3 {
        assert_eq!(far.get("/hub").await.node(), Some(far_node.as_str()));
    }
    lb.shutdown().await;
    drop(users);
}

#[tokio::test]
async fn proxy_protocol_gives_the_real_client_address_and_is_required() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let text = config_text(&sim.addrs(), "").replace(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nproxy_protocol = \"required\"\nheader_read_timeout = \"2s\"\n",
    );
    let cfg = lb_config::Config::from_toml(&text, std::path::Path::new(".")).unwrap();
    let lb = lb::Server::start(cfg).await.unwrap();

    // v1 then a request: the node sees the client address of the header.
    let mut s = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .unwrap();
    s.write_all(
        b"PROXY TCP4 203.0.113.50 10.0.0.1 40000 443\r\nGET /_sim/headers HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\"x-forwarded-for\":[\"203.0.113.50\"]"),
        "{text}"
    );

    // v2 (as an AWS NLB sends it), split across writes.
    let mut s = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .unwrap();
    let mut hdr = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    hdr.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 5, 0xC0, 0x01, 0x01, 0xBB,
    ]);
    s.write_all(&hdr[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(&hdr[10..]).await.unwrap();
    s.write_all(b"GET /_sim/headers HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("\"x-forwarded-for\":[\"198.51.100.9\"]"),
        "{text}"
    );

    // Without the header: refused (closed without an answer).
    let mut s = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .unwrap();
    s.write_all(b"GET /hub HTTP/1.1\r\nHost: q\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .unwrap();
    assert!(
        n.is_err() || raw.is_empty(),
        "answered without a PROXY header: {raw:?}"
    );
    lb.shutdown().await;
}
