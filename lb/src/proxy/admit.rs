//! The admit step: checks a request before any node is chosen (head size, host allow list,
//! WebSocket origin, declared body size).

use http::{header, Request};

use super::headers::{is_upgrade, request_host, strip_port};
use crate::snapshot::Snapshot;
use crate::status::ProxyError;

/// What admission learned about a request.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// The request asks to switch protocols (a WebSocket).
    pub upgrade: bool,
}

/// Admits a request or says why not.
pub fn admit<B>(snap: &Snapshot, req: &Request<B>) -> Result<Admitted, ProxyError> {
    if head_size(req) > snap.config.listener.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    host_header_sane(req)?;
    if !snap.allowed_hosts.is_empty() {
        match request_host(req) {
            None => return Err(ProxyError::MissingHost),
            Some(h) if !host_allowed(&snap.allowed_hosts, h) => {
                return Err(ProxyError::HostNotAllowed)
            }
            Some(_) => {}
        }
    }
    let upgrade = is_upgrade(req.headers());
    if upgrade
        && !snap.websocket_origins.is_empty()
        && !origin_allowed(&snap.websocket_origins, req)
    {
        return Err(ProxyError::OriginNotAllowed);
    }
    let max_body = snap.config.listener.max_body_bytes;
    if max_body > 0 {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    Ok(Admitted { upgrade })
}

/// RFC 9112 §3.2: exactly one `Host` in an HTTP/1.1 request; two are refused (a node and the
/// balancer could each read another one), and so is HTTP/1.1 without any (an absolute-form
/// target names its host itself).
fn host_header_sane<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest(
            "400 Bad Request: more than one Host header\n",
        )),
        (None, _) if req.version() == http::Version::HTTP_11 && req.uri().authority().is_none() => {
            Err(ProxyError::MissingHost)
        }
        _ => Ok(()),
    }
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
