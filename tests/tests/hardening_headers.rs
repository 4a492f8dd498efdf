//! Header hygiene between the client and the node: one `Host`, only WebSocket upgrades, no
//! client-claimed addresses from untrusted peers, `Cookie` lines untouched unless the route
//! cookie must go, and a removed session cookie forgotten by its name.

use std::net::SocketAddr;
use std::time::Duration;

use lb_tests::faults::{read_until_closed, watch_panics};
use lb_tests::{start_lb, SimCluster, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const QUIET: &str = "[server]\naccess_log = false\n";

/// Status and body of the answer to a raw request sent on a fresh connection.
async fn raw(addr: SocketAddr, req: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

/// The headers the node saw, from the simulator's echo.
async fn seen_by_node(addr: SocketAddr, extra: &str) -> serde_json::Value {
    let (status, _, body) = raw(
        addr,
        &format!("GET /_sim/headers HTTP/1.1\r\nHost: lb.test\r\n{extra}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_must_be_one() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), QUIET).await;
    let (st, _, _) = raw(
        lb.proxy_addr(),
        "GET /hub HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 400, "two Host headers");
    let (st, _, _) = raw(
        lb.proxy_addr(),
        "GET /hub HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 400, "HTTP/1.1 without Host");
    let (st, _, _) = raw(lb.proxy_addr(), "GET /hub HTTP/1.0\r\n\r\n").await;
    assert_eq!(st, 200, "HTTP/1.0 needs no Host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_reach_the_node() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), QUIET).await;
    let seen = seen_by_node(
        lb.proxy_addr(),
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n",
    )
    .await;
    assert!(seen.get("upgrade").is_none(), "h2c stripped: {seen}");
    assert!(seen.get("http2-settings").is_none(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_claimed_addresses_are_dropped_from_untrusted_peers() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), QUIET).await;
    let seen = seen_by_node(
        lb.proxy_addr(),
        "Forwarded: for=203.0.113.9;proto=https\r\nX-Real-IP: 203.0.113.9\r\n",
    )
    .await;
    assert!(seen.get("forwarded").is_none(), "{seen}");
    assert!(seen.get("x-real-ip").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"][0], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_lines_are_rebuilt_only_to_remove_the_route_cookie() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), QUIET).await;
    let route = lb.test_handle().route_value("qps1");
    let seen = seen_by_node(
        lb.proxy_addr(),
        &format!("Cookie: QLB_ROUTE={route}; a=1\r\nCookie: c=3;d=4\r\n"),
    )
    .await;
    let cookies: Vec<&str> = seen["cookie"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        vec!["a=1", "c=3;d=4"],
        "only the route cookie's line changes"
    );
    let seen = seen_by_node(lb.proxy_addr(), "Cookie: x=1;y=2 ; z=3\r\n").await;
    assert_eq!(
        seen["cookie"][0], "x=1;y=2 ; z=3",
        "no route cookie: untouched"
    );
}

/// A node that sets a session cookie per path (`/login-a`, `/login-b`), removes one
/// (`/logout-b`), and names itself in `X-Sim-Node`.
async fn cookie_node(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let set = match path.as_str() {
                        "/login-a" => format!("Set-Cookie: X-Qlik-Session-a=A-{name}; Path=/\r\n"),
                        "/login-b" => format!("Set-Cookie: X-Qlik-Session-b=B-{name}; Path=/\r\n"),
                        "/logout-b" => "Set-Cookie: X-Qlik-Session-b=; Path=/; \
                                        Expires=Thu, 01 Jan 1970 00:00:00 GMT\r\n"
                            .to_string(),
                        _ => String::new(),
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\n{set}X-Sim-Node: {name}\r\nContent-Length: 3\r\n\r\nok\n"
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn node_of(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("x-sim-node: ")
                .or(l.strip_prefix("X-Sim-Node: "))
        })
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_session_cookie_is_forgotten_by_its_name() {
    watch_panics();
    let a = cookie_node("one").await;
    let b = cookie_node("two").await;
    let lb = start_lb(&[a, b], QUIET).await;
    let get = |path: &str, cookie: &str| {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n{cookie}Connection: close\r\n\r\n");
        let addr = lb.proxy_addr();
        async move {
            let (st, head, _) = raw(addr, &req).await;
            assert_eq!(st, 200);
            node_of(&head).unwrap()
        }
    };
    // Both session cookies are learned on the first node.
    let first = get("/login-a", "").await;
    let ca = format!("X-Qlik-Session-a=A-{first}");
    assert_eq!(get("/login-b", &format!("Cookie: {ca}\r\n")).await, first);
    let cb = format!("X-Qlik-Session-b=B-{first}");
    // The node removes session b on a request that carries both.
    assert_eq!(
        get("/logout-b", &format!("Cookie: {ca}; {cb}\r\n")).await,
        first
    );
    // Session a is still pinned (round robin would otherwise alternate).
    for _ in 0..4 {
        assert_eq!(get("/hub", &format!("Cookie: {ca}\r\n")).await, first);
    }
}
