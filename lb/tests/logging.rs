//! Where the `lb` process writes its logs: stderr by default without colour codes when stderr
//! is not a terminal, JSON lines with `log_format = "json"`, and a log file that logrotate can
//! rename and have reopened with SIGUSR1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lb-logging-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
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

/// A node that answers every request with 200 and closes.
fn node() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => return,
                        Ok(m) => n += m,
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

fn config(dir: &Path, proxy: u16, node: u16, extra: &str) -> PathBuf {
    let cfg = dir.join("lb.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\n{extra}\n[listener]\naddress = \"127.0.0.1:{proxy}\"\n[health]\nenabled = false\n\
             [[nodes]]\nid = \"qps1\"\naddress = \"127.0.0.1:{node}\"\n"
        ),
    )
    .unwrap();
    cfg
}

fn start(cfg: &Path, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Sends `GET path` and returns the status line, retrying while the balancer starts.
fn get(port: u16, path: &str) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            return out.lines().next().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < end, "lb did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn stop(mut child: Child) -> (String, String) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (out, err)
}

#[test]
fn the_log_file_is_reopened_on_sigusr1_after_logrotate_renames_it() {
    let dir = tmp("reopen");
    let proxy = free_port();
    let log = dir.join("lb.log");
    let cfg = config(&dir, proxy, node(), "log_file = \"lb.log\"");
    let child = start(&cfg, Stdio::piped());
    assert!(get(proxy, "/before-rotate").contains("200"));
    wait_for("the first access line", || {
        read(&log).contains("/before-rotate")
    });

    let rotated = dir.join("lb.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("a new file at the path", || {
        read(&log).contains("reopening")
    });
    assert!(get(proxy, "/after-rotate").contains("200"));
    wait_for("the access line in the new file", || {
        read(&log).contains("/after-rotate")
    });
    let (stdout, stderr) = stop(child);
    let old = read(&rotated);
    assert!(old.contains("/before-rotate"), "{old}");
    assert!(!old.contains("/after-rotate"), "{old}");
    assert!(!read(&log).contains("/before-rotate"));
    // Everything went to the file: nothing on stdout, no access line on stderr.
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.contains("lb::access"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logs_go_to_stderr_without_colours_and_as_json_lines_when_asked() {
    let dir = tmp("stderr");
    let node = node();

    // Text, the default: stderr (a pipe here, so no ANSI codes), nothing on stdout.
    let proxy = free_port();
    let child = start(&config(&dir, proxy, node, ""), Stdio::piped());
    assert!(get(proxy, "/text-line").contains("200"));
    std::thread::sleep(Duration::from_millis(300));
    let (stdout, stderr) = stop(child);
    assert!(stdout.is_empty(), "{stdout}");
    let line = stderr
        .lines()
        .find(|l| l.contains("/text-line"))
        .unwrap_or_else(|| panic!("no access line on stderr: {stderr}"));
    assert!(
        line.contains("lb::access") && line.contains("status=200"),
        "{line}"
    );
    assert!(!stderr.contains('\x1b'), "ANSI codes in {stderr:?}");

    // JSON: every line is one object; the access line has its fields at the top level.
    let proxy = free_port();
    let child = start(
        &config(&dir, proxy, node, "log_format = \"json\""),
        Stdio::piped(),
    );
    assert!(get(proxy, "/json-line").contains("200"));
    std::thread::sleep(Duration::from_millis(300));
    let (_, stderr) = stop(child);
    let mut access = None;
    for l in stderr.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        if v["path"] == "/json-line" {
            access = Some(v);
        }
    }
    let access = access.unwrap_or_else(|| panic!("no access line: {stderr}"));
    assert_eq!(access["target"], "lb::access");
    assert_eq!(access["status"], 200);
    assert_eq!(access["node"], "qps1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_log_file_that_cannot_be_opened_stops_the_start_with_a_clear_error() {
    let dir = tmp("bad");
    let cfg = config(&dir, free_port(), 1, "log_file = \"no-such-folder/lb.log\"");
    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-folder/lb.log"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
