//! What a node answers to one request on its user port: session-free endpoints, the session
//! rules, the test endpoints and the app WebSocket.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{hex, json_resp, text, PatternBody, SimBody};
use crate::state::NodeShared;
use crate::ws::{is_ws_upgrade, upgrade};

/// Splits `/<prefix>/rest` into the route relevant part: returns the path itself when it starts
/// with one of the known roots, or the path without its first segment when that does.
fn route_of(path: &str) -> &str {
    const ROOTS: [&str; 3] = ["/_sim/", "/engine/", "/app/"];
    let is_root = |p: &str| ROOTS.iter().any(|r| p.starts_with(r)) || p == "/engine/healthcheck";
    if is_root(path) {
        return path;
    }
    if let Some(rest) = path.strip_prefix('/') {
        if let Some(i) = rest.find('/') {
            let tail = &rest[i..];
            if is_root(tail) {
                return tail;
            }
        }
    }
    path
}

/// Values of every cookie named `name` in all `Cookie` headers.
pub fn cookie_values<'a>(headers: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for h in headers.get_all(header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for pair in s.split(';') {
            let pair = pair.trim();
            if let Some((k, v)) = pair.split_once('=') {
                if k.trim() == name {
                    out.push(v.trim().trim_matches('"'));
                }
            }
        }
    }
    out
}

enum SessionCheck {
    Valid,
    Issued(HeaderValue),
    Foreign,
}

fn check_session(shared: &NodeShared, headers: &http::HeaderMap) -> SessionCheck {
    let values = cookie_values(headers, &shared.cookie_name);
    if values.is_empty() {
        let id = uuid::Uuid::new_v4();
        shared.sessions.lock().unwrap().insert(id.as_u128());
        shared.sessions_issued.fetch_add(1, Ordering::Relaxed);
        let cookie = format!(
            "{}={}; Path=/; HttpOnly",
            shared.cookie_name,
            id.hyphenated()
        );
        return match HeaderValue::from_str(&cookie) {
            Ok(v) => SessionCheck::Issued(v),
            Err(_) => SessionCheck::Foreign,
        };
    }
    let sessions = shared.sessions.lock().unwrap();
    let known = values.iter().any(|v| {
        uuid::Uuid::parse_str(v)
            .map(|u| sessions.contains(&u.as_u128()))
            .unwrap_or(false)
    });
    if known {
        SessionCheck::Valid
    } else {
        SessionCheck::Foreign
    }
}

fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k == key {
            v.parse().ok()
        } else {
            None
        }
    })
}

pub(crate) async fn handle(
    shared: &Arc<NodeShared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Response<SimBody> {
    let path = req.uri().path().to_string();
    let route = route_of(&path);
    let route_trim = route.strip_suffix('/').unwrap_or(route);

    // Session-free endpoints.
    if route_trim == "/engine/healthcheck" && req.method() == Method::GET {
        let t = shared.telemetry.lock().unwrap().clone();
        return json_resp(StatusCode::OK, &t.healthcheck_json());
    }
    if route_trim == "/_sim/telemetry" {
        return telemetry_endpoint(shared, req).await;
    }

    let session = check_session(shared, req.headers());
    let set_cookie = match session {
        SessionCheck::Foreign => {
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            return text(StatusCode::UNAUTHORIZED, "unknown session\n");
        }
        SessionCheck::Issued(v) => Some(v),
        SessionCheck::Valid => None,
    };

    if route.starts_with("/app/") && is_ws_upgrade(&req) {
        if set_cookie.is_some() {
            // No session of this node: refuse the upgrade like a QPS does.
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            return text(StatusCode::UNAUTHORIZED, "no session\n");
        }
        return upgrade(shared, req, cancel, tracker);
    }

    let route_trim = route_trim.to_string();
    let mut resp = serve(shared, req, peer, &route_trim).await;
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// `GET` reads, `PUT|POST` patches the engine telemetry.
async fn telemetry_endpoint(shared: &NodeShared, req: Request<Incoming>) -> Response<SimBody> {
    match *req.method() {
        Method::GET => {
            let t = shared.telemetry.lock().unwrap().clone();
            json_resp(StatusCode::OK, &serde_json::to_value(t).unwrap_or_default())
        }
        Method::PUT | Method::POST => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "bad body\n"),
            };
            let patch: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let mut guard = shared.telemetry.lock().unwrap();
            match guard.patched(&patch) {
                Ok(t) => {
                    *guard = t.clone();
                    json_resp(StatusCode::OK, &serde_json::to_value(t).unwrap_or_default())
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// A request with a session of this node: the test endpoints, or `200 ok <name>`.
pub(crate) async fn serve(
    shared: &NodeShared,
    req: Request<Incoming>,
    peer: SocketAddr,
    route: &str,
) -> Response<SimBody> {
    match (req.method(), route) {
        (_, "/_sim/headers") => headers_echo(&req, peer),
        (&Method::POST | &Method::PUT, "/_sim/upload") => upload(req).await,
        (&Method::GET, "/_sim/download") => {
            let n = query_u64(req.uri().query(), "bytes").unwrap_or(0);
            let mut r = Response::new(PatternBody::new(n).boxed());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (_, "/_sim/slow") => {
            let ms = query_u64(req.uri().query(), "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("ok {}\n", shared.name))
        }
        _ => text(StatusCode::OK, format!("ok {}\n", shared.name)),
    }
}

/// The request's headers as JSON (`name -> [values]`) plus `_peer`.
fn headers_echo(req: &Request<Incoming>, peer: SocketAddr) -> Response<SimBody> {
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        let v = serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into());
        if let serde_json::Value::Array(a) = map
            .entry(name.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()))
        {
            a.push(v);
        }
    }
    map.insert("_peer".into(), serde_json::Value::String(peer.to_string()));
    json_resp(StatusCode::OK, &serde_json::Value::Object(map))
}

/// Reads the whole body and answers its length and SHA-256.
async fn upload(req: Request<Incoming>) -> Response<SimBody> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                    hasher.update(d);
                }
            }
            Err(_) => return text(StatusCode::BAD_REQUEST, "body error\n"),
        }
    }
    let digest = hex(&hasher.finalize());
    json_resp(
        StatusCode::OK,
        &serde_json::json!({ "bytes": n, "sha256": digest }),
    )
}
