//! SAML through the balancer in headless Chromium, over HTTPS: a node sends the browser to the
//! identity provider on another site, whose page posts the assertion back cross-site; with
//! `sticky.same_site = "none"` the route cookie (`SameSite=None; Secure`) rides along on that
//! POST, so it reaches the node that started the login (the only one that knows its
//! RelayState). Needs Chromium (Debian package `chromium`, or `LB_CHROMIUM`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lb_config::Config;
use lb_sim::{Auth, SimCluster, SimIdp, SimOptions, SimUser};
use rcgen::{CertificateParams, KeyPair};

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

/// The DOM Chromium ends with at `url` (a self-signed HTTPS site is accepted).
async fn dump_dom(url: &str, tag: &str) -> String {
    let profile = std::env::temp_dir().join(format!("lb-saml-{tag}-{}", std::process::id()));
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
            "--ignore-certificate-errors",
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
    let out = tokio::time::timeout(Duration::from_secs(90), out)
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

/// A self-signed certificate for 127.0.0.1, as PEM files.
fn certificate(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-saml-cert-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("site.pem"), dir.join("site.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// One SAML login through an HTTPS balancer with route cookie `same_site`: whether it ended
/// with a session on the node that started it.
/// [`saml_login_once`], again (at most three times) when Chromium printed no page at all: under
/// load `--dump-dom` sometimes exits with an empty document, which says nothing either way.
async fn saml_login(same_site: &str) -> (bool, String) {
    for attempt in 1..=3 {
        let (ok, what, printed) = saml_login_once(same_site).await;
        if printed {
            return (ok, what);
        }
        eprintln!("chromium printed no page (attempt {attempt}): {what}");
    }
    panic!("chromium printed no page in three attempts");
}

async fn saml_login_once(same_site: &str) -> (bool, String, bool) {
    let idp = SimIdp::start(
        "127.0.0.1:0".parse().unwrap(),
        SimUser::new("CORP", "grace"),
    )
    .await
    .unwrap();
    // The IdP is another site: `localhost` against the balancer's `127.0.0.1`.
    let idp_sso_url = format!("http://localhost:{}/sso", idp.addr().port());
    let opts = SimOptions {
        prefix: "saml".to_string(),
        scheme: "https".to_string(),
        ..SimOptions::with_auth(Auth::Saml { idp_sso_url })
    };
    let sim = SimCluster::start(3, 0, opts).await.unwrap();
    let (cert, key) = certificate(same_site);
    let mut text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [sticky]\nsame_site = \"{same_site}\"\n[balance]\nstrategy = \"round-robin\"\n[health]\nenabled = false\n",
        cert.display(),
        key.display()
    );
    for (i, a) in sim.addrs().iter().enumerate() {
        text.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\n",
            i + 1
        ));
    }
    let lb = lb::Server::start(Config::from_toml(&text, Path::new(".")).unwrap())
        .await
        .unwrap();
    let dom = dump_dom(&format!("https://{}/saml/hub/", lb.proxy_addr()), same_site).await;
    let started: Vec<String> = sim
        .nodes()
        .iter()
        .filter(|n| n.stats().login_redirects > 0)
        .map(|n| n.name().to_string())
        .collect();
    let grace = SimUser::new("CORP", "grace");
    let sessions = sim.sessions_of(&grace);
    let rejections: u64 = sim.nodes().iter().map(|n| n.stats().saml_rejections).sum();
    // One login, started on one node, finished there with one trip to the identity provider
    // (a POST that lands elsewhere is rejected, or sends the browser to sign in again).
    let ok = started.len() == 1
        && idp.responses() == 1
        && sessions == [(started[0].clone(), 1)]
        && rejections == 0
        && dom.contains(&format!("ok {}", started[0]));
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(cert.parent().unwrap());
    let what = format!(
        "started on {started:?}, identity provider answers {}, sessions {sessions:?}, \
         rejections {rejections}: {dom}",
        idp.responses()
    );
    (ok, what, !dom.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saml_login_started_on_a_node_finishes_there_with_a_same_site_none_route_cookie() {
    let (ok, what) = saml_login("none").await;
    assert!(ok, "SameSite=None: {what}");
    // The control: with the default (Lax) the cross-site POST carries no route cookie and
    // lands on another node.
    let (ok, what) = saml_login("lax").await;
    assert!(
        !ok,
        "SameSite=Lax unexpectedly finished on its node: {what}"
    );
}
