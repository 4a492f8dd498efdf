//! Portal sign-in across two balancers sharing a real `redis-server` (`[sticky.shared]`): the
//! tickets and sessions a portal makes through balancer A's REST API listener are honoured by
//! balancer B, where the users' browsers arrive.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use lb::Server;
use lb_bench::client::HttpConn;
use lb_config::Config;
use lb_sim::{Auth, SimCluster, SimOptions};
use lb_tests::portal::{portal_user, signin_config};
use lb_tests::redis_store::Store;
use lb_tests::target;
use serde_json::Value;

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
