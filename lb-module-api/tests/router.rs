//! Router behaviour outside the golden files: limits, methods, paths, a real socket, and
//! properties over arbitrary input.

use std::sync::Arc;

use axum::body::Body;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use lb_module_api::{
    prioritize, router, EngineSample, EngineView, PrioritizeRequest, RankPolicy, RouterOptions,
    StaticEngineSource,
};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

fn source() -> Arc<StaticEngineSource> {
    let idle = EngineSample {
        mem_free: 30000.0,
        mem_total_physical: Some(32768.0),
        cpu_total: 5.0,
        ..EngineSample::default()
    };
    let busy = EngineSample {
        mem_free: 3000.0,
        mem_total_physical: Some(32768.0),
        cpu_total: 60.0,
        ..EngineSample::default()
    };
    Arc::new(
        StaticEngineSource::new(RankPolicy::default())
            .with("node1", 4747, EngineView::fresh(Arc::new(busy)))
            .with("node2", 4747, EngineView::fresh(Arc::new(idle))),
    )
}

const BODY: &str = r#"{"AppName":"A","QlikSenseEngines":["wss://node1:4747","wss://node2:4747"]}"#;
const ANSWER: &str =
    r#"{"AppName":"A","QlikSenseEngines":["wss://node2:4747","wss://node1:4747"]}"#;

async fn call(app: axum::Router, method: Method, path: &str, body: Body) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(body)
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn base_paths_are_normalised() {
    for base in ["", "/", "/lb/", "/lb", "lb"] {
        let prefix = base.trim_matches('/');
        let path = if prefix.is_empty() {
            "/loadbalancing/prioritize".to_owned()
        } else {
            format!("/{prefix}/loadbalancing/prioritize")
        };
        let app = router(source(), base, RouterOptions::default());
        let (status, body) = call(app.clone(), Method::POST, &path, Body::from(BODY)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, ANSWER),
            "base {base:?}"
        );
        // Trailing and doubled slashes reach the same handler.
        let sloppy = format!("/{}/", path.replace('/', "//"));
        let (status, body) = call(app, Method::POST, &sloppy, Body::from(BODY)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, ANSWER),
            "{sloppy}"
        );
    }
}

#[tokio::test]
async fn wrong_method_and_path() {
    let app = router(source(), "/lb", RouterOptions::default());
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (status, _) = call(
            app.clone(),
            method.clone(),
            "/lb/loadbalancing/prioritize",
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        let (status, _) = call(
            app.clone(),
            method.clone(),
            "/lb/loadbalancing/prioritize/",
            Body::empty(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} with slash"
        );
    }
    let (status, _) = call(
        app.clone(),
        Method::POST,
        "/loadbalancing/prioritize",
        Body::from(BODY),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(app, Method::POST, "/lb/other", Body::from(BODY)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn default_body_limit_is_64_kib() {
    let app = router(source(), "/", RouterOptions::default());
    let pad = " ".repeat(64 * 1024 - BODY.len());
    let at_limit = format!("{BODY}{pad}");
    assert_eq!(at_limit.len(), 64 * 1024);
    let (status, body) = call(
        app.clone(),
        Method::POST,
        "/loadbalancing/prioritize",
        Body::from(at_limit.clone()),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ANSWER));

    let over = format!("{at_limit} ");
    // Without Content-Length: the limit is enforced while reading.
    let (status, body) = call(
        app.clone(),
        Method::POST,
        "/loadbalancing/prioritize",
        Body::from(over.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body.contains("\"error\""), "{body}");
    // With a Content-Length over the limit: refused before reading.
    let req = Request::post("/loadbalancing/prioritize")
        .header(header::CONTENT_LENGTH, over.len())
        .body(Body::from(over))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn rotation_shares_equal_engines() {
    let s = EngineSample {
        mem_free: 30000.0,
        mem_total_physical: Some(32768.0),
        cpu_total: 5.0,
        ..EngineSample::default()
    };
    let src = Arc::new(
        StaticEngineSource::new(RankPolicy::default())
            .with("a", 4747, EngineView::fresh(Arc::new(s.clone())))
            .with("b", 4747, EngineView::fresh(Arc::new(s))),
    );
    let app = router(src, "/", RouterOptions::default());
    let body = r#"{"AppName":"x","QlikSenseEngines":["a:4747","b:4747"]}"#;
    let mut firsts = Vec::new();
    for _ in 0..40 {
        let (status, out) = call(
            app.clone(),
            Method::POST,
            "/loadbalancing/prioritize",
            Body::from(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        firsts.push(v["QlikSenseEngines"][0].as_str().unwrap().to_owned());
    }
    // Equal engines share new sessions: the first place is drawn by headroom, and each
    // placement counts against its engine until the next sample.
    let a = firsts.iter().filter(|f| *f == "a:4747").count();
    assert!((14..=26).contains(&a), "a first {a} of 40: {firsts:?}");
}

#[tokio::test]
async fn over_a_real_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(source(), "/lb/", RouterOptions::default());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /lb/loadbalancing/prioritize HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nX-Qlik-User: UserDirectory=INTERNAL; UserId=sa_proxy\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert_eq!(body, ANSWER);

    // A malformed body over the socket gets 400 with a JSON error.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /lb/loadbalancing/prioritize HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{{{")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("{\"error\":"), "{text}");
    server.abort();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any body: never a panic, only 200 or 400, and always a JSON answer.
    #[test]
    fn any_body_is_answered(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (status, out) = rt.block_on(call(
            router(source(), "/", RouterOptions::default()),
            Method::POST,
            "/loadbalancing/prioritize",
            Body::from(body),
        ));
        prop_assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    }

    /// Any engine list: the answer holds exactly the offered entries, and the app name.
    #[test]
    fn answer_is_a_permutation_of_the_offer(
        app in ".*",
        engines in proptest::collection::vec(
            prop_oneof![
                Just("wss://node1:4747".to_owned()),
                Just("node2:4747".to_owned()),
                "[a-z]{1,8}:[0-9]{1,5}",
                ".*",
            ],
            0..16,
        ),
    ) {
        let src = source();
        let out = prioritize(src.as_ref(), PrioritizeRequest {
            app_name: app.clone(),
            qlik_sense_engines: engines.clone(),
        });
        prop_assert_eq!(&out.app_name, &app);
        let mut a = out.qlik_sense_engines.clone();
        let mut b = engines.clone();
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);
    }
}
