//! A login storm through the module API over a real socket: 60 prioritize calls in a burst
//! against three engines whose telemetry does not change during the burst.

use std::sync::Arc;

use lb_module_api::{
    router, EngineSample, EngineView, RankPolicy, RouterOptions, StaticEngineSource,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOTAL_MB: f64 = 65536.0;

fn engine(cpu: f64, free_gb: f64) -> EngineView {
    EngineView::fresh(Arc::new(EngineSample {
        mem_free: free_gb * 1024.0,
        mem_total_physical: Some(TOTAL_MB),
        cpu_total: cpu,
        sessions_active: 0,
        saturated: Some(false),
        ..EngineSample::default()
    }))
}

async fn post(addr: std::net::SocketAddr, body: &str) -> serde_json::Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /loadbalancing/prioritize HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n\
         X-Qlik-User: UserDirectory=CORP; UserId=u\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn burst_of_sixty_spreads_by_headroom() {
    let src = Arc::new(
        StaticEngineSource::new(RankPolicy::default())
            .with("qlik1.example.com", 4747, engine(10.0, 60.0))
            .with("qlik2.example.com", 4747, engine(40.0, 40.0))
            .with("qlik3.example.com", 4747, engine(70.0, 20.0)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(src, "/", RouterOptions::default());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let engines = [
        "wss://qlik1.example.com:4747",
        "wss://qlik2.example.com:4747",
        "wss://qlik3.example.com:4747",
    ];
    let mut firsts = [0usize; 3];
    for i in 0..60 {
        // Each user opens one of a few apps; none is loaded anywhere yet.
        let app = format!("0b2a3c4d-1111-2222-3333-44445555666{}", i % 4);
        let body = serde_json::json!({"AppName": app, "QlikSenseEngines": engines}).to_string();
        let v = post(addr, &body).await;
        assert_eq!(v["AppName"], app.as_str());
        let order = v["QlikSenseEngines"].as_array().unwrap();
        assert_eq!(order.len(), 3, "no engine dropped");
        let first = order[0].as_str().unwrap();
        firsts[engines.iter().position(|e| *e == first).unwrap()] += 1;
    }
    println!("first choices (60 calls): {firsts:?}");
    assert!(
        firsts.iter().all(|&n| n <= 40),
        "no engine over 2/3: {firsts:?}"
    );
    assert!(
        firsts[2] < firsts[0] && firsts[2] < firsts[1],
        "the most loaded engine gets the fewest: {firsts:?}"
    );
    server.abort();
}
