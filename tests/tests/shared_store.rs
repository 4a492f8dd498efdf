//! Several balancers sharing what they learn through a real `redis-server` (`[sticky.shared]`):
//! a session learned through balancer A is honoured by balancer B, the store killed and
//! started again under load costs no request, a slow store does not slow pinned users, and
//! `lb check` names the key of a bad store URL or an unreadable password file.
//!
//! Each test starts its own `redis-server` on a free loopback port (no persistence, a temporary
//! folder) and kills it at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use lb::Server;
use lb_bench::client::{CookieJar, HttpConn};
use lb_tests::redis_store::{free_port, slow_proxy, Store};
use lb_tests::{config, target, SimCluster, SimOptions, User};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
const ROUTE: &str = "QLB_ROUTE";
const SESSION: &str = "X-Qlik-Session";

fn extra(store: SocketAddr, more: &str) -> String {
    format!(
        "[server]\naccess_log = false\n[health]\nenabled = false\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [sticky]\nroute_key = \"a-key-shared-by-both-balancers\"\n\
         [sticky.shared]\nurl = \"redis://{store}\"\n{more}\n"
    )
}

async fn start(nodes: &[SocketAddr], extra: &str) -> Server {
    Server::start(config(nodes, extra))
        .await
        .expect("balancer starts")
}

async fn status(lb: &Server) -> Value {
    let mut c = HttpConn::connect(&target(lb.admin_addr().unwrap()))
        .await
        .unwrap();
    let r = c.get("/status", None).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_slice(&r.body).unwrap()
}

async fn store_status_until(lb: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let s = status(lb).await["sticky"]["shared_store"].clone();
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A user's jar without the route cookie: a browser whose balancer cookie was lost, or a client
/// that only keeps the Qlik session.
fn without_route(jar: &CookieJar) -> CookieJar {
    let mut j = jar.clone();
    j.store(&format!("{ROUTE}=; Max-Age=0"));
    j
}

/// Moves balancer `lb`'s round robin one step on, so that its new selections differ from
/// those of a balancer that saw the same users first.
async fn offset_round_robin(lb: &Server) {
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/warm-up").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_learned_through_a_are_honoured_by_b() {
    let store = Store::start(&[]).await;
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    // A generous deadline: this test is about where users land, not about a loaded machine's
    // scheduling (the short default's behaviour is the slow-store test's).
    let generous = "lookup_timeout = \"500ms\"\n";
    let a = start(&sim.addrs(), &extra(store.addr(), generous)).await;
    let b = start(&sim.addrs(), &extra(store.addr(), generous)).await;
    // The control: a balancer with the same route key but no store.
    let no_store = extra(store.addr(), "").replace(
        &format!("[sticky.shared]\nurl = \"redis://{}\"\n", store.addr()),
        "",
    );
    assert!(!no_store.contains("[sticky.shared]"), "{no_store}");
    let c = start(&sim.addrs(), &no_store).await;
    offset_round_robin(&b).await;
    offset_round_robin(&c).await;

    let mut users = Vec::new();
    for _ in 0..100 {
        let mut u = User::new(a.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(u.jar.get(SESSION).is_some(), "the node set its session");
        users.push((r.node().unwrap().to_string(), u.jar.clone()));
    }
    store_status_until(&a, "100 writes", |s| s["writes"].as_u64() >= Some(100)).await;
    // A's 100 users and B's warm-up user.
    assert_eq!(store.cli(&["DBSIZE"]), "101");

    let (mut tb, mut tc) = (
        HttpConn::connect(&target(b.proxy_addr())).await.unwrap(),
        HttpConn::connect(&target(c.proxy_addr())).await.unwrap(),
    );
    let mut control_wrong = 0;
    for (i, (node, jar)) in users.iter().enumerate() {
        let jar = without_route(jar);
        for round in 0..3 {
            let r = tb.get("/qmc", Some(&jar)).await.unwrap();
            if r.status != StatusCode::OK {
                let s = status(&b).await["sticky"]["shared_store"].clone();
                panic!("user {i} round {round} at B: {}; store {s:#}", r.status);
            }
            assert_eq!(r.node(), Some(node.as_str()), "user {i} at B");
        }
        let r = tc.get("/qmc", Some(&jar)).await.unwrap();
        if r.node() != Some(node.as_str()) {
            control_wrong += 1;
        }
    }
    // Without the store, a user without the route cookie lands on a random node.
    assert!(control_wrong > 50, "control: {control_wrong} of 100 moved");
    let s = status(&b).await["sticky"]["shared_store"].clone();
    assert_eq!(s["state"], "up");
    // Asked once per user: the answer is learned, later rounds are local.
    assert_eq!(s["lookups"]["hit"], 100, "{s:#}");
    assert_eq!(status(&b).await["sticky"]["sessions"], 101);
    let mut m = HttpConn::connect(&target(b.admin_addr().unwrap()))
        .await
        .unwrap();
    let metrics =
        String::from_utf8_lossy(&m.get("/metrics", None).await.unwrap().body).into_owned();
    for name in [
        "lb_shared_store_up",
        "lb_shared_store_lookups_total{result=\"hit\"}",
        "lb_shared_store_writes_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    // The users B served are not foreign to their nodes: only the control's misroutes are.
    let foreign: u64 = sim
        .nodes()
        .iter()
        .map(|n| n.stats().foreign_rejections)
        .sum();
    assert_eq!(foreign, control_wrong as u64);
    for lb in [a, b, c] {
        lb.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_killed_and_restarted_under_load_costs_no_request() {
    let mut store = Store::start(&[]).await;
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    // A generous lookup deadline (see the first test): the final check asks B to find a user.
    let generous = "lookup_timeout = \"500ms\"\n";
    let a = start(&sim.addrs(), &extra(store.addr(), generous)).await;
    let b = start(&sim.addrs(), &extra(store.addr(), generous)).await;
    offset_round_robin(&b).await;
    store_status_until(&a, "up", |s| s["state"] == "up").await;

    // Load: pinned users and new users (each new session is a write) through A, and users
    // arriving at B with a session cookie only (each one a lookup), until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let (stop, served) = (stop.clone(), served.clone());
        let (pa, pb) = (a.proxy_addr(), b.proxy_addr());
        load.push(tokio::spawn(async move {
            let mut pinned = User::new(pa).await;
            let mut to_b = HttpConn::connect(&target(pb)).await.unwrap();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                let r = pinned.get("/pinned").await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "worker {w}: pinned request failed"
                );
                let mut fresh = User::new(pa).await;
                let r = fresh.get("/new").await;
                assert_eq!(r.status, StatusCode::OK, "worker {w}: new session failed");
                // At B without a route cookie: the right node if the store knew it in time,
                // another one otherwise (the node then answers 401) — never a balancer error.
                let r = to_b
                    .get("/moved", Some(&without_route(&fresh.jar)))
                    .await
                    .unwrap();
                assert!(
                    r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
                    "worker {w}: {}",
                    r.status
                );
                assert!(r.node().is_some(), "worker {w}: answered by the balancer");
                served.fetch_add(3, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kill = status(&a).await["sticky"]["shared_store"]["writes"]
        .as_u64()
        .unwrap();
    assert!(before_kill > 0, "writes before the kill");

    store.kill();
    let down = store_status_until(&a, "down", |s| s["state"] == "down").await;
    assert!(down["last_error"].is_string(), "{down:#}");
    store_status_until(&b, "down at B", |s| s["state"] == "down").await;
    let served_down = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        served.load(Ordering::Relaxed) > served_down + 30,
        "requests kept being served while the store was down"
    );

    store.spawn().await;
    store_status_until(&a, "up again", |s| s["state"] == "up").await;
    store_status_until(&b, "up again at B", |s| s["state"] == "up").await;
    let after = status(&a).await["sticky"]["shared_store"]["writes"]
        .as_u64()
        .unwrap();
    // Learning resumes: new sessions reach the restarted (empty) store.
    store_status_until(&a, "writes after the restart", |s| {
        s["writes"].as_u64() > Some(after + 20)
    })
    .await;
    assert!(store.cli(&["DBSIZE"]).parse::<u64>().unwrap() > 0);

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("no request failed");
    }
    // And a session learned through A after the restart is honoured by B.
    let mut u = User::new(a.proxy_addr()).await;
    let node = u.get("/hub").await.node().unwrap().to_string();
    let value = u.jar.get(SESSION).unwrap().to_string();
    let key = format!("lb:s:{value}");
    let deadline = Instant::now() + T;
    while store.cli(&["GET", &key]).is_empty() {
        assert!(Instant::now() < deadline, "the session reached the store");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut cb = HttpConn::connect(&target(b.proxy_addr())).await.unwrap();
    let r = cb.get("/qmc", Some(&without_route(&u.jar))).await.unwrap();
    assert_eq!((r.status, r.node()), (StatusCode::OK, Some(node.as_str())));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_does_not_slow_pinned_users() {
    let store = Store::start(&[]).await;
    let delay = Duration::from_millis(300);
    let slow = slow_proxy(store.addr(), delay).await;
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start(
        &sim.addrs(),
        &extra(slow, "connect_timeout = \"5s\"\nwrite_timeout = \"5s\"\n"),
    )
    .await;
    store_status_until(&lb, "up through the slow proxy", |s| s["state"] == "up").await;

    let mut users = Vec::new();
    for _ in 0..10 {
        let mut u = User::new(lb.proxy_addr()).await;
        assert_eq!(u.get("/hub").await.status, StatusCode::OK);
        users.push(u);
    }
    // Pinned users (a learned session and a route cookie) while the store is slow and busy
    // with their writes: no request waits for it.
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        for (i, u) in users.iter_mut().enumerate() {
            let t0 = Instant::now();
            let r = u.get("/qmc").await;
            worst = worst.max(t0.elapsed());
            assert_eq!(r.status, StatusCode::OK, "user {i} round {round}");
        }
    }
    eprintln!("slowest pinned request with a {delay:?} store: {worst:?}");
    assert!(
        worst < Duration::from_millis(100),
        "a pinned request took {worst:?} (store delay {delay:?})"
    );
    // A session unknown here is asked for, and the lookup gives up after lookup_timeout (5 ms):
    // the request is served as a miss well before the store would answer.
    let mut jar = CookieJar::default();
    jar.store(&format!("{SESSION}=0d4a1b2c-0000-4000-8000-000000000001"));
    let mut c = HttpConn::connect(&target(lb.proxy_addr())).await.unwrap();
    let t0 = Instant::now();
    let r = c.get("/qmc", Some(&jar)).await.unwrap();
    let took = t0.elapsed();
    assert!(r.node().is_some(), "answered by a node ({})", r.status);
    assert!(took < Duration::from_millis(150), "a miss took {took:?}");
    let s = store_status_until(&lb, "a lookup timeout", |s| {
        s["timeouts"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(s["lookups"]["unavailable"], 1, "{s:#}");
    assert_eq!(s["lookups"]["hit"], 0, "{s:#}");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_stop_the_start_with_the_key() {
    let store = Store::start(&["--requirepass", "right-password"]).await;
    let dir = std::env::temp_dir().join(format!("lb-store-cred-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), "wrong-password\n").unwrap();
    std::fs::write(dir.join("good"), "right-password\n").unwrap();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let text = lb_tests::config_text(
        &sim.addrs(),
        &extra(store.addr(), "password_file = \"pw\"\n"),
    );
    let c = lb_config::Config::from_toml(&text, &dir).unwrap();
    let err = Server::start(c).await.err().expect("start refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("sticky.shared.password_file"), "{msg}");

    let c = lb_config::Config::from_toml(&text.replace("\"pw\"", "\"good\""), &dir).unwrap();
    let lb = Server::start(c).await.expect("the right password starts");
    store_status_until(&lb, "up with the password", |s| s["state"] == "up").await;
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    store_status_until(&lb, "a write", |s| s["writes"] == 1).await;
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// target/<profile>/lb, brought up to date (another package's binary is not built for us).
fn lb_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("no profile folder in {}", exe.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ok = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            "lb",
            "--bin",
            "lb",
            "--profile",
        ])
        .arg(&profile)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build -p lb")
        .success();
    assert!(ok, "cargo build -p lb");
    profile_dir.join("lb")
}

fn lb_check(dir: &Path, store_section: &str) -> (bool, String) {
    let file = dir.join("lb.toml");
    std::fs::write(
        &file,
        format!(
            "[listener]\naddress = \"127.0.0.1:18000\"\n[[nodes]]\nid = \"qps1\"\naddress = \"127.0.0.1:19100\"\n\
             [sticky.shared]\n{store_section}\n"
        ),
    )
    .unwrap();
    let out = Command::new(lb_binary())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn lb_check_names_a_bad_store_url_and_an_unreadable_password_file() {
    let dir = std::env::temp_dir().join(format!("lb-store-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, out) = lb_check(&dir, "url = \"http://127.0.0.1:6379\"");
    assert!(!ok && out.contains("sticky.shared.url"), "{out}");
    let (ok, out) = lb_check(&dir, "url = \"redis://127.0.0.1:99999\"");
    assert!(!ok && out.contains("sticky.shared.url"), "{out}");
    let (ok, out) = lb_check(
        &dir,
        "url = \"redis://127.0.0.1:6379\"\npassword_file = \"no-such-file\"",
    );
    assert!(!ok && out.contains("sticky.shared.password_file"), "{out}");
    assert!(out.contains("no-such-file"), "{out}");
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    let (ok, out) = lb_check(
        &dir,
        "url = \"rediss://store.example:6379\"\nusername = \"lb\"\npassword_file = \"pw\"",
    );
    assert!(ok, "{out}");
    assert!(
        !out.contains("s3cret"),
        "the password is not printed: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_use_does_not_expire_in_the_store() {
    let store = Store::start(&[]).await;
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    // Idle timeout 2 s: the store entry's TTL; a session in use is written again each second.
    let text =
        extra(store.addr(), "").replace("[sticky]\n", "[sticky]\nsession_idle_timeout = \"2s\"\n");
    let lb = start(&sim.addrs(), &text).await;
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    let key = format!("lb:s:{}", u.jar.get(SESSION).unwrap());
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        assert_eq!(u.get("/qmc").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ttl: i64 = store.cli(&["PTTL", &key]).parse().unwrap();
    assert!(
        ttl > 0,
        "the entry of a session in use expired (PTTL {ttl})"
    );
    // Unused, it expires with its idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(store.cli(&["EXISTS", &key]), "0");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_store_is_verified_against_ca_file() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("lb-store-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "store test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();

    let tls_port = free_port();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let store = Store::start(&[
        "--port",
        "0",
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let text = |more: &str| {
        lb_tests::config_text(&sim.addrs(), &extra(store.addr(), more))
            .replace(&format!("redis://{}", store.addr()), &url)
    };
    // Trusting the test CA: up, and a learned session is written over TLS.
    let c = lb_config::Config::from_toml(&text("ca_file = \"ca.pem\"\n"), &dir).unwrap();
    let lb = Server::start(c).await.expect("starts");
    store_status_until(&lb, "up over TLS", |s| s["state"] == "up").await;
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    store_status_until(&lb, "a write over TLS", |s| s["writes"] == 1).await;
    lb.shutdown().await;
    // With the system's roots only, the store's certificate is refused: the balancer serves
    // without it and says why.
    let c = lb_config::Config::from_toml(&text(""), &dir).unwrap();
    let lb = Server::start(c).await.expect("starts without the store");
    let s = store_status_until(&lb, "an error", |s| s["last_error"].is_string()).await;
    assert_eq!(s["state"], "down", "{s:#}");
    let why = s["last_error"].as_str().unwrap().to_lowercase();
    assert!(
        why.contains("certificate") || why.contains("issuer"),
        "{why}"
    );
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_costs_nothing_and_full_queue_drops_are_counted() {
    // Nothing listens there: the balancer starts, serves, and counts what it could not queue.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let t0 = Instant::now();
    let lb = start(
        &sim.addrs(),
        &extra(nowhere, "write_queue = 1\nwrite_batch = 1\n"),
    )
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "start waited {:?}",
        t0.elapsed()
    );
    for i in 0..5 {
        let mut u = User::new(lb.proxy_addr()).await;
        assert_eq!(u.get("/hub").await.status, StatusCode::OK, "user {i}");
        // Back with only the Qlik session: served from the local table, no lookup.
        let mut c = HttpConn::connect(&target(lb.proxy_addr())).await.unwrap();
        let r = c.get("/qmc", Some(&without_route(&u.jar))).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "user {i} again");
    }
    let s = status(&lb).await["sticky"]["shared_store"].clone();
    assert_eq!(s["state"], "down", "{s:#}");
    assert!(s["last_error"].is_string(), "{s:#}");
    // One write waits in the queue of one; the other four were dropped.
    assert_eq!(s["queued_writes"], 1, "{s:#}");
    assert_eq!(s["dropped_writes"]["queue_full"], 4, "{s:#}");
    assert_eq!(s["lookups"]["hit"], 0);
    assert_eq!(
        s["lookups"]["unavailable"], 0,
        "known sessions never ask: {s:#}"
    );
    lb.shutdown().await;
}

#[test]
fn the_two_examples_share_key_nodes_and_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let load = |side: &str| {
        lb::check_config(&root.join(format!("deploy/examples/shared-{side}.toml")))
            .unwrap_or_else(|e| panic!("shared-{side}.toml: {e}"))
    };
    let (a, b) = (load("a"), load("b"));
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(a.listener.address, addr("127.0.0.1:18000"));
    assert_eq!(b.listener.address, addr("127.0.0.1:18010"));
    assert_eq!(a.admin.as_ref().unwrap().address, addr("127.0.0.1:18001"));
    assert_eq!(b.admin.as_ref().unwrap().address, addr("127.0.0.1:18011"));
    assert_eq!(a.module.as_ref().unwrap().address, addr("127.0.0.1:18002"));
    assert_eq!(b.module.as_ref().unwrap().address, addr("127.0.0.1:18012"));
    // The sign-in listeners: Windows authentication and the QPS REST API of each balancer.
    let listeners = |c: &lb_config::Config| {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.address.to_string()))
            .collect::<Vec<_>>()
    };
    let named = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listeners(&a),
        named(&[("auth", "127.0.0.1:18044"), ("rest", "127.0.0.1:18043")])
    );
    assert_eq!(
        listeners(&b),
        named(&[("auth", "127.0.0.1:18054"), ("rest", "127.0.0.1:18053")])
    );
    for (i, n) in a.nodes.iter().enumerate() {
        assert_eq!(n.addresses[0], addr(&format!("127.0.0.1:{}", 19140 + i)));
        assert_eq!(n.addresses[1], addr(&format!("127.0.0.1:{}", 19160 + i)));
    }
    assert!(a.sticky.route_key.is_some());
    assert_eq!(a.sticky.route_key, b.sticky.route_key);
    let ids = |c: &lb_config::Config| {
        c.nodes
            .iter()
            .map(|n| (n.id.clone(), n.address))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.nodes.len(), 3);
    let (sa, sb) = (a.sticky.shared.unwrap(), b.sticky.shared.unwrap());
    assert_eq!(sa.url, "redis://127.0.0.1:6379");
    assert_eq!((sa.url, sa.key_prefix), (sb.url, sb.key_prefix));
}
