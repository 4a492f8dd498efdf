//! A stalled PROXY protocol header costs no CPU while the balancer waits for it (alone in its
//! test binary: it measures the process's CPU time).

use std::time::Duration;

use lb_tests::faults::watch_panics;
use lb_tests::{start_lb, SimCluster, SimOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// CPU time of this process (user + system), from /proc/self/stat, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_proxy_headers_are_waited_for_not_polled() {
    watch_panics();
    let Some(_) = cpu_ticks() else {
        eprintln!("no /proc/self/stat: skipped");
        return;
    };
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        "[server]\naccess_log = false\n[health]\nenabled = false\n[listener]\n\
         proxy_protocol = \"required\"\nheader_read_timeout = \"30s\"\n",
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
        s.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks().unwrap() - before;
    // 2 s of 200 stalled headers: a wait costs nothing; polling every 2 ms costs 200,000
    // wake-ups. Clock ticks are 1/100 s: 20 ticks is 10% of one core.
    assert!(used < 20, "{used} ticks of CPU in 2 s for stalled headers");
    drop(stalled);
    drop(lb);
}
