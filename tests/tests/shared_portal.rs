//! Portal sign-in across two balancers sharing a real `redis-server` (`[sticky.shared]`): the
//! tickets and sessions a portal makes through balancer A's REST API listener are honoured by
//! balancer B, where the users' browsers arrive.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use lb::Server;
use lb_bench::client::HttpConn;
use lb_config::Config;
use lb_sim::browser::Conn;
use lb_sim::{Auth, SimCluster, SimOptions, SimUser};
use lb_tests::portal::{guid, portal_session, portal_user, post_json, signin_config};
use lb_tests::redis_store::{slow_proxy, Store};
use lb_tests::target;
use serde_json::{json, Value};

/// A balancer with the sign-in listeners and the store at `store`.
async fn balancer(sim: &SimCluster, store: SocketAddr, more: &str) -> Server {
    let extra = format!(
        "[server]\naccess_log = false\n[health]\nenabled = false\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [sticky]\nroute_key = \"a-key-shared-by-both-balancers\"\n\
         [sticky.shared]\nurl = \"redis://{store}\"\n{more}\n"
    );
    let text = signin_config(sim, "", &extra);
    let c = Config::from_toml(&text, Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
    Server::start(c).await.expect("balancer starts")
}

async fn store_status(lb: &Server) -> Value {
    let mut c = HttpConn::connect(&target(lb.admin_addr().unwrap()))
        .await
        .unwrap();
    let r = c.get("/status", None).await.unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["sticky"]["shared_store"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_portal_users_signed_in_through_a_reach_their_node_through_b() {
    let store = Store::start(&[]).await;
    let sim = std::sync::Arc::new(
        SimCluster::start(3, 0, SimOptions::with_auth(Auth::Windows))
            .await
            .expect("nodes start"),
    );
    // A generous deadline: this test is about where users land, not about a loaded machine's
    // scheduling.
    let generous = "lookup_timeout = \"500ms\"\n";
    let a = balancer(&sim, store.addr(), generous).await;
    let b = balancer(&sim, store.addr(), generous).await;
    sim.set_advertised_auth_port(b.listener_addr("auth").unwrap().port());
    sim.set_advertised_rest_port(a.listener_addr("rest").unwrap().port());
    let (users_b, rest_a) = (b.proxy_addr(), a.listener_addr("rest").unwrap());

    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let sim = sim.clone();
        tasks.push(tokio::spawn(async move {
            portal_user(users_b, rest_a, &sim, i).await
        }));
    }
    let (mut reached, mut ws_ok) = (0, 0);
    for t in tasks {
        let (r, w) = t.await.unwrap();
        reached += r as usize;
        ws_ok += w as usize;
    }
    let took = t0.elapsed();
    let (sa, sb) = (store_status(&a).await, store_status(&b).await);
    println!(
        "portal users made through A's REST API listener, browsers at B: {reached}/100 reached \
         their node as themselves (50 by ticket, 50 by session), {ws_ok}/100 with a WebSocket \
         to that node, in {took:?}; sessions per node {:?}; store lookups at B {}; writes by A {}",
        sim.session_counts(),
        sb["lookups"],
        sa["writes"],
    );
    assert_eq!((reached, ws_ok), (100, 100));
    // Every user's first request at B was unknown there and found in the store: 50 tickets and
    // 50 portal sessions.
    assert_eq!(sb["lookups"]["hit"], 100, "{sb:#}");
    assert!(sa["writes"].as_u64() >= Some(100), "{sa:#}");
    // The portal's calls were spread over the nodes: following them is what placed the users.
    assert!(
        sim.session_counts().iter().all(|&c| c >= 20),
        "{:?}",
        sim.session_counts()
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_gets_its_ticket_once_a_slow_store_has_it_and_unknown_tickets_are_misses() {
    let store = Store::start(&[]).await;
    let sim = SimCluster::start(3, 0, SimOptions::with_auth(Auth::Windows))
        .await
        .expect("nodes start");
    let generous = "lookup_timeout = \"500ms\"\n";
    // A's store answers late: a background write would reach it well after A's answer.
    let delay = Duration::from_millis(80);
    let slow = slow_proxy(store.addr(), delay).await;
    let a = balancer(&sim, slow, generous).await;
    let b = balancer(&sim, store.addr(), generous).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store_status(&a).await["state"] != "up" {
        assert!(Instant::now() < deadline, "A's store never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rest_a = a.listener_addr("rest").unwrap();
    // What the portal holds is in the store already when its call returns.
    let user = SimUser::new("PORTAL", "now");
    let body = json!({"UserDirectory": "PORTAL", "UserId": "now"});
    let t0 = Instant::now();
    let (status, v) = post_json(rest_a, "/qps/portal/ticket", &body).await;
    assert_eq!(status, 201, "{v}");
    assert!(t0.elapsed() >= delay, "the answer waited for the store");
    let ticket = v["Ticket"].as_str().unwrap();
    let node = store.cli(&["GET", &format!("lb:t:{ticket}")]);
    assert!(node.starts_with("qps"), "ticket in the store: {node:?}");
    let ttl: i64 = store
        .cli(&["PTTL", &format!("lb:t:{ticket}")])
        .parse()
        .unwrap();
    // sticky.ticket_lifetime, 90 s by default.
    assert!((80_000..=90_000).contains(&ttl), "ticket TTL {ttl} ms");
    let id = guid(7);
    portal_session(rest_a, &user, &id).await;
    let node = store.cli(&["GET", &format!("lb:s:{id}")]);
    assert!(
        node.starts_with("qps"),
        "portal session in the store: {node:?}"
    );

    // A ticket nobody made: asked of the store each time (a ticket's miss is not remembered),
    // and the request is served as a miss (the node sends the browser to sign in).
    let users_b = b.proxy_addr();
    for round in 1..=2 {
        let mut c = Conn::connect(users_b).await.unwrap();
        let r = c
            .get("/hub/?qlikTicket=NoSuchTicket0123", &[])
            .await
            .unwrap();
        assert!(r.status == 302 || r.status == 401, "{}", r.status);
        let s = store_status(&b).await;
        assert_eq!(s["lookups"]["miss"], round, "{s:#}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
