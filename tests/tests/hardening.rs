//! Hardening: what one client does must not take a node out or log other users out, and a
//! node's early answer must not leave a half-used connection in the pool.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use lb_tests::faults::{assert_drained, failures, read_until_closed, watch_panics, T};
use lb_tests::{start_lb, SimCluster, SimOptions, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const QUIET: &str = "[server]\naccess_log = false\n";

/// Status code of a raw HTTP/1.1 answer (0 if none).
fn status_of(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `head_and_body` on a fresh connection, then reads what comes back until the balancer
/// closes (bounded).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    out
}

/// Every node of the balancer still takes new sessions: fresh users spread over all of them.
async fn all_nodes_serve(lb: &lb::Server, n: usize) {
    let mut seen = BTreeSet::new();
    for _ in 0..(2 * n) {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK, "a new user is served");
        seen.insert(r.node().unwrap().to_string());
    }
    assert_eq!(seen.len(), n, "new users reach every node: {seen:?}");
}

fn node_failures(lb: &lb::Server, n: usize) -> Vec<u64> {
    (1..=n)
        .map(|i| failures(&lb.test_handle().node(&format!("qps{i}")).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_abandoned_uploads_do_not_take_nodes_out() {
    watch_panics();
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), QUIET).await;
    let addr = lb.proxy_addr();

    // Thirty malformed chunked bodies without a cookie: round robin spreads them over the
    // nodes, ten each (the default passive_errors).
    for _ in 0..30 {
        let out = raw(
            addr,
            b"POST /_sim/upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\nZZZ-not-hex\r\n\r\n",
        )
        .await;
        let st = status_of(&out);
        assert!(
            st == 0 || st == 400,
            "a malformed body gets 400 or a close, got {st}"
        );
    }
    // Thirty clients that vanish half way through an upload.
    for _ in 0..30 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /_sim/upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 100000\r\n\r\n",
        )
        .await
        .unwrap();
        s.write_all(&[b'x'; 2000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        node_failures(&lb, 3),
        vec![0, 0, 0],
        "client faults are not node failures"
    );
    all_nodes_serve(&lb, 3).await;
    assert_drained(&lb, 3, "after the bad uploads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_past_response_timeout_is_served_and_not_blamed() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("{QUIET}[upstream]\nresponse_timeout = \"1s\"\n"),
    )
    .await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    s.write_all(b"POST /_sim/upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    // Ten bytes over 2.5 s: longer than response_timeout, never idle for long.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(b"y").await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(
        status_of(&buf[..n]),
        200,
        "the node answers once the body is in: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(node_failures(&lb, 1), vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_after_body_timeout_and_frees_the_node() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("{QUIET}[listener]\nbody_timeout = \"1s\"\n"),
    )
    .await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    s.write_all(b"POST /_sim/upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 1000\r\n\r\nabc")
        .await
        .unwrap();
    let start = Instant::now();
    let (out, closed) = read_until_closed(&mut s, Duration::from_secs(8)).await;
    assert_eq!(status_of(&out), 408, "{}", String::from_utf8_lossy(&out));
    assert!(closed, "the connection is closed after the 408");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(node_failures(&lb, 1), vec![0]);
    assert_drained(&lb, 1, "after the stalled upload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_users_stay_while_only_passive_checks_call_their_node_down() {
    watch_panics();
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("{QUIET}[health]\ninterval = \"200ms\"\n"),
    )
    .await;
    let mut u = User::new(lb.proxy_addr()).await;
    let r = u.get("/hub").await;
    assert_eq!(r.status, StatusCode::OK);
    let node = r.node().unwrap().to_string();
    let id = node.replacen("node", "qps", 1);
    // Passive health takes the node out (as ten errors would); active checks still pass.
    lb.test_handle().node(&id).unwrap().mark_failed(60_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // New sessions keep away from it (checked first: a good answer to the pinned user below
    // counts as the node working again).
    for _ in 0..4 {
        let mut n = User::new(lb.proxy_addr()).await;
        let r = n.get("/hub").await;
        assert_ne!(r.node(), Some(node.as_str()), "no new session on it");
    }
    for _ in 0..5 {
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.node(), Some(node.as_str()), "the signed-in user stays");
    }
}

/// A node that answers `302` to a POST at once, before reading its body (as a QPS does), then
/// reads the body and serves the next request of the connection; `200 ok` to anything else.
async fn early_answer_node() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
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
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    buf.drain(..end);
                    let answer: &[u8] = if head.starts_with("post") {
                        b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Sim-Node: early\r\n\r\nok\n"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    // Now drain the body.
                    while buf.len() < len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..len);
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_sending_a_body_is_not_reused() {
    watch_panics();
    let node = early_answer_node().await;
    let lb = start_lb(
        &[node],
        &format!("{QUIET}[upstream]\nresponse_timeout = \"2s\"\n"),
    )
    .await;
    // An upload the node answers early; the client sends only part of it, then pauses.
    let mut up = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    up.write_all(b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    up.write_all(&[b'z'; 1000]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, up.read(&mut buf))
        .await
        .expect("early answer in time")
        .unwrap();
    assert_eq!(status_of(&buf[..n]), 302);
    // Another user's request meanwhile is served at once, not queued behind the upload.
    for _ in 0..3 {
        let start = Instant::now();
        let out = raw(
            lb.proxy_addr(),
            b"GET /hub HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&out), 200, "{}", String::from_utf8_lossy(&out));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "served promptly: {:?}",
            start.elapsed()
        );
    }
    assert_eq!(node_failures(&lb, 1), vec![0]);
    // The upload finishes; nothing is left behind.
    up.write_all(&vec![b'z'; 99_000]).await.unwrap();
    drop(up);
    assert_drained(&lb, 1, "after the early answer").await;
}

/// Opens an app WebSocket, then floods it without ever reading the echoes, until the balancer
/// stops taking more (its write to the client is blocked).
async fn stalled_websocket(lb: &lb::Server) -> lb_tests::client::WsStream {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    let (mut ws, _) = lb_tests::faults::open_ws(&u, "/app/stall?reloadUri=x").await;
    let chunk = vec![7u8; 256 * 1024];
    let mut blocked = false;
    for _ in 0..400 {
        let send = ws.send(Message::binary(chunk.clone()));
        match tokio::time::timeout(Duration::from_secs(1), send).await {
            // Blocked, or already given up by the balancer.
            Err(_) | Ok(Err(_)) => {
                blocked = true;
                break;
            }
            Ok(Ok(())) => {}
        }
    }
    assert!(blocked, "the flood fills the socket buffers");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_cuts_through_a_tunnel_whose_client_stopped_reading() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    // Long idle and send bounds: only the close can end the tunnel within the test.
    let lb = start_lb(
        &sim.addrs(),
        &format!("{QUIET}[listener]\nsend_timeout = \"1h\"\n[websocket]\nidle_timeout = \"1h\"\n"),
    )
    .await;
    let _ws = stalled_websocket(&lb).await;
    assert_eq!(lb.test_handle().open_tunnels(), 1);
    let start = Instant::now();
    // As maint with close_websockets, or a removed node past its drain deadline, do.
    lb.test_handle().node("qps1").unwrap().close_tunnels();
    lb_tests::faults::wait_for(Duration::from_secs(5), "tunnel closed", || {
        lb.test_handle().open_tunnels() == 0
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_client_stopped_reading_ends_after_send_timeout() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("{QUIET}[listener]\nsend_timeout = \"1s\"\n[websocket]\nidle_timeout = \"1h\"\n"),
    )
    .await;
    let _ws = stalled_websocket(&lb).await;
    lb_tests::faults::wait_for(Duration::from_secs(6), "stalled tunnel ended", || {
        lb.test_handle().open_tunnels() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_a_download_is_cut_after_send_timeout() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("{QUIET}[listener]\nsend_timeout = \"1s\"\n"),
    )
    .await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    s.write_all(b"GET /_sim/download?bytes=500000000 HTTP/1.1\r\nHost: lb.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(T, s.read(&mut head))
        .await
        .expect("head in time")
        .unwrap();
    assert_eq!(status_of(&head[..n]), 200);
    // The client reads nothing more: the balancer gives the connection up.
    lb_tests::faults::wait_for(Duration::from_secs(8), "client connection closed", || {
        lb.test_handle().open_connections() == 0
    })
    .await;
    assert_eq!(node_failures(&lb, 1), vec![0]);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_reading_an_upload_still_times_out() {
    watch_panics();
    // Reads the head, then neither the body nor answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            held.push(s);
        }
    });
    let lb = start_lb(
        &[node],
        &format!("{QUIET}[upstream]\nresponse_timeout = \"1s\"\n[health]\nenabled = false\n"),
    )
    .await;
    let s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    tokio::spawn(async move {
        let _ = w
            .write_all(b"POST /up HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 100000000\r\n\r\n")
            .await;
        let chunk = vec![b'q'; 64 * 1024];
        for _ in 0..1500 {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, r.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(
        status_of(&buf[..n]),
        504,
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        node_failures(&lb, 1),
        vec![1],
        "the node's own failure counts"
    );
}
