//! SAML in a real browser: headless Chromium is sent by a node to the identity provider on
//! another site, whose page posts the assertion back cross-site to the node's `samlauthn`; the
//! session ends up on the node that started the login. Needs Chromium (Debian package
//! `chromium`, or `LB_CHROMIUM`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use lb_sim::{Auth, SimCluster, SimIdp, SimOptions, SimUser};

fn chromium() -> PathBuf {
    let p = std::env::var_os("LB_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "{} not found: this test needs a headless browser; install the Debian package \
         `chromium` (apt-get install -y chromium) or set LB_CHROMIUM",
        p.display()
    );
    p
}

/// The DOM Chromium ends with at `url`, after its scripts and navigations ran for five seconds
/// of virtual time.
async fn dump_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("lb-sim-saml-{}", std::process::id()));
    std::fs::create_dir_all(&profile).unwrap();
    let out = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium finished in time")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_through_the_identity_provider_on_the_node_that_started() {
    // Under load Chromium's `--dump-dom` sometimes exits with an empty document, which says
    // nothing either way: such a run is made again on a fresh cluster (at most three times).
    for attempt in 1..=3 {
        if sign_in_once().await {
            return;
        }
        eprintln!("chromium printed no page (attempt {attempt})");
    }
    panic!("chromium printed no page in three attempts");
}

/// One sign-in; false when Chromium printed no page at all.
async fn sign_in_once() -> bool {
    let idp = SimIdp::start(
        "127.0.0.1:0".parse().unwrap(),
        SimUser::new("CORP", "grace"),
    )
    .await
    .unwrap();
    // The IdP is another site: `localhost` against the nodes' `127.0.0.1`.
    let idp_sso_url = format!("http://localhost:{}/sso", idp.addr().port());
    let opts = SimOptions {
        prefix: "saml".to_string(),
        ..SimOptions::with_auth(Auth::Saml { idp_sso_url })
    };
    let sim = SimCluster::start(3, 0, opts).await.unwrap();
    let node = sim.node(1);

    let dom = dump_dom(&format!("http://{}/saml/hub/", node.addr())).await;
    if dom.trim().is_empty() {
        return false;
    }
    assert!(dom.contains("ok node2"), "final page: {dom}");
    assert_eq!(idp.responses(), 1);
    let s = node.stats();
    assert_eq!(
        (s.login_redirects, s.saml_logins, s.saml_rejections),
        (1, 1, 0)
    );
    let grace = SimUser::new("CORP", "grace");
    assert_eq!(sim.sessions_of(&grace), [("node2".to_string(), 1)]);
    true
}
