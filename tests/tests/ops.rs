//! Draining a whole balancer, end to end with a real `lb` process: `lb drain` turns `/ready`
//! to 503, a WebSocket opened before keeps echoing, a new connection is still served, at the
//! deadline the WebSocket gets 1001, `lb drain` reports the balancer drained and `lb undrain`
//! makes it ready again. And node drain that knows Qlik: a node out of rotation says who is
//! still on it and when it is empty.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::Method;
use lb::admin::client::{AdminClient, Answer};
use lb_tests::faults::{echo_once, open_ws};
use lb_tests::{SimCluster, SimOptions, User};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "ops-test-token-0123456789";

/// The `lb` binary of this workspace, built once per test run (a no-op when it is fresh).
fn lb_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "lb", "--bin", "lb"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p lb failed");
        // Next to this test's own deps folder: target/<profile>/lb.
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("lb");
        assert!(bin.exists(), "no lb binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A running `lb run` child with the addresses it logged.
struct LbProcess {
    child: tokio::process::Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl LbProcess {
    async fn start(tag: &str, config: &str) -> LbProcess {
        let dir = std::env::temp_dir().join(format!("lb-ops-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, config).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        let mut child = tokio::process::Command::new(lb_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // The log goes to stderr.
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start lb");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let (mut proxy, mut admin) = (None, None);
        let deadline = Instant::now() + T;
        while proxy.is_none() || admin.is_none() {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .expect("lb logs its listeners in time")
                .unwrap()
                .unwrap_or_else(|| panic!("lb exited: {}", log.lock().unwrap()));
            log.lock().unwrap().push_str(&format!("{line}\n"));
            let addr = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if line.contains("proxy listener ready") {
                proxy = addr("proxy_addr=");
            } else if line.contains("admin listener ready") {
                admin = addr("addr=");
            }
        }
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&format!("{l}\n"));
            }
        });
        LbProcess {
            child,
            proxy: proxy.unwrap(),
            admin: admin.unwrap(),
            dir,
            log,
        }
    }

    fn client(&self) -> AdminClient {
        AdminClient {
            addr: self.admin,
            token: Some(TOKEN.into()),
            timeout: T,
        }
    }

    async fn call(&self, method: Method, path: &str) -> Answer {
        self.client()
            .call(method, path)
            .await
            .expect("admin answers")
    }

    async fn status(&self) -> Value {
        let a = self.call(Method::GET, "/status").await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.json().unwrap()
    }

    /// `lb <args> --admin ADDR --token-file F`, as a child process.
    fn lb_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(lb_bin());
        c.args(args)
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--token-file")
            .arg(self.dir.join("token"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
}

fn config(nodes: &[SocketAddr]) -> String {
    let mut s = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[server]\naccess_log = false\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[health]\nenabled = false\n"
    );
    for (i, a) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\n",
            i + 1
        ));
    }
    s
}

async fn ready(admin: SocketAddr) -> (u16, String) {
    // `/ready` needs no token.
    let c = AdminClient {
        addr: admin,
        token: None,
        timeout: T,
    };
    let a = c.call(Method::GET, "/ready").await.expect("/ready answers");
    (a.status, a.body)
}

#[tokio::test]
async fn lb_drain_keeps_users_until_the_deadline_then_reports_drained() {
    let sims = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = LbProcess::start("drain", &config(&sims.addrs())).await;
    let mut user = User::new(lb.proxy).await;
    assert_eq!(user.get("/hub").await.status, 200);
    let (mut ws, _node) = open_ws(&user, "/app/drain-test").await;
    echo_once(&mut ws, "before the drain").await;
    assert_eq!(ready(lb.admin).await, (200, "ok".to_string()));

    // Without the token, no drain.
    let anon = AdminClient {
        addr: lb.admin,
        token: None,
        timeout: T,
    };
    assert_eq!(anon.call(Method::POST, "/drain").await.unwrap().status, 401);
    assert_eq!(ready(lb.admin).await.0, 200);

    let started = Instant::now();
    let drain = lb
        .lb_command(&["drain", "--deadline", "3s"])
        .spawn()
        .expect("run lb drain");
    // Readiness flips: the load balancer in front stops sending new connections.
    let deadline = Instant::now() + T;
    loop {
        let (code, body) = ready(lb.admin).await;
        if code == 503 {
            assert_eq!(body, "draining");
            break;
        }
        assert!(Instant::now() < deadline, "/ready still {code} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = lb.status().await;
    assert_eq!(s["drain"]["draining"], true, "{s}");
    assert_eq!(s["drain"]["drained"], false, "a WebSocket is open: {s}");
    assert!(s["drain"]["deadline_unix_ms"].as_u64().is_some(), "{s}");

    // The WebSocket opened before keeps echoing; a new connection is still served (and told
    // to close after its answer, so the client's next one goes through the front again).
    echo_once(&mut ws, "during the drain").await;
    let mut late = User::new(lb.proxy).await;
    let r = late.get("/hub").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    // The user of before keeps its session (the same node answers).
    let again = user.get("/hub").await;
    assert_eq!(again.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "checks ran before the deadline"
    );

    // At the deadline the WebSocket is closed with 1001 ("going away").
    let close = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed at the deadline");
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "not before the deadline"
    );
    drop(ws);
    drop(user);
    drop(late);

    // `lb drain` returns once nothing is left.
    let out = tokio::time::timeout(Duration::from_secs(40), drain.wait_with_output())
        .await
        .expect("lb drain returns")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lb drain: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("drained"), "{stdout}");
    let s = lb.status().await;
    assert_eq!(s["drain"]["drained"], true, "{s}");
    assert_eq!(s["drain"]["deadline_passed"], true, "{s}");

    // `lb undrain` ends it.
    let out = lb.lb_command(&["undrain"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ready(lb.admin).await, (200, "ok".to_string()));
    assert_eq!(lb.status().await["drain"]["draining"], false);
    let log = lb.log.lock().unwrap().clone();
    assert!(log.contains("balancer drain started"), "{log}");
    assert!(
        log.contains("balancer drain deadline: closing 1 open WebSocket(s)"),
        "{log}"
    );
    let _ = lb.child.id();
}

#[tokio::test]
async fn drain_endpoints_post_ready_and_bad_deadlines() {
    let sims = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = LbProcess::start("endpoints", &config(&sims.addrs())).await;
    let a = lb.call(Method::POST, "/drain?deadline=soon").await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("deadline"), "{}", a.body);
    assert_eq!(
        ready(lb.admin).await.0,
        200,
        "a refused drain changes nothing"
    );

    let a = lb.call(Method::POST, "/drain").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let d = a.json().unwrap();
    assert_eq!(d["draining"], true);
    assert_eq!(d["deadline_unix_ms"], Value::Null);
    assert_eq!(ready(lb.admin).await.0, 503);
    // Nothing open: drained at once.
    assert_eq!(lb.status().await["drain"]["drained"], true);
    // A user who arrives during the drain (the front has not noticed yet) signs in and opens
    // an app: its WebSocket works like any other.
    let mut user = User::new(lb.proxy).await;
    assert_eq!(user.get("/hub").await.status, 200);
    let (mut ws, _) = open_ws(&user, "/app/during-drain").await;
    echo_once(&mut ws, "opened during the drain").await;
    assert_eq!(lb.status().await["drain"]["drained"], false);
    drop(ws);
    drop(user);

    // POST /ready ends the drain, and needs the token (GET /ready does not).
    let anon = AdminClient {
        addr: lb.admin,
        token: None,
        timeout: T,
    };
    assert_eq!(anon.call(Method::POST, "/ready").await.unwrap().status, 401);
    assert_eq!(ready(lb.admin).await.0, 503);
    let a = lb.call(Method::POST, "/ready").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json().unwrap()["draining"], false);
    assert_eq!(ready(lb.admin).await, (200, "ok".to_string()));

    // `lb drain --no-wait` returns at once; a bad --deadline is refused before any request.
    let out = lb
        .lb_command(&["drain", "--deadline", "tomorrow"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--deadline"));
    assert_eq!(ready(lb.admin).await.0, 200);
    let out = lb
        .lb_command(&["drain", "--no-wait"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ready(lb.admin).await.0, 503);
    // A wrong token is refused by the command with the admin API's answer.
    std::fs::write(lb.dir.join("token"), "not-the-token-at-all").unwrap();
    let out = lb.lb_command(&["undrain"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    assert_eq!(ready(lb.admin).await.0, 503);
}

/// Over HTTPS (the production case), the WebSockets left at the drain deadline get the same
/// 1001 close frame, then TLS `close_notify`.
#[tokio::test]
async fn wss_websockets_get_1001_at_the_deadline() {
    use lb_bench::client::{self, Target, TargetOpts, WsConnect};
    let sims = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("lb-ops-wss-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "lb ops test");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let cfg = config(&sims.addrs()).replacen(
        "[server]",
        &format!(
            "[listener.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[server]",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
        1,
    );
    let lb = LbProcess::start("wss", &cfg).await;
    let target = Target::parse_with(
        &format!("https://{}", lb.proxy),
        false,
        &TargetOpts {
            ca_file: Some(dir.join("cert.pem")),
            ..TargetOpts::default()
        },
    )
    .unwrap();
    let mut conn = client::HttpConn::connect(&target).await.unwrap();
    let mut jar = target.jar();
    let r = conn.get("/hub", Some(&jar)).await.unwrap();
    assert_eq!(r.status, 200);
    jar.store_all(&r.headers);
    drop(conn);
    let mut ws = match client::ws_connect(&target, "/app/wss", &jar, None, 16 * 1024)
        .await
        .unwrap()
    {
        WsConnect::Open(ws, _) => *ws,
        WsConnect::Refused(s, _) => panic!("refused: {s}"),
    };
    echo_ws(&mut ws, "over tls").await;
    let a = lb.call(Method::POST, "/drain?deadline=500ms").await;
    assert_eq!(a.status, 200, "{}", a.body);
    echo_ws(&mut ws, "still flowing").await;
    let close = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed at the deadline");
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
}

async fn echo_ws(ws: &mut lb_bench::client::WsStream, text: &str) {
    use futures_util::SinkExt;
    ws.send(Message::text(text.to_string())).await.unwrap();
    let m = tokio::time::timeout(T, ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::text(text.to_string()));
}
