//! The node connection pool after a burst and under a steady load: the surplus a burst left
//! idle goes within seconds (memory and node sockets follow the load down), while a steady
//! load keeps reusing the connection it has.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lb_tests::faults::watch_panics;
use lb_tests::{start_lb, SimCluster, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request on its own client connection; the answer's body.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_leaves_no_idle_surplus_and_a_steady_load_keeps_its_connection() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[server]\naccess_log = false\n").await;
    let addr = lb.proxy_addr();

    // 16 requests at once, each held 300 ms by the node: 16 node connections, then idle.
    let burst: Vec<_> = (0..16)
        .map(|_| tokio::spawn(get(addr, "/_sim/slow?ms=300")))
        .collect();
    for b in burst {
        b.await.unwrap();
    }
    let after_burst = lb.test_handle().idle_node_connections("qps1");
    assert!(after_burst >= 12, "idle after the burst: {after_burst}");

    // Nothing needs them: they go, about half each second.
    let t0 = Instant::now();
    loop {
        let idle = lb.test_handle().idle_node_connections("qps1");
        if idle <= 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(12),
            "still {idle} idle node connections {:?} after the burst",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A steady load, one request after another for 3 s: it keeps its node connection (the
    // node sees the same peer port), the sweeps notwithstanding.
    let mut peers = HashSet::new();
    let mut n = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let out = get(addr, "/_sim/headers").await;
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        peers.insert(v["_peer"].as_str().unwrap().to_string());
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(n > 50, "only {n} requests in 3 s");
    assert!(
        peers.len() <= 2,
        "a steady load went through {} node connections in {n} requests",
        peers.len()
    );
}
