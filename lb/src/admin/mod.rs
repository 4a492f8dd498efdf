//! The admin API: status, metrics, node drain/ready/maint, reload, readiness and a status page.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the status page (one self-contained HTML page polling `/status`) |
//! | `GET /status` | JSON: version, last reload, connections, sticky table, every node |
//! | `POST /nodes/{id}/drain` | no new sessions for the node; pinned sessions continue |
//! | `POST /nodes/{id}/ready` | the node back in rotation |
//! | `POST /nodes/{id}/maint` | out of rotation: pinned sessions are redispatched too (`?close_websockets=true` also closes its open WebSockets) |
//! | `POST /reload` | re-reads the configuration file: 200 `{"ok":true,"version"}` or 422 `{"ok":false,"error"}` |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /drain` | the whole balancer drains (`?deadline=10m` closes the WebSockets left then); see [`crate::drain`] |
//! | `POST /undrain`, `POST /ready` | the drain ends |
//! | `GET /ready` | 200 `ok` while not shutting down nor draining and some node takes new sessions, else 503 |
//!
//! With `[admin] token` set, every route but the page itself needs `Authorization: Bearer
//! <token>` (compared in constant time); without it the answer is 401 with
//! `WWW-Authenticate: Bearer`. The page holds no data: it asks for the token when `/status`
//! answers 401.
//!
//! Cross-site requests (a foreign `Host` without a token, a foreign `Origin` or `Sec-Fetch-Site`,
//! a form content type on a POST) get 403: see [`same_site`]. The token is the current
//! configuration's, so a reload rotates it.
//!
//! Admin states live in the node's [`NodeState`](crate::upstream::NodeState), so they survive
//! reloads.

pub mod client;
mod collect;
mod drain;
mod process;
mod status;
mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, Request, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::clock;
use crate::listen::Lifetime;
use crate::state::State;
use crate::status::{AdminError, NOT_READY, RELOAD_REFUSED};
use crate::upstream::AdminState;

/// The status page, served at `/`.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// Everything the admin API needs from the running balancer.
pub struct AdminCtx {
    pub(crate) state: Arc<State>,
    /// Re-reads the configuration file; `Err` carries the message with key paths.
    pub reload: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    pub metrics: PrometheusHandle,
    /// From `[admin] token`: required as a Bearer token when set.
    pub token: Option<String>,
}

struct App {
    ctx: AdminCtx,
    /// SHA-256 of the token: compared in constant time whatever the length offered.
    token_digest: Option<[u8; 32]>,
    started: Instant,
}

type AppState = Extract<Arc<App>>;

/// The admin router.
pub fn router(ctx: AdminCtx) -> Router {
    let token_digest = ctx.token.as_deref().filter(|t| !t.is_empty()).map(digest);
    let app = Arc::new(App {
        ctx,
        token_digest,
        started: Instant::now(),
    });
    let protected = Router::new()
        .route("/status", get(get_status))
        .route("/nodes/{id}", get(get_node))
        .route("/nodes/{id}/drain", post(post_drain))
        .route("/nodes/{id}/ready", post(post_ready))
        .route("/nodes/{id}/maint", post(post_maint))
        .route("/reload", post(post_reload))
        .route("/drain", post(drain::post_drain))
        .route("/undrain", post(drain::post_undrain))
        .route("/metrics", get(get_metrics))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    // The page holds no data (it asks for the token before it fetches any), and `/ready` says
    // only yes or no, for a load balancer in front that cannot send a token.
    Router::new()
        .route("/", get(get_page))
        .route("/index.html", get(get_page))
        .route(
            "/ready",
            get(get_ready).merge(
                post(drain::post_undrain)
                    .route_layer(middleware::from_fn_with_state(app.clone(), auth)),
            ),
        )
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), same_site))
        .with_state(app)
}

/// Refuses what a browser sends on behalf of another site (HAProxy and Envoy admin endpoints
/// are not meant for browsers either): a web page the operator opens must not POST to
/// `/nodes/<id>/maint`, and DNS rebinding must not read `/status`.
///
/// - Without `[admin] token`: the `Host` must be an IP literal, `localhost` or a name of
///   `admin.allowed_hosts` (a rebinding attack needs a host name of its own).
/// - Every request but `GET`/`HEAD`: a `Sec-Fetch-Site` other than `same-origin`/`none`, an
///   `Origin` other than the request's own host, or a form content type (what an HTML form or
///   a preflight-free cross-site `fetch` can send) is refused. `curl -X POST` sends none of
///   them and passes.
async fn same_site(Extract(app): AppState, req: Request, next: Next) -> Response {
    match cross_site(&app, &req) {
        Some(why) => {
            tracing::debug!(path = req.uri().path(), "admin request refused: {why}");
            AdminError::CrossSite(why).into_response()
        }
        None => next.run(req).await,
    }
}

fn cross_site(app: &App, req: &Request) -> Option<&'static str> {
    let h = req.headers();
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let snap = app.ctx.state.snapshot.load();
    let admin = snap.config.admin.as_ref();
    if current_token(app).is_none() {
        let Some(host) = host else {
            return Some("no Host header");
        };
        let name = crate::proxy::headers::strip_port(host);
        let allowed = name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || admin.is_some_and(|a| a.allowed_hosts.iter().any(|n| n.eq_ignore_ascii_case(name)));
        if !allowed {
            return Some("Host is not the admin listener's (see admin.allowed_hosts)");
        }
    }
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return None;
    }
    if let Some(site) = h.get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Some("Sec-Fetch-Site is not same-origin");
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .split_once("://")
            .map(|(_, a)| a.trim_end_matches('/'));
        if !authority.is_some_and(|a| host.is_some_and(|h| a.eq_ignore_ascii_case(h))) {
            return Some("Origin is another site");
        }
    }
    if let Some(ct) = h.get(header::CONTENT_TYPE) {
        let media = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if [
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
        ]
        .iter()
        .any(|f| media.eq_ignore_ascii_case(f))
        {
            return Some("a form content type on a state-changing request");
        }
    }
    None
}

/// Serves `router` on `listener` (through the balancer's one accept loop) until `stop`
/// completes, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let life = Lifetime {
        stop: tokio_util::sync::CancellationToken::new(),
        conns: tokio_util::task::TaskTracker::new(),
    };
    let accept = crate::listen::serve_router(listener, "admin", router, None, life.clone());
    tokio::pin!(accept);
    tokio::select! {
        _ = &mut accept => {}
        _ = stop => {
            life.stop.cancel();
            accept.await;
        }
    }
    life.conns.close();
    life.conns.wait().await;
    Ok(())
}

/// The token of the current configuration: a reload rotates it (a router built without an
/// `[admin]` section keeps the token it was given).
fn current_token(app: &App) -> Option<[u8; 32]> {
    let snap = app.ctx.state.snapshot.load();
    match &snap.config.admin {
        Some(a) => a.token.as_deref().filter(|t| !t.is_empty()).map(digest),
        None => app.token_digest,
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

async fn auth(Extract(app): AppState, req: Request, next: Next) -> Response {
    let current = current_token(&app);
    let Some(want) = current.as_ref() else {
        return next.run(req).await;
    };
    let offered = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        });
    match offered {
        None => AdminError::MissingToken.into_response(),
        Some(t) if bool::from(digest(&t).ct_eq(want)) => next.run(req).await,
        Some(_) => AdminError::WrongToken.into_response(),
    }
}

async fn not_found() -> Response {
    AdminError::NoSuchRoute.into_response()
}

async fn get_page() -> Response {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    (h, STATUS_PAGE).into_response()
}

fn no_store<T: IntoResponse>(v: T) -> Response {
    let mut r = v.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn get_status(Extract(app): AppState) -> Response {
    // Counting the sticky table's sessions by node walks the whole table: off the workers.
    let a = app.clone();
    match tokio::task::spawn_blocking(move || {
        status::status(&a.ctx.state, a.started.elapsed().as_secs())
    })
    .await
    {
        Ok(v) => no_store(Json(v)),
        Err(e) => no_store((
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("status failed: {e}") })),
        )),
    }
}

async fn get_node(Extract(app): AppState, Path(id): Path<String>) -> Response {
    let snap = app.ctx.state.snapshot.load();
    let Some(pos) = snap.pos_of_id(&id) else {
        return unknown_node(&id);
    };
    let pinned = users::session_counts(&app.ctx.state);
    no_store(Json(status::node(
        &app.ctx.state,
        snap.node(pos),
        &pinned,
        clock::now_ms(),
    )))
}

fn unknown_node(id: &str) -> Response {
    AdminError::UnknownNode(id.to_string()).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct MaintQuery {
    #[serde(default)]
    close_websockets: bool,
}

async fn post_drain(Extract(app): AppState, Path(id): Path<String>) -> Response {
    set_admin(&app, &id, AdminState::Drain, false)
}

async fn post_ready(Extract(app): AppState, Path(id): Path<String>) -> Response {
    set_admin(&app, &id, AdminState::Ready, false)
}

async fn post_maint(
    Extract(app): AppState,
    Path(id): Path<String>,
    Query(q): Query<MaintQuery>,
) -> Response {
    set_admin(&app, &id, AdminState::Maint, q.close_websockets)
}

fn set_admin(app: &App, id: &str, to: AdminState, close_websockets: bool) -> Response {
    let state = &app.ctx.state;
    let snap = state.snapshot.load();
    let Some(pos) = snap.pos_of_id(id) else {
        return unknown_node(id);
    };
    let n = snap.node(pos);
    let from = n.state.admin_state();
    n.state.set_admin_state(to);
    if from != to {
        tracing::info!(node = %n.id, "admin state {} -> {}", status::admin_str(from), status::admin_str(to));
    }
    metrics::counter!("lb_admin_actions_total", "action" => status::admin_str(to)).increment(1);
    if close_websockets && to == AdminState::Maint {
        tracing::info!(node = %n.id, "closing the node's open WebSockets");
        n.state.close_tunnels();
    }
    let pinned = users::session_counts(state);
    no_store(Json(status::node(state, n, &pinned, clock::now_ms())))
}

async fn post_reload(Extract(app): AppState) -> Response {
    let reload = app.ctx.reload.clone();
    let result = match tokio::task::spawn_blocking(move || reload()).await {
        Ok(r) => r,
        Err(e) => Err(format!("reload task failed: {e}")),
    };
    let version = app.ctx.state.snapshot.load().config.version.clone();
    match result {
        Ok(()) => no_store(Json(json!({ "ok": true, "version": version }))),
        Err(e) => no_store((
            RELOAD_REFUSED,
            Json(json!({ "ok": false, "error": e, "version": version })),
        )),
    }
}

async fn get_metrics(Extract(app): AppState) -> Response {
    // The scrape-time figures walk the sticky table and read /proc: off the workers.
    let a = app.clone();
    let body = tokio::task::spawn_blocking(move || {
        collect::collect(&a.ctx.state);
        crate::durations::render(&a.ctx.metrics)
    })
    .await
    .unwrap_or_else(|e| format!("# collecting the metrics failed: {e}\n"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn get_ready(Extract(app): AppState) -> Response {
    let state = &app.ctx.state;
    let (code, body) = if state.shutdown.is_cancelled() {
        (NOT_READY, "shutting down")
    } else if state.drain.is_draining() {
        (NOT_READY, "draining")
    } else {
        let now = clock::now_ms();
        let snap = state.snapshot.load();
        if snap.nodes.iter().any(|n| n.accepts_new(now)) {
            (StatusCode::OK, "ok")
        } else {
            (NOT_READY, "no node accepts new sessions")
        }
    };
    no_store((
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    ))
}
