//! The soak scenario's smoke run (about 20 s): mixed users in front of an in-process balancer
//! that watches its configuration file, while the fault script reloads it, drains and readies
//! a node, kills and restarts one, and sends malformed, slow and slowloris clients. The longer
//! run is `lb-bench soak` against the release binary.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lb_bench::soak::{self, SoakOpts, SoakTarget};
use lb_tests::faults::watch_panics;
use lb_tests::{SimCluster, SimOptions};

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_smoke() {
    watch_panics();
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let (proxy, admin) = (free_addr(), free_addr());
    let configs = [0, 1].map(|v| soak::config(proxy, admin, &sim.addrs(), v));
    let dir = std::env::temp_dir().join(format!("lb-soak-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, &configs[0]).unwrap();
    let c = lb_config::Config::from_toml(&configs[0], Path::new(".")).unwrap();
    let lb = lb::Server::start_with_path(c, Some(path.clone()))
        .await
        .unwrap();
    let target = SoakTarget {
        proxy,
        admin,
        config_path: path,
        configs,
        pid: std::process::id(),
        node_ids: vec!["qps1".into(), "qps2".into(), "qps3".into()],
    };
    let opts = SoakOpts {
        duration: Duration::from_secs(20),
        users: 12,
        fault_every: Duration::from_secs(2),
    };
    let r = soak::run(&sim, &target, &opts).await.unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.requests > 500, "{r:?}");
    assert!(
        r.faults.kills == 1 && r.faults.reloads >= 5 && r.faults.drains >= 1,
        "{r:?}"
    );
    assert!(r.ok(), "soak invariants broken: {r:#?}");
    assert!(lb.reload_status().ok, "the reloads applied");
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
