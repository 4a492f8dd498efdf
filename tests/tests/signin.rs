//! Qlik sign-in through the balancer, over real sockets on 127.0.0.1: simulated QPS nodes that
//! sign users in as a QPS does (Windows authentication on another port, tickets, the REST API),
//! with `lb` listening for the users' port, the authentication port and the REST API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lb::Server;
use lb_config::Config;
use lb_sim::browser::{Browser, Conn, Identity, WINDOWS_UA};
use lb_sim::{Auth, SimCluster, SimOptions, SimUser};
use lb_tests::portal::{
    guid, json_of, portal_session, portal_user, post_json, signin_config, websocket,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const UA: (&str, &str) = ("user-agent", WINDOWS_UA);

struct Site {
    sim: Arc<SimCluster>,
    lb: Server,
    users: SocketAddr,
    auth: SocketAddr,
    rest: SocketAddr,
}

async fn site(n: usize, opts: SimOptions, listener_extra: &str, extra: &str) -> Site {
    let sim = SimCluster::start(n, 0, opts).await.expect("nodes start");
    let text = signin_config(&sim, listener_extra, extra);
    let c = Config::from_toml(&text, Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
    let lb = Server::start(c).await.expect("balancer starts");
    let users = lb.proxy_addr();
    let auth = lb.listener_addr("auth").unwrap();
    let rest = lb.listener_addr("rest").unwrap();
    // The nodes redirect users to the balancer's authentication listener.
    sim.set_advertised_auth_port(auth.port());
    sim.set_advertised_rest_port(rest.port());
    Site {
        sim: Arc::new(sim),
        lb,
        users,
        auth,
        rest,
    }
}

/// What became of one user who signed in through the balancer.
#[derive(Debug, Default)]
struct Outcome {
    signed_in: AtomicUsize,
    broken: AtomicUsize,
    ws_on_own_node: AtomicUsize,
}

/// Signs `identity` in through the balancer's users' listener (the node sends the browser to
/// the auth listener), then checks the user and opens a WebSocket with the browser's cookies.
async fn windows_user(
    site_users: SocketAddr,
    sim: Arc<SimCluster>,
    identity: Identity,
    name: SimUser,
    out: Arc<Outcome>,
) {
    let mut b = Browser::new(identity);
    b.leg_pause = Duration::from_millis(30);
    let page = match b.navigate(&format!("http://{site_users}/hub/")).await {
        Ok(p) if p.status == 200 => p,
        other => {
            eprintln!("sign-in of {name:?} failed: {other:?} {:?}", b.trail);
            out.broken.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = page;
    let me = b
        .navigate(&format!("http://{site_users}/_sim/whoami"))
        .await
        .map(|p| json_of(&p.body));
    let who = format!("{}\\{}", name.directory, name.id);
    match me {
        Ok(v) if v["user"] == who.as_str() => {}
        other => {
            eprintln!("whoami of {who}: {other:?}");
            out.broken.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let sessions = sim.sessions_of(&name);
    if sessions.len() != 1 || sessions[0].1 != 1 {
        eprintln!("{who} has sessions {sessions:?}");
        out.broken.fetch_add(1, Ordering::Relaxed);
        return;
    }
    out.signed_in.fetch_add(1, Ordering::Relaxed);
    let cookie = b.cookie_header().unwrap_or_default();
    match websocket(site_users, &cookie).await {
        Ok(node) if node == sessions[0].0 => {
            out.ws_on_own_node.fetch_add(1, Ordering::Relaxed);
        }
        other => eprintln!("{who}: websocket {other:?}, session on {}", sessions[0].0),
    }
}

/// An anonymous client on the authentication listener: a few requests with no credentials on
/// one connection. Returns how many answers carried a ticket (another user's identity).
async fn probe(auth: SocketAddr, i: usize) -> usize {
    let mut tickets = 0;
    let Ok(mut c) = Conn::connect(auth).await else {
        return 0;
    };
    for k in 0..6 {
        let target = format!("/windows_authentication/?targetId=probe{i}-{k}");
        let Ok(r) = c.get(&target, &[UA]).await else {
            match Conn::connect(auth).await {
                Ok(n) => c = n,
                Err(_) => return tickets,
            }
            continue;
        };
        if r.location().is_some_and(|l| l.contains("qlikTicket=")) {
            tickets += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tickets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_windows_users_sign_in_through_the_balancer_and_probes_get_no_ticket() {
    let s = site(3, SimOptions::with_auth(Auth::Windows), "", "").await;
    let out = Arc::new(Outcome::default());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let u = SimUser::new("CORP", &format!("u{i}"));
        tasks.push(tokio::spawn(windows_user(
            s.users,
            s.sim.clone(),
            Identity::Ntlm(u.clone()),
            u,
            out.clone(),
        )));
    }
    for i in 0..20 {
        let u = SimUser::new("CORP", &format!("k{i}"));
        tasks.push(tokio::spawn(windows_user(
            s.users,
            s.sim.clone(),
            Identity::Kerberos(u.clone()),
            u,
            out.clone(),
        )));
    }
    let probes: Vec<_> = (0..50).map(|i| tokio::spawn(probe(s.auth, i))).collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut probe_tickets = 0;
    for p in probes {
        probe_tickets += p.await.unwrap();
    }
    let stats: Vec<_> = s.sim.nodes().iter().map(|n| n.stats()).collect();
    let ntlm_logins: u64 = stats.iter().map(|s| s.ntlm_logins).sum();
    let ntlm_failures: u64 = stats.iter().map(|s| s.ntlm_failures).sum();
    let kerberos: u64 = stats.iter().map(|s| s.kerberos_logins).sum();
    let signed_in = out.signed_in.load(Ordering::Relaxed);
    let broken = out.broken.load(Ordering::Relaxed) as u64 + ntlm_failures;
    let ws = out.ws_on_own_node.load(Ordering::Relaxed);
    let metrics = s.lb.test_handle().metrics_text();
    println!(
        "windows sign-in through lb: {signed_in}/220 signed in (NTLM logins {ntlm_logins}, \
         Kerberos {kerberos}), broken handshakes {broken}, WebSockets on own node {ws}/220, \
         probe tickets {probe_tickets}/50 probes, sessions per node {:?}",
        s.sim.session_counts()
    );
    assert_eq!(signed_in, 220);
    assert_eq!((ntlm_logins, kerberos), (200, 20));
    assert_eq!(broken, 0);
    assert_eq!(ws, 220);
    assert_eq!(probe_tickets, 0);
    // Every user used all three nodes' shares: the balancer spread them.
    assert!(
        s.sim.session_counts().iter().all(|&c| c > 40),
        "{:?}",
        s.sim.session_counts()
    );
    let paired = metric(&metrics, "lb_auth_paired_connections_total");
    assert!(paired >= 270.0, "paired connections {paired}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_portal_users_reach_the_node_of_their_ticket_or_session() {
    let s = site(3, SimOptions::with_auth(Auth::Windows), "", "").await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (users, rest, sim) = (s.users, s.rest, s.sim.clone());
        tasks.push(tokio::spawn(async move {
            portal_user(users, rest, &sim, i).await
        }));
    }
    let (mut reached, mut ws_ok) = (0, 0);
    for t in tasks {
        let (r, w) = t.await.unwrap();
        reached += r as usize;
        ws_ok += w as usize;
    }
    println!(
        "portal users through lb's REST API listener: {reached}/100 reached their node as \
         themselves (50 by ticket, 50 by session), {ws_ok}/100 with a WebSocket to that node, \
         sessions per node {:?}",
        s.sim.session_counts()
    );
    assert_eq!((reached, ws_ok), (100, 100));
    // The REST calls were spread: a ticket or session is worth following only then.
    assert!(
        s.sim.session_counts().iter().all(|&c| c >= 20),
        "{:?}",
        s.sim.session_counts()
    );
}

#[tokio::test]
async fn rest_api_calls_may_name_their_node_and_other_calls_teach_nothing() {
    let s = site(3, SimOptions::with_auth(Auth::Windows), "", "").await;
    for _ in 0..3 {
        let mut c = Conn::connect(s.rest).await.unwrap();
        let body = json!({"UserDirectory": "PORTAL", "UserId": "named"});
        let r = c
            .send(
                http::Method::POST,
                "/qps/ticket",
                &[("content-type", "application/json"), ("x-lb-node", "qps3")],
                body.to_string(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.node(), Some("node3"));
    }
    assert_eq!(s.sim.node(2).stats().tickets_issued, 3);
    // A ticket id nobody made is no pin; a failed call teaches nothing.
    let (status, _) = post_json(s.rest, "/qps/session", &json!({"UserId": "x"})).await;
    assert_eq!(status, 400);
    let before: usize = s.sim.session_counts().iter().sum();
    let mut c = Conn::connect(s.users).await.unwrap();
    let r = c.get("/hub/?qlikTicket=forged", &[UA]).await.unwrap();
    assert_eq!(r.status, 302, "a forged ticket signs nobody in: {}", r.body);
    assert!(r.location().unwrap().contains("/windows_authentication/"));
    assert_eq!(s.sim.session_counts().iter().sum::<usize>(), before);
}

#[tokio::test]
async fn a_header_authentication_header_from_an_untrusted_client_never_reaches_a_node() {
    let header = Auth::Header {
        name: "X-Qlik-HeaderAuth".into(),
        directory: "HEADER".into(),
    };
    let sim = SimCluster::start(2, 0, SimOptions::with_auth(header))
        .await
        .unwrap();
    let nodes: String = sim
        .addrs()
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\n", i + 1))
        .collect();
    let start = |listener: &str| {
        let text = format!("[listener]\naddress = \"127.0.0.1:0\"\n{listener}\n{nodes}");
        async move {
            Server::start(Config::from_toml(&text, Path::new(".")).unwrap())
                .await
                .unwrap()
        }
    };
    // Stripped from everyone; kept only from a trusted front (none trusted here).
    let strict =
        start("strip_headers = [\"x-qlik-headerauth\"]\ntrusted_headers = [\"X-Portal-User\"]")
            .await;
    let sends = |lb: SocketAddr, name: &'static str, user: &'static str| async move {
        let mut c = Conn::connect(lb).await.unwrap();
        let r = c.get("/_sim/headers", &[(name, user)]).await.unwrap();
        (r.status, r.body)
    };
    let (status, body) = sends(strict.proxy_addr(), "X-Qlik-HeaderAuth", "admin").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = sends(strict.proxy_addr(), "x-qlik-HEADERAUTH", "admin").await;
    assert_eq!(status, 401);
    assert!(sim.sessions_of(&SimUser::new("HEADER", "admin")).is_empty());
    // The trusted-only header goes too: the client is not a trusted proxy.
    let (_, body) = sends(strict.proxy_addr(), "X-Portal-User", "eve").await;
    assert!(
        !body.to_ascii_lowercase().contains("x-portal-user"),
        "{body}"
    );

    // A balancer that trusts 127.0.0.1 (a front that sets the header itself) passes it on.
    let trusting =
        start("trusted_proxies = [\"127.0.0.1\"]\ntrusted_headers = [\"X-Qlik-HeaderAuth\"]").await;
    let (status, body) = sends(trusting.proxy_addr(), "X-Qlik-HeaderAuth", "admin").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.sessions_of(&SimUser::new("HEADER", "admin")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_only_uses_a_websocket_keeps_their_learned_session() {
    let s = site(
        3,
        SimOptions::with_auth(Auth::Windows),
        "",
        "[sticky]\nsession_idle_timeout = \"2s\"\n",
    )
    .await;
    // Portal sessions: the learned session is the users' only pin (no route cookie).
    let mut users = Vec::new();
    for i in 0..6 {
        let user = SimUser::new("PORTAL", &format!("w{i}"));
        let id = guid(1000 + i);
        portal_session(s.rest, &user, &id).await;
        users.push((user, id));
    }
    let (idle_user, idle_id) = (SimUser::new("PORTAL", "idle"), guid(2000));
    portal_session(s.rest, &idle_user, &idle_id).await;
    let mut tasks = Vec::new();
    for (user, id) in users {
        let (lb, sim) = (s.users, s.sim.clone());
        tasks.push(tokio::spawn(async move {
            let node = sim.sessions_of(&user)[0].0.clone();
            let mut req = format!("ws://{lb}/app/doc1").into_client_request().unwrap();
            let cookie = format!("X-Qlik-Session={id}");
            req.headers_mut().insert("cookie", cookie.parse().unwrap());
            let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
            assert_eq!(
                resp.headers()
                    .get(lb_sim::NODE_HEADER)
                    .unwrap()
                    .to_str()
                    .unwrap(),
                node
            );
            // 5 s of app traffic and no HTTP request: longer than the sticky idle timeout.
            for k in 0..20 {
                ws.send(Message::text(format!("m{k}"))).await.unwrap();
                assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // A new request with the session cookie only still reaches that node.
            let mut c = Conn::connect(lb).await.unwrap();
            let r = c
                .get("/_sim/whoami", &[UA, ("cookie", &cookie)])
                .await
                .unwrap();
            let _ = ws.close(None).await;
            (r.status, r.node().map(str::to_string), node)
        }));
    }
    for t in tasks {
        let (status, got, want) = t.await.unwrap();
        assert_eq!((status, got.as_deref()), (200, Some(want.as_str())));
    }
    // Control: the pin of a session with no traffic at all did expire.
    assert_eq!(s.lb.test_handle().learned_node(&idle_id), None);
}

/// The stickiness of `proxy.rs`'s stopped-node test, with users signed in through Windows
/// authentication: a user of a stopped node lands on a live node, signs in again there (its
/// authentication port follows), and stays; the others keep their node without signing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_users_of_a_stopped_node_sign_in_again_on_a_live_node() {
    let s = site(
        3,
        SimOptions::with_auth(Auth::Windows),
        "",
        "[health]\ninterval = \"200ms\"\nfall = 1\n",
    )
    .await;
    let mut users = Vec::new();
    for i in 0..12 {
        let user = SimUser::new("CORP", &format!("s{i}"));
        let mut b = Browser::new(Identity::Ntlm(user.clone()));
        let page = b
            .navigate(&format!("http://{}/hub/", s.users))
            .await
            .unwrap();
        assert_eq!(page.status, 200);
        let node = s.sim.sessions_of(&user)[0].0.clone();
        users.push((user, b, node));
    }
    let victim = s.sim.node(1).name().to_string();
    assert!(users.iter().any(|(_, _, n)| *n == victim));
    s.sim.node(1).stop().await;
    for (user, b, node) in users.iter_mut() {
        b.close_connections();
        let page = b
            .navigate(&format!("http://{}/hub/", s.users))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{:?}", b.trail);
        let now = page.node().unwrap().to_string();
        if *node == victim {
            assert_ne!(now, victim);
            assert!(b.trail.len() > 1, "signed in again: {:?}", b.trail);
            let sessions = s.sim.sessions_of(user);
            assert!(sessions.contains(&(now.clone(), 1)), "{sessions:?}");
            for _ in 0..3 {
                let p = b
                    .navigate(&format!("http://{}/_sim/whoami", s.users))
                    .await
                    .unwrap();
                assert_eq!(p.node(), Some(now.as_str()));
                assert_eq!(p.status, 200);
            }
        } else {
            assert_eq!(&now, node, "a user of a live node moved");
            assert_eq!(b.trail.len(), 1, "no new sign-in: {:?}", b.trail);
        }
    }
}

#[test]
fn every_shipped_example_is_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // production.toml names host files under /etc/lb: deploy_lint checks it with
            // throwaway files in place.
            if std::fs::read_to_string(&p).unwrap().contains("/etc/lb/") {
                continue;
            }
            lb::check_config(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "examples found: {n}");
    let c = lb::check_config(&dir.join("windows-auth.toml")).unwrap();
    let names: Vec<_> = c
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address.to_string()))
        .collect();
    assert_eq!(
        names,
        [
            ("auth", "127.0.0.1:18044".to_string()),
            ("rest", "127.0.0.1:18043".to_string())
        ]
    );
    assert_eq!(c.nodes[2].addresses[0].to_string(), "127.0.0.1:19142");
    assert_eq!(c.nodes[2].addresses[1].to_string(), "127.0.0.1:19162");
}

#[tokio::test]
async fn reload_applies_listener_settings_but_refuses_moving_or_adding_listeners() {
    let s = site(2, SimOptions::with_auth(Auth::Windows), "", "").await;
    let reload = |listener_extra: &str, extra: &str| {
        let text = signin_config(&s.sim, listener_extra, extra);
        s.lb.reload(Config::from_toml(&text, Path::new(".")).unwrap())
    };
    // Header lists apply at once.
    reload("strip_headers = [\"X-Sim-Test\"]", "").unwrap();
    let mut c = Conn::connect(s.auth).await.unwrap();
    let r = c
        .get("/_sim/headers", &[UA, ("x-sim-test", "1")])
        .await
        .unwrap();
    assert!(
        !r.body.to_ascii_lowercase().contains("x-sim-test"),
        "{}",
        r.body
    );
    // Moving the bound auth listener, or adding one, needs a restart.
    let moved = signin_config(&s.sim, "", "").replacen(
        "[listeners.auth]\naddress = \"127.0.0.1:0\"",
        "[listeners.auth]\naddress = \"127.0.0.1:1\"",
        1,
    );
    let e =
        s.lb.reload(Config::from_toml(&moved, Path::new(".")).unwrap())
            .unwrap_err();
    assert!(e.contains("listeners.auth.address"), "{e}");
    let added = signin_config(&s.sim, "", "[listeners.more]\naddress = \"127.0.0.1:0\"\n")
        .split("addresses = { ")
        .enumerate()
        .map(|(i, part)| match i {
            0 => part.to_string(),
            i => format!("addresses = {{ more = \"127.0.0.1:{}\", {part}", 9 + i),
        })
        .collect::<String>();
    let e =
        s.lb.reload(Config::from_toml(&added, Path::new(".")).unwrap())
            .unwrap_err();
    assert!(e.contains("needs a restart"), "{e}");
    assert!(!s.lb.reload_status().ok);
    // The running configuration stayed: the auth listener still serves its nodes.
    let mut c = Conn::connect(s.auth).await.unwrap();
    let r = c
        .get("/windows_authentication/?targetId=x", &[UA])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

/// A node that challenges with NTLM on every request and counts its connections, closing one
/// after `close_after` answers (0: never).
async fn challenging_node(close_after: usize) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, c) = (opened.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            o.fetch_add(1, Ordering::Relaxed);
            let c = c.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(tcp);
                let mut answered = 0;
                'conn: loop {
                    // Read one request head (no bodies here).
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let resp = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n";
                    if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        break;
                    }
                    answered += 1;
                    if answered == close_after {
                        break;
                    }
                }
                c.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (addr, opened, closed)
}

#[tokio::test]
async fn a_paired_node_connection_closes_with_its_client_and_the_client_with_it() {
    let start = |node: SocketAddr| async move {
        let text = format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n[health]\nenabled = false\n\
             [[nodes]]\nid = \"qps1\"\naddress = \"{node}\"\n"
        );
        Server::start(Config::from_toml(&text, Path::new(".")).unwrap())
            .await
            .unwrap()
    };
    let (node, opened, closed) = challenging_node(0).await;
    let lb = start(node).await;
    // Three clients, three requests each: one node connection per client, never shared.
    for _ in 0..3 {
        let mut c = Conn::connect(lb.proxy_addr()).await.unwrap();
        for _ in 0..3 {
            assert_eq!(c.get("/", &[UA]).await.unwrap().status, 401);
        }
        drop(c);
    }
    lb_tests::faults::wait_for(
        Duration::from_secs(5),
        "paired node connections closed",
        || closed.load(Ordering::Relaxed) == 3,
    )
    .await;
    assert_eq!(opened.load(Ordering::Relaxed), 3);

    // The node closes a paired connection: that client's next request is not sent anywhere
    // else (502) and its connection is closed.
    let (node, opened, _) = challenging_node(1).await;
    let lb2 = start(node).await;
    let mut c = Conn::connect(lb2.proxy_addr()).await.unwrap();
    assert_eq!(c.get("/", &[UA]).await.unwrap().status, 401);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.get("/", &[UA]).await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        opened.load(Ordering::Relaxed),
        1,
        "not sent on another connection"
    );
}
