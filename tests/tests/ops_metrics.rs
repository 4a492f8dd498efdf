//! `/metrics` as an operator scrapes it: every family has its HELP line, the build, process,
//! per-node WebSocket and drain metrics are there, and WebSocket bytes show while a tunnel is
//! still open. One test in this binary: the metrics recorder is process-wide.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Method;
use lb::admin::client::AdminClient;
use lb_tests::faults::open_ws;
use lb_tests::{start_lb, SimCluster, SimOptions, User};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

async fn get(admin: SocketAddr, method: Method, path: &str) -> String {
    let c = AdminClient {
        addr: admin,
        token: None,
        timeout: T,
    };
    let a = c.call(method, path).await.expect("admin answers");
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    a.body
}

/// Families of a Prometheus text: name -> (type, help), and every sample line.
fn parse(text: &str) -> (BTreeMap<String, (String, String)>, Vec<String>) {
    let mut fams: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut samples = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let (n, h) = rest.split_once(' ').unwrap_or((rest, ""));
            fams.entry(n.to_string()).or_default().1 = h.to_string();
        } else if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').unwrap();
            fams.entry(n.to_string()).or_default().0 = t.to_string();
        } else if !l.is_empty() && !l.starts_with('#') {
            samples.push(l.to_string());
        }
    }
    (fams, samples)
}

/// The value of the sample `name{labels}` (labels as rendered, in order), if present.
fn value(samples: &[String], series: &str) -> Option<f64> {
    samples.iter().find_map(|s| {
        let (k, v) = s.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

fn bytes(samples: &[String], dir: &str) -> f64 {
    value(
        samples,
        &format!("lb_websocket_bytes_total{{direction=\"{dir}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_have_help_lines_and_show_websocket_bytes_while_they_flow() {
    let sims = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sims.addrs(),
        "[server]\naccess_log = false\n[admin]\naddress = \"127.0.0.1:0\"\n",
    )
    .await;
    let admin = lb.admin_addr().unwrap();
    let (_, before) = parse(&get(admin, Method::GET, "/metrics").await);
    let (up0, down0) = (bytes(&before, "to_node"), bytes(&before, "to_client"));

    let mut user = User::new(lb.proxy_addr()).await;
    assert_eq!(user.get("/hub").await.status, 200);
    let (mut ws, node) = open_ws(&user, "/app/metrics").await;
    let id = lb_tests::faults::id_of(&node);
    // 64 echoes of 4 KiB: 256 KiB each way, the tunnel still open.
    let msg = Message::binary(vec![7u8; 4096]);
    for _ in 0..64 {
        ws.send(msg.clone()).await.unwrap();
        let m = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m, msg);
    }
    let text = get(admin, Method::GET, "/metrics").await;
    let (fams, samples) = parse(&text);

    // Every family has a HELP line and a type.
    for (name, (kind, help)) in &fams {
        assert!(!help.is_empty(), "{name} has no HELP line:\n{text}");
        assert!(!kind.is_empty(), "{name} has no TYPE line");
    }
    let expect = [
        ("lb_build_info", "gauge"),
        ("lb_requests_total", "counter"),
        ("lb_request_duration_seconds", "histogram"),
        ("lb_open_websockets", "gauge"),
        ("lb_node_open_websockets", "gauge"),
        ("lb_websocket_bytes_total", "counter"),
        ("lb_node_recent_sessions", "gauge"),
        ("lb_node_drained", "gauge"),
        ("lb_draining", "gauge"),
        ("process_cpu_seconds_total", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_threads", "gauge"),
    ];
    let names: BTreeSet<&str> = fams.keys().map(String::as_str).collect();
    for (n, kind) in expect {
        assert!(names.contains(n), "{n} missing from /metrics:\n{text}");
        assert_eq!(fams[n].0, kind, "{n}");
    }
    assert!(
        samples.iter().any(|s| s.starts_with("lb_build_info{")
            && s.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && s.contains("commit=\"")
            && s.ends_with(" 1")),
        "{text}"
    );
    let fds = value(&samples, "process_open_fds").unwrap();
    let max = value(&samples, "process_max_fds").unwrap();
    assert!(fds >= 4.0 && max >= fds, "fds {fds} of {max}");
    assert!(value(&samples, "process_resident_memory_bytes").unwrap() > 1e6);

    // The open WebSocket, by node, and its bytes before it closes.
    let series = |m: &str, n: &str| format!("{m}{{node=\"{n}\"}}");
    assert_eq!(
        value(&samples, &series("lb_node_open_websockets", &id)),
        Some(1.0),
        "{text}"
    );
    let other = if id == "qps1" { "qps2" } else { "qps1" };
    assert_eq!(
        value(&samples, &series("lb_node_open_websockets", other)),
        Some(0.0)
    );
    let (up, down) = (
        bytes(&samples, "to_node") - up0,
        bytes(&samples, "to_client") - down0,
    );
    assert!(up >= 64.0 * 4096.0, "to_node {up} while open:\n{text}");
    assert!(down >= 64.0 * 4096.0, "to_client {down} while open");
    assert_eq!(value(&samples, "lb_draining"), Some(0.0));
    assert_eq!(value(&samples, &series("lb_node_drained", &id)), Some(0.0));
    assert_eq!(
        value(&samples, &series("lb_node_recent_sessions", &id)),
        Some(1.0)
    );

    // More traffic on the same tunnel is seen by the next scrape, and not counted twice when
    // the tunnel closes.
    for _ in 0..16 {
        ws.send(msg.clone()).await.unwrap();
        ws.next().await.unwrap().unwrap();
    }
    let (_, s2) = parse(&get(admin, Method::GET, "/metrics").await);
    let up2 = bytes(&s2, "to_node") - up0;
    assert!(up2 >= up + 16.0 * 4096.0, "{up2} after {up}");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let deadline = tokio::time::Instant::now() + T;
    let s3 = loop {
        let (_, s3) = parse(&get(admin, Method::GET, "/metrics").await);
        if value(&s3, &series("lb_node_open_websockets", &id)) == Some(0.0) {
            break s3;
        }
        assert!(tokio::time::Instant::now() < deadline, "tunnel not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let up3 = bytes(&s3, "to_node") - up0;
    assert!(
        up3 >= up2 && up3 < up2 + 4096.0,
        "closing adds only the close frames: {up3} after {up2}"
    );

    // /status shows the same figures.
    let s: serde_json::Value =
        serde_json::from_str(&get(admin, Method::GET, "/status").await).unwrap();
    assert!(
        s["websocket_bytes"]["to_node"].as_u64().unwrap() as f64 >= up3,
        "{s}"
    );
    assert!(s["process"]["open_fds"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["build"]["commit"].is_string(), "{s}");

    // Node drain that knows Qlik: the user's node drained still has its user; the other node,
    // never used, is empty at once.
    get(admin, Method::POST, &format!("/nodes/{id}/drain")).await;
    get(admin, Method::POST, &format!("/nodes/{other}/drain")).await;
    let s: serde_json::Value =
        serde_json::from_str(&get(admin, Method::GET, "/status").await).unwrap();
    let node = |n: &str| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == n)
            .unwrap()
            .clone()
    };
    let used = node(&id);
    assert_eq!(used["drain"]["out_of_rotation"], true, "{used}");
    assert_eq!(used["drain"]["recent_sessions"], 1, "{used}");
    assert!(
        used["drain"]["last_request_age_seconds"].as_u64().unwrap() < 60,
        "{used}"
    );
    assert_eq!(used["drain"]["drained"], false, "{used}");
    let empty = node(other);
    assert_eq!(empty["drain"]["drained"], true, "{empty}");
    assert!(s["drain"]["node_rule"].as_str().unwrap().contains("300 s"));
    let (_, s4) = parse(&get(admin, Method::GET, "/metrics").await);
    assert_eq!(value(&s4, &series("lb_node_drained", other)), Some(1.0));
    assert_eq!(value(&s4, &series("lb_node_drained", &id)), Some(0.0));
    // The user is still served by its drained node.
    let r = user.get("/hub").await;
    assert_eq!(r.status, 200);
    assert_eq!(lb_tests::faults::id_of(r.node().unwrap()), id);
}
