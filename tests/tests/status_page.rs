//! The status page in a real browser: headless Chromium loads it from a running balancer with
//! three simulated nodes and shows the nodes and their figures; its Drain button drains a node
//! (driven through chromedriver's WebDriver API); with a token configured it asks for the token;
//! and a screenshot is taken.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`; `LB_CHROMIUM` and `LB_CHROMEDRIVER` override the paths). Without
//! them these tests fail: they do not skip.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lb::Server;
use lb_sim::EngineTelemetry;
use lb_tests::{SimCluster, SimOptions, User};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "status-page-test-token";

fn tool(env: &str, default: &str, package: &str) -> PathBuf {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        p.exists(),
        "{} not found: these tests need a headless browser; install the Debian packages \
         `{package}` (apt-get install -y chromium chromium-driver) or set {env}",
        p.display(),
    );
    p
}

fn chromium() -> PathBuf {
    tool("LB_CHROMIUM", "/usr/bin/chromium", "chromium")
}

fn chromedriver() -> PathBuf {
    tool(
        "LB_CHROMEDRIVER",
        "/usr/bin/chromedriver",
        "chromium-driver",
    )
}

/// A fresh browser profile folder (removed by the caller).
fn profile_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "lb-status-page-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The flags of every headless Chromium run here.
fn chromium_flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// Runs Chromium with `args` after the common flags; returns its standard output.
async fn run_chromium(args: &[String]) -> String {
    let profile = profile_dir();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args(chromium_flags(&profile))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("chromium runs");
    let out = tokio::time::timeout(T * 2, child.wait_with_output())
        .await
        .expect("chromium finished in time")
        .expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM after its scripts ran for five seconds of virtual time.
async fn dump_dom(url: &str) -> String {
    run_chromium(&[
        "--virtual-time-budget=5000".into(),
        "--dump-dom".into(),
        url.into(),
    ])
    .await
}

/// The text of the element with id `id` in serialised HTML (an element without children).
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = at + dom[at..].find('>')? + 1;
    let end = start + dom[start..].find('<')?;
    Some(dom[start..end].to_string())
}

/// Three simulated nodes with engine telemetry, a balancer with the admin listener, and a
/// user pinned to each node. `admin_extra` is appended to `[admin]`.
async fn setup(admin_extra: &str) -> (SimCluster, Server) {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    for (i, n) in sim.nodes().iter().enumerate() {
        n.set_telemetry(EngineTelemetry {
            cpu: 10.0 * (i as f64 + 1.0),
            mem_free_mb: 16_384.0,
            mem_total_mb: Some(32_768.0),
            ..EngineTelemetry::default()
        });
    }
    let mut s = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n[server]\naccess_log = false\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{admin_extra}\n\
         [telemetry]\ninterval = \"200ms\"\n"
    );
    for (i, a) in sim.addrs().iter().enumerate() {
        s.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\nengine = \"http://{a}/engine/healthcheck\"\n",
            i + 1
        ));
    }
    let config = lb_config::Config::from_toml(&s, Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{s}"));
    let lb = Server::start(config).await.expect("balancer starts");
    // New sessions go round the nodes: keep going until every node has a user.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let mut u = User::new(lb.proxy_addr()).await;
        seen.insert(u.get("/hub").await.node().unwrap().to_string());
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "a user on every node");
    // Wait for the first telemetry samples.
    let token = (!admin_extra.is_empty()).then_some(TOKEN);
    tokio::time::timeout(T, async {
        loop {
            let s = admin_json(lb.admin_addr().unwrap(), Method::GET, "/status", token).await;
            let fresh = s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["engine"]["state"] == "fresh");
            if fresh {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("engine telemetry arrives");
    (sim, lb)
}

async fn http(
    method: Method,
    url: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::default(),
    };
    let resp = tokio::time::timeout(T, client.request(req.body(body).unwrap()))
        .await
        .expect("answer in time")
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn admin_json(admin: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Value {
    let (code, body) = http(method, &format!("http://{admin}{path}"), None, token).await;
    assert_eq!(code, StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_every_node_and_its_figures() {
    let (_sim, lb) = setup("").await;
    let admin = lb.admin_addr().unwrap();
    let dom = dump_dom(&format!("http://{admin}/")).await;
    let status = admin_json(admin, Method::GET, "/status", None).await;
    assert!(dom.contains("lb status"), "{dom}");
    for (i, n) in status["nodes"].as_array().unwrap().iter().enumerate() {
        let id = format!("qps{}", i + 1);
        assert!(
            dom.contains(&format!("id=\"node-{id}\"")),
            "{id} missing: {dom}"
        );
        assert_eq!(
            text_of(&dom, &format!("health-{id}")).as_deref(),
            Some("up")
        );
        assert_eq!(
            text_of(&dom, &format!("admin-{id}")).as_deref(),
            Some("ready")
        );
        assert_eq!(
            text_of(&dom, &format!("sessions-{id}")),
            Some(n["pinned_sessions"].to_string()),
            "{id}"
        );
        assert_eq!(
            text_of(&dom, &format!("websockets-{id}")).as_deref(),
            Some("0")
        );
        // Engine CPU as the simulated engines report it, RAM used of total.
        assert_eq!(
            text_of(&dom, &format!("cpu-{id}")),
            Some(format!("{} %", 10 * (i + 1))),
            "{id}"
        );
        assert_eq!(
            text_of(&dom, &format!("mem-{id}")).as_deref(),
            Some("16.0 / 32.0 GB")
        );
        // A requests-per-second figure after two polls, and the action buttons.
        let rps = text_of(&dom, &format!("rps-{id}")).unwrap();
        assert!(rps.parse::<f64>().is_ok(), "{id} req/s {rps:?}");
        for action in ["drain", "ready", "maint"] {
            assert!(
                dom.contains(&format!("id=\"{action}-{id}\"")),
                "{action} button of {id}"
            );
        }
    }
    // Sparklines are inline SVG.
    assert!(dom.matches("<svg").count() >= 9, "charts missing");
    assert_eq!(
        text_of(&dom, "sum-sessions"),
        Some(status["sticky"]["sessions"].to_string())
    );
    // The balancer's own figures: drain state, open files of their limit, memory, build.
    assert_eq!(text_of(&dom, "sum-drain").as_deref(), Some("ready"));
    let fds = text_of(&dom, "sum-fds").unwrap();
    let (open, max) = fds
        .split_once(" / ")
        .unwrap_or_else(|| panic!("open files {fds:?}"));
    let num = |s: &str| s.replace(',', "").parse::<u64>().unwrap();
    assert!(num(open) >= 4 && num(max) >= num(open), "{fds}");
    assert!(text_of(&dom, "sum-rss").unwrap().ends_with("MiB"));
    assert!(text_of(&dom, "sum-ws-bytes").unwrap().contains('↑'));
    assert!(text_of(&dom, "sum-build")
        .unwrap()
        .starts_with(env!("CARGO_PKG_VERSION")));
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot() {
    let (_sim, lb) = setup("").await;
    let admin = lb.admin_addr().unwrap();
    let dir = profile_dir();
    let file = dir.join("status-page.png");
    run_chromium(&[
        "--hide-scrollbars".into(),
        "--window-size=1280,800".into(),
        "--virtual-time-budget=5000".into(),
        format!("--screenshot={}", file.display()),
        format!("http://{admin}/"),
    ])
    .await;
    let png = std::fs::read(&file).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "screenshot suspiciously small: {} bytes",
        png.len()
    );
    if let Some(out) = std::env::var_os("LB_SCREENSHOT") {
        std::fs::copy(&file, out).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    lb.shutdown().await;
}

/// A WebDriver session of chromedriver, attached to a headless Chromium of our own: the
/// browser is a child of the test and is killed when the test ends, whatever happens.
struct Driver {
    _browser: tokio::process::Child,
    _driver: tokio::process::Child,
    base: String,
    session: String,
    profile: PathBuf,
}

impl Driver {
    async fn start() -> Driver {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let profile = profile_dir();
        let mut browser = tokio::process::Command::new(chromium())
            .args(chromium_flags(&profile))
            .args([
                "--remote-debugging-port=0",
                "--window-size=1280,800",
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut lines = BufReader::new(browser.stderr.take().unwrap()).lines();
        let debugger = tokio::time::timeout(T, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // DevTools listening on ws://127.0.0.1:PORT/devtools/browser/<id>
                if let Some(rest) = line.split("ws://").nth(1) {
                    return rest.split('/').next().unwrap().to_string();
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium opens its DevTools port");
        // Keep reading its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = tokio::process::Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        tokio::time::timeout(T, async {
            loop {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let ready = client
                    .get(format!("{base}/status").parse().unwrap())
                    .await
                    .is_ok();
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("chromedriver listens");
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium().display().to_string(),
                    "debuggerAddress": debugger,
                }
            }}
        });
        let (code, body) = http(Method::POST, &format!("{base}/session"), Some(caps), None).await;
        assert_eq!(code, StatusCode::OK, "new WebDriver session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Driver {
            _browser: browser,
            _driver: driver,
            base,
            session,
            profile,
        }
    }

    /// A WebDriver command; `Err` carries the WebDriver error code (e.g. `stale element
    /// reference`).
    async fn try_cmd(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let (code, text) = http(method, &url, body, None).await;
        let mut v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        if code == StatusCode::OK {
            Ok(v["value"].take())
        } else {
            Err(v["value"]["error"].as_str().unwrap_or(&text).to_string())
        }
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `action` on the displayed element matching the CSS `selector`, waiting for it to
    /// appear and trying again if the page replaced it in between.
    async fn on(&self, selector: &str, action: &str, method: Method, body: Option<Value>) -> Value {
        let deadline = tokio::time::Instant::now() + T;
        let mut last = String::new();
        loop {
            let find = json!({ "using": "css selector", "value": selector });
            let found = self.try_cmd(Method::POST, "/element", Some(find)).await;
            if let Ok(v) = &found {
                let id = v["element-6066-11e4-a52e-4f735466cecf"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let shown = self
                    .try_cmd(Method::GET, &format!("/element/{id}/displayed"), None)
                    .await;
                if shown == Ok(Value::Bool(true)) {
                    match self
                        .try_cmd(
                            method.clone(),
                            &format!("/element/{id}/{action}"),
                            body.clone(),
                        )
                        .await
                    {
                        Ok(v) => return v,
                        Err(e) => last = e,
                    }
                }
            } else if let Err(e) = found {
                last = e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{action} on {selector}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, selector: &str) {
        self.on(selector, "click", Method::POST, Some(json!({})))
            .await;
    }

    async fn type_text(&self, selector: &str, text: &str) {
        self.on(
            selector,
            "value",
            Method::POST,
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn text(&self, selector: &str) -> String {
        self.on(selector, "text", Method::GET, None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn quit(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = http(Method::DELETE, &url, None, None).await;
        let _ = std::fs::remove_dir_all(&self.profile);
        // The browser and chromedriver are killed on drop.
    }
}

/// Polls `/status` until node `id` is in admin state `state`.
async fn wait_admin_state(admin: SocketAddr, token: Option<&str>, id: &str, state: &str) {
    tokio::time::timeout(T, async {
        loop {
            let s = admin_json(admin, Method::GET, &format!("/nodes/{id}"), token).await;
            if s["admin_state"] == state {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never became {state}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_ready_buttons() {
    let (_sim, lb) = setup("").await;
    let admin = lb.admin_addr().unwrap();
    let d = Driver::start().await;
    d.goto(&format!("http://{admin}/")).await;
    d.click("#drain-qps2").await;
    wait_admin_state(admin, None, "qps2", "drain").await;
    // The page shows it after its next poll.
    tokio::time::timeout(T, async {
        while d.text("#admin-qps2").await != "drain" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("page shows the drain");
    // Its users are still there (the setup pinned one to each node): no "drained" yet, and
    // the page says who is left.
    tokio::time::timeout(T, async {
        while !d.text("#users-qps2").await.contains("recent sessions") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("page shows who is still on the drained node");
    d.click("#ready-qps2").await;
    wait_admin_state(admin, None, "qps2", "ready").await;
    d.quit().await;
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_asks_for_the_token() {
    let (_sim, lb) = setup(&format!("token = \"{TOKEN}\"")).await;
    let admin = lb.admin_addr().unwrap();
    let d = Driver::start().await;
    d.goto(&format!("http://{admin}/")).await;
    // No data without the token: the page asks for it.
    d.type_text("#token-input", TOKEN).await;
    d.click("#login button[type=submit]").await;
    assert_eq!(d.text("#admin-qps1").await, "ready");
    d.click("#drain-qps1").await;
    wait_admin_state(admin, Some(TOKEN), "qps1", "drain").await;
    d.quit().await;
    lb.shutdown().await;
}
