//! Poller tests against tiny HTTP servers on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use lb_module_api::EngineState;

const CURRENT: &str = r#"{"version":"12.612.0","started":"20250101T101010.000+0000",
 "mem":{"committed":1843.5,"allocated":2245.1,"free":27012.3,"totalPhysical":32768.0},
 "cpu":{"total":12.0},"session":{"active":3,"total":7},
 "apps":{"active_docs":["0b2a3c4d-1111-2222-3333-444455556666"],
         "in_memory_docs":["0b2a3c4d-1111-2222-3333-444455556666"],
         "loaded_docs":["0b2a3c4d-1111-2222-3333-444455556666"],"calls":1,"selections":2},
 "users":{"active":2,"total":5},"cache":{"hits":0},"saturated":false}"#;

const OLD: &str = r#"{"version":"11.11.1",
 "mem":{"comitted":900.0,"allocated":1200.0,"free":5000.0},
 "cpu":{"total":40},"session":{"active":9,"total":9},
 "apps":{"active_docs":["C:\\ProgramData\\Qlik\\Sense\\Apps\\Sales.qvf"],"loaded_docs":[]},
 "users":{"active":1,"total":1}}"#;

const BUSY: &str = r#"{"mem":{"free":3000,"totalPhysical":32768},"cpu":{"total":70},
 "session":{"active":50}}"#;

#[derive(Clone)]
enum Behaviour {
    Json(String),
    Status(u16),
    Garbage,
    Hang,
}

/// A hand-rolled keep-alive HTTP/1.1 server whose answer can be switched at any time.
struct Server {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
    last_head: Arc<Mutex<String>>,
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let hits = Arc::new(AtomicUsize::new(0));
        let last_head = Arc::new(Mutex::new(String::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (b, h, l, c) = (
            behaviour.clone(),
            hits.clone(),
            last_head.clone(),
            conns.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, b.clone(), h.clone(), l.clone()));
            }
        });
        Server {
            addr,
            behaviour,
            hits,
            last_head,
            conns,
            task,
        }
    }

    /// The same server behind TLS that requires a client certificate signed by the test CA.
    async fn start_tls(behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls_config());
        let behaviour = Arc::new(Mutex::new(behaviour));
        let hits = Arc::new(AtomicUsize::new(0));
        let last_head = Arc::new(Mutex::new(String::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (b, h, l, c) = (
            behaviour.clone(),
            hits.clone(),
            last_head.clone(),
            conns.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, b, h, l) = (acceptor.clone(), b.clone(), h.clone(), l.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve(tls, b, h, l).await;
                    }
                });
            }
        });
        Server {
            addr,
            behaviour,
            hits,
            last_head,
            conns,
            task,
        }
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn url(&self) -> Uri {
        format!("http://{}/engine/healthcheck", self.addr)
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
    last_head: Arc<Mutex<String>>,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request head (GET, no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        *last_head.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
        hits.fetch_add(1, Ordering::SeqCst);
        let now = behaviour.lock().unwrap().clone();
        let response = match now {
            Behaviour::Json(body) => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            Behaviour::Status(code) => {
                format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n")
            }
            Behaviour::Garbage => {
                let body = "<html>this is not the engine</html>";
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            Behaviour::Hang => {
                std::future::pending::<()>().await;
                return;
            }
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/telemetry/testdata")
        .join(name)
}

fn server_tls_config() -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(testdata("ca.pem")).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs = vec![CertificateDer::from_pem_file(testdata("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(testdata("server_key.pem")).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

fn settings(interval_ms: u64, timeout_ms: u64) -> PollerSettings {
    PollerSettings {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        tls: TlsClientFiles::default(),
    }
}

async fn wait_for(
    t: &Telemetry,
    id: &str,
    what: &str,
    pred: impl Fn(&EngineStatus) -> bool,
) -> EngineStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = t.status(id);
        if let Some(s) = &status {
            if pred(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id}: gave up waiting for {what}; last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_fresh(s: &EngineStatus) -> bool {
    s.state == TelemetryState::Fresh
}

fn unreachable_with(s: &EngineStatus, needle: &str) -> bool {
    matches!(&s.state, TelemetryState::Unreachable { reason } if reason.contains(needle))
}

#[tokio::test]
async fn parses_current_and_old_shapes() {
    let current = Server::start(Behaviour::Json(CURRENT.into())).await;
    let old = Server::start(Behaviour::Json(OLD.into())).await;
    let t = Telemetry::new();
    t.set_targets(
        vec![
            EngineTarget::new("current", current.url()),
            EngineTarget::new("old", old.url()),
        ],
        settings(50, 1000),
    )
    .unwrap();

    let s = wait_for(&t, "current", "fresh", is_fresh).await;
    let sample = s.sample.unwrap();
    assert_eq!(sample.mem_total_physical, Some(32768.0));
    assert_eq!(sample.mem_committed, 1843.5);
    assert_eq!(sample.saturated, Some(false));
    assert!(s.at.is_some());
    assert!(s.smoothed_cpu.is_some());

    let s = wait_for(&t, "old", "fresh", is_fresh).await;
    let sample = s.sample.unwrap();
    assert_eq!(sample.mem_committed, 900.0);
    assert_eq!(sample.mem_total_physical, None);
    assert_eq!(sample.in_memory_docs, None);
    assert_eq!(sample.saturated, None);
    assert!(sample.holds_app("sales"));

    let head = current.last_head.lock().unwrap().clone();
    assert!(
        head.starts_with("GET /engine/healthcheck HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-qlik-user: userdirectory=internal; userid=sa_api"),
        "{head}"
    );
    assert!(head.contains(&format!("host: {}", current.addr)), "{head}");

    let all = t.all();
    assert_eq!(
        all.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["current", "old"]
    );
    t.shutdown();
    t.stopped().await;
}

#[tokio::test]
async fn keeps_the_connection_and_smooths_cpu() {
    let server = Server::start(Behaviour::Json(OLD.into())).await; // cpu 40
    let t = Telemetry::new();
    t.set_targets(
        vec![EngineTarget::new("n", server.url())],
        settings(10, 1000),
    )
    .unwrap();
    wait_for(&t, "n", "fresh", is_fresh).await;
    server.set(Behaviour::Json(CURRENT.into())); // cpu 12
    let s = wait_for(&t, "n", "cpu 12", |s| {
        s.sample.as_ref().is_some_and(|x| x.cpu_total == 12.0)
    })
    .await;
    let smoothed = s.smoothed_cpu.unwrap();
    assert!(smoothed > 12.0 && smoothed < 40.0, "{smoothed}");
    let s = wait_for(&t, "n", "smoothed cpu near 12", |s| {
        s.smoothed_cpu.is_some_and(|c| c < 12.5)
    })
    .await;
    assert!(s.smoothed_cpu.unwrap() >= 12.0);
    assert!(server.hits() >= 3);
    assert_eq!(
        server.conns.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    t.shutdown();
}

#[tokio::test]
async fn garbage_then_recovery() {
    let server = Server::start(Behaviour::Garbage).await;
    let t = Telemetry::new();
    t.set_targets(
        vec![EngineTarget::new("n", server.url())],
        settings(20, 1000),
    )
    .unwrap();
    let s = wait_for(&t, "n", "unreachable (garbage)", |s| {
        unreachable_with(s, "not valid JSON")
    })
    .await;
    assert!(s.sample.is_none());
    assert!(s.last_error.is_some());

    server.set(Behaviour::Json(CURRENT.into()));
    let s = wait_for(&t, "n", "fresh again", is_fresh).await;
    assert!(s.last_error.unwrap().contains("not valid JSON"));

    // A failure after a good sample keeps the sample for display.
    server.set(Behaviour::Status(503));
    let s = wait_for(&t, "n", "unreachable (503)", |s| unreachable_with(s, "503")).await;
    assert!(s.sample.is_some());
    assert!(matches!(s.view().state, EngineState::Unreachable));

    server.set(Behaviour::Json(CURRENT.into()));
    wait_for(&t, "n", "fresh after 503", is_fresh).await;
    t.shutdown();
}

#[tokio::test]
async fn a_hang_times_out() {
    let server = Server::start(Behaviour::Hang).await;
    let t = Telemetry::new();
    t.set_targets(
        vec![EngineTarget::new("n", server.url())],
        settings(20, 100),
    )
    .unwrap();
    assert_eq!(t.status("n").unwrap().state, TelemetryState::Unknown);
    wait_for(&t, "n", "timeout", |s| unreachable_with(s, "timed out")).await;

    server.set(Behaviour::Json(CURRENT.into()));
    wait_for(&t, "n", "fresh after hang", is_fresh).await;
    t.shutdown();
}

#[tokio::test]
async fn a_refused_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let t = Telemetry::new();
    let url: Uri = format!("http://{addr}/engine/healthcheck").parse().unwrap();
    t.set_targets(vec![EngineTarget::new("n", url)], settings(20, 1000))
        .unwrap();
    let s = wait_for(&t, "n", "refused", |s| unreachable_with(s, "connect to")).await;
    assert!(s.last_error.is_some());
    t.shutdown();
}

#[tokio::test]
async fn stale_after_three_intervals_without_success() {
    let server = Server::start(Behaviour::Json(CURRENT.into())).await;
    let t = Telemetry::new();
    // The timeout is far longer than three intervals, so a hanging poll leaves the
    // sample aging without a failure.
    t.set_targets(
        vec![EngineTarget::new("n", server.url())],
        settings(30, 30_000),
    )
    .unwrap();
    wait_for(&t, "n", "fresh", is_fresh).await;
    server.set(Behaviour::Hang);
    let s = wait_for(&t, "n", "stale", |s| s.state == TelemetryState::Stale).await;
    assert!(s.at.unwrap().elapsed() > Duration::from_millis(90));
    assert!(matches!(s.view().state, EngineState::Stale));
    assert_eq!(t.rank_ids(&["n"], None, &RankPolicy::default()), vec![0]);
    t.shutdown();
}

#[tokio::test]
async fn reconcile_targets() {
    let a = Server::start(Behaviour::Json(CURRENT.into())).await;
    let b = Server::start(Behaviour::Json(OLD.into())).await;
    let c = Server::start(Behaviour::Json(BUSY.into())).await;
    let t = Telemetry::new();
    let s = settings(10, 1000);
    t.set_targets(
        vec![
            EngineTarget::new("a", a.url()),
            EngineTarget::new("b", b.url()),
        ],
        s.clone(),
    )
    .unwrap();
    wait_for(&t, "a", "fresh", is_fresh).await;
    wait_for(&t, "b", "fresh", is_fresh).await;

    // Drop a, keep b untouched, add c.
    t.set_targets(
        vec![
            EngineTarget::new("b", b.url()),
            EngineTarget::new("c", c.url()),
        ],
        s.clone(),
    )
    .unwrap();
    assert!(t.status("a").is_none());
    assert!(t.status("b").unwrap().sample.is_some(), "b kept its slot");
    wait_for(&t, "c", "fresh", is_fresh).await;
    let a_hits = a.hits();
    let b_hits = b.hits();
    wait_for(&t, "b", "more polls of b", |_| b.hits() > b_hits + 3).await;
    assert!(a.hits() <= a_hits + 1, "a is no longer polled");

    // Point b at another URL: restarted, polls go to the new server.
    let c_hits = c.hits();
    t.set_targets(
        vec![
            EngineTarget::new("b", c.url()),
            EngineTarget::new("c", c.url()),
        ],
        s,
    )
    .unwrap();
    wait_for(&t, "b", "b now reads c", |s| {
        s.sample.as_ref().is_some_and(|x| x.cpu_total == 70.0)
    })
    .await;
    assert!(c.hits() > c_hits);

    // Errors change nothing.
    let err = t
        .set_targets(
            vec![
                EngineTarget::new("x", c.url()),
                EngineTarget::new("x", c.url()),
            ],
            settings(10, 1000),
        )
        .unwrap_err();
    assert!(matches!(err, TelemetryError::DuplicateId(_)), "{err}");
    assert!(t.status("b").is_some());

    t.shutdown();
    t.stopped().await;
    assert!(matches!(
        t.set_targets(vec![], settings(10, 1000)),
        Err(TelemetryError::ShutDown)
    ));
}

#[tokio::test]
async fn ranks_by_node_and_by_engine_address() {
    let idle = Server::start(Behaviour::Json(CURRENT.into())).await;
    let busy = Server::start(Behaviour::Json(BUSY.into())).await;
    let t = Telemetry::new();
    let mut busy_target = EngineTarget::new("busy", busy.url());
    busy_target
        .aliases
        .push(("Engine-B.example.com".into(), 4747));
    t.set_targets(
        vec![busy_target, EngineTarget::new("idle", idle.url())],
        settings(20, 1000),
    )
    .unwrap();
    wait_for(&t, "idle", "fresh", is_fresh).await;
    wait_for(&t, "busy", "fresh", is_fresh).await;

    let policy = RankPolicy::default();
    assert_eq!(
        t.rank_ids(&["busy", "missing", "idle"], None, &policy),
        vec![2, 0, 1]
    );

    let source = t.module_source();
    let answer = lb_module_api::prioritize(
        source.as_ref(),
        lb_module_api::PrioritizeRequest {
            app_name: "x".into(),
            qlik_sense_engines: vec![
                "wss://ENGINE-B.example.com:4747".into(),
                "wss://unknown:4747".into(),
                format!("wss://{}", idle.addr),
            ],
        },
    );
    assert_eq!(
        answer.qlik_sense_engines,
        vec![
            format!("wss://{}", idle.addr),
            "wss://ENGINE-B.example.com:4747".to_owned(),
            "wss://unknown:4747".to_owned(),
        ]
    );
    assert!(source.view("127.0.0.1", busy.addr.port()).is_some());
    assert!(source.view("127.0.0.1", 1).is_none());

    t.set_policy(RankPolicy {
        weight_cpu: 0.0,
        ..RankPolicy::default()
    });
    assert_eq!(t.policy().weight_cpu, 0.0);
    t.shutdown();
}

#[tokio::test]
async fn invalid_settings_are_refused() {
    let t = Telemetry::new();
    let https: Uri = "https://node1:4747/engine/healthcheck".parse().unwrap();
    let err = t
        .set_targets(
            vec![EngineTarget::new("n", https.clone())],
            settings(10, 10),
        )
        .unwrap_err();
    assert!(err.to_string().contains("ca_file"), "{err}");

    let mut s = settings(10, 10);
    s.tls.ca_file = Some("/nonexistent/ca.pem".into());
    let err = t
        .set_targets(vec![EngineTarget::new("n", https.clone())], s)
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    let empty = std::env::temp_dir().join(format!("lb-telemetry-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let mut s = settings(10, 10);
    s.tls.ca_file = Some(empty.clone());
    let err = t
        .set_targets(vec![EngineTarget::new("n", https.clone())], s)
        .unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    let _ = std::fs::remove_file(&empty);

    let mut s = settings(10, 10);
    s.tls.insecure_skip_verify = true;
    s.tls.cert_file = Some("/nonexistent/client.pem".into());
    let err = t
        .set_targets(vec![EngineTarget::new("n", https.clone())], s)
        .unwrap_err();
    assert!(err.to_string().contains("go together"), "{err}");

    let mut s = settings(10, 10);
    s.tls.insecure_skip_verify = true;
    t.set_targets(vec![EngineTarget::new("n", https)], s)
        .expect("insecure_skip_verify needs no files");

    let ftp: Uri = "ftp://node1/x".parse().unwrap();
    assert!(matches!(
        t.set_targets(vec![EngineTarget::new("n", ftp)], settings(10, 10)),
        Err(TelemetryError::InvalidTarget { .. })
    ));
    let relative: Uri = "/engine/healthcheck".parse().unwrap();
    assert!(matches!(
        t.set_targets(vec![EngineTarget::new("n", relative)], settings(10, 10)),
        Err(TelemetryError::InvalidTarget { .. })
    ));
    assert!(matches!(
        t.set_targets(vec![], settings(0, 10)),
        Err(TelemetryError::ZeroDuration("interval"))
    ));
    t.shutdown();
}

#[tokio::test]
async fn https_with_client_certificate() {
    let server = Server::start_tls(Behaviour::Json(CURRENT.into())).await;
    let url: Uri = format!(
        "https://localhost:{}/engine/healthcheck",
        server.addr.port()
    )
    .parse()
    .unwrap();
    let files = |ca: Option<&str>, client: bool, insecure: bool| TlsClientFiles {
        ca_file: ca.map(testdata),
        cert_file: client.then(|| testdata("client.pem")),
        key_file: client.then(|| testdata("client_key.pem")),
        insecure_skip_verify: insecure,
    };
    let run = |tls: TlsClientFiles| PollerSettings {
        tls,
        ..settings(20, 1000)
    };
    let t = Telemetry::new();
    let target = || vec![EngineTarget::new("n", url.clone())];

    t.set_targets(target(), run(files(Some("ca.pem"), true, false)))
        .unwrap();
    let s = wait_for(&t, "n", "fresh over mTLS", is_fresh).await;
    assert_eq!(s.sample.unwrap().cpu_total, 12.0);

    // No client certificate: the server refuses the session.
    t.set_targets(target(), run(files(Some("ca.pem"), false, false)))
        .unwrap();
    wait_for(&t, "n", "unreachable without client cert", |s| {
        matches!(s.state, TelemetryState::Unreachable { .. })
    })
    .await;

    // A CA that did not sign the server's certificate: our side refuses.
    t.set_targets(target(), run(files(Some("client.pem"), true, false)))
        .unwrap();
    wait_for(&t, "n", "unreachable with the wrong CA", |s| {
        unreachable_with(s, "TLS handshake")
    })
    .await;

    // insecure_skip_verify needs no CA, and still presents the client certificate.
    t.set_targets(target(), run(files(None, true, true)))
        .unwrap();
    wait_for(&t, "n", "fresh without verification", is_fresh).await;
    t.shutdown();
}

#[test]
fn needs_a_runtime() {
    let t = Telemetry::new();
    assert!(matches!(
        t.set_targets(vec![], PollerSettings::default()),
        Err(TelemetryError::NoRuntime)
    ));
}

#[test]
fn jitter_stays_within_ten_percent() {
    let base = Duration::from_millis(1000);
    for _ in 0..1000 {
        let d = poll::jittered(base);
        assert!(d >= Duration::from_millis(900) && d <= Duration::from_millis(1100));
    }
}

#[tokio::test]
async fn node_picks_are_counted_until_a_new_sample() {
    let a = Server::start(Behaviour::Json(CURRENT.into())).await;
    let b = Server::start(Behaviour::Json(CURRENT.into())).await;
    let t = Telemetry::new();
    // One sample each, the next one a minute away.
    t.set_targets(
        vec![
            EngineTarget::new("a", a.url()),
            EngineTarget::new("b", b.url()),
        ],
        settings(60_000, 1000),
    )
    .unwrap();
    wait_for(&t, "a", "fresh", is_fresh).await;
    wait_for(&t, "b", "fresh", is_fresh).await;
    let policy = RankPolicy::default();

    // The pure ranking records nothing.
    for _ in 0..5 {
        t.rank_ids(&["a", "b"], None, &policy);
    }
    assert!(t.node_pending("a").is_empty() && t.node_pending("b").is_empty());

    // Picks are recorded on the node put first: a session's RAM and CPU, no app RAM (the
    // app is unknown), and they spread over two equal nodes.
    let mut firsts = [0u32; 2];
    for _ in 0..20 {
        firsts[t.place_ids(&["a", "b", "missing"], None, &policy)[0]] += 1;
    }
    let (pa, pb) = (t.node_pending("a"), t.node_pending("b"));
    assert_eq!((pa.sessions, pb.sessions), (firsts[0], firsts[1]));
    assert_eq!(pa.sessions + pb.sessions, 20);
    assert!(firsts[0] >= 5 && firsts[1] >= 5, "{firsts:?}");
    let want = f64::from(pa.sessions) * policy.placement_session_ram_mb;
    assert!((pa.ram_mb - want).abs() < 1e-6, "{pa:?}");
    assert!(t.node_pending("missing").is_empty());

    // A new sample of a accounts for its RAM and sessions (its CPU fades with the window).
    t.set_targets(
        vec![
            EngineTarget::new("a", a.url()),
            EngineTarget::new("b", b.url()),
        ],
        settings(20, 1000),
    )
    .unwrap();
    let before = t.status("a").unwrap().at;
    wait_for(&t, "a", "a new sample", |s| {
        s.state == TelemetryState::Fresh && s.at != before
    })
    .await;
    t.place_ids(&["a"], None, &policy);
    let pa = t.node_pending("a");
    assert_eq!(pa.sessions, 1, "only the new pick: {pa:?}");
    assert!((pa.ram_mb - policy.placement_session_ram_mb).abs() < 1e-6);
    t.shutdown();
}
