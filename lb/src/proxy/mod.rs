//! Forwarding a request to its node: pick the node (sticky first), rewrite headers, stream both
//! bodies, learn Qlik session cookies from the answer, and splice an upgraded WebSocket.

pub mod error;
pub mod headers;
pub mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::clock;
use crate::runtime::{NodeRt, Runtime, UpBody};
use crate::server::Shared;
use crate::sticky::table::SessionKey;
use crate::sticky::{cookie, route, Decision};
use crate::upstream::pool::{PooledBody, SendError};
pub use error::ProxyError;

/// Response body to the client: the node's, streamed, or a short one of ours.
pub type RespBody = Either<PooledBody, Full<Bytes>>;

/// What a connection knows about its client, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub peer_ip: HeaderValue,
    pub tls: bool,
    /// The peer is a trusted proxy: its `X-Forwarded-*` headers are kept and appended to.
    pub trusted: bool,
}

static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Where a request's pins point. Read without allocating for GUID session values.
struct Pins {
    /// A learned session: the position of its node (None if no longer configured) and its key.
    learned: Option<(Option<usize>, SessionKey)>,
    route: RoutePin,
}

/// What the route cookie says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RoutePin {
    Absent,
    /// Valid for the node at this position.
    Valid(usize),
    /// Validly signed for a node this configuration no longer has.
    Removed,
    /// Tampered or garbage: no pin.
    Invalid,
}

fn read_pins(rt: &Runtime, shared: &Shared, headers: &http::HeaderMap) -> Pins {
    let mut pins = Pins {
        learned: None,
        route: RoutePin::Absent,
    };
    for v in headers.get_all(header::COOKIE) {
        for (name, value) in cookie::pairs(v.as_bytes()) {
            if *name == *rt.route_cookie {
                if pins.route == RoutePin::Absent {
                    pins.route = route_pin(rt, value);
                }
            } else if pins.learned.is_none() && !value.is_empty() && rt.session_names.matches(name)
            {
                let key = SessionKey::from_value(value);
                if let Some(idx) = shared.sticky.lookup_key(&key) {
                    pins.learned = Some((rt.pos_of_idx(idx), key));
                }
            }
        }
    }
    pins
}

fn route_pin(rt: &Runtime, value: &[u8]) -> RoutePin {
    match route::node_id_of(value).and_then(|id| rt.pos_of_id(id)) {
        Some(pos) if route::matches(&rt.nodes[pos].route_value, value) => RoutePin::Valid(pos),
        Some(_) => RoutePin::Invalid,
        None if rt.route_key.verify(value).is_some() => RoutePin::Removed,
        None => RoutePin::Invalid,
    }
}

/// Removes the route cookie from the `Cookie` headers (the node never sees it).
fn strip_route_cookie(rt: &Runtime, headers: &mut http::HeaderMap) {
    let mut kept: Vec<u8> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        for (name, value) in cookie::pairs(v.as_bytes()) {
            if *name == *rt.route_cookie {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(name);
            kept.push(b'=');
            kept.extend_from_slice(value);
        }
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Serves one request of a client connection.
pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    let rt = shared.runtime.load_full();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let (resp, node, decision) = match forward(&shared, &rt, &conn, req).await {
        Ok((resp, pos, decision)) => (resp, Some(pos), Some(decision)),
        Err(e) => {
            let pos = e.node;
            (e.error.response(), pos, e.decision)
        }
    };
    let status = resp.status();
    let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
    let elapsed = start.elapsed();
    match node {
        Some(pos) => {
            let n = &rt.nodes[pos];
            n.m.requests[class].increment(1);
            n.m.duration.record(elapsed.as_secs_f64());
            if let Some(d) = decision {
                n.m.decisions[d.index()].increment(1);
            }
        }
        None => rt.no_node[class].increment(1),
    }
    if rt.config.server.access_log {
        tracing::info!(
            target: "lb::access",
            client = %conn.peer,
            method = %method,
            path = uri.path(),
            status = status.as_u16(),
            node = node.map_or("-", |p| &rt.nodes[p].id),
            sticky = decision.map_or("-", Decision::as_str),
            ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
    Ok(resp)
}

/// A failed forward, with what was known when it failed.
pub struct Failed {
    pub error: ProxyError,
    pub node: Option<usize>,
    pub decision: Option<Decision>,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Failed {
            error,
            node: None,
            decision: None,
        }
    }
}

/// Decrements a node's in-flight count however the request ends.
struct InFlight<'a>(&'a NodeRt);

impl<'a> InFlight<'a> {
    fn new(n: &'a NodeRt) -> Self {
        n.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn forward(
    shared: &Arc<Shared>,
    rt: &Arc<Runtime>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Result<(Response<RespBody>, usize, Decision), Failed> {
    if head_size(&req) > rt.config.listener.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge.into());
    }
    if !rt.allowed_hosts.is_empty() {
        match request_host(&req) {
            None => return Err(ProxyError::MissingHost.into()),
            Some(h) if !host_allowed(&rt.allowed_hosts, h) => {
                return Err(ProxyError::HostNotAllowed.into())
            }
            Some(_) => {}
        }
    }
    let upgrade = headers::is_upgrade(req.headers());
    if upgrade && !rt.websocket_origins.is_empty() && !origin_allowed(&rt.websocket_origins, &req) {
        return Err(ProxyError::OriginNotAllowed.into());
    }
    let max_body = rt.config.listener.max_body_bytes;
    if max_body > 0 {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(ProxyError::BodyTooLarge.into());
        }
    }
    let now = clock::now_ms();
    let pins = read_pins(rt, shared, req.headers());

    // 1. Learned Qlik session, 2. valid route cookie, 3. a new session.
    let mut had_pin = false;
    let mut chosen: Option<(usize, Decision)> = None;
    if let Some((pos, _)) = &pins.learned {
        had_pin = true;
        if let Some(pos) = *pos {
            if rt.nodes[pos].usable(now) {
                chosen = Some((pos, Decision::Learned));
            }
        }
    }
    let mut route_valid_for: Option<usize> = None;
    match pins.route {
        RoutePin::Valid(pos) => {
            route_valid_for = Some(pos);
            had_pin = true;
            if chosen.is_none() && rt.nodes[pos].usable(now) {
                chosen = Some((pos, Decision::Cookie));
            }
        }
        // A valid pin to a node this configuration no longer has.
        RoutePin::Removed => had_pin = true,
        RoutePin::Absent | RoutePin::Invalid => {}
    }
    let (mut pos, mut decision) = match chosen {
        Some(c) => c,
        None => {
            let d = if had_pin {
                Decision::Redispatch
            } else {
                Decision::New
            };
            match rt.select_new(now, None) {
                Some(p) => (p, d),
                None => return Err(ProxyError::NoNode.into()),
            }
        }
    };
    if decision == Decision::Redispatch {
        redispatched(shared, rt, pos, &pins);
    }

    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if pins.route != RoutePin::Absent {
        strip_route_cookie(rt, &mut parts.headers);
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    if !conn.trusted {
        // What an untrusted client claims about earlier hops is dropped, not passed on.
        parts.headers.remove(&headers::X_FORWARDED_FOR);
        parts.headers.remove(&headers::X_FORWARDED_PROTO);
        parts.headers.remove(&headers::X_FORWARDED_HOST);
    }
    headers::append_list(&mut parts.headers, &headers::X_FORWARDED_FOR, &conn.peer_ip);
    let proto = if conn.tls { &PROTO_HTTPS } else { &PROTO_HTTP };
    headers::append_list(&mut parts.headers, &headers::X_FORWARDED_PROTO, proto);
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        headers::append_list(&mut parts.headers, &headers::X_FORWARDED_HOST, &host);
    }
    // Origin-form request target for the node; the Host header stays the client's.
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    let limit = if max_body > 0 {
        max_body as usize
    } else {
        usize::MAX
    };
    let mut req: Request<UpBody> = Request::from_parts(
        parts,
        Either::Left(http_body_util::Limited::new(body, limit)),
    );
    let timeout = rt.config.upstream.response_timeout;
    let mut tried = 0usize;
    let (resp, upgrade_handle) = loop {
        let node = &rt.nodes[pos];
        if !req.headers().contains_key(header::HOST) {
            if let Ok(h) = HeaderValue::from_str(node.authority.as_str()) {
                req.headers_mut().insert(header::HOST, h);
            }
        }
        let guard = InFlight::new(node);
        node.state.requests_total.fetch_add(1, Ordering::Relaxed);
        let res = tokio::time::timeout(timeout, node.pool.send(req)).await;
        drop(guard);
        match res {
            Ok(Ok(ok)) => {
                if ok.0.status().is_server_error() {
                    passive_error(rt, node);
                } else {
                    node.state.mark_ok();
                }
                break ok;
            }
            Ok(Err(SendError::Connect(e, unsent))) => {
                // Nothing was sent: the same request may go to another node.
                node.state.mark_failed(rt.passive_fail_ms);
                tried += 1;
                let next = if tried < rt.nodes.len() {
                    rt.select_new(clock::now_ms(), Some(pos))
                } else {
                    None
                };
                match next {
                    Some(p) => {
                        tracing::debug!(node = %node.id, "connect failed, redispatching: {e}");
                        req = *unsent;
                        pos = p;
                        decision = Decision::Redispatch;
                        redispatched(shared, rt, pos, &pins);
                        continue;
                    }
                    None => {
                        return Err(Failed {
                            error: ProxyError::Connect(e),
                            node: Some(pos),
                            decision: Some(decision),
                        })
                    }
                }
            }
            Ok(Err(SendError::Failed(e))) => {
                passive_error(rt, node);
                return Err(Failed {
                    error: ProxyError::Upstream(e.to_string()),
                    node: Some(pos),
                    decision: Some(decision),
                });
            }
            Err(_) => {
                passive_error(rt, node);
                return Err(Failed {
                    error: ProxyError::Timeout,
                    node: Some(pos),
                    decision: Some(decision),
                });
            }
        }
    };
    let node = &rt.nodes[pos];
    let mut resp = resp;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let node_upgrade = hyper::upgrade::on(&mut resp);
            crate::server::spawn_tunnel(
                shared,
                rt,
                pos,
                client_upgrade,
                node_upgrade,
                upgrade_handle,
            );
        }
        return Ok((resp.map(Either::Left), pos, decision));
    }

    headers::strip_hop_by_hop(resp.headers_mut(), false);
    if conn.tls {
        if let Some(v) = &rt.hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
    }
    learn(shared, rt, node, resp.headers(), &pins);
    let has_valid_route = route_valid_for == Some(pos);
    if !has_valid_route {
        let v = if conn.tls {
            &node.set_cookie_secure
        } else {
            &node.set_cookie
        };
        resp.headers_mut().append(header::SET_COOKIE, v.clone());
    }
    Ok((resp.map(Either::Left), pos, decision))
}

/// The host a request is for, without the port, from `Host` or the absolute URI.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let h = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    Some(strip_port(h))
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

/// Host allow list: exact names or `*.domain` wildcards (one label or more), case-insensitive.
pub fn host_allowed(list: &[String], host: &str) -> bool {
    list.iter().any(|e| match e.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1
                && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        }
        None => e.eq_ignore_ascii_case(host),
    })
}

/// WebSocket origin allow list, as the Qlik virtual proxy applies it: the `Origin` must name
/// the host the request is for, or an entry of the list (a full origin such as
/// `https://portal.example.com`, or a host name). A missing `Origin` is refused.
pub fn origin_allowed<B>(list: &[String], req: &Request<B>) -> bool {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let host_no_port = strip_port(host);
    if request_host(req).is_some_and(|h| h.eq_ignore_ascii_case(host_no_port)) {
        return true;
    }
    list.iter().any(|e| {
        e.eq_ignore_ascii_case(origin)
            || e.eq_ignore_ascii_case(host)
            || e.eq_ignore_ascii_case(host_no_port)
    })
}

/// The answer of the HTTP-to-HTTPS redirect listener: 308 to the same host and path.
pub fn redirect_to_https<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(strip_port)
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        });
    let mut r = Response::new(Full::new(Bytes::new()));
    match host {
        Some(h) => {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(v) = HeaderValue::from_str(&format!("https://{h}{pq}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
        }
        None => *r.status_mut() = StatusCode::BAD_REQUEST,
    }
    r
}

/// Size of a request head as sent on the wire (request line, headers, line ends).
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Passive health: an error answer counts towards taking the node out.
fn passive_error(rt: &Runtime, node: &NodeRt) {
    let h = &rt.config.health;
    node.state.note_error(
        h.passive_errors,
        h.passive_window.as_millis() as u64,
        rt.passive_fail_ms,
    );
}

/// A pinned request went to another node: count it and move the learned pin.
fn redispatched(shared: &Shared, rt: &Runtime, pos: usize, pins: &Pins) {
    let n = &rt.nodes[pos];
    n.state.redispatches_total.fetch_add(1, Ordering::Relaxed);
    if let Some((_, key)) = &pins.learned {
        shared.sticky.learn_key(key.clone(), n.state.idx);
    }
}

/// Records the Qlik session cookies a node sets, and forgets the ones it removes.
fn learn(shared: &Shared, rt: &Runtime, node: &NodeRt, headers: &http::HeaderMap, pins: &Pins) {
    for v in headers.get_all(header::SET_COOKIE) {
        let Some(c) = cookie::parse_set_cookie(v.as_bytes()) else {
            continue;
        };
        if !rt.session_names.matches(c.name) {
            continue;
        }
        if c.removes {
            if let Some((_, key)) = &pins.learned {
                shared.sticky.forget_key(key);
            }
        } else {
            shared.sticky.learn(c.value, node.state.idx);
            shared.learned_total.increment(1);
        }
    }
}
