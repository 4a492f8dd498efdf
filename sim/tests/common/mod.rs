//! Helpers shared by the simulator's sign-in tests (each test binary uses some of them).
#![allow(dead_code)]

use std::net::SocketAddr;

use lb_sim::browser::{split_url, Conn, Page, WINDOWS_UA};
use lb_sim::{Auth, SimCluster, SimOptions};
use serde_json::Value;

pub const UA: (&str, &str) = ("user-agent", WINDOWS_UA);

pub async fn windows_cluster(n: usize) -> SimCluster {
    SimCluster::start(n, 0, SimOptions::with_auth(Auth::Windows))
        .await
        .expect("nodes start")
}

pub fn json_of(p: &Page) -> Value {
    serde_json::from_str(&p.body).unwrap_or_else(|e| panic!("{e}: {}", p.body))
}

/// `GET /hub/` on `user` without a session: the redirect's path and query on the auth port.
pub async fn start_login(user: &mut Conn) -> String {
    let r = user.get("/hub/", &[UA]).await.unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let (_, path) = split_url(r.location().unwrap()).unwrap();
    path
}

pub async fn post_json(addr: SocketAddr, path: &str, v: &Value) -> (u16, Value) {
    let mut c = Conn::connect(addr).await.unwrap();
    let r = c
        .send(
            http::Method::POST,
            path,
            &[("content-type", "application/json")],
            v.to_string(),
        )
        .await
        .unwrap();
    let body = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

pub async fn whoami(addr: SocketAddr, cookie: &str) -> Page {
    let mut c = Conn::connect(addr).await.unwrap();
    let cookie = format!("X-Qlik-Session={cookie}");
    c.get("/_sim/whoami", &[UA, ("cookie", &cookie)])
        .await
        .unwrap()
}

pub fn session_cookie(p: &Page) -> String {
    let sc = p
        .header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("X-Qlik-Session="))
        .unwrap_or_else(|| panic!("no session cookie: {:?}", p.headers));
    sc["X-Qlik-Session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string()
}
