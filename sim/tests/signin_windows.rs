//! The simulator's Windows authentication and tickets, observed over real sockets on
//! 127.0.0.1: NTLM legs bound to one connection and the connection authenticated afterwards,
//! Kerberos in one leg, tickets single use, with a lifetime, on their node only.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use lb_sim::browser::{split_url, Browser, Conn, Identity};
use lb_sim::{kerberos, ntlm, Auth, SimCluster, SimOptions, SimUser};
use serde_json::json;

#[tokio::test]
async fn ntlm_on_one_connection_signs_in_and_the_connection_stays_authenticated() {
    let sim = windows_cluster(2).await;
    let (node, auth) = (sim.node(0), sim.node(0).auth_addr().unwrap());
    let mut user = Conn::connect(node.addr()).await.unwrap();

    let r = user.get("/hub/", &[UA]).await.unwrap();
    assert_eq!(r.status, 302);
    let loc = r.location().unwrap().to_string();
    let expected = format!(
        "http://127.0.0.1:{}/windows_authentication/?targetId=",
        auth.port()
    );
    assert!(loc.starts_with(&expected), "{loc}");
    let (_, login) = split_url(&loc).unwrap();

    let mut a = Conn::connect(auth).await.unwrap();
    let r = a.get(&login, &[UA]).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header_all("www-authenticate"), ["NTLM", "Negotiate"]);
    let t1 = ntlm::type1("CORP", "WS1");
    let r = a.get(&login, &[UA, ("authorization", &t1)]).await.unwrap();
    assert_eq!(r.status, 401);
    let challenge = ntlm::challenge_of(r.header("www-authenticate").unwrap()).unwrap();
    let t3 = ntlm::type3(challenge, "CORP", "alice", "WS1");
    let r = a.get(&login, &[UA, ("authorization", &t3)]).await.unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let back = r.location().unwrap().to_string();
    let prefix = format!("http://{}/hub/?qlikTicket=", node.addr());
    assert!(back.starts_with(&prefix), "{back}");

    // The ticket brings alice back to the user port: a session of hers.
    let (_, path) = split_url(&back).unwrap();
    let r = user.get(&path, &[UA]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = session_cookie(&r);
    let me = json_of(&whoami(node.addr(), &cookie).await);
    assert_eq!(me["user"], "CORP\\alice");
    assert_eq!(me["node"], "node1");
    let alice = SimUser::new("CORP", "alice");
    assert_eq!(sim.sessions_of(&alice), [("node1".to_string(), 1)]);

    // Later requests on that connection need no Authorization: they act as alice. Whoever
    // sends them (a stranger sharing the connection gets alice's identity).
    let mut other_user = Conn::connect(node.addr()).await.unwrap();
    let login2 = start_login(&mut other_user).await;
    let r = a.get(&login2, &[UA]).await.unwrap();
    assert_eq!(r.status, 302, "authenticated connection: {}", r.body);
    let (_, path) = split_url(r.location().unwrap()).unwrap();
    let r = other_user.get(&path, &[UA]).await.unwrap();
    assert_eq!(r.status, 200);
    let me = json_of(&whoami(node.addr(), &session_cookie(&r)).await);
    assert_eq!(me["user"], "CORP\\alice");
    assert_eq!(sim.sessions_of(&alice), [("node1".to_string(), 2)]);

    // A new connection is not authenticated.
    let mut fresh = Conn::connect(auth).await.unwrap();
    assert_eq!(fresh.get(&login2, &[UA]).await.unwrap().status, 401);
    let s = node.stats();
    assert_eq!(
        (s.ntlm_logins, s.tickets_issued, s.tickets_redeemed),
        (1, 2, 2)
    );
    assert_eq!(sim.node(1).session_count(), 0);
}

#[tokio::test]
async fn ntlm_third_leg_on_another_connection_fails() {
    let sim = windows_cluster(1).await;
    let auth = sim.node(0).auth_addr().unwrap();
    let mut user = Conn::connect(sim.node(0).addr()).await.unwrap();
    let login = start_login(&mut user).await;

    let mut a = Conn::connect(auth).await.unwrap();
    let mut b = Conn::connect(auth).await.unwrap();
    let t1 = ntlm::type1("CORP", "WS1");
    let r = a.get(&login, &[UA, ("authorization", &t1)]).await.unwrap();
    let challenge = ntlm::challenge_of(r.header("www-authenticate").unwrap()).unwrap();
    let t3 = ntlm::type3(challenge, "CORP", "bob", "WS1");

    let r = b.get(&login, &[UA, ("authorization", &t3)]).await.unwrap();
    assert_eq!(r.status, 401, "type 3 on another connection: {}", r.body);
    assert_eq!(r.header_all("www-authenticate"), ["NTLM", "Negotiate"]);
    assert_eq!(b.get(&login, &[UA]).await.unwrap().status, 401);
    assert_eq!(sim.node(0).stats().ntlm_failures, 1);
    assert_eq!(sim.node(0).stats().tickets_issued, 0);

    // A type 3 answering another challenge fails on the challenged connection too.
    let wrong = ntlm::type3([0; 8], "CORP", "bob", "WS1");
    assert_eq!(
        a.get(&login, &[UA, ("authorization", &wrong)])
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(sim.node(0).stats().ntlm_failures, 2);
}

#[tokio::test]
async fn kerberos_is_one_leg_for_the_name_the_browser_used() {
    let sim = windows_cluster(1).await;
    let node = sim.node(0);
    let mut b = Browser::new(Identity::kerberos("CORP", "carol"));
    let page = b
        .navigate(&format!("http://{}/hub/", node.addr()))
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{:?}", b.trail);
    // 302 to the auth port, its 401 answered with one Negotiate leg, 302 back, 200.
    let statuses: Vec<u16> = b.trail.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [302, 302, 200]);
    assert!(b.trail[1]
        .header("www-authenticate")
        .unwrap()
        .starts_with("Negotiate "));
    let me = b
        .navigate(&format!("http://{}/_sim/whoami", node.addr()))
        .await
        .unwrap();
    assert_eq!(json_of(&me)["user"], "CORP\\carol");
    assert_eq!(node.stats().kerberos_logins, 1);

    // A service ticket for another name is refused.
    let mut user = Conn::connect(node.addr()).await.unwrap();
    let login = start_login(&mut user).await;
    let mut a = Conn::connect(node.auth_addr().unwrap()).await.unwrap();
    let token = kerberos::negotiate(&SimUser::new("CORP", "carol"), "node7.example.com");
    let r = a
        .get(&login, &[UA, ("authorization", &token)])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(node.stats().kerberos_failures, 1);
}

#[tokio::test]
async fn browser_signs_in_with_ntlm_and_lands_on_the_node_that_sent_it() {
    let sim = windows_cluster(3).await;
    for i in 0..3 {
        let mut b = Browser::new(Identity::ntlm("CORP", &format!("user{i}")));
        b.leg_pause = Duration::from_millis(5);
        let page = b
            .navigate(&format!("http://{}/sense/app/abc?x=1", sim.node(i).addr()))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{:?}", b.trail);
        assert!(
            page.url.contains("/sense/app/abc?x=1&qlikTicket="),
            "{}",
            page.url
        );
        assert_eq!(page.node(), Some(format!("node{}", i + 1).as_str()));
        let u = SimUser::new("CORP", &format!("user{i}"));
        assert_eq!(sim.sessions_of(&u), [(format!("node{}", i + 1), 1)]);
    }
    assert_eq!(sim.session_counts(), [1, 1, 1]);
}

#[tokio::test]
async fn tickets_are_single_use_expire_and_belong_to_their_node() {
    let opts = SimOptions {
        ticket_lifetime: Duration::from_secs(60),
        ..SimOptions::with_auth(Auth::Windows)
    };
    let sim = SimCluster::start(2, 0, opts).await.unwrap();
    let (n0, n1) = (sim.node(0), sim.node(1));
    let rest = n0.rest_addr().unwrap();
    let ticket = || async {
        let body = json!({"UserDirectory": "CORP", "UserId": "dave", "Attributes": []});
        let (status, v) = post_json(rest, "/qps/ticket", &body).await;
        assert_eq!(status, 201, "{v}");
        v["Ticket"].as_str().unwrap().to_string()
    };
    let redeem = |addr: SocketAddr, k: String| async move {
        let mut c = Conn::connect(addr).await.unwrap();
        c.get(&format!("/hub/?qlikTicket={k}"), &[UA])
            .await
            .unwrap()
    };

    let k = ticket().await;
    let r = redeem(n0.addr(), k.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        json_of(&whoami(n0.addr(), &session_cookie(&r)).await)["user"],
        "CORP\\dave"
    );
    // Used: back to sign in.
    let r = redeem(n0.addr(), k).await;
    assert_eq!(r.status, 302);
    assert!(r
        .location()
        .unwrap()
        .contains("/windows_authentication/?targetId="));

    // Expired after its lifetime.
    let k = ticket().await;
    sim.advance_clock(Duration::from_secs(59));
    let k2 = ticket().await;
    sim.advance_clock(Duration::from_secs(2));
    assert_eq!(redeem(n0.addr(), k).await.status, 302);
    assert_eq!(redeem(n0.addr(), k2).await.status, 200);

    // Made on node1's REST API... redeemed on node2: unknown there.
    let k = ticket().await;
    assert_eq!(redeem(n1.addr(), k.clone()).await.status, 302);
    assert_eq!(n1.stats().ticket_rejections, 1);
    assert_eq!(n0.stats().ticket_rejections, 2);
    assert_eq!(n0.stats().tickets_redeemed, 2);
    assert_eq!(n1.session_count(), 0);
}

#[tokio::test]
async fn redirects_name_the_request_host_and_the_advertised_port() {
    let sim = windows_cluster(2).await;
    sim.set_advertised_auth_port(18044);
    let mut c = Conn::connect_as(sim.node(1).addr(), "qlik.example.com:18000")
        .await
        .unwrap();
    let r = c.get("/hub/", &[UA]).await.unwrap();
    let loc = r.location().unwrap();
    assert!(
        loc.starts_with("http://qlik.example.com:18044/windows_authentication/?targetId="),
        "{loc}"
    );
    // Not a GET, or a WebSocket: nothing to redirect, 401.
    let r = c
        .send(http::Method::POST, "/hub/", &[UA], "x")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let ws = [
        UA,
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    assert_eq!(c.get("/app/engineData", &ws).await.unwrap().status, 401);
    // An unknown targetId on the auth port still signs in, to the hub, and is counted.
    let mut b = Browser::new(Identity::ntlm("CORP", "judy"));
    let url = format!(
        "http://{}/windows_authentication/?targetId=nope",
        sim.node(1).auth_addr().unwrap()
    );
    // (The hub is on the default port, where nothing listens here.)
    assert!(b.navigate(&url).await.is_err());
    let last = b.trail.last().unwrap();
    assert_eq!(last.status, 302, "{:?}", b.trail);
    assert!(last
        .location()
        .unwrap()
        .starts_with("http://127.0.0.1/hub/?qlikTicket="));
    assert_eq!(sim.node(1).stats().unknown_targets, 1);
}

#[tokio::test]
async fn ntlm_inside_negotiate_is_answered_in_kind() {
    let sim = windows_cluster(1).await;
    let mut user = Conn::connect(sim.node(0).addr()).await.unwrap();
    let login = start_login(&mut user).await;
    let mut a = Conn::connect(sim.node(0).auth_addr().unwrap())
        .await
        .unwrap();
    let t1 = ntlm::type1("CORP", "WS1").replacen("NTLM ", "Negotiate ", 1);
    let r = a.get(&login, &[UA, ("authorization", &t1)]).await.unwrap();
    let offer = r.header("www-authenticate").unwrap().to_string();
    assert!(offer.starts_with("Negotiate "), "{offer}");
    let challenge = ntlm::challenge_of(&offer).unwrap();
    let t3 = ntlm::type3(challenge, "CORP", "ken", "WS1").replacen("NTLM ", "Negotiate ", 1);
    let r = a.get(&login, &[UA, ("authorization", &t3)]).await.unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(sim.node(0).stats().ntlm_logins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_ntlm_sign_ins_each_get_their_own_session() {
    let sim = std::sync::Arc::new(windows_cluster(3).await);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let sim = sim.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = Browser::new(Identity::ntlm("CORP", &format!("u{i}")));
            b.leg_pause = Duration::from_millis(2);
            let node = sim.node(i % 3).addr();
            let page = b.navigate(&format!("http://{node}/hub/")).await.unwrap();
            assert_eq!(page.status, 200, "{:?}", b.trail);
            let me = b
                .navigate(&format!("http://{node}/_sim/whoami"))
                .await
                .unwrap();
            assert_eq!(json_of(&me)["user"], format!("CORP\\u{i}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..200 {
        let u = SimUser::new("CORP", &format!("u{i}"));
        assert_eq!(sim.sessions_of(&u), [(format!("node{}", i % 3 + 1), 1)]);
    }
    let logins: u64 = sim.nodes().iter().map(|n| n.stats().ntlm_logins).sum();
    let failures: u64 = sim.nodes().iter().map(|n| n.stats().ntlm_failures).sum();
    assert_eq!((logins, failures), (200, 0));
}
