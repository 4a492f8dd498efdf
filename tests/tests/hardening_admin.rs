//! The admin API refuses what a web page or DNS rebinding could make a browser send, and a
//! reload rotates its token.

use std::net::SocketAddr;
use std::time::Duration;

use lb::upstream::AdminState;
use lb_tests::faults::{read_until_closed, watch_panics};
use lb_tests::{config, start_lb, SimCluster, SimOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ADMIN: &str = "[server]\naccess_log = false\n[admin]\naddress = \"127.0.0.1:0\"\n";

async fn raw(addr: SocketAddr, req: String) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A request to the admin API with `Host` set to `host` (the listener's address if `None`).
async fn admin(lb: &lb::Server, method: &str, path: &str, host: Option<&str>, extra: &str) -> u16 {
    let addr = lb.admin_addr().unwrap();
    let host = host.map_or(addr.to_string(), str::to_string);
    let body = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    raw(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}{body}Connection: close\r\n\r\n"
        ),
    )
    .await
    .0
}

fn admin_state(lb: &lb::Server, id: &str) -> AdminState {
    lb.test_handle().node(id).unwrap().admin_state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused() {
    watch_panics();
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), ADMIN).await;
    let maint = "/nodes/qps1/maint?close_websockets=true";
    // What an HTML form on another site sends.
    let form = "Origin: http://evil.test\r\nSec-Fetch-Site: cross-site\r\n\
                Content-Type: application/x-www-form-urlencoded\r\n";
    assert_eq!(admin(&lb, "POST", maint, None, form).await, 403);
    // Each sign alone is enough.
    assert_eq!(
        admin(&lb, "POST", maint, None, "Origin: http://evil.test\r\n").await,
        403
    );
    assert_eq!(
        admin(&lb, "POST", maint, None, "Sec-Fetch-Site: cross-site\r\n").await,
        403
    );
    assert_eq!(
        admin(&lb, "POST", maint, None, "Content-Type: text/plain\r\n").await,
        403
    );
    assert_eq!(
        admin_state(&lb, "qps1"),
        AdminState::Ready,
        "nothing changed"
    );
    // The admin API's own page and curl still work.
    let own = format!("Origin: http://{}\r\n", lb.admin_addr().unwrap());
    assert_eq!(
        admin(&lb, "POST", "/nodes/qps1/drain", None, &own).await,
        200
    );
    assert_eq!(admin_state(&lb, "qps1"), AdminState::Drain);
    assert_eq!(admin(&lb, "POST", "/nodes/qps1/ready", None, "").await, 200);
    assert_eq!(admin_state(&lb, "qps1"), AdminState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_cannot_read_status() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        &format!("{ADMIN}allowed_hosts = [\"lb-admin.corp.example\"]\n"),
    )
    .await;
    let port = lb.admin_addr().unwrap().port();
    let evil = format!("evil.test:{port}");
    assert_eq!(admin(&lb, "GET", "/status", Some(&evil), "").await, 403);
    assert_eq!(admin(&lb, "GET", "/status", None, "").await, 200);
    let local = format!("localhost:{port}");
    assert_eq!(admin(&lb, "GET", "/status", Some(&local), "").await, 200);
    let named = format!("LB-Admin.corp.example:{port}");
    assert_eq!(admin(&lb, "GET", "/status", Some(&named), "").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_admin_token() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let old = "old-token-0123456789abcdef";
    let new = "new-token-0123456789abcdef";
    let lb = start_lb(&sim.addrs(), &format!("{ADMIN}token = \"{old}\"\n")).await;
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert_eq!(admin(&lb, "GET", "/status", None, &bearer(old)).await, 200);
    let port = lb.proxy_addr().port();
    let mut c = config(&sim.addrs(), &format!("{ADMIN}token = \"{new}\"\n"));
    c.listener.address.set_port(port);
    lb.reload(c).expect("reload applies");
    assert_eq!(admin(&lb, "GET", "/status", None, &bearer(old)).await, 401);
    assert_eq!(admin(&lb, "GET", "/status", None, &bearer(new)).await, 200);
}
