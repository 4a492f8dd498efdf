//! Hot reload: configurations swap under load without failing a request or closing a
//! WebSocket the change does not concern; invalid files never replace a working one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use lb_bench::client::{self, WsConnect};
use lb_tests::{config_text, SimCluster, SimOptions, User};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str =
    "[sticky]\nroute_key = \"reload-test-route-key-0001\"\n[health]\nenabled = false\n";

/// The same proxy port for both configurations (a listener change needs a restart).
fn with_port(text: &str, port: u16) -> String {
    text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_drop_nothing() {
    let sim = SimCluster::start(3, 0, SimOptions::default())
        .await
        .unwrap();
    let addrs = sim.addrs();
    let a = config_text(
        &addrs,
        &format!(
            "{KEY}[shutdown]\ndrain_timeout = \"60s\"\n[upstream]\nresponse_timeout = \"30s\"\n"
        ),
    );
    let b = config_text(
        &addrs[..2],
        &format!(
            "{KEY}[shutdown]\ndrain_timeout = \"60s\"\n[upstream]\nresponse_timeout = \"20s\"\n"
        ),
    );
    let cfg = |t: &str| lb_config::Config::from_toml(t, std::path::Path::new(".")).unwrap();
    let lb = lb::Server::start(cfg(&a)).await.unwrap();
    let port = lb.proxy_addr().port();
    let (a, b) = (with_port(&a, port), with_port(&b, port));
    let addr = lb.proxy_addr();

    // 50 open WebSockets, spread over the three nodes.
    let mut sockets = Vec::new();
    for i in 0..50 {
        let mut u = User::new(addr).await;
        let node = u.get("/hub").await.node().unwrap().to_string();
        match client::ws_connect(&u.target, &format!("/app/{i}"), &u.jar, None, 4096)
            .await
            .unwrap()
        {
            WsConnect::Open(ws, n) => {
                assert_eq!(n.as_deref(), Some(node.as_str()));
                sockets.push((ws, node, u));
            }
            WsConnect::Refused(s, _) => panic!("refused {s}"),
        }
    }

    // Continuous HTTP load from sticky users while reloading.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut u = User::new(addr).await;
            let node = u.get("/hub").await.node().unwrap().to_string();
            while !stop.load(Ordering::Relaxed) {
                let r = u.get("/hub").await;
                if r.status == StatusCode::OK && r.node() == Some(node.as_str()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 0..50 {
        let text = if i % 2 == 0 { &b } else { &a };
        lb.reload(cfg(text)).expect("valid reload");
        // Every WebSocket still answers.
        let (ws, _, _) = &mut sockets[i % 50];
        ws.send(Message::text(format!("r{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("r{i}"))
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    for (ws, node, _) in sockets.iter_mut() {
        ws.send(Message::text("still")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still"),
            "{node}"
        );
    }

    // Now remove node3 for good with a short drain deadline: its users are served until the
    // deadline, then their WebSockets close with 1001 and later requests are redispatched.
    let b_short = b.replace("drain_timeout = \"60s\"", "drain_timeout = \"500ms\"");
    lb.reload(cfg(&b_short)).unwrap();
    let removed_at = std::time::Instant::now();
    let mut on_node3 = 0;
    for (_, node, u) in sockets.iter_mut() {
        if node == "node3" {
            on_node3 += 1;
            let r = u.get("/hub").await;
            if removed_at.elapsed() < Duration::from_millis(400) {
                assert_eq!(
                    r.node(),
                    Some("node3"),
                    "served by its removed node until the deadline"
                );
            }
        }
    }
    assert!(on_node3 > 0);
    for (ws, node, u) in sockets.iter_mut() {
        if node == "node3" {
            let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap();
            match end {
                Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
                other => panic!("expected a 1001 close, got {other:?}"),
            }
            assert!(
                removed_at.elapsed() >= Duration::from_millis(500),
                "closed before the deadline"
            );
            // The new node does not know the old session (a real QPS asks for a new login).
            let r = u.get("/hub").await;
            assert!(r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED);
            assert_ne!(r.node(), Some("node3"), "redispatched after the deadline");
        } else {
            ws.send(Message::text("other nodes keep their sockets"))
                .await
                .unwrap();
            assert!(
                matches!(ws.next().await, Some(Ok(Message::Text(_)))),
                "{node}"
            );
        }
    }
    // A node added back is used for new sessions at once.
    lb.reload(cfg(&a)).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let mut u = User::new(addr).await;
        seen.insert(u.get("/hub").await.node().unwrap().to_string());
    }
    assert!(seen.contains("node3"), "{seen:?}");
    for (mut ws, _, _) in sockets {
        let _ = client::WsStream::close(&mut ws, None).await;
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn invalid_files_are_refused_and_the_old_config_keeps_serving() {
    let sim = SimCluster::start(2, 0, SimOptions::default())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("lb-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    let good = config_text(&sim.addrs(), KEY);
    std::fs::write(&path, &good).unwrap();
    let cfg = lb_config::Config::from_file(&path).unwrap();
    let lb = lb::Server::start_with_path(cfg, Some(path.clone()))
        .await
        .unwrap();
    let good = with_port(&good, lb.proxy_addr().port());
    std::fs::write(&path, &good).unwrap();
    let version0 = lb.reload_status().version.clone();

    for (bad, key) in [
        ("[listener\naddress = 1", ""),
        (
            &*good.replace("127.0.0.1:", "127.0.0.1:99999,"),
            "nodes[0].address",
        ),
        (
            &*good.replace("[health]", "[health]\nsurprise = 1"),
            "health.surprise",
        ),
    ] {
        let err = lb.reload_from(&path_with(&dir, bad)).unwrap_err();
        assert!(err.contains(key), "{err}");
        let st = lb.reload_status();
        assert!(!st.ok);
        assert!(st.error.as_deref().unwrap().contains(key));
        assert_eq!(st.version, version0, "the old config stays in force");
        let mut u = User::new(lb.proxy_addr()).await;
        assert_eq!(u.get("/hub").await.status, StatusCode::OK);
    }
    // A listener address change is refused with a clear message.
    let moved = good.replace(
        &format!("127.0.0.1:{}", lb.proxy_addr().port()),
        "127.0.0.1:1",
    );
    let err = lb.reload_from(&path_with(&dir, &moved)).unwrap_err();
    assert!(err.contains("needs a restart"), "{err}");

    // A file replaced by rename is picked up by the watcher.
    let one_node = config_text(&sim.addrs()[..1], KEY);
    let one_node = with_port(&one_node, lb.proxy_addr().port());
    let tmp = dir.join("lb.toml.new");
    std::fs::write(&tmp, &one_node).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let mut picked = false;
    for _ in 0..100 {
        if lb.test_handle().configured_nodes() == 1 {
            picked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(picked, "rename not picked up");
    assert!(lb.reload_status().ok);
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn path_with(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("candidate.toml");
    std::fs::write(&p, text).unwrap();
    p
}
