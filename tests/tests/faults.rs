//! Fault injection over real sockets: nodes that die under open WebSockets, hang, answer
//! garbage or close mid-response; clients that trickle their request heads (slowloris) or
//! vanish mid-upload. Each test ends by checking that nothing leaks: the balancer's open
//! connections, open tunnels and every node's requests in flight return to zero.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use lb_bench::client::HttpConn;
use lb_tests::faults::{
    assert_drained, assert_no_foreign_panics, counter, echo_once, failures, fake_node, id_of,
    open_files_limit, open_ws, random_bytes, read_until_closed, redispatches, user_pinned_to,
    wait_for, watch_panics, Fake, T,
};
use lb_tests::{start_lb, SimCluster, SimOptions, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// 1. A node killed under open WebSockets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_under_websockets_users_are_repinned() {
    watch_panics();
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[server]\naccess_log = false\n").await;

    // Nine users, each with an open app WebSocket on its node.
    let mut users = Vec::new();
    for i in 0..9 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        let node = r.node().unwrap().to_string();
        let (mut ws, ws_node) = open_ws(&u, &format!("/app/app-{i}?reloadUri=x")).await;
        assert_eq!(ws_node, node);
        echo_once(&mut ws, &format!("hello {i}")).await;
        users.push((u, node, ws));
    }
    assert_eq!(lb.test_handle().open_tunnels(), 9);

    let victim_name = users[0].1.clone();
    let victim_id = id_of(&victim_name);
    let victim = sim
        .nodes()
        .iter()
        .find(|n| n.name() == victim_name)
        .unwrap();
    let victims = users.iter().filter(|(_, n, _)| *n == victim_name).count();
    assert!(victims >= 2, "round robin gives the victim several users");
    let live_ids: Vec<String> = sim
        .nodes()
        .iter()
        .map(|n| id_of(n.name()))
        .filter(|id| *id != victim_id)
        .collect();
    let redispatched_before: u64 = live_ids
        .iter()
        .map(|id| counter(&lb, id, redispatches))
        .sum();

    // A request in flight on the victim when it dies.
    let mut waiting = user_pinned_to(&lb, &victim_id).await;
    let in_flight = tokio::spawn(async move {
        let t = Instant::now();
        let r = waiting
            .conn
            .get("/_sim/slow?ms=5000", Some(&waiting.jar))
            .await;
        (r, t.elapsed())
    });
    let victim_state = lb.test_handle().node(&victim_id).unwrap();
    wait_for(T, "slow request in flight on the victim", || {
        victim_state.in_flight.load(Ordering::Relaxed) == 1
    })
    .await;

    let killed = Instant::now();
    victim.stop().await;

    // It fails fast with 502 (its node is gone), long before the node would have answered.
    let (r, took) = tokio::time::timeout(T, in_flight)
        .await
        .expect("in-flight request ends")
        .expect("task ok");
    let r = r.expect("the balancer answers");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // Every WebSocket of the killed node ends (close frame, EOF or error) in a bound; the others
    // still echo.
    for (i, (_, node, ws)) in users.iter_mut().enumerate() {
        if *node == victim_name {
            let end = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match ws.next().await {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                        Some(Ok(_)) => {}
                    }
                }
            })
            .await;
            assert!(
                end.is_ok(),
                "user {i}: websocket of the killed node still open"
            );
        } else {
            echo_once(ws, &format!("still here {i}")).await;
        }
    }
    let ws_ended_in = killed.elapsed();

    // The killed node's users: next request reaches a live node, the route cookie changes, and
    // they stay there; a new WebSocket opens on the new node.
    for (i, (u, node, ws)) in users.iter_mut().enumerate() {
        if *node != victim_name {
            let r = u.get("/hub").await;
            assert_eq!(r.status, StatusCode::OK, "user {i} of a live node");
            assert_eq!(
                r.node(),
                Some(node.as_str()),
                "user {i} of a live node moved"
            );
            continue;
        }
        let old_route = u.jar.get("QLB_ROUTE").unwrap().to_string();
        assert!(old_route.starts_with(&format!("{victim_id}.")));
        let r = tokio::time::timeout(T, u.get("/hub"))
            .await
            .expect("answered in time");
        // Its Qlik session was issued by the dead node: the new node answers 401 (a real QPS
        // would send the user to log in again).
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
            "user {i}: {} {:?}",
            r.status,
            r.body
        );
        let new_node = r.node().expect("answered by a node").to_string();
        assert_ne!(new_node, victim_name, "user {i} sent to the dead node");
        let new_route = u.jar.get("QLB_ROUTE").unwrap().to_string();
        assert_ne!(new_route, old_route, "user {i}: route cookie not rewritten");
        assert!(
            new_route.starts_with(&format!("{}.", id_of(&new_node))),
            "user {i}: route cookie {new_route} does not name {new_node}"
        );
        // Log in again on the new node (drop the dead node's session cookie).
        u.jar.store("X-Qlik-Session=; Max-Age=0");
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.node(), Some(new_node.as_str()), "user {i} not re-pinned");
        assert!(u.jar.get("X-Qlik-Session").is_some(), "new session issued");
        for _ in 0..3 {
            let r = u.get("/hub").await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.node(), Some(new_node.as_str()), "user {i} moved again");
        }
        let (mut new_ws, ws_node) = open_ws(u, &format!("/app/app-{i}?reloadUri=x")).await;
        assert_eq!(
            ws_node, new_node,
            "user {i}'s new websocket on another node"
        );
        echo_once(&mut new_ws, "back").await;
        *ws = new_ws;
        *node = new_node;
    }

    let redispatched: u64 = live_ids
        .iter()
        .map(|id| counter(&lb, id, redispatches))
        .sum::<u64>()
        - redispatched_before;
    assert!(
        redispatched >= victims as u64,
        "redispatches of the live nodes grew by {redispatched} < {victims}"
    );
    assert!(counter(&lb, &victim_id, failures) >= 1);
    assert_eq!(
        lb.test_handle()
            .node(&victim_id)
            .unwrap()
            .open_tunnels
            .load(Ordering::Relaxed),
        0,
        "tunnels of the dead node counted as open"
    );
    eprintln!(
        "killed node: {victims} websockets ended within {ws_ended_in:?}; {redispatched} redispatches"
    );

    for (_, _, ws) in users.iter_mut() {
        let _ = ws.close(None).await;
    }
    drop(users);
    assert_drained(&lb, 3, "after the killed node").await;
    assert_no_foreign_panics();
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. A node that accepts and never answers
// ---------------------------------------------------------------------------------------------

/// `response_timeout` bounds every request to a hung node (504); active health checks then take
/// the node down and its users are redispatched. A few 504s do not mark a node down passively
/// (that takes `health.passive_errors` of them within `health.passive_window`): the active
/// checks do here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_node_gives_504_in_bound_then_users_move() {
    watch_panics();
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        "[server]\naccess_log = false\n\
         [upstream]\nresponse_timeout = \"500ms\"\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\nfall = 2\nrise = 2\nslow_start = \"0s\"\n",
    )
    .await;
    let timeout = Duration::from_millis(500);
    // Slack for two busy shared cores.
    let bound = timeout + Duration::from_millis(1000);

    let mut users = Vec::new();
    for _ in 0..6 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        let node = r.node().unwrap().to_string();
        users.push((u, node));
    }
    let victim_name = users[0].1.clone();
    let victim_id = id_of(&victim_name);
    let live_id = if victim_id == "qps1" { "qps2" } else { "qps1" };
    let victim = sim
        .nodes()
        .iter()
        .find(|n| n.name() == victim_name)
        .unwrap();
    let victims = users.iter().filter(|(_, n)| *n == victim_name).count();
    let redispatched_before = counter(&lb, live_id, redispatches);

    victim.set_hang(true);
    let hung_at = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut u, node)) in users.into_iter().enumerate() {
        let victim_name = victim_name.clone();
        tasks.push(tokio::spawn(async move {
            let is_victim = node == victim_name;
            let (mut timeouts, mut served_in_a_row, mut moved_after) = (0u32, 0u32, None);
            let mut slowest = Duration::ZERO;
            for _ in 0..40 {
                let t = Instant::now();
                let r = tokio::time::timeout(bound, u.get("/hub"))
                    .await
                    .unwrap_or_else(|_| panic!("user {i}: a request hung beyond {bound:?}"));
                slowest = slowest.max(t.elapsed());
                match r.node() {
                    None => {
                        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "user {i}");
                        assert!(is_victim, "user {i} of a live node got a 504");
                        assert!(
                            t.elapsed() >= timeout - Duration::from_millis(50),
                            "504 before the timeout"
                        );
                        timeouts += 1;
                        served_in_a_row = 0;
                    }
                    Some(n) => {
                        assert_ne!(n, victim_name, "user {i}: the hung node answered");
                        if is_victim {
                            // The hung node's session is foreign to the live node.
                            assert!(
                                r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
                                "user {i}: {}",
                                r.status
                            );
                            moved_after.get_or_insert(hung_at.elapsed());
                        } else {
                            assert_eq!(r.status, StatusCode::OK, "user {i}");
                            assert_eq!(n, node, "user {i} of a live node moved");
                        }
                        served_in_a_row += 1;
                        if served_in_a_row >= 3 {
                            break;
                        }
                    }
                }
            }
            assert!(served_in_a_row >= 3, "user {i} never served by a live node");
            (is_victim, timeouts, moved_after, slowest)
        }));
    }
    let mut total_504 = 0;
    let mut slowest = Duration::ZERO;
    let mut moved = Vec::new();
    for t in tasks {
        let (is_victim, timeouts, moved_after, s) =
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("users finish")
                .expect("user ok");
        slowest = slowest.max(s);
        total_504 += timeouts;
        if is_victim {
            moved.push(moved_after.expect("victim moved"));
        }
    }
    assert!(total_504 >= 1, "no request met the hung node");
    let state = lb.test_handle().node(&victim_id).unwrap();
    assert!(
        !state.healthy(),
        "active checks did not take the hung node down"
    );
    assert!(failures(&state) >= u64::from(total_504));
    let redispatched = counter(&lb, live_id, redispatches) - redispatched_before;
    assert!(redispatched >= victims as u64, "{redispatched} < {victims}");
    eprintln!(
        "hung node: {total_504} x 504, slowest request {slowest:?}, victims moved after {moved:?}"
    );
    assert_drained(&lb, 2, "after the hung node").await;
    assert_no_foreign_panics();
    lb.shutdown().await;
}

/// Without active checks, only `health.passive_errors` timeouts within `health.passive_window`
/// would take a hung node out of rotation; before that, every request still ends within
/// `response_timeout` with a 504 or an answer of a live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_node_without_active_checks_still_answers_in_bound() {
    watch_panics();
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(
        &sim.addrs(),
        "[server]\naccess_log = false\n[upstream]\nresponse_timeout = \"300ms\"\n\
         [health]\nenabled = false\n",
    )
    .await;
    let bound = Duration::from_millis(300 + 1000);
    let mut pinned = user_pinned_to(&lb, "qps1").await;
    let r = pinned.get("/hub").await;
    assert_eq!(r.node(), Some("node1"));
    sim.node(0).set_hang(true);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = tokio::time::timeout(bound, pinned.get("/hub"))
            .await
            .expect("request ends within the bound");
        assert!(
            r.status == StatusCode::GATEWAY_TIMEOUT || r.node() == Some("node2"),
            "{} from {:?}",
            r.status,
            r.node()
        );
        statuses.push((r.status.as_u16(), t.elapsed().as_millis()));
    }
    // New users: each ends in the bound too.
    let mut new_users = Vec::new();
    for _ in 0..4 {
        let mut u = User::new(lb.proxy_addr()).await;
        let r = tokio::time::timeout(bound, u.get("/hub"))
            .await
            .expect("request ends within the bound");
        assert!(
            r.status == StatusCode::GATEWAY_TIMEOUT || r.node() == Some("node2"),
            "{}",
            r.status
        );
        new_users.push(r.status.as_u16());
    }
    let st = lb.test_handle().node("qps1").unwrap();
    eprintln!(
        "hung node, no active checks: pinned user got {statuses:?} (status, ms); new users got \
         {new_users:?}; node usable={}",
        st.usable(lb::clock::now_ms())
    );
    drop((pinned, new_users));
    assert_drained(&lb, 2, "hung node without checks").await;
    assert_no_foreign_panics();
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Nodes that answer garbage, close without answering, or close mid-response
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_answers() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let (hello, hello_seen) = fake_node(Fake::Garbage(b"HELLO\r\n\r\n")).await;
    let (random, random_seen) = fake_node(Fake::Garbage(random_bytes())).await;
    let (trunc, trunc_seen) = fake_node(Fake::Truncate).await;
    let (silent, silent_seen) = fake_node(Fake::Close).await;
    // qps1 = a good node, qps2 = HELLO, qps3 = random bytes, qps4 = truncates, qps5 = closes.
    let addrs = [sim.node(0).addr(), hello, random, trunc, silent];
    let lb = start_lb(
        &addrs,
        "[server]\naccess_log = false\n[health]\nenabled = false\n",
    )
    .await;

    // A bystander keeps being served by the good node meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = {
        let mut u = user_pinned_to(&lb, "qps1").await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 2000 {
                let r = tokio::time::timeout(T, u.get("/hub"))
                    .await
                    .expect("bystander answered in time");
                assert_eq!(r.status, StatusCode::OK, "bystander request {n}");
                assert_eq!(r.node(), Some("node1"));
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };

    // Garbage and a close without an answer: 502, quickly, and the client connection stays
    // usable.
    for (id, seen) in [
        ("qps2", &hello_seen),
        ("qps3", &random_seen),
        ("qps5", &silent_seen),
    ] {
        let mut u = user_pinned_to(&lb, id).await;
        for k in 0..3 {
            let r = tokio::time::timeout(T, u.get("/hub"))
                .await
                .unwrap_or_else(|_| panic!("{id}: no answer in time"));
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{id} request {k}");
            assert!(r.node().is_none());
        }
        assert!(
            !u.conn.is_closed(),
            "{id}: client connection closed after a 502"
        );
        assert!(
            seen.load(Ordering::Relaxed) >= 3,
            "{id}: the fake node was not asked"
        );
        assert!(
            counter(&lb, id, failures) >= 3,
            "{id}: failures not counted"
        );
    }

    // Closed mid-body: the head (200, Content-Length 1000) is already on its way; the client
    // gets a truncated body and its connection is closed so that it cannot take the response
    // as complete.
    let route = lb.test_handle().route_value("qps4");
    for k in 0..3 {
        let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
        s.write_all(
            format!("GET /download HTTP/1.1\r\nHost: x\r\nCookie: QLB_ROUTE={route}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let (raw, closed) = read_until_closed(&mut s, T).await;
        assert!(closed, "truncated response {k}: connection left open");
        if raw.is_empty() {
            // The node's close overtook the head on its way out: nothing was sent, the client
            // sees a closed connection, which it cannot take as a complete response either.
            continue;
        }
        let text = String::from_utf8_lossy(&raw);
        let head_end = text.find("\r\n\r\n").expect("a response head") + 4;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text[..head_end]
                .to_ascii_lowercase()
                .contains("content-length: 1000"),
            "{text}"
        );
        let body = raw.len() - head_end;
        assert!(body < 1000, "truncated response {k}: {body} bytes of body");
    }
    // Through an HTTP client: the response fails.
    let mut u = user_pinned_to(&lb, "qps4").await;
    let r = tokio::time::timeout(T, u.conn.get("/download", Some(&u.jar)))
        .await
        .expect("ends in time");
    assert!(r.is_err(), "a truncated body read as complete: {r:?}");
    assert!(trunc_seen.load(Ordering::Relaxed) >= 4);

    // The balancer still serves new users on the good node.
    let mut u2 = user_pinned_to(&lb, "qps1").await;
    assert_eq!(u2.get("/hub").await.status, StatusCode::OK);

    stop.store(true, Ordering::Relaxed);
    let served = tokio::time::timeout(T, bystander)
        .await
        .expect("bystander done")
        .expect("bystander ok");
    assert!(served > 0);
    eprintln!(
        "garbage/truncation: bystander served {served} requests; failures counted: qps2={} \
         qps3={} qps4={} qps5={}",
        counter(&lb, "qps2", failures),
        counter(&lb, "qps3", failures),
        counter(&lb, "qps4", failures),
        counter(&lb, "qps5", failures)
    );
    drop((u, u2));
    assert_drained(&lb, 5, "after garbage and truncation").await;
    assert_no_foreign_panics();
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Slowloris
// ---------------------------------------------------------------------------------------------

/// 1,000 connections that trickle a request head (a byte every 300 ms) or send nothing are
/// closed by `header_read_timeout` while 20 normal users keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_users_served() {
    watch_panics();
    // Each slow connection costs two descriptors in this process (client and balancer side).
    let mut slow = 1000usize;
    if let Some(limit) = open_files_limit() {
        let fit = (limit.saturating_sub(400) / 2) as usize;
        if fit < slow {
            eprintln!("RLIMIT_NOFILE {limit}: using {fit} slow connections instead of {slow}");
            slow = fit;
        }
    }
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let read_timeout = Duration::from_secs(1);
    let lb = start_lb(
        &sim.addrs(),
        "header_read_timeout = \"1s\"\n[server]\naccess_log = false\n",
    )
    .await;
    let addr = lb.proxy_addr();

    // Normal users first get their sessions.
    let mut users = Vec::new();
    for _ in 0..20 {
        let mut u = User::new(addr).await;
        let r = u.get("/hub").await;
        assert_eq!(r.status, StatusCode::OK);
        let node = r.node().unwrap().to_string();
        users.push((u, node));
    }

    let started = Instant::now();
    let mut slow_tasks = Vec::with_capacity(slow);
    for i in 0..slow {
        slow_tasks.push(tokio::spawn(async move {
            // Taken before connecting: the balancer cannot start its timer earlier.
            let t0 = Instant::now();
            let mut s = TcpStream::connect(addr).await.expect("slow connect");
            let head = b"GET /hub HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut next = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            let mut buf = [0u8; 1024];
            let mut answered = false;
            let cap = tokio::time::sleep(Duration::from_secs(8));
            tokio::pin!(cap);
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return (Some(t0.elapsed()), answered),
                        Ok(_) => answered = true,
                    },
                    _ = tick.tick(), if i % 2 == 0 && next < head.len() => {
                        if s.write_all(&head[next..next + 1]).await.is_err() {
                            return (Some(t0.elapsed()), answered);
                        }
                        next += 1;
                    }
                    _ = &mut cap => return (None, answered),
                }
            }
        }));
    }
    // All slow connections are in (or refused, which would fail below).
    wait_for(T, "slow connections accepted", || {
        lb.test_handle().open_connections() >= (slow + 20) as i64
    })
    .await;
    let peak = lb.test_handle().open_connections();

    // Normal users keep going until the slow connections are all settled.
    let done = Arc::new(AtomicBool::new(false));
    let mut user_tasks = Vec::new();
    for (i, (mut u, node)) in users.into_iter().enumerate() {
        let done = done.clone();
        user_tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) && n < 1000 {
                let t = Instant::now();
                let r = tokio::time::timeout(T, u.conn.get("/hub", Some(&u.jar)))
                    .await
                    .unwrap_or_else(|_| panic!("user {i}: request {n} hung"))
                    .unwrap_or_else(|e| panic!("user {i}: request {n} failed: {e:#}"));
                slowest = slowest.max(t.elapsed());
                assert_eq!(r.status, StatusCode::OK, "user {i} request {n}");
                assert_eq!(r.node(), Some(node.as_str()), "user {i} moved");
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (n, slowest)
        }));
    }

    let mut latest = Duration::ZERO;
    let mut earliest = Duration::MAX;
    let mut answered = 0;
    for (i, t) in slow_tasks.into_iter().enumerate() {
        let (closed, got_bytes) = t.await.expect("slow task");
        let closed = closed.unwrap_or_else(|| panic!("slow connection {i} still open after 8 s"));
        latest = latest.max(closed);
        earliest = earliest.min(closed);
        answered += usize::from(got_bytes);
    }
    let all_closed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    for t in user_tasks {
        let (n, s) = tokio::time::timeout(T, t)
            .await
            .expect("user done")
            .expect("user ok");
        assert!(n > 0);
        served += n;
        slowest = slowest.max(s);
    }
    assert!(
        earliest >= read_timeout,
        "a slow connection closed after {earliest:?}, before header_read_timeout"
    );
    assert!(
        latest <= read_timeout + Duration::from_secs(3),
        "a slow connection lived {latest:?}"
    );
    eprintln!(
        "slowloris: {slow} slow connections (peak open {peak}) closed after {earliest:?}..\
         {latest:?} (all gone {all_closed:?} after start; {answered} got bytes before the close); \
         20 users served {served} requests, slowest {slowest:?}"
    );
    assert_drained(&lb, 2, "after slowloris").await;
    assert_no_foreign_panics();
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Clients that vanish mid-upload, mid-download and mid-WebSocket
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_transfer_free_everything() {
    watch_panics();
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[server]\naccess_log = false\n").await;
    let node = lb.test_handle().node("qps1").unwrap();

    // Upload: 10 MB announced, 1 MB sent, then the socket is dropped.
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    s.write_all(
        b"POST /_sim/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
          Content-Length: 10485760\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b'u'; 64 * 1024];
    for _ in 0..16 {
        tokio::time::timeout(T, s.write_all(&chunk))
            .await
            .expect("the balancer reads the body")
            .unwrap();
    }
    wait_for(T, "upload in flight to the node", || {
        node.in_flight.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(lb.test_handle().open_connections(), 1);
    drop(s);
    wait_for(T, "upload freed", || {
        node.in_flight.load(Ordering::Relaxed) == 0 && lb.test_handle().open_connections() == 0
    })
    .await;

    // A client that gives up while its request waits for the node: freed at once, not when
    // the node answers 3 s later.
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    s.write_all(b"GET /_sim/slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_for(T, "slow request in flight", || {
        node.in_flight.load(Ordering::Relaxed) == 1
    })
    .await;
    drop(s);
    let gone = Instant::now();
    wait_for(T, "abandoned request freed", || {
        node.in_flight.load(Ordering::Relaxed) == 0 && lb.test_handle().open_connections() == 0
    })
    .await;
    let freed_in = gone.elapsed();
    assert!(
        freed_in < Duration::from_secs(2),
        "abandoned request held for {freed_in:?}"
    );

    // Download: 64 MB asked, 1 MB read, then the socket is dropped.
    let mut s = TcpStream::connect(lb.proxy_addr()).await.unwrap();
    s.write_all(b"GET /_sim/download?bytes=67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1 << 20 {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("download flows")
            .unwrap();
        assert!(n > 0, "download ended early");
        got += n;
    }
    drop(s);
    assert_drained(&lb, 1, "after a vanished download").await;

    // WebSocket: the client's socket disappears without a close frame.
    let mut u = User::new(lb.proxy_addr()).await;
    u.get("/hub").await;
    let (mut ws, _) = open_ws(&u, "/app/vanish").await;
    echo_once(&mut ws, "hi").await;
    assert_eq!(lb.test_handle().open_tunnels(), 1);
    drop(ws);
    drop(u);
    assert_drained(&lb, 1, "after a vanished websocket").await;
    wait_for(T, "node's websocket closed", || {
        sim.node(0).stats().ws_open == 0
    })
    .await;

    // Still serving.
    let mut u = User::new(lb.proxy_addr()).await;
    assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    let mut conn = HttpConn::connect(&u.target).await.unwrap();
    let r = conn
        .request(
            http::Method::POST,
            "/_sim/upload",
            Some(&u.jar),
            bytes::Bytes::from(vec![7u8; 100_000]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    drop((u, conn));
    assert_drained(&lb, 1, "after the vanishing clients").await;
    assert_no_foreign_panics();
    lb.shutdown().await;
}
