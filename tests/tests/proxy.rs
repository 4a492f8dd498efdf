//! End-to-end behaviour of the sticky proxy over real sockets: stickiness of HTTP and
//! WebSocket traffic, cookie learning, header rewriting, failover, bad cookies, tunnels and
//! graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use lb_bench::client::{self, WsConnect};
use lb_tests::{start_lb, target, SimCluster, SimOptions, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

async fn open_ws(user: &User, path: &str) -> (client::WsStream, String) {
    match client::ws_connect(&user.target, path, &user.jar, Some("qix"), 64 * 1024)
        .await
        .expect("websocket handshake")
    {
        WsConnect::Open(ws, node) => (*ws, node.expect("node header on 101")),
        WsConnect::Refused(status, node) => panic!("websocket refused: {status} by {node:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_users_stay_on_their_nodes() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[server]\naccess_log = false\n").await;
    let addr = lb.proxy_addr();
    let mut tasks = Vec::new();
    for u in 0..200 {
        tasks.push(tokio::spawn(async move {
            let mut user = User::new(addr).await;
            let first = user.get("/hub").await;
            assert_eq!(first.status, StatusCode::OK);
            let node = first.node().expect("node header").to_string();
            for i in 0..10 {
                let path = if i % 2 == 0 { "/hub/stream" } else { "/qmc" };
                let r = user.get(path).await;
                assert_eq!(r.status, StatusCode::OK, "user {u} request {i}");
                assert_eq!(
                    r.node(),
                    Some(node.as_str()),
                    "user {u} moved on request {i}"
                );
            }
            let (mut ws, ws_node) = open_ws(&user, &format!("/app/{u:08}-app?reloadUri=x")).await;
            assert_eq!(ws_node, node, "user {u}'s websocket went to another node");
            for i in 0..5 {
                let msg = format!("{{\"id\":{i},\"user\":{u}}}");
                ws.send(Message::text(msg.clone())).await.unwrap();
                let echo = ws.next().await.expect("echo").unwrap();
                assert_eq!(echo, Message::text(msg));
            }
            ws.close(None).await.unwrap();
            node
        }));
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let node = tokio::time::timeout(T, t)
            .await
            .expect("user finished")
            .expect("user ok");
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(per_node.values().sum::<usize>(), 200);
    assert_eq!(
        per_node.len(),
        3,
        "users spread over all nodes: {per_node:?}"
    );
    for n in sim.nodes() {
        let s = n.stats();
        assert_eq!(
            s.foreign_rejections,
            0,
            "{} saw a session it did not issue",
            n.name()
        );
    }
    lb.shutdown().await;
}

/// Virtual proxy cookies (`X-Qlik-Session-<prefix>`, with `-HTTP` over plain HTTP) are learned:
/// with the route cookie thrown away, the learned session alone keeps the user on its node.
#[tokio::test]
async fn virtual_proxy_session_cookies_are_learned() {
    for cookie in [
        "X-Qlik-Session-hdr",
        "X-Qlik-Session-hdr-HTTP",
        "X-Qlik-Session-HTTP",
    ] {
        let opts = SimOptions {
            cookie_name: cookie.to_string(),
            ..SimOptions::default()
        };
        let sim = SimCluster::start(3, 0, opts).await.unwrap();
        let lb = start_lb(&sim.addrs(), "").await;
        let mut nodes = HashSet::new();
        for _ in 0..6 {
            let mut user = User::new(lb.proxy_addr()).await;
            let first = user.get("/hdr/hub").await;
            assert!(user.jar.get(cookie).is_some(), "{cookie} set");
            assert!(user.jar.get("QLB_ROUTE").is_some(), "route cookie set");
            let node = first.node().unwrap().to_string();
            nodes.insert(node.clone());
            // Only the learned Qlik cookie is left to go by.
            let mut jar = lb_bench::client::CookieJar::default();
            jar.store(&format!("{cookie}={}", user.jar.get(cookie).unwrap()));
            user.jar = jar;
            for _ in 0..5 {
                let r = user.get("/hdr/hub").await;
                assert_eq!(r.status, StatusCode::OK, "{cookie}");
                assert_eq!(r.node(), Some(node.as_str()), "{cookie} not learned");
            }
            let (_ws, ws_node) = open_ws(&user, "/hdr/app/abc").await;
            assert_eq!(ws_node, node);
        }
        assert!(nodes.len() > 1, "new sessions spread");
        lb.shutdown().await;
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_for_appended() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    // The test client is a trusted proxy here: its X-Forwarded-For is appended to.
    let lb = start_lb(
        &sim.addrs(),
        "[listener]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .unwrap();
    s.write_all(
        b"GET /_sim/headers HTTP/1.1\r\nHost: qlik.example.com\r\nConnection: keep-alive, X-Hop\r\n\
          X-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\
          X-Forwarded-For: 203.0.113.9\r\nX-End-To-End: kept\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json_start = body.find('{').unwrap();
    let json_end = body.rfind('}').unwrap();
    let seen: serde_json::Value = serde_json::from_str(&body[json_start..=json_end]).unwrap();
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the node: {seen}");
    }
    assert_eq!(seen["x-end-to-end"][0], "kept");
    assert_eq!(seen["host"][0], "qlik.example.com", "Host preserved");
    assert_eq!(seen["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"][0], "http");
    assert_eq!(seen["x-forwarded-host"][0], "qlik.example.com");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_stopped_node_are_redispatched() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "").await;
    let mut users = Vec::new();
    for _ in 0..9 {
        let mut u = User::new(lb.proxy_addr()).await;
        let node = u.get("/hub").await.node().unwrap().to_string();
        users.push((u, node));
    }
    let victim = sim.node(1);
    let victim_name = victim.name().to_string();
    let victims = users.iter().filter(|(_, n)| *n == victim_name).count();
    assert!(victims > 0);
    victim.stop().await;
    for (u, node) in users.iter_mut() {
        let r = u.get("/hub").await;
        // The moved user's old session is unknown on its new node (a real QPS asks it to log in
        // again); what matters here is that it reaches a live node, not an error.
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
            "{}",
            r.status
        );
        assert_ne!(r.node(), Some(victim_name.as_str()));
        if *node == victim_name {
            // Pinned anew: the next requests stay on the new node.
            let new_node = r.node().unwrap().to_string();
            u.jar = lb_bench::client::CookieJar::default();
            let again = u.get("/hub").await;
            let pinned = again.node().unwrap().to_string();
            for _ in 0..3 {
                assert_eq!(u.get("/hub").await.node(), Some(pinned.as_str()));
            }
            assert_ne!(new_node, victim_name);
        } else {
            assert_eq!(r.node(), Some(node.as_str()), "a user of a live node moved");
        }
    }
    let state = lb.test_handle().node("qps2").unwrap();
    assert_eq!(victim_name, "node2");
    assert!(state.failures_total.load(Ordering::Relaxed) >= 1);
    let redispatched: u64 = ["qps1", "qps3"]
        .iter()
        .map(|id| {
            lb.test_handle()
                .node(id)
                .unwrap()
                .redispatches_total
                .load(Ordering::Relaxed)
        })
        .sum();
    assert!(redispatched >= victims as u64, "{redispatched} < {victims}");
    // New users avoid the stopped node.
    for _ in 0..6 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_ne!(r.node(), Some(victim_name.as_str()));
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn bad_cookies_mean_no_pin_and_huge_headers_get_431() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "").await;
    let mut u = User::new(lb.proxy_addr()).await;
    u.get("/hub").await;
    let good = u.jar.get("QLB_ROUTE").unwrap().to_string();
    // Tampered: another node's id with this signature.
    let tampered = if good.starts_with("qps1.") {
        good.replacen("qps1.", "qps2.", 1)
    } else {
        good.replacen("qps2.", "qps1.", 1)
    };
    for cookie in [
        format!("QLB_ROUTE={tampered}"),
        "QLB_ROUTE=%%%; ;;=;X-Qlik-Session=<>\"garbage\x27\\;;==;QLB_ROUTE=qps1.AAAA".to_string(),
        "QLB_ROUTE=.; X-Qlik-Session=".to_string(),
    ] {
        let mut s = tokio::net::TcpStream::connect(lb.proxy_addr())
            .await
            .unwrap();
        let req = format!(
            "GET /hub HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 401"),
            "cookie {cookie:?} got: {}",
            text.lines().next().unwrap_or("")
        );
        // A tampered route cookie is replaced by a valid one.
        assert!(text.contains("QLB_ROUTE=qps"), "route cookie rewritten");
    }
    let mut s = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .unwrap();
    let big = "a".repeat(100 * 1024);
    let req = format!("GET /hub HTTP/1.1\r\nHost: x\r\nCookie: X-Qlik-Session={big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut raw))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "got {:?}",
        text.lines().next()
    );
    // The balancer still serves.
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    lb.shutdown().await;
}

#[tokio::test]
async fn websocket_big_message_ping_and_closes() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "").await;
    let mut u = User::new(lb.proxy_addr()).await;
    u.get("/hub").await;
    let (mut ws, _) = open_ws(&u, "/app/big?x=1").await;
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert!(b[..] == big[..], "1 MB echo differs"),
        m => panic!("unexpected {m:?}"),
    }
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        m => panic!("expected pong, got {m:?}"),
    }
    // Client-initiated close reaches the node, whose close comes back.
    ws.close(None).await.unwrap();
    let mut got_close = false;
    while let Some(m) = tokio::time::timeout(T, ws.next()).await.unwrap() {
        if matches!(m, Ok(Message::Close(_))) {
            got_close = true;
        }
        if m.is_err() {
            break;
        }
    }
    assert!(got_close, "close echoed through the tunnel");

    // Node-side close: the node goes away, the client's socket ends.
    let (mut ws, _) = open_ws(&u, "/app/other").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    sim.node(0).stop().await;
    let end = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "client saw the node's close");
    lb.shutdown().await;
    assert_eq!(lb_open_tunnels_after(&sim).await, 0);
}

async fn lb_open_tunnels_after(sim: &SimCluster) -> u64 {
    sim.nodes().iter().map(|n| n.stats().ws_open).sum()
}

#[tokio::test]
async fn idle_tunnel_is_closed_with_going_away() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[websocket]\nidle_timeout = \"400ms\"\n").await;
    let mut u = User::new(lb.proxy_addr()).await;
    u.get("/hub").await;
    let (mut ws, _) = open_ws(&u, "/app/idle").await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    assert_eq!(lb.test_handle().open_tunnels(), 1);
    let closed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("closed in time");
    match closed {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    // The tunnel is gone from the balancer's count.
    for _ in 0..100 {
        if lb.test_handle().open_tunnels() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lb.test_handle().open_tunnels(), 0);
    lb.shutdown().await;
}

#[tokio::test]
async fn request_in_flight_at_shutdown_completes() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[shutdown]\ndrain_timeout = \"10s\"\n").await;
    let addr = lb.proxy_addr();
    let mut u = User::new(addr).await;
    u.get("/hub").await;
    let slow = tokio::spawn(async move { u.get("/_sim/slow?ms=700").await });
    // Wait until the request is in flight to the node.
    let node = lb.test_handle().node("qps1").unwrap();
    for _ in 0..400 {
        if node.in_flight.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(node.in_flight.load(Ordering::Relaxed), 1);
    let stopping = tokio::spawn(lb.shutdown());
    let r = tokio::time::timeout(T, slow).await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::timeout(T, stopping).await.unwrap().unwrap();
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let _ = target(addr);
}

/// Connections to a node are pooled: sequential requests, fixed-length, chunked and empty
/// bodies alike, reuse one connection instead of opening one each.
#[tokio::test]
async fn node_connections_are_reused() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0u64;
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer: &[u8] = match served % 3 {
                            0 => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                            1 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                            _ => b"HTTP/1.1 204 No Content\r\n\r\n",
                        };
                        served += 1;
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let lb = start_lb(&[node], "[health]\nenabled = false\n").await;
    let mut u = User::new(lb.proxy_addr()).await;
    for i in 0..30 {
        let r = u.get("/hub").await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::NO_CONTENT,
            "request {i}: {}",
            r.status
        );
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "30 sequential requests over one node connection"
    );
    lb.shutdown().await;
}
