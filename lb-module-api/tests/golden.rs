//! Golden request/response pairs: `tests/golden/<case>.request` is the raw body posted,
//! `tests/golden/<case>.expect.json` holds `{"status", "response", "headers"?, "body_limit"?}`.
//! In `response`, the string `"*"` matches any string. Engines come from `golden/engines.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lb_module_api::{
    parse_healthcheck, router, EngineState, EngineView, RankPolicy, RouterOptions,
    StaticEngineSource,
};
use serde_json::Value;
use tower::ServiceExt;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn fixture() -> StaticEngineSource {
    let text = std::fs::read_to_string(golden_dir().join("engines.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut source = StaticEngineSource::new(RankPolicy::default());
    for e in doc["engines"].as_array().unwrap() {
        let host = e["host"].as_str().unwrap();
        let port = e["port"].as_u64().unwrap() as u16;
        let state = match e["state"].as_str().unwrap() {
            "fresh" => {
                let body = serde_json::to_vec(&e["healthcheck"]).unwrap();
                EngineState::Fresh(Arc::new(parse_healthcheck(&body).unwrap()))
            }
            "stale" => EngineState::Stale,
            "unreachable" => EngineState::Unreachable,
            "unknown" => EngineState::Unknown,
            other => panic!("unknown state {other}"),
        };
        source.insert(host, port, EngineView::with_state(state));
    }
    source
}

fn matches(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::String(e), Value::String(_)) if e == "*" => true,
        (Value::Object(e), Value::Object(g)) => {
            e.len() == g.len()
                && e.iter()
                    .all(|(k, v)| g.get(k).is_some_and(|gv| matches(v, gv)))
        }
        (Value::Array(e), Value::Array(g)) => {
            e.len() == g.len() && e.iter().zip(g).all(|(a, b)| matches(a, b))
        }
        (e, g) => e == g,
    }
}

#[tokio::test]
async fn golden_cases() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "request"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "golden cases missing");
    let mut failures = Vec::new();
    for request_path in &cases {
        let name = request_path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let body = std::fs::read(request_path).unwrap();
        let expect: Value = serde_json::from_str(
            &std::fs::read_to_string(request_path.with_extension("expect.json")).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}.expect.json: {e}"));

        let mut opts = RouterOptions::default();
        if let Some(limit) = expect.get("body_limit").and_then(Value::as_u64) {
            opts.body_limit = limit as usize;
        }
        let app = router(Arc::new(fixture()), "/", opts);
        let mut req = Request::post("/loadbalancing/prioritize")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(headers) = expect.get("headers").and_then(Value::as_object) {
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str().unwrap());
            }
        }
        let resp = app
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let got: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{name}: response is not JSON ({e}): {bytes:?}"));
                continue;
            }
        };
        let want_status = expect["status"].as_u64().unwrap() as u16;
        if status != StatusCode::from_u16(want_status).unwrap() {
            failures.push(format!(
                "{name}: status {status}, want {want_status}; body {got}"
            ));
            continue;
        }
        if content_type.as_deref() != Some("application/json") {
            failures.push(format!("{name}: content-type {content_type:?}"));
        }
        if !matches(&expect["response"], &got) {
            failures.push(format!("{name}: got {got}, want {}", expect["response"]));
        }
    }
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}
