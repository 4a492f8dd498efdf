//! Edge protections: Qlik's Host and WebSocket origin allow lists, body and connection limits,
//! and the trusted-proxy rule for X-Forwarded-*.

use std::time::Duration;

use lb_tests::{start_lb, SimCluster, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a new connection and returns what came back until close.
async fn raw(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

fn status(resp: &str) -> u16 {
    resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

const WS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn host_and_websocket_origin_allow_lists() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        "[listener]\nallowed_hosts = [\"qlik.example.com\", \"*.corp.example\"]\n\
         websocket_origins = [\"https://portal.example.com\", \"mashup.example.net\"]\n",
    )
    .await;
    let a = lb.proxy_addr();
    let get =
        |host: &str| format!("GET /hub HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&raw(a, &get("qlik.example.com")).await), 200);
    assert_eq!(status(&raw(a, &get("QLIK.example.com:443")).await), 200);
    assert_eq!(status(&raw(a, &get("bi.corp.example")).await), 200);
    assert_eq!(status(&raw(a, &get("evil.example.org")).await), 421);
    assert_eq!(status(&raw(a, &get("corp.example")).await), 421);
    assert_eq!(status(&raw(a, "GET /hub HTTP/1.0\r\n\r\n").await), 400);

    // A session first, for the upgrades.
    let login = raw(a, &get("qlik.example.com")).await;
    let cookie = login
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: X-Qlik-Session=")
                .or_else(|| l.strip_prefix("Set-Cookie: X-Qlik-Session="))
        })
        .map(|v| v.split(';').next().unwrap().to_string())
        .unwrap();
    let up = |origin: Option<&str>| {
        let o = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!("GET /app/x HTTP/1.1\r\nHost: qlik.example.com\r\n{WS}{o}Cookie: X-Qlik-Session={cookie}\r\n\r\n")
    };
    let first_line = |r: String| r.lines().next().unwrap_or("").to_string();
    for (origin, want) in [
        (Some("https://qlik.example.com"), 101),
        (Some("https://portal.example.com"), 101),
        (Some("https://mashup.example.net:8443"), 101),
        (Some("https://attacker.example"), 403),
        (None, 403),
    ] {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(up(origin).as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(
            status(&text),
            want,
            "origin {origin:?}: {}",
            first_line(text.clone())
        );
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn body_limit_answers_413() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[listener]\nmax_body_bytes = 1000\n").await;
    let a = lb.proxy_addr();
    let small = format!("POST /_sim/upload HTTP/1.1\r\nHost: q\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{}", "x".repeat(10));
    assert_eq!(status(&raw(a, &small).await), 200);
    let big = "POST /_sim/upload HTTP/1.1\r\nHost: q\r\nContent-Length: 5000\r\n\r\n";
    assert_eq!(status(&raw(a, big).await), 413);
    // Chunked past the limit: the upload is cut, the node never gets the whole body.
    let mut chunked = String::from("POST /_sim/upload HTTP/1.1\r\nHost: q\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for _ in 0..4 {
        chunked.push_str(&format!("1f4\r\n{}\r\n", "y".repeat(500)));
    }
    chunked.push_str("0\r\n\r\n");
    let resp = raw(a, &chunked).await;
    assert!(
        !resp.contains("\"bytes\":2000"),
        "the whole body got through: {resp}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn connection_limits_answer_and_the_listener_stays_responsive() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[listener]\nmax_connections_per_client = 5\n").await;
    let a = lb.proxy_addr();
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /hub HTTP/1.1\r\nHost: q\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        held.push(s);
    }
    assert_eq!(
        status(&raw(a, "GET /hub HTTP/1.1\r\nHost: q\r\n\r\n").await),
        429
    );
    drop(held);
    // Slots come back once those connections close.
    let mut ok = false;
    for _ in 0..100 {
        if status(
            &raw(
                a,
                "GET /hub HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n",
            )
            .await,
        ) == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    lb.shutdown().await;

    let lb = start_lb(&sim.addrs(), "[listener]\nmax_connections = 3\n").await;
    let a = lb.proxy_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /hub HTTP/1.1\r\nHost: q\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        held.push(s);
    }
    assert_eq!(
        status(&raw(a, "GET /hub HTTP/1.1\r\nHost: q\r\n\r\n").await),
        503
    );
    drop(held);
    lb.shutdown().await;
}

#[tokio::test]
async fn untrusted_forwarded_headers_are_replaced() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "").await;
    let resp = raw(
        lb.proxy_addr(),
        "GET /_sim/headers HTTP/1.1\r\nHost: q\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: spoofed\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.contains("\"x-forwarded-for\":[\"127.0.0.1\"]"),
        "{resp}"
    );
    assert!(resp.contains("\"x-forwarded-proto\":[\"http\"]"), "{resp}");
    assert!(resp.contains("\"x-forwarded-host\":[\"q\"]"), "{resp}");
    assert!(
        !resp.contains("6.6.6.6") && !resp.contains("spoofed"),
        "{resp}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_read_timeout() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        "[listener]\nheader_read_timeout = \"300ms\"\n",
    )
    .await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    s.write_all(b"GET /hub HTTP/1.1\r\nHost: q\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the balancer closes the idle connection on its own.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle keep-alive connection still open");
    lb.shutdown().await;
}
