//! Shared harness of the end-to-end tests: a balancer in-process over real sockets on
//! 127.0.0.1, in front of simulated Qlik nodes (the `lb-sim` crate).
//!
//! - this module: test configurations, starting a balancer, a browser-like [`User`];
//! - [`faults`]: helpers of the fault-injection tests (panic watch, leak checks, fake nodes);
//! - [`portal`]: sign-in listeners, a portal's REST API calls and a portal user's browser;
//! - [`redis_store`]: a real `redis-server` for the shared-store tests.

use std::net::SocketAddr;
use std::path::Path;

use lb::Server;
use lb_bench::client::{CookieJar, HttpConn, HttpResponse, Target};
use lb_config::Config;

pub mod faults;
pub mod portal;
pub mod redis_store;

pub use lb_bench::client;
pub use lb_sim::{SimCluster, SimOptions};

/// A configuration with the proxy on an ephemeral port, the given nodes (ids qps1, qps2, ...)
/// and `extra` TOML appended (sections other than `[listener]` and `[[nodes]]`).
pub fn config_text(nodes: &[SocketAddr], extra: &str) -> String {
    nodes_text(nodes, extra, false)
}

/// Like [`config_text`], each node naming its simulated engine's health check.
pub fn config_text_with_engines(nodes: &[SocketAddr], extra: &str) -> String {
    nodes_text(nodes, extra, true)
}

fn nodes_text(nodes: &[SocketAddr], extra: &str, engines: bool) -> String {
    // A `[listener]` table in `extra` gets the address; otherwise one is added.
    let mut s = if extra.contains("[listener]\n") {
        extra.replacen("[listener]\n", "[listener]\naddress = \"127.0.0.1:0\"\n", 1)
    } else {
        format!("[listener]\naddress = \"127.0.0.1:0\"\n{extra}")
    };
    s.push('\n');
    for (i, a) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\n",
            i + 1
        ));
        if engines {
            s.push_str(&format!("engine = \"http://{a}/engine/healthcheck\"\n"));
        }
    }
    s
}

/// Starts a balancer whose nodes name their simulated engines (telemetry on).
pub async fn start_lb_with_engines(nodes: &[SocketAddr], extra: &str) -> Server {
    let c = Config::from_toml(&config_text_with_engines(nodes, extra), Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    Server::start(c).await.expect("balancer starts")
}

pub fn config(nodes: &[SocketAddr], extra: &str) -> Config {
    Config::from_toml(&config_text(nodes, extra), Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// Starts a balancer in front of `nodes`.
pub async fn start_lb(nodes: &[SocketAddr], extra: &str) -> Server {
    Server::start(config(nodes, extra))
        .await
        .expect("balancer starts")
}

pub fn target(addr: SocketAddr) -> Target {
    Target::parse(&format!("http://{addr}"), false).expect("loopback target")
}

/// A browser-like user: one keep-alive connection and a cookie jar.
pub struct User {
    pub target: Target,
    pub conn: HttpConn,
    pub jar: CookieJar,
}

impl User {
    pub async fn new(addr: SocketAddr) -> User {
        let target = target(addr);
        let conn = HttpConn::connect(&target)
            .await
            .expect("connect to balancer");
        User {
            target,
            conn,
            jar: CookieJar::default(),
        }
    }

    /// GET `path` with the jar's cookies, storing what the response sets. Reconnects if the
    /// balancer closed the connection.
    pub async fn get(&mut self, path: &str) -> HttpResponse {
        if self.conn.is_closed() {
            self.conn = HttpConn::connect(&self.target).await.expect("reconnect");
        }
        let r = self
            .conn
            .get(path, Some(&self.jar))
            .await
            .expect("request answered");
        self.jar.store_all(&r.headers);
        r
    }
}
