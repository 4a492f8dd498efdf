//! Helpers of the fault-injection tests (`tests/faults.rs`): a watch on panics outside the
//! tests, leak checks on the balancer's counters, WebSocket helpers, and misbehaving nodes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use lb::Server;
use lb_bench::client::{self, CookieJar, WsConnect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::User;

/// Generous bound for anything that should happen "at once".
pub const T: Duration = Duration::from_secs(10);

/// Panics seen outside the tests (in the balancer, the simulator or a dependency).
static FOREIGN_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic whose location is not in the tests themselves: a panic in a task of the
/// balancer is caught by tokio and would otherwise go unnoticed.
pub fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("?");
            if !file.starts_with("tests/") {
                let thread = std::thread::current().name().unwrap_or("?").to_string();
                FOREIGN_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("[{thread}] {info}"));
            }
            prev(info);
        }));
    });
}

pub fn assert_no_foreign_panics() {
    let p = FOREIGN_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(p.is_empty(), "panics outside the tests: {p:#?}");
}

/// Node id in the balancer (`qps2`) of a simulated node (`node2`).
pub fn id_of(sim_name: &str) -> String {
    sim_name.replacen("node", "qps", 1)
}

pub fn counter(lb: &Server, id: &str, f: fn(&lb::upstream::NodeState) -> u64) -> u64 {
    f(&lb.test_handle().node(id).expect("node known"))
}

pub fn redispatches(n: &lb::upstream::NodeState) -> u64 {
    n.redispatches_total.load(Ordering::Relaxed)
}

pub fn failures(n: &lb::upstream::NodeState) -> u64 {
    n.failures_total.load(Ordering::Relaxed)
}

/// Waits (bounded) until the balancer holds no client connection, no tunnel, and no node has a
/// request in flight or a tunnel open.
pub async fn assert_drained(lb: &Server, nodes: usize, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        let conns = lb.test_handle().open_connections();
        let tunnels = lb.test_handle().open_tunnels();
        let per_node: Vec<(String, i64, i64)> = (1..=nodes)
            .map(|i| {
                let id = format!("qps{i}");
                let s = lb.test_handle().node(&id).expect("node known");
                (
                    id,
                    s.in_flight.load(Ordering::Relaxed),
                    s.open_tunnels.load(Ordering::Relaxed),
                )
            })
            .collect();
        if conns == 0 && tunnels == 0 && per_node.iter().all(|(_, f, t)| *f == 0 && *t == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: leak after {T:?}: open_connections={conns} open_tunnels={tunnels} \
             (node, in_flight, open_tunnels)={per_node:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 10 ms until it holds, for at most `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn open_ws(user: &User, path: &str) -> (client::WsStream, String) {
    let c = tokio::time::timeout(
        T,
        client::ws_connect(&user.target, path, &user.jar, Some("qix"), 16 * 1024),
    )
    .await
    .expect("websocket handshake in time")
    .expect("websocket handshake");
    match c {
        WsConnect::Open(ws, node) => (*ws, node.expect("node header on 101")),
        WsConnect::Refused(status, node) => panic!("websocket refused: {status} by {node:?}"),
    }
}

pub async fn echo_once(ws: &mut client::WsStream, text: &str) {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("send");
    let m = tokio::time::timeout(T, ws.next())
        .await
        .expect("echo in time")
        .expect("socket open")
        .expect("echo");
    assert_eq!(m, Message::text(text.to_string()));
}

/// A user whose route cookie pins it to balancer node `id`.
pub async fn user_pinned_to(lb: &Server, id: &str) -> User {
    let mut u = User::new(lb.proxy_addr()).await;
    u.jar = CookieJar::default();
    u.jar
        .store(&format!("QLB_ROUTE={}", lb.test_handle().route_value(id)));
    u
}

/// Reads everything until EOF or an error, for at most `limit`. Returns the bytes and whether
/// the stream ended (EOF or reset) in time.
pub async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// What a misbehaving upstream does after reading a request head.
#[derive(Clone, Copy, Debug)]
pub enum Fake {
    /// Writes these bytes (not HTTP) and closes.
    Garbage(&'static [u8]),
    /// Writes a 200 head announcing 1000 bytes, 10 bytes of body, and closes.
    Truncate,
    /// Closes without a word.
    Close,
}

/// 512 deterministic bytes that are no HTTP response.
pub fn random_bytes() -> &'static [u8] {
    static B: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Starts a misbehaving node on 127.0.0.1; returns its address and the number of requests
/// it has received.
pub async fn fake_node(kind: Fake) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                // Read one request head (bounded in size and time).
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                let got = tokio::time::timeout(Duration::from_secs(5), async {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    true
                })
                .await;
                if got != Ok(true) {
                    return;
                }
                seen.fetch_add(1, Ordering::Relaxed);
                match kind {
                    Fake::Garbage(bytes) => {
                        let _ = s.write_all(bytes).await;
                    }
                    Fake::Truncate => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                                  Content-Length: 1000\r\nX-Sim-Node: truncator\r\n\r\n0123456789",
                            )
                            .await;
                        let _ = s.flush().await;
                    }
                    Fake::Close => {}
                }
                // Dropping the socket closes it.
            });
        }
    });
    (addr, seen)
}

/// Soft limit of open files of this process, from /proc (Linux), if readable.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
