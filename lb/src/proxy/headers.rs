//! Header rewriting between the client and a node (RFC 9110 §7.6.1, RFC 7239's de facto
//! `X-Forwarded-*` cousins).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use hyper::body::Incoming;

use super::ConnInfo;
use crate::snapshot::Snapshot;
use crate::sticky::cookie;
use crate::upstream::pool::UpBody;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");
static WEBSOCKET_VALUE: HeaderValue = HeaderValue::from_static("websocket");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// True for a request that asks to switch to WebSocket (`Connection: upgrade` and `Upgrade:
/// websocket`). No other protocol is spliced: an `Upgrade: h2c` (a request-smuggling vector
/// through proxies that tunnel whatever a node accepts) is stripped like any hop-by-hop header
/// and the request goes on as plain HTTP/1.1.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`, `TE`,
/// `Trailer`, `Transfer-Encoding`, `Upgrade` and `Proxy-*`. With `keep_upgrade` the `Upgrade`
/// header stays and `Connection: upgrade` is set, for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One look at the names first: most messages carry none of these, and a removal costs a
    // hash and a probe each.
    if !headers.keys().any(is_hop_by_hop) {
        if keep_upgrade {
            headers.insert(header::CONNECTION, UPGRADE_VALUE.clone());
            headers.insert(header::UPGRADE, WEBSOCKET_VALUE.clone());
        }
        return;
    }
    if let Some(conn) = headers.get(header::CONNECTION) {
        // Names other than the usual tokens are rare; collect them only when present.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"upgrade")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t) {
                    named.push(n);
                }
            }
        }
        let _ = conn;
        for n in named {
            if keep_upgrade && n == header::UPGRADE {
                continue;
            }
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for n in names {
            headers.remove(n);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, UPGRADE_VALUE.clone());
        // Only the WebSocket token goes on (`is_upgrade` checked it is there).
        headers.insert(header::UPGRADE, WEBSOCKET_VALUE.clone());
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// A header that never crosses a hop by name (`Connection` also names others).
fn is_hop_by_hop(k: &HeaderName) -> bool {
    *k == header::CONNECTION
        || *k == KEEP_ALIVE
        || *k == header::TE
        || *k == header::TRAILER
        || *k == header::TRANSFER_ENCODING
        || *k == header::UPGRADE
        || k.as_str().starts_with("proxy-")
}

/// Appends `value` to the comma-separated header `name` (one header line), or sets it.
pub fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(v) => {
            v.insert(value.clone());
        }
        header::Entry::Occupied(mut o) => {
            let mut joined = Vec::new();
            for v in o.iter() {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => {
                    o.insert(v);
                }
                Err(_) => {
                    o.insert(value.clone());
                }
            }
        }
    }
}

static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The rewrite step: the request as its node gets it. The route cookie is stripped (when the
/// request had one), hop-by-hop headers go (but a protocol switch), what an untrusted client
/// claims about earlier hops is dropped, `X-Forwarded-*` are appended, the target becomes
/// origin-form (the `Host` header stays the client's) and the body is bounded by
/// `listener.max_body_bytes`.
pub fn rewrite(
    snap: &Snapshot,
    conn: &ConnInfo,
    had_route_cookie: bool,
    upgrade: bool,
    req: Request<Incoming>,
) -> Request<UpBody> {
    let (mut parts, body) = req.into_parts();
    if had_route_cookie {
        strip_route_cookie(&snap.route_cookie, &mut parts.headers);
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    strip_listener_headers(snap, conn, &mut parts.headers);
    if !conn.trusted && parts.headers.keys().any(is_claim) {
        parts.headers.remove(&X_FORWARDED_FOR);
        parts.headers.remove(&X_FORWARDED_PROTO);
        parts.headers.remove(&X_FORWARDED_HOST);
        parts.headers.remove(header::FORWARDED);
        parts.headers.remove(&X_REAL_IP);
    }
    // Room for the three at once: the map grows (rehashes) once at most.
    parts.headers.reserve(3);
    append_list(&mut parts.headers, &X_FORWARDED_FOR, &conn.peer_ip);
    let proto = if conn.tls { &PROTO_HTTPS } else { &PROTO_HTTP };
    append_list(&mut parts.headers, &X_FORWARDED_PROTO, proto);
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        append_list(&mut parts.headers, &X_FORWARDED_HOST, &host);
    }
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    let max_body = snap.config.listener.max_body_bytes;
    let limit = if max_body > 0 {
        max_body as usize
    } else {
        usize::MAX
    };
    let body = UpBody::client(body, limit, snap.config.listener.body_timeout);
    Request::from_parts(parts, body)
}

/// What an untrusted client may not claim about earlier hops (its address above all).
fn is_claim(k: &HeaderName) -> bool {
    *k == X_FORWARDED_FOR
        || *k == X_FORWARDED_PROTO
        || *k == X_FORWARDED_HOST
        || *k == header::FORWARDED
        || *k == X_REAL_IP
}

/// Header authentication hygiene: the listener's `strip_headers` go from every request, its
/// `trusted_headers` from every request of a client outside `trusted_proxies`.
fn strip_listener_headers(snap: &Snapshot, conn: &ConnInfo, headers: &mut HeaderMap) {
    let l = snap.config.listener_at(conn.listener);
    let rest = l.role == lb_config::ListenerRole::RestApi;
    let named = |k: &HeaderName| {
        l.strip_headers.contains(k)
            || (!conn.trusted && l.trusted_headers.contains(k))
            || (rest && *k == super::rest::X_LB_NODE)
    };
    // Looked for first: a removal costs a hash and a probe, and most requests carry none.
    if !headers.keys().any(named) {
        return;
    }
    for h in &l.strip_headers {
        headers.remove(h);
    }
    if !conn.trusted {
        for h in &l.trusted_headers {
            headers.remove(h);
        }
    }
    if rest {
        headers.remove(&super::rest::X_LB_NODE);
    }
}

/// Removes the route cookie (named `route_cookie`) from the `Cookie` headers: the node never
/// sees it. Only a header line that carries it changes (that pair goes, the rest stays byte for
/// byte); a line left empty goes. One lookup of the header; one allocation per changed line.
pub fn strip_route_cookie(route_cookie: &[u8], headers: &mut HeaderMap) {
    let header::Entry::Occupied(mut entry) = headers.entry(header::COOKIE) else {
        return;
    };
    let mut kept = Vec::new();
    let mut values = entry.iter();
    let first = values.next().map(|v| v.as_bytes());
    if values.next().is_none() {
        // The usual case (one line): replaced where it is, or removed when nothing is left.
        let Some(first) = first else { return };
        if !cookie::without_into(first, route_cookie, &mut kept) {
            return;
        }
        if kept.is_empty() {
            entry.remove();
        } else if let Ok(v) = HeaderValue::from_bytes(&kept) {
            // The bytes of a valid value, fewer of them: still valid.
            entry.insert(v);
        }
        return;
    }
    let mut changed = false;
    let mut lines: Vec<HeaderValue> = Vec::new();
    for v in entry.iter() {
        if !cookie::without_into(v.as_bytes(), route_cookie, &mut kept) {
            lines.push(v.clone());
            continue;
        }
        changed = true;
        if !kept.is_empty() {
            if let Ok(v) = HeaderValue::from_bytes(&kept) {
                lines.push(v);
            }
        }
    }
    if !changed {
        return;
    }
    let mut lines = lines.into_iter();
    match lines.next() {
        Some(v) => {
            entry.insert(v);
            for v in lines {
                entry.append(v);
            }
        }
        None => {
            entry.remove();
        }
    }
}

/// The host a request is for, without the port, from `Host` or the absolute URI.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let h = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    Some(strip_port(h))
}

/// A host without its port (and an IPv6 literal without its brackets).
pub fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
            ("host", "lb.example.com"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-keep", "host"]);
    }

    #[test]
    fn upgrade_is_kept_for_a_switch() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("sec-websocket-protocol", "qix"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert_eq!(h["sec-websocket-protocol"], "qix");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn only_the_route_cookie_goes() {
        let cookies = |h: &HeaderMap| -> Vec<String> {
            h.get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        let mut h = map(&[("cookie", "a=1; QLB_ROUTE=qps1.x; b=2"), ("host", "h")]);
        strip_route_cookie(b"QLB_ROUTE", &mut h);
        assert_eq!(cookies(&h), vec!["a=1; b=2"]);
        let mut h = map(&[("cookie", "QLB_ROUTE=qps1.x")]);
        strip_route_cookie(b"QLB_ROUTE", &mut h);
        assert!(h.get(header::COOKIE).is_none());
        let mut h = map(&[
            ("cookie", "a=1"),
            ("cookie", " QLB_ROUTE=r; c=3"),
            ("cookie", "d=4"),
        ]);
        strip_route_cookie(b"QLB_ROUTE", &mut h);
        assert_eq!(cookies(&h), vec!["a=1", "c=3", "d=4"]);
        let mut h = map(&[("cookie", "QLB_ROUTE=r"), ("cookie", "QLB_ROUTE=s")]);
        strip_route_cookie(b"QLB_ROUTE", &mut h);
        assert!(h.get(header::COOKIE).is_none());
        let mut h = map(&[("cookie", "a=1; XQLB_ROUTE=r"), ("cookie", "b=2")]);
        strip_route_cookie(b"QLB_ROUTE", &mut h);
        assert_eq!(cookies(&h), vec!["a=1; XQLB_ROUTE=r", "b=2"]);
        let mut h = map(&[("host", "h")]);
        strip_route_cookie(b"QLB_ROUTE", &mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let ip = HeaderValue::from_static("127.0.0.1");
        let mut h = map(&[("x-forwarded-for", "203.0.113.7")]);
        append_list(&mut h, &X_FORWARDED_FOR, &ip);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        let mut h = map(&[("x-forwarded-for", "a"), ("x-forwarded-for", "b")]);
        append_list(&mut h, &X_FORWARDED_FOR, &ip);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "a, b, 127.0.0.1");
        let mut h = HeaderMap::new();
        append_list(&mut h, &X_FORWARDED_FOR, &ip);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}
