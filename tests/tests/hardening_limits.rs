//! Connection limits cover a connection's whole life: its PROXY header, its TLS handshake and
//! its WebSocket after the upgrade. A refused HTTPS connection is closed, not answered in
//! plain text.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use lb_tests::faults::{open_ws, read_until_closed, wait_for, watch_panics};
use lb_tests::{config_text, start_lb, SimCluster, SimOptions, User};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const QUIET: &str = "[server]\naccess_log = false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_keep_their_connection_and_client_slot() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("{QUIET}[listener]\nmax_connections_per_client = 3\n"),
    )
    .await;
    // The user's keep-alive connection and two WebSockets: three connections.
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    let (_ws1, _) = open_ws(&u, "/app/one").await;
    let (_ws2, _) = open_ws(&u, "/app/two").await;
    // The tunnel counts once both upgrades have completed, a moment after the 101.
    wait_for(
        Duration::from_secs(5),
        "three connections and two tunnels",
        || lb.test_handle().open_connections() == 3 && lb.test_handle().open_tunnels() == 2,
    )
    .await;
    // A third connection from the same address is over the limit.
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 429"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    drop((_ws1, _ws2, u));
    wait_for(Duration::from_secs(5), "released with the tunnels", || {
        lb.test_handle().open_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reading_their_proxy_header_are_counted() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!(
            "{QUIET}[listener]\nmax_connections = 2\nproxy_protocol = \"required\"\n\
             header_read_timeout = \"30s\"\n"
        ),
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
        s.write_all(b"PROXY TCP4 ").await.unwrap();
        stalled.push(s);
    }
    wait_for(Duration::from_secs(5), "stalled headers counted", || {
        lb.test_handle().open_connections() == 2
    })
    .await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    let (out, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "the third connection is refused at once");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 503"));
    drop(stalled);
    wait_for(Duration::from_secs(5), "released", || {
        lb.test_handle().open_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_are_counted_and_refusals_are_closed_not_answered() {
    watch_panics();
    let dir = std::env::temp_dir().join(format!("lb-harden-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let text = config_text(
        &sim.addrs(),
        &format!(
            "{QUIET}[listener]\nmax_connections = 2\nheader_read_timeout = \"30s\"\n\
             [listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("c.pem").display(),
            dir.join("k.pem").display()
        ),
    );
    let lb = lb::Server::start(lb_config::Config::from_toml(&text, Path::new(".")).unwrap())
        .await
        .unwrap();
    // Two clients that never send their ClientHello.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(lb.proxy_addr()).await.unwrap());
    }
    wait_for(Duration::from_secs(5), "handshakes counted", || {
        lb.test_handle().open_connections() == 2
    })
    .await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    let (out, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "refused at once");
    assert!(out.is_empty(), "no plain text to a TLS client: {out:?}");
    drop(idle);
    let _ = std::fs::remove_dir_all(&dir);
}
