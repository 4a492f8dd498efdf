//! The HTTP endpoint: `POST {base}/loadbalancing/prioritize`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::placement::{engine_key, PlacementLedger};
use crate::rank::{rank, EngineView, RankPolicy};
use crate::types::{PrioritizeRequest, PrioritizeResponse};
use crate::uri::parse_engine_uri;

/// Where the router gets live engine state from. Implemented by the balancer's telemetry;
/// [`StaticEngineSource`] is a fixed implementation for tests and tools.
pub trait EngineSource: Send + Sync + 'static {
    /// The current view of the engine at `host` (lowercased) and `port`, or `None` when this
    /// engine is not known (it is then ranked as [`EngineState::Unknown`](crate::EngineState)).
    fn view(&self, host: &str, port: u16) -> Option<EngineView>;
    /// The ranking policy in force.
    fn policy(&self) -> Arc<RankPolicy>;
    /// A rotation counter for tie breaking: return a value that advances on every call.
    fn next_rotation(&self) -> usize;
}

/// Options of [`router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterOptions {
    /// Largest accepted request body in bytes; larger ones get 413. Default 64 KiB.
    pub body_limit: usize,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
        }
    }
}

/// A fixed [`EngineSource`]: a map from `(host, port)` to views, a policy and a counter.
#[derive(Debug, Default)]
pub struct StaticEngineSource {
    engines: std::collections::HashMap<(String, u16), EngineView>,
    policy: Arc<RankPolicy>,
    rotation: AtomicUsize,
}

impl StaticEngineSource {
    /// An empty source with the given policy.
    pub fn new(policy: RankPolicy) -> Self {
        Self {
            engines: Default::default(),
            policy: Arc::new(policy),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Add (or replace) the view of the engine at `host` (any case) and `port`.
    pub fn insert(&mut self, host: &str, port: u16, view: EngineView) {
        self.engines.insert((host.to_lowercase(), port), view);
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, host: &str, port: u16, view: EngineView) -> Self {
        self.insert(host, port, view);
        self
    }
}

impl EngineSource for StaticEngineSource {
    fn view(&self, host: &str, port: u16) -> Option<EngineView> {
        // Avoid allocating a key: linear scan is fine for the handful of engines of a site,
        // and a map lookup needs an owned tuple.
        self.engines
            .iter()
            .find(|((h, p), _)| *p == port && h == host)
            .map(|(_, v)| v.clone())
    }

    fn policy(&self) -> Arc<RankPolicy> {
        self.policy.clone()
    }

    fn next_rotation(&self) -> usize {
        self.rotation.fetch_add(1, Ordering::Relaxed)
    }
}

/// Order the engines of `req` for its app: parsable entries ranked by [`rank`] (entries without
/// telemetry after the known healthy ones), then unparsable entries in their original order.
/// Every offered entry comes back exactly once per occurrence; `AppName` is returned unchanged.
pub fn prioritize(source: &dyn EngineSource, req: PrioritizeRequest) -> PrioritizeResponse {
    prioritize_with(source, None, req)
}

/// [`prioritize`] with recent placements: the engines are ranked by
/// [`PlacementLedger::place`] (keys `host:port`, host lowercased), which counts the sessions
/// this ledger placed recently and picks the first engine at random among close ones in
/// proportion to headroom, then records the new session on it.
pub fn prioritize_placed(
    source: &dyn EngineSource,
    ledger: &PlacementLedger,
    req: PrioritizeRequest,
) -> PrioritizeResponse {
    prioritize_with(source, Some(ledger), req)
}

fn prioritize_with(
    source: &dyn EngineSource,
    ledger: Option<&PlacementLedger>,
    req: PrioritizeRequest,
) -> PrioritizeResponse {
    let PrioritizeRequest {
        app_name,
        qlik_sense_engines,
    } = req;
    let started = Instant::now();
    let mut parsed: Vec<usize> = Vec::with_capacity(qlik_sense_engines.len());
    let mut views: Vec<EngineView> = Vec::with_capacity(qlik_sense_engines.len());
    let mut unparsed: Vec<usize> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for (i, entry) in qlik_sense_engines.iter().enumerate() {
        match parse_engine_uri(entry) {
            Some(addr) => {
                parsed.push(i);
                if ledger.is_some() {
                    keys.push(engine_key(&addr.host, addr.port));
                }
                views.push(
                    source
                        .view(&addr.host, addr.port)
                        .unwrap_or_else(EngineView::unknown),
                );
            }
            None => unparsed.push(i),
        }
    }
    if let Some(note) = unparsed_note(&qlik_sense_engines, &unparsed) {
        // One line per request, whatever the body holds.
        tracing::warn!("{note}");
    }
    let policy = source.policy();
    let app = (!app_name.is_empty()).then_some(app_name.as_str());
    let order = match ledger {
        Some(ledger) => {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            ledger.place(
                &keys,
                &views,
                app,
                &policy,
                Some(source.next_rotation()),
                Instant::now(),
            )
        }
        None => rank(&views, app, &policy, source.next_rotation()),
    };
    metrics::histogram!("lb_module_rank_duration_seconds").record(started.elapsed().as_secs_f64());

    let mut slots: Vec<Option<String>> = qlik_sense_engines.into_iter().map(Some).collect();
    let mut engines = Vec::with_capacity(slots.len());
    for i in order
        .into_iter()
        .filter_map(|k| parsed.get(k).copied())
        .chain(unparsed)
    {
        if let Some(e) = slots.get_mut(i).and_then(Option::take) {
            engines.push(e);
        }
    }
    // Defensive: anything not placed above (cannot happen with a correct permutation) is
    // appended rather than dropped.
    engines.extend(slots.into_iter().flatten());
    PrioritizeResponse {
        app_name,
        qlik_sense_engines: engines,
    }
}

/// The user the QPS says it acts for, from `X-Qlik-User: UserDirectory=<dir>; UserId=<id>`
/// (values URL-encoded). Used for logs only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QlikUser {
    /// `UserDirectory`, decoded.
    pub directory: Option<String>,
    /// `UserId`, decoded.
    pub id: Option<String>,
}

/// Parse an `X-Qlik-User` header value. Unknown keys and malformed parts are ignored.
pub fn parse_qlik_user(value: &str) -> QlikUser {
    let mut user = QlikUser::default();
    for part in value.split(';') {
        let Some((key, val)) = part.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let val = percent_decode(val.trim());
        if key.eq_ignore_ascii_case("UserDirectory") {
            user.directory = Some(val);
        } else if key.eq_ignore_ascii_case("UserId") {
            user.id = Some(val);
        }
    }
    user
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Shared {
    source: Arc<dyn EngineSource>,
    ledger: Arc<PlacementLedger>,
    opts: RouterOptions,
    path: String,
}

/// The route path for a base path: `""`, `"/"` give `/loadbalancing/prioritize`; `"lb"`,
/// `"/lb"`, `"/lb/"` give `/lb/loadbalancing/prioritize`.
pub fn prioritize_path(base_path: &str) -> String {
    let base = base_path.trim().trim_matches('/');
    if base.is_empty() {
        "/loadbalancing/prioritize".to_owned()
    } else {
        format!("/{base}/loadbalancing/prioritize")
    }
}

/// An axum router serving `POST {base_path}/loadbalancing/prioritize`.
///
/// * 200 with the reordered engines (an empty list gives an empty list);
/// * 400 `{"error": "..."}` for a body that is not the expected JSON;
/// * 413 `{"error": "..."}` for a body over `opts.body_limit`;
/// * 405 for another method, 404 for another path.
///
/// The path also matches with a trailing slash or doubled slashes (a base URI configured as
/// `https://lb:8187/` may yield `//loadbalancing/prioritize`).
///
/// Engines are ranked with a [`PlacementLedger`] of its own (see [`prioritize_placed`]); use
/// [`router_with_ledger`] to share one with other placement decisions.
pub fn router(source: Arc<dyn EngineSource>, base_path: &str, opts: RouterOptions) -> Router {
    router_with_ledger(source, Arc::new(PlacementLedger::new()), base_path, opts)
}

/// [`router`] with a given [`PlacementLedger`], e.g. one the balancer also uses for its own
/// least-loaded node selection.
pub fn router_with_ledger(
    source: Arc<dyn EngineSource>,
    ledger: Arc<PlacementLedger>,
    base_path: &str,
    opts: RouterOptions,
) -> Router {
    let path = prioritize_path(base_path);
    let shared = Arc::new(Shared {
        source,
        ledger,
        opts,
        path: path.clone(),
    });
    Router::new()
        .route(&path, post(handle))
        .fallback(fallback)
        .with_state(shared)
}

async fn fallback(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if normalise_path(req.uri().path()) != shared.path {
        return StatusCode::NOT_FOUND.into_response();
    }
    if req.method() != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("POST"))],
        )
            .into_response();
    }
    handle(State(shared), req).await
}

fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    json_response(status, body.to_string())
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn count(result: &'static str) {
    metrics::counter!("lb_module_requests_total", "result" => result).increment(1);
}

fn too_large(limit: usize) -> Response {
    count("too_large");
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {limit} bytes"),
    )
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let limit = shared.opts.body_limit;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(limit),
        Err(e) => {
            count("bad_request");
            return error(
                StatusCode::BAD_REQUEST,
                format!("could not read request body: {e}"),
            );
        }
    };
    let request: PrioritizeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            count("bad_request");
            tracing::debug!(error = %e, "prioritize: malformed request");
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed prioritize request: {e}"),
            );
        }
    };
    let user = parts
        .headers
        .get("x-qlik-user")
        .and_then(|v| v.to_str().ok())
        .map(parse_qlik_user)
        .unwrap_or_default();
    let offered = request.qlik_sense_engines.len();
    let response = prioritize_placed(shared.source.as_ref(), &shared.ledger, request);
    tracing::debug!(
        app = %response.app_name,
        offered,
        first = response.qlik_sense_engines.first().map(String::as_str).unwrap_or(""),
        user_directory = user.directory.as_deref().unwrap_or(""),
        user_id = user.id.as_deref().unwrap_or(""),
        "prioritize"
    );
    match serde_json::to_string(&response) {
        Ok(body) => {
            count("ok");
            json_response(StatusCode::OK, body)
        }
        Err(e) => {
            // Strings always serialize; kept total so no input can panic the handler.
            count("bad_request");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Longest part of an unparsable engine entry a log line shows.
const NOTE_ENTRY_CHARS: usize = 64;

/// The one log line for a request's unparsable engine entries: how many, and the first one
/// escaped (no newline or control character reaches the log) and cut to
/// [`NOTE_ENTRY_CHARS`]. `None` when every entry parsed.
pub fn unparsed_note(entries: &[String], unparsed: &[usize]) -> Option<String> {
    let first = entries.get(*unparsed.first()?)?;
    let cut: String = first.chars().take(NOTE_ENTRY_CHARS).collect();
    let more = if first.chars().count() > NOTE_ENTRY_CHARS {
        "..."
    } else {
        ""
    };
    Some(format!(
        "{} engine entr{} not host:port or a URI, kept last; first: {}{more}",
        unparsed.len(),
        if unparsed.len() == 1 {
            "y is"
        } else {
            "ies are"
        },
        cut.escape_debug()
    ))
}

#[cfg(test)]
mod unparsed_note_tests {
    use super::unparsed_note;

    #[test]
    fn one_escaped_truncated_line() {
        assert_eq!(unparsed_note(&["a:1".into()], &[]), None);
        let evil = format!("x\nFAKE LOG LINE\r\n{}", "y".repeat(70_000));
        let entries = vec!["ok:1".to_string(), evil, "z\n".into()];
        let note = unparsed_note(&entries, &[1, 2]).unwrap();
        assert!(!note.contains('\n') && !note.contains('\r'), "{note}");
        assert!(note.starts_with("2 engine entries are not"), "{note}");
        assert!(note.contains("x\\nFAKE LOG LINE\\r\\n"), "{note}");
        assert!(note.len() < 200, "{} bytes", note.len());
        assert!(note.ends_with("..."));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qlik_user() {
        let u = parse_qlik_user("UserDirectory=CORP; UserId=jane%20doe");
        assert_eq!(u.directory.as_deref(), Some("CORP"));
        assert_eq!(u.id.as_deref(), Some("jane doe"));
        let u = parse_qlik_user("userid=a%C3%A9%zz%4;junk;=x");
        assert_eq!(u.id.as_deref(), Some("aé%zz%4"));
        assert_eq!(u.directory, None);
        assert_eq!(parse_qlik_user(""), QlikUser::default());
        assert_eq!(parse_qlik_user("UserId=%").id.as_deref(), Some("%"));
        assert_eq!(parse_qlik_user("UserId=%4").id.as_deref(), Some("%4"));
        assert_eq!(
            parse_qlik_user("UserId=%ff").id.as_deref(),
            Some("\u{fffd}")
        );
    }

    #[test]
    fn paths() {
        for base in ["", "/", "  "] {
            assert_eq!(prioritize_path(base), "/loadbalancing/prioritize");
        }
        for base in ["lb", "/lb", "/lb/", "lb/"] {
            assert_eq!(prioritize_path(base), "/lb/loadbalancing/prioritize");
        }
        assert_eq!(
            normalise_path("//lb//loadbalancing/prioritize/"),
            "/lb/loadbalancing/prioritize"
        );
        assert_eq!(normalise_path(""), "/");
    }
}
