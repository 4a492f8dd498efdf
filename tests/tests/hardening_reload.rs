//! Reloads say what they apply: a setting read only at start is refused with its key named,
//! and the file watcher never applies a file that is still being written.

use std::path::Path;
use std::time::{Duration, Instant};

use lb_tests::faults::watch_panics;
use lb_tests::{config_text, SimCluster, SimOptions};

const QUIET: &str = "[server]\naccess_log = false\n[health]\nenabled = false\n";

fn cfg(text: &str) -> lb_config::Config {
    lb_config::Config::from_toml(text, Path::new(".")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_settings_read_at_start_are_refused_not_ignored() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let module = |base: &str, limit: usize| {
        format!("{QUIET}[module]\naddress = \"127.0.0.1:0\"\nbase_path = \"{base}\"\nbody_limit = {limit}\n")
    };
    let a = config_text(&sim.addrs(), &module("/lbm", 65536));
    let lb = lb::Server::start(cfg(&a)).await.unwrap();
    let port = lb.proxy_addr().port();
    let same_port = |t: String| t.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    let b = same_port(config_text(&sim.addrs(), &module("/other", 65536)));
    let e = lb
        .reload(cfg(&b))
        .expect_err("a base path change is refused");
    assert!(
        e.contains("module.base_path") && e.contains("restart"),
        "{e}"
    );
    let c = same_port(config_text(&sim.addrs(), &module("/lbm", 1024)));
    let e = lb
        .reload(cfg(&c))
        .expect_err("a body limit change is refused");
    assert!(e.contains("module.body_limit"), "{e}");
    assert!(!lb.reload_status().ok);
    // The same module settings reload fine.
    let d = same_port(config_text(
        &sim.addrs(),
        &format!("{}\n", module("/lbm", 65536)),
    ));
    lb.reload(cfg(&d))
        .expect("unchanged module settings reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_address_change_is_refused() {
    watch_panics();
    let dir = std::env::temp_dir().join(format!("lb-harden-redirect-{}", std::process::id()));
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
    let text = |redirect: &str| {
        config_text(
            &sim.addrs(),
            &format!(
                "{QUIET}[listener]\nredirect_address = \"{redirect}\"\n[listener.tls]\n\
                 cert_file = \"{}\"\nkey_file = \"{}\"\n",
                dir.join("c.pem").display(),
                dir.join("k.pem").display()
            ),
        )
    };
    let lb = lb::Server::start(cfg(&text("127.0.0.1:0"))).await.unwrap();
    let port = lb.proxy_addr().port();
    let moved = text("127.0.0.1:1").replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:{port}\""),
        1,
    );
    let e = lb.reload(cfg(&moved)).expect_err("refused");
    assert!(e.contains("listener.redirect_address"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_waits_for_a_file_being_written() {
    watch_panics();
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("lb-harden-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    let full = config_text(&sim.addrs(), QUIET);
    std::fs::write(&path, &full).unwrap();
    let lb = lb::Server::start_with_path(cfg(&full), Some(path.clone()))
        .await
        .unwrap();
    let port = lb.proxy_addr().port();
    let full = full.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    // The new file: the same nodes and a changed timeout. It is written in two pieces; the
    // first piece ends after the first node and parses on its own.
    let next = full.replacen("[health]\n", "[health]\ninterval = \"7s\"\n", 1);
    let cut = next.find("[[nodes]]").unwrap()
        + next[next.find("[[nodes]]").unwrap() + 1..]
            .find("[[nodes]]")
            .unwrap()
        + 1;
    assert!(lb_config::Config::from_toml(&next[..cut], Path::new(".")).is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, &next[..cut]).unwrap();
    let start = Instant::now();
    let mut fewest = usize::MAX;
    while start.elapsed() < Duration::from_millis(400) {
        fewest = fewest.min(lb.test_handle().configured_nodes());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&path, &next).unwrap();
    let want = cfg(&next).version;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        fewest = fewest.min(lb.test_handle().configured_nodes());
        let st = lb.reload_status();
        if st.ok && st.version == want {
            break;
        }
        assert!(Instant::now() < deadline, "the complete file is applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fewest, 3, "the half-written file never applied");
    assert_eq!(lb.test_handle().configured_nodes(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
