//! The simulator's other sign-ins, observed over real sockets on 127.0.0.1: the REST API's
//! tickets and sessions, SAML through an identity provider, forms, anonymous access, external
//! modules, header authentication, and the default that signs nobody in.

mod common;

use std::time::Duration;

use common::*;
use lb_sim::browser::{split_url, Browser, Conn, Identity, MAC_UA};
use lb_sim::saml::AutoPost;
use lb_sim::{Auth, SimCluster, SimIdp, SimOptions, SimUser};
use serde_json::json;

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

#[tokio::test]
async fn behind_tls_the_urls_are_https_and_the_session_cookie_secure() {
    let opts = SimOptions {
        scheme: "https".to_string(),
        advertised_auth_port: Some(4244),
        ..SimOptions::with_auth(Auth::Windows)
    };
    let sim = SimCluster::start(1, 0, opts).await.unwrap();
    let mut c = Conn::connect_as(sim.node(0).addr(), "qlik.example.com")
        .await
        .unwrap();
    let r = c.get("/hub/", &[UA]).await.unwrap();
    let loc = r.location().unwrap();
    assert!(
        loc.starts_with("https://qlik.example.com:4244/windows_authentication/?targetId="),
        "{loc}"
    );
    let body = json!({"UserDirectory": "CORP", "UserId": "mike"});
    let (_, v) = post_json(sim.node(0).rest_addr().unwrap(), "/qps/ticket", &body).await;
    let path = format!("/hub/?qlikTicket={}", v["Ticket"].as_str().unwrap());
    let r = c.get(&path, &[UA]).await.unwrap();
    assert_eq!(r.status, 200);
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.ends_with("; Path=/; HttpOnly; Secure"), "{cookie}");
}

#[tokio::test]
async fn sessions_time_out_unless_websocket_traffic_keeps_them_alive() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let opts = SimOptions {
        session_timeout: Some(Duration::from_secs(30 * 60)),
        ..SimOptions::with_auth(Auth::Windows)
    };
    let sim = SimCluster::start(1, 0, opts).await.unwrap();
    let node = sim.node(0);
    let rest = node.rest_addr().unwrap();
    let session = |sid: &'static str| async move {
        let body = json!({"UserDirectory": "CORP", "UserId": sid, "SessionId": sid});
        assert_eq!(post_json(rest, "/qps/session", &body).await.0, 201);
    };
    session("idle-user").await;
    session("ws-user").await;

    let mut req = format!("ws://{}/app/engineData", node.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", "X-Qlik-Session=ws-user".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();

    // Twenty minutes apart, the socket's traffic keeps its session; the idle one expires.
    for _ in 0..3 {
        sim.advance_clock(Duration::from_secs(20 * 60));
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    }
    assert_eq!(whoami(node.addr(), "ws-user").await.status, 200);
    assert_eq!(whoami(node.addr(), "idle-user").await.status, 302);
    assert_eq!(node.session_count(), 1);
    sim.advance_clock(Duration::from_secs(30 * 60));
    assert_eq!(whoami(node.addr(), "ws-user").await.status, 302);
    assert_eq!(node.session_count(), 0);
}
