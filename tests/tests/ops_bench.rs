//! The bench harness as it is pointed at a real site: an `https://` and a `wss://` target
//! (the balancer with a test certificate, trusted through a CA file or `--insecure`), a
//! request rate limit held within 10%, extra headers and cookies, the hard caps, and a lost
//! Qlik session seen as a QPS shows it (a redirect to the login).

use std::path::PathBuf;
use std::time::Duration;

use lb_bench::client::TargetOpts;
use lb_bench::scenario::{self, Scenario, ScenarioOpts};
use lb_tests::{start_lb, SimCluster, SimOptions};
use rcgen::{CertificateParams, DnType, KeyPair};

/// A self-signed certificate for 127.0.0.1 and localhost: (cert, key) PEM files.
fn test_cert(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-ops-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "lb bench test");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn within(achieved: f64, limit: f64, what: &str) {
    let err = (achieved - limit).abs() / limit;
    assert!(
        err <= 0.10,
        "{what}: {achieved:.1}/s against a limit of {limit}/s ({:.1}% off)",
        err * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_targets_with_a_rate_limit() {
    let sims = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let (cert, key) = test_cert("tls");
    let lb = start_lb(
        &sims.addrs(),
        &format!(
            "[server]\naccess_log = false\n[listener]\n[listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let port = lb.proxy_addr().port();

    // HTTPS, verified against the certificate as CA file, 100 requests/s over 3 s.
    let opts = ScenarioOpts {
        url: format!("https://127.0.0.1:{port}"),
        duration: Duration::from_secs(3),
        connections: 8,
        rate: Some(100.0),
        target: TargetOpts {
            ca_file: Some(cert.clone()),
            headers: vec!["X-Bench-Run: ops".into()],
            ..TargetOpts::default()
        },
        ..ScenarioOpts::default()
    };
    let r = scenario::run(Scenario::Http, &opts).await.unwrap();
    assert!(r.is_clean(), "{}", r.table());
    assert_eq!(r.sessions_lost, 0);
    assert_eq!(r.rate_limit, Some(100.0));
    within(r.requests_per_sec, 100.0, "https");
    println!(
        "https, rate 100/s: {:.1} requests/s over {} s",
        r.requests_per_sec, r.duration_secs
    );

    // Without the CA file the certificate is refused; with --insecure it is not checked.
    let refused = scenario::run(
        Scenario::Http,
        &ScenarioOpts {
            duration: Duration::from_millis(300),
            connections: 1,
            target: TargetOpts::default(),
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(refused.requests, 0);
    assert!(
        refused
            .error_samples
            .keys()
            .any(|e| e.contains("TLS handshake")),
        "{:?}",
        refused.error_samples
    );

    // wss:// with --insecure: 100 echoes/s over 2 s, plus the user's login.
    let ws = ScenarioOpts {
        url: format!("wss://localhost:{port}"),
        duration: Duration::from_secs(2),
        connections: 4,
        rate: Some(100.0),
        message_size: 512,
        target: TargetOpts {
            insecure: true,
            ..TargetOpts::default()
        },
        ..ScenarioOpts::default()
    };
    let r = scenario::run(Scenario::WsEcho, &ws).await.unwrap();
    assert!(r.is_clean(), "{}", r.table());
    assert_eq!(r.ws_opened, 4);
    within(r.messages_per_sec, 100.0, "wss");
    println!("wss, rate 100/s: {:.1} messages/s", r.messages_per_sec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_the_caps_and_remote_targets() {
    let sims = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sims.addrs(), "[server]\naccess_log = false\n").await;
    // A 2 s ramp to 60/s: 60 requests in the ramp, then 60 a second: about 120 in 3 s.
    let opts = ScenarioOpts {
        url: format!("http://{}", lb.proxy_addr()),
        duration: Duration::from_secs(3),
        connections: 6,
        rate: Some(60.0),
        ramp: Duration::from_secs(2),
        ..ScenarioOpts::default()
    };
    let r = scenario::run(Scenario::Churn, &opts).await.unwrap();
    assert!(r.is_clean(), "{}", r.table());
    within(r.requests as f64, 120.0, "ramp");

    let refuse =
        |o: ScenarioOpts| async move { scenario::run(Scenario::Http, &o).await.unwrap_err() };
    let e = refuse(ScenarioOpts {
        connections: 11,
        max_users: 10,
        ..opts.clone()
    })
    .await;
    assert!(e.to_string().contains("cap"), "{e}");
    let e = refuse(ScenarioOpts {
        duration: Duration::from_secs(61),
        max_duration: Duration::from_secs(60),
        ..opts.clone()
    })
    .await;
    assert!(e.to_string().contains("cap"), "{e}");
    let e = refuse(ScenarioOpts {
        url: "https://192.0.2.10/".into(),
        ..opts.clone()
    })
    .await;
    assert!(e.to_string().contains("--allow-remote"), "{e}");
}

#[tokio::test]
async fn a_lost_session_is_a_redirect_to_the_login() {
    // Nodes that sign users in as a QPS does: a session they do not know is sent to log in.
    let sims = SimCluster::start(
        2,
        0,
        SimOptions {
            auth: lb_sim::Auth::Windows,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let lb = start_lb(&sims.addrs(), "[server]\naccess_log = false\n").await;
    let opts = ScenarioOpts {
        url: format!("http://{}", lb.proxy_addr()),
        duration: Duration::from_secs(1),
        connections: 2,
        rate: Some(20.0),
        target: TargetOpts {
            cookies: vec!["X-Qlik-Session=0b5a1c1e-6d0e-4a8a-9d59-7d1b3a9f2c11".into()],
            ..TargetOpts::default()
        },
        ..ScenarioOpts::default()
    };
    let r = scenario::run(Scenario::Http, &opts).await.unwrap();
    assert!(r.requests > 0);
    assert_eq!(r.sessions_lost, r.requests, "{}", r.table());
    assert!(r.violations >= r.requests, "{}", r.table());
    assert!(r.table().contains("sessions lost"));
    // The same run without the stale cookie: the user is not signed in, and that is not a
    // lost session.
    let r = scenario::run(
        Scenario::Http,
        &ScenarioOpts {
            target: TargetOpts::default(),
            ..opts
        },
    )
    .await
    .unwrap();
    assert_eq!(r.sessions_lost, 0, "{}", r.table());
}
