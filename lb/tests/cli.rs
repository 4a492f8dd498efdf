//! The `lb` binary as an operator runs it: `lb check` on good and broken files, and `lb run`
//! with systemd readiness, SIGHUP reload and SIGTERM stop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lb"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lb-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn check_accepts_the_examples_and_reports_every_error_with_its_key() {
    let out = lb()
        .args(["check", "--config"])
        .arg(repo().join("deploy/examples/local.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(
        stdout.contains("qps3") && stdout.contains("127.0.0.1:18000"),
        "{stdout}"
    );

    let dir = tmp("check");
    let bad = dir.join("broken.toml");
    std::fs::write(
        &bad,
        "[listener]\naddress = \"127.0.0.1:18000\"\n[[nodes]]\nid = \"qps1\"\naddress = \"10.0.0.1:443\"\n\
         [[nodes]]\nid = \"qps1\"\naddress = \"10.0.0.2:443\"\n[[nodes]]\nid = \"qps3\"\naddress = \"10.0.0.1:99999\"\n",
    )
    .unwrap();
    let out = lb().args(["check", "--config"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nodes[1].id: duplicate node id \"qps1\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("nodes[2].address: invalid socket address \"10.0.0.1:99999\""),
        "{stderr}"
    );

    std::fs::write(&bad, "[listener]\naddress = \"127.0.0.1:1\"\nport = 3\n").unwrap();
    let out = lb().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listener.port"));

    let out = lb()
        .args(["check", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn run_notifies_readiness_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tmp("run");
    let (proxy, admin) = (free_port(), free_port());
    let cfg = dir.join("lb.toml");
    let text = |nodes: usize| {
        let mut t = format!(
            "[listener]\naddress = \"127.0.0.1:{proxy}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n[health]\nenabled = false\n"
        );
        for i in 1..=nodes {
            t.push_str(&format!(
                "[[nodes]]\nid = \"qps{i}\"\naddress = \"127.0.0.1:{}\"\n",
                19500 + i
            ));
        }
        t
    };
    std::fs::write(&cfg, text(1)).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = lb()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 from lb");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Ready means bound: the listeners answer now.
    let status = get(admin, "/status").expect("admin answers once ready");
    assert!(status.contains("\"qps1\""), "{status}");

    // SIGHUP reloads the edited file.
    std::fs::write(&cfg, text(2)).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("the reload", || {
        get(admin, "/status").is_some_and(|s| s.contains("\"qps2\""))
    });

    // SIGTERM: a clean stop.
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "lb did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        TcpStream::connect(("127.0.0.1", proxy)).is_err(),
        "listener closed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
