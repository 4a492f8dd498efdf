//! What a node answers to one request on its user port: session-free endpoints, the session
//! rules, the test endpoints and the app WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::gate::{gate, Gate};
use crate::auth::{form, saml};
use crate::body::{hex, json_resp, text, PatternBody, SimBody};
use crate::state::{NodeShared, SimSession};
use crate::ws::{is_ws_upgrade, upgrade};

/// Splits `/<prefix>/rest` into the route relevant part: returns the path itself when it starts
/// with one of the known roots, or the path without its first segment when that does.
fn route_of(path: &str) -> &str {
    const ROOTS: [&str; 5] = [
        "/_sim/",
        "/engine/",
        "/app/",
        "/samlauthn/",
        "/internal_forms_authentication/",
    ];
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

    // The sign-in's own pages on the user port.
    if route.starts_with("/samlauthn/") || route == "/samlauthn" {
        return saml::handle_acs(shared, req).await;
    }
    if route.starts_with("/internal_forms_authentication/") {
        return form::handle_form(shared, req).await;
    }

    let ws = route.starts_with("/app/") && is_ws_upgrade(&req);
    let (session, set_cookie) = match gate(shared, &req, ws) {
        Gate::Pass {
            session,
            set_cookie,
        } => (session, set_cookie),
        Gate::Answer(r) => return r,
    };
    if ws {
        return upgrade(shared, req, session.id, cancel, tracker);
    }

    let route_trim = route_trim.to_string();
    let mut resp = serve(shared, req, peer, &route_trim, &session).await;
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
    session: &SimSession,
) -> Response<SimBody> {
    match (req.method(), route) {
        (_, "/_sim/whoami") => json_resp(
            StatusCode::OK,
            &serde_json::json!({
                "node": shared.name,
                "user": session.user.to_string(),
                "userDirectory": session.user.directory,
                "userId": session.user.id,
                "session": session.id,
            }),
        ),
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
