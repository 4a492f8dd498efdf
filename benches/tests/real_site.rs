//! The harness options for a real site, through the `lb-bench` command line and the client:
//! extra headers and cookies reach the site, a rate limit holds, the caps and the loopback
//! guard refuse what they should.

use std::process::Command;

use lb_bench::client::{HttpConn, Target, TargetOpts};
use lb_bench::report::Report;
use lb_sim::{SimCluster, SimOptions};

fn lb_bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .args(args)
        .output()
        .expect("run lb-bench")
}

#[tokio::test]
async fn headers_and_cookies_reach_the_site() {
    let c = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let t = Target::parse_with(
        &format!("http://{}", c.addrs()[0]),
        false,
        &TargetOpts {
            headers: vec!["X-Qlik-User: UserDirectory=CORP; UserId=bench".into()],
            cookies: vec!["theme=dark".into(), "other=1".into()],
            ..TargetOpts::default()
        },
    )
    .unwrap();
    let mut conn = HttpConn::connect(&t).await.unwrap();
    let r = conn.get("/_sim/headers", Some(&t.jar())).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["x-qlik-user"][0], "UserDirectory=CORP; UserId=bench",
        "{v}"
    );
    assert_eq!(v["cookie"][0], "theme=dark; other=1", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_holds_the_rate_and_refuses_over_the_caps() {
    let c = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let url = format!("http://{}", c.addrs()[0]);
    let dir = std::env::temp_dir().join(format!("lb-bench-real-site-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    let out = tokio::task::spawn_blocking({
        let (url, json) = (url.clone(), json.clone());
        move || {
            lb_bench(&[
                "churn",
                "--url",
                &url,
                "--connections",
                "4",
                "--rate",
                "100",
                "--duration-secs",
                "2",
                "--header",
                "X-Bench: 1",
                "--json",
                json.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.rate_limit, Some(100.0));
    let err = (r.requests_per_sec - 100.0).abs() / 100.0;
    assert!(err <= 0.10, "{} requests/s against 100", r.requests_per_sec);

    let refused = |args: &[&str], what: &str| {
        let out = lb_bench(args);
        assert!(!out.status.success(), "{args:?} ran");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(what), "{args:?}: {e}");
    };
    refused(
        &[
            "http",
            "--url",
            &url,
            "--connections",
            "20",
            "--max-users",
            "10",
        ],
        "cap",
    );
    refused(
        &[
            "http",
            "--url",
            &url,
            "--duration-secs",
            "7200",
            "--max-duration-secs",
            "60",
        ],
        "cap",
    );
    refused(&["http", "--url", "https://192.0.2.1/"], "--allow-remote");
    // With --allow-remote the default caps are lower.
    refused(
        &[
            "http",
            "--url",
            "https://192.0.2.1/",
            "--allow-remote",
            "--connections",
            "5000",
        ],
        "cap",
    );
    refused(&["http", "--url", &url, "--insecure"], "https://");
    refused(
        &["http", "--url", &url, "--header", "nocolon"],
        "Name: value",
    );
}
