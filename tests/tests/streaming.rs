//! Large bodies stream through the balancer in both directions without being held whole:
//! a 50 MB upload and a 50 MB download, with the process's peak memory watched.
//! (Its own test binary, so no other test shares the process's memory figures.)

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use lb_sim::pattern_byte as pattern;
use lb_tests::{start_lb, SimCluster, SimOptions};
use sha2::{Digest, Sha256};

const SIZE: u64 = 50 * 1024 * 1024;

fn peak_rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn reset_peak() {
    // Linux: writing 5 to clear_refs resets the peak resident set size.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_up_and_down_stream_through() {
    let sim = SimCluster::start(1, 0, SimOptions::default())
        .await
        .unwrap();
    let lb = start_lb(&sim.addrs(), "[server]\naccess_log = false\n").await;
    let stream = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Warm up (a session), then measure from here.
    let r = send
        .send_request(
            http::Request::get("/hub")
                .header("host", "q")
                .body(
                    http_body_util::Empty::<Bytes>::new()
                        .map_err(|e| match e {})
                        .boxed(),
                )
                .unwrap(),
        )
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let _ = r.into_body().collect().await;
    reset_peak();
    let before = peak_rss_kb();

    // Upload: 50 MB generated chunk by chunk, hashed on the way.
    let mut hasher = Sha256::new();
    let chunk: Vec<u8> = (0..256 * 1024u64).map(|i| (i % 239) as u8).collect();
    for _ in 0..(SIZE / chunk.len() as u64) {
        hasher.update(&chunk);
    }
    let want = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let chunks = SIZE / chunk.len() as u64;
    let body_chunk = Bytes::from(chunk);
    let frames = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(Frame::data(body_chunk.clone()))),
    );
    let req = http::Request::post("/_sim/upload")
        .header("host", "q")
        .header("cookie", &cookie)
        .header("content-length", SIZE.to_string())
        .body(StreamBody::new(frames).boxed())
        .unwrap();
    send.ready().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(120), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["bytes"], SIZE);
    assert_eq!(v["sha256"], want, "upload arrived intact");

    // Download: 50 MB read frame by frame and checked, never kept.
    let req = http::Request::get(format!("/_sim/download?bytes={SIZE}"))
        .header("host", "q")
        .header("cookie", &cookie)
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap();
    send.ready().await.unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .unwrap()
    {
        if let Ok(data) = frame.unwrap().into_data() {
            for &b in data.iter() {
                assert_eq!(b, pattern(n), "byte {n}");
                n += 1;
            }
        }
    }
    assert_eq!(n, SIZE);

    // Simulator, balancer and client together grew far less than one body.
    let grown_mb = (peak_rss_kb().saturating_sub(before)) / 1024;
    assert!(
        grown_mb < 25,
        "peak memory grew {grown_mb} MB while moving 2 x 50 MB"
    );
    lb.shutdown().await;
}
