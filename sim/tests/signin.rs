//! The simulator signs users in as a QPS does, observed over real sockets on 127.0.0.1:
//! Windows authentication (NTLM legs bound to one connection, Kerberos), tickets (single use,
//! lifetime, this node only), the REST API, forms, SAML and anonymous access.

use std::net::SocketAddr;
use std::time::Duration;

use lb_sim::browser::{split_url, Browser, Conn, Identity, MAC_UA, WINDOWS_UA};
use lb_sim::saml::AutoPost;
use lb_sim::{kerberos, ntlm, Auth, SimCluster, SimIdp, SimOptions, SimUser};
use serde_json::{json, Value};

const UA: (&str, &str) = ("user-agent", WINDOWS_UA);

async fn windows_cluster(n: usize) -> SimCluster {
    SimCluster::start(n, 0, SimOptions::with_auth(Auth::Windows))
        .await
        .expect("nodes start")
}

fn json_of(p: &lb_sim::browser::Page) -> Value {
    serde_json::from_str(&p.body).unwrap_or_else(|e| panic!("{e}: {}", p.body))
}

/// `GET /hub/` on `user` without a session: the redirect's path and query on the auth port.
async fn start_login(user: &mut Conn) -> String {
    let r = user.get("/hub/", &[UA]).await.unwrap();
    assert_eq!(r.status, 302, "{}", r.body);
    let (_, path) = split_url(r.location().unwrap()).unwrap();
    path
}

async fn post_json(addr: SocketAddr, path: &str, v: &Value) -> (u16, Value) {
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

async fn whoami(addr: SocketAddr, cookie: &str) -> lb_sim::browser::Page {
    let mut c = Conn::connect(addr).await.unwrap();
    let cookie = format!("X-Qlik-Session={cookie}");
    c.get("/_sim/whoami", &[UA, ("cookie", &cookie)])
        .await
        .unwrap()
}

fn session_cookie(p: &lb_sim::browser::Page) -> String {
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
async fn rest_api_makes_tickets_for_a_target_and_sessions() {
    let sim = windows_cluster(2).await;
    let (n0, n1) = (sim.node(0), sim.node(1));
    let rest = n0.rest_addr().unwrap();

    // An external module gets the targetId and asks for a ticket for it.
    let mut user = Conn::connect(n0.addr()).await.unwrap();
    let r = user.get("/hub/my/work?sheet=1", &[UA]).await.unwrap();
    let target_id = lb_sim::url::param(
        r.location().unwrap().split_once('?').map(|x| x.1),
        "targetId",
    )
    .unwrap();
    let body = json!({"UserDirectory": "CORP", "UserId": "erin", "Attributes": [{"group": "sales"}], "TargetId": target_id});
    let (status, v) = post_json(rest, "/qps/hdr/ticket", &body).await;
    assert_eq!(status, 201);
    assert_eq!(v["UserId"], "erin");
    assert_eq!(v["UserDirectory"], "CORP");
    assert_eq!(v["Attributes"], json!([{"group": "sales"}]));
    assert_eq!(
        v["TargetUri"],
        format!("http://{}/hub/my/work?sheet=1", n0.addr())
    );
    assert_eq!(v["Ticket"].as_str().unwrap().len(), 16);

    let bad = json!({"UserDirectory": "CORP\\x", "UserId": "erin"});
    assert_eq!(post_json(rest, "/qps/ticket", &bad).await.0, 400);
    let blank = json!({"UserDirectory": " ", "UserId": "erin"});
    assert_eq!(post_json(rest, "/qps/ticket", &blank).await.0, 400);

    // A portal creates a session and hands its id to the browser as the session cookie.
    let sid = "0f8b5c1e-6a4d-4f2e-9b7a-3c2d1e0f9a8b";
    let body =
        json!({"UserDirectory": "CORP", "UserId": "frank", "Attributes": [], "SessionId": sid});
    let (status, v) = post_json(rest, "/qps/session", &body).await;
    assert_eq!((status, v["SessionId"].as_str()), (201, Some(sid)));
    let me = whoami(n0.addr(), sid).await;
    assert_eq!(me.status, 200);
    assert_eq!(json_of(&me)["user"], "CORP\\frank");
    // That session exists on this node only: elsewhere the user must sign in.
    let elsewhere = whoami(n1.addr(), sid).await;
    assert_eq!(elsewhere.status, 302);
    assert_eq!(n1.stats().foreign_rejections, 1);

    let mut c = Conn::connect(rest).await.unwrap();
    let r = c.get(&format!("/qps/session/{sid}"), &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let r = c.get("/qps/user/CORP/frank", &[]).await.unwrap();
    assert_eq!(json_of(&r).as_array().unwrap().len(), 1);
    let r = c
        .send(
            http::Method::DELETE,
            &format!("/qps/session/{sid}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(whoami(n0.addr(), sid).await.status, 302);
    assert_eq!(c.get("/qps/nothing", &[]).await.unwrap().status, 404);
}

#[tokio::test]
async fn saml_post_must_reach_the_node_that_started_the_login() {
    let idp = SimIdp::start(
        "127.0.0.1:0".parse().unwrap(),
        SimUser::new("CORP", "grace"),
    )
    .await
    .unwrap();
    let opts = SimOptions {
        prefix: "saml".to_string(),
        ..SimOptions::with_auth(Auth::Saml {
            idp_sso_url: idp.sso_url(),
        })
    };
    let sim = SimCluster::start(2, 0, opts).await.unwrap();
    let (n0, n1) = (sim.node(0), sim.node(1));

    // A browser: node -> IdP -> auto-posted form -> samlauthn on the same node -> hub.
    let mut b = Browser::new(Identity::None);
    let page = b
        .navigate(&format!("http://{}/saml/hub/", n0.addr()))
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{:?}", b.trail);
    let statuses: Vec<u16> = b.trail.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [302, 200, 302, 200]);
    assert!(b.trail[0].location().unwrap().starts_with(&idp.sso_url()));
    assert_eq!(
        b.trail[2].url,
        format!("http://{}/saml/samlauthn/", n0.addr())
    );
    let me = b
        .navigate(&format!("http://{}/saml/_sim/whoami", n0.addr()))
        .await
        .unwrap();
    assert_eq!(json_of(&me)["user"], "CORP\\grace");
    assert_eq!(n0.stats().saml_logins, 1);

    // Signed in at the IdP as someone else; the login starts on node1, the post goes to node2.
    let mut b = Browser::new(Identity::None);
    b.navigate(&format!("http://{}/login?user=CORP%5Cheidi", idp.addr()))
        .await
        .unwrap();
    let r = b
        .fetch(
            http::Method::GET,
            &format!("http://{}/saml/hub/", n0.addr()),
            &[],
            "",
        )
        .await
        .unwrap();
    let idp_page = b
        .fetch(http::Method::GET, r.location().unwrap(), &[], "")
        .await
        .unwrap();
    let post = AutoPost::parse(&idp_page.body).unwrap();
    assert_eq!(post.action, format!("http://{}/saml/samlauthn/", n0.addr()));
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let wrong = format!("http://{}/saml/samlauthn/", n1.addr());
    let r = b
        .fetch(http::Method::POST, &wrong, &form, post.body())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(n1.stats().saml_rejections, 1);
    let r = b
        .fetch(http::Method::POST, &post.action, &form, post.body())
        .await
        .unwrap();
    assert_eq!(r.status, 302);
    let me = whoami(n0.addr(), &session_cookie(&r)).await;
    assert_eq!(json_of(&me)["user"], "CORP\\heidi");
    // The RelayState is used up.
    let r = b
        .fetch(http::Method::POST, &post.action, &form, post.body())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(idp.responses(), 2);
}

#[tokio::test]
async fn forms_login_for_browsers_outside_the_pattern() {
    let sim = windows_cluster(1).await;
    let node = sim.node(0);
    let mut b = Browser::new(Identity::None);
    let page = b
        .navigate(&format!("http://{}/hub/", node.addr()))
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.url
            .contains("/internal_forms_authentication/?targetId="),
        "{}",
        page.url
    );
    assert!(page.body.contains("name=\"pwd\""));
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("user-agent", MAC_UA),
    ];
    let r = b
        .fetch(
            http::Method::POST,
            &page.url,
            &form,
            "username=CORP%5Civan&pwd=wrong",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = b
        .fetch(
            http::Method::POST,
            &page.url,
            &form,
            "username=CORP%5Civan&pwd=qlik",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 302);
    let page = b.navigate(r.location().unwrap()).await.unwrap();
    assert_eq!(page.status, 200);
    let me = b
        .navigate(&format!("http://{}/_sim/whoami", node.addr()))
        .await
        .unwrap();
    assert_eq!(json_of(&me)["user"], "CORP\\ivan");
    let s = node.stats();
    assert_eq!((s.form_logins, s.form_failures), (1, 1));
}

#[tokio::test]
async fn anonymous_access_and_forced_authentication() {
    let sim = SimCluster::start(1, 0, SimOptions::with_auth(Auth::Anonymous))
        .await
        .unwrap();
    let node = sim.node(0);
    let mut c = Conn::connect(node.addr()).await.unwrap();
    let r = c.get("/hub/", &[UA]).await.unwrap();
    assert_eq!(r.status, 200);
    let me = whoami(node.addr(), &session_cookie(&r)).await;
    assert_eq!(json_of(&me)["user"], "ANONYMOUS\\anonymous");
    let r = c.get("/hub/?forceAuthentication=yes", &[UA]).await.unwrap();
    assert_eq!(r.status, 302);
    assert!(r
        .location()
        .unwrap()
        .contains("/windows_authentication/?targetId="));
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
async fn default_mode_is_unchanged_and_has_no_sign_in_ports() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    assert!(sim.auth_addrs().is_empty() && sim.rest_addrs().is_empty());
    let mut c = Conn::connect(sim.node(0).addr()).await.unwrap();
    let r = c.get("/_sim/whoami", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let v = json_of(&r);
    assert_eq!(
        (v["user"].as_str(), v["node"].as_str()),
        (Some("ANONYMOUS\\anonymous"), Some("node1"))
    );
    let foreign = whoami(sim.node(1).addr(), &session_cookie(&r)).await;
    assert_eq!(foreign.status, 401);
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

#[tokio::test]
async fn external_module_gets_the_target_and_this_node_s_rest_api() {
    let opts = SimOptions {
        prefix: "ext".to_string(),
        ..SimOptions::with_auth(Auth::External {
            url: "http://portal.example/login".to_string(),
        })
    };
    let sim = SimCluster::start(2, 0, opts).await.unwrap();
    let node = sim.node(1);
    let mut user = Conn::connect(node.addr()).await.unwrap();
    let r = user.get("/ext/hub/", &[UA]).await.unwrap();
    assert_eq!(r.status, 302);
    let loc = r.location().unwrap();
    assert!(
        loc.starts_with("http://portal.example/login?targetId="),
        "{loc}"
    );
    let query = loc.split_once('?').map(|x| x.1);
    let target_id = lb_sim::url::param(query, "targetId").unwrap();
    let rest_uri = lb_sim::url::param(query, "proxyRestUri").unwrap();
    let rest = node.rest_addr().unwrap();
    assert_eq!(
        rest_uri,
        format!("http://127.0.0.1:{}/qps/ext/", rest.port())
    );

    // The module asks that REST API for a ticket and sends the user back with it.
    let body = json!({"UserDirectory": "CORP", "UserId": "leo", "TargetId": target_id});
    let (status, v) = post_json(rest, "/qps/ext/ticket", &body).await;
    assert_eq!(status, 201);
    let back = lb_sim::url::with_param(
        v["TargetUri"].as_str().unwrap(),
        "qlikTicket",
        v["Ticket"].as_str().unwrap(),
    );
    let (_, path) = split_url(&back).unwrap();
    let r = user.get(&path, &[UA]).await.unwrap();
    assert_eq!(r.status, 200);
    let me = whoami(node.addr(), &session_cookie(&r)).await;
    assert_eq!(json_of(&me)["user"], "CORP\\leo");
    assert_eq!(json_of(&me)["node"], "node2");

    sim.set_advertised_rest_port(18043);
    let r = user.get("/ext/qmc/", &[UA]).await.unwrap();
    assert!(r
        .location()
        .unwrap()
        .contains("proxyRestUri=http%3A%2F%2F127.0.0.1%3A18043%2Fqps%2Fext%2F"));
}

#[tokio::test]
async fn header_authentication_trusts_its_header() {
    let auth = Auth::Header {
        name: "X-Sim-User".to_string(),
        directory: "HDR".to_string(),
    };
    let sim = SimCluster::start(1, 0, SimOptions::with_auth(auth))
        .await
        .unwrap();
    let node = sim.node(0);
    let mut c = Conn::connect(node.addr()).await.unwrap();
    assert_eq!(c.get("/hub/", &[]).await.unwrap().status, 401);
    let r = c
        .get("/_sim/whoami", &[("x-sim-user", "mallory")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r)["user"], "HDR\\mallory");
    let cookie = format!("X-Qlik-Session={}", session_cookie(&r));
    let r = c.get("/_sim/whoami", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(json_of(&r)["user"], "HDR\\mallory");
    // Another name in the header is another user.
    let r = c
        .get(
            "/_sim/whoami",
            &[("cookie", &cookie), ("x-sim-user", "admin")],
        )
        .await
        .unwrap();
    assert_eq!(json_of(&r)["user"], "HDR\\admin");
    assert_eq!(node.stats().header_logins, 2);
}
