//! The one place that maps every status the balancer itself makes (not the nodes').
//!
//! A failed forward ([`ProxyError`]):
//!
//! | error | status | meaning |
//! |---|---|---|
//! | [`ProxyError::NoNode`] | 503 | no node can take the request (all down, in maintenance or draining) |
//! | [`ProxyError::Connect`] | 502 | the node could not be reached (and no other could take the request) |
//! | [`ProxyError::Upstream`] | 502 | the node failed mid-request (reset, garbage, early close) |
//! | [`ProxyError::Timeout`] | 504 | the node sent no response headers within `upstream.response_timeout` of the end of the request body |
//! | [`ProxyError::HeadersTooLarge`] | 431 | the request head is larger than `listener.max_header_bytes` |
//! | [`ProxyError::BodyTooLarge`] | 413 | `Content-Length` above `listener.max_body_bytes` (a chunked body over it is cut: the node sees an aborted request) |
//! | [`ProxyError::MissingHost`] | 400 | no `Host` in HTTP/1.1, or none while `listener.allowed_hosts` is set |
//! | [`ProxyError::HostNotAllowed`] | 421 | the host is not in `listener.allowed_hosts` |
//! | [`ProxyError::OriginNotAllowed`] | 403 | a WebSocket upgrade whose `Origin` is missing or not allowed |
//! | [`ProxyError::BadBody`] | 400 | the request body was malformed (broken chunked encoding) or cut short by the client |
//! | [`ProxyError::BodyTimeout`] | 408 | nothing of the request body arrived for `listener.body_timeout` |
//! | [`ProxyError::BadRequest`] | 400 | a malformed head: two `Host` headers |
//!
//! Before HTTP, on a connection the proxy listener refuses ([`Refusal`], raw bytes written
//! without reading the request): 503 at `listener.max_connections`, 429 at
//! `listener.max_connections_per_client`. An HTTPS listener closes such a connection instead
//! (plain text would be garbage to a TLS handshake).
//!
//! The HTTP-to-HTTPS redirect listener ([`redirect_to_https`]): 308 to the same host and path,
//! 400 without a usable `Host`.
//!
//! The admin API ([`AdminError`] and the constants below): 401 without the right token, 403 for
//! a cross-site request (a `Host` not the admin listener's, a foreign `Origin` or
//! `Sec-Fetch-Site`, a form content type on a POST), 404 for an unknown route or node, 400 for
//! a bad query parameter, 422 for a refused reload, 503 from `/ready` while not ready.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no node available")]
    NoNode,
    #[error("node unreachable: {0}")]
    Connect(String),
    #[error("node failed: {0}")]
    Upstream(String),
    #[error("node timed out")]
    Timeout,
    #[error("request head larger than listener.max_header_bytes")]
    HeadersTooLarge,
    #[error("request body larger than listener.max_body_bytes")]
    BodyTooLarge,
    #[error("request without a Host header")]
    MissingHost,
    #[error("host not in listener.allowed_hosts")]
    HostNotAllowed,
    #[error("WebSocket Origin missing or not in listener.websocket_origins")]
    OriginNotAllowed,
    #[error("request body malformed or cut short by the client")]
    BadBody,
    #[error("request body stalled longer than listener.body_timeout")]
    BodyTimeout,
    #[error("malformed request head")]
    BadRequest(&'static str),
}

impl From<crate::upstream::request_body::ClientFault> for ProxyError {
    fn from(f: crate::upstream::request_body::ClientFault) -> Self {
        use crate::upstream::request_body::ClientFault;
        match f {
            ClientFault::Broken => ProxyError::BadBody,
            ClientFault::TimedOut => ProxyError::BodyTimeout,
            ClientFault::TooLarge => ProxyError::BodyTooLarge,
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoNode => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::MissingHost => StatusCode::BAD_REQUEST,
            ProxyError::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::BadBody | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn body(&self) -> &'static str {
        match self {
            ProxyError::NoNode => "503 Service Unavailable: no Qlik node available\n",
            ProxyError::Connect(_) | ProxyError::Upstream(_) => {
                "502 Bad Gateway: the Qlik node failed\n"
            }
            ProxyError::Timeout => "504 Gateway Timeout: the Qlik node did not answer in time\n",
            ProxyError::HeadersTooLarge => "431 Request Header Fields Too Large\n",
            ProxyError::BodyTooLarge => "413 Content Too Large\n",
            ProxyError::MissingHost => "400 Bad Request: no Host header\n",
            ProxyError::HostNotAllowed => "421 Misdirected Request: this host is not served here\n",
            ProxyError::OriginNotAllowed => "403 Forbidden: WebSocket origin not allowed\n",
            ProxyError::BadBody => "400 Bad Request: malformed or incomplete request body\n",
            ProxyError::BodyTimeout => "408 Request Timeout: the request body stalled\n",
            ProxyError::BadRequest(why) => why,
        }
    }

    /// The response the client gets; also logs the cause and counts it.
    pub fn response(&self) -> Response<Full<Bytes>> {
        // A client's mistake is routine (scanners, broken clients): only the balancer's and the
        // nodes' failures are warnings.
        if self.status().is_server_error() {
            tracing::warn!(status = self.status().as_u16(), "{self}");
        } else {
            tracing::debug!(status = self.status().as_u16(), "{self}");
        }
        metrics::counter!("lb_proxy_errors_total", "kind" => self.kind()).increment(1);
        let mut r = Response::new(Full::new(Bytes::from_static(self.body().as_bytes())));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(
            self,
            ProxyError::HeadersTooLarge
                | ProxyError::BodyTooLarge
                | ProxyError::BadBody
                | ProxyError::BodyTimeout
                | ProxyError::BadRequest(_)
        ) {
            // The rest of what the client sent cannot be trusted to frame a next request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoNode => "no_node",
            ProxyError::Connect(_) => "connect",
            ProxyError::Upstream(_) => "upstream",
            ProxyError::Timeout => "timeout",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::MissingHost => "missing_host",
            ProxyError::HostNotAllowed => "host_not_allowed",
            ProxyError::OriginNotAllowed => "origin_not_allowed",
            ProxyError::BadBody => "bad_body",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::BadRequest(_) => "bad_request",
        }
    }
}

/// A connection the proxy listener refuses before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `listener.max_connections` reached: 503.
    Busy,
    /// `listener.max_connections_per_client` reached for the client address: 429.
    TooManyFromClient,
}

impl Refusal {
    /// The whole answer, as written on the socket.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Refusal::Busy => {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n\
                Connection: close\r\n\r\n503 Service Unavailable: too busy\n"
            }
            Refusal::TooManyFromClient => {
                b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 51\r\n\
                Connection: close\r\n\r\n429 Too Many Requests: too many connections from you\n"
            }
        }
    }

    /// The `reason` label of `lb_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Busy => "max_connections",
            Refusal::TooManyFromClient => "max_connections_per_client",
        }
    }
}

/// The answer of the HTTP-to-HTTPS redirect listener for a request to `host` (without its
/// port; `None` when the request has none): 308 to the same host and path, else 400.
pub fn redirect_to_https(host: Option<&str>, path_and_query: &str) -> Response<Full<Bytes>> {
    let host = host.filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    match host {
        Some(h) => {
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(v) = HeaderValue::from_str(&format!("https://{h}{path_and_query}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
        }
        None => *r.status_mut() = StatusCode::BAD_REQUEST,
    }
    r
}

/// A refused reload through the admin API.
pub const RELOAD_REFUSED: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
/// `/ready` while shutting down or while no node takes new sessions.
pub const NOT_READY: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

/// An error of the admin API itself, answered as JSON `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// 401 with `WWW-Authenticate: Bearer`.
    MissingToken,
    /// 401 with `WWW-Authenticate: Bearer`.
    WrongToken,
    /// 404.
    NoSuchRoute,
    /// 404.
    UnknownNode(String),
    /// 403: a cross-site or DNS-rebinding request (what was wrong with it).
    CrossSite(&'static str),
    /// 400: a query parameter the route cannot take.
    BadRequest(String),
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::MissingToken | AdminError::WrongToken => StatusCode::UNAUTHORIZED,
            AdminError::NoSuchRoute | AdminError::UnknownNode(_) => StatusCode::NOT_FOUND,
            AdminError::CrossSite(_) => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(&self) -> String {
        match self {
            AdminError::MissingToken => {
                "missing bearer token: send Authorization: Bearer <admin.token>".into()
            }
            AdminError::WrongToken => "wrong bearer token".into(),
            AdminError::NoSuchRoute => "no such route".into(),
            AdminError::UnknownNode(id) => format!("no node with id {id:?}"),
            AdminError::CrossSite(why) => format!("cross-site request refused: {why}"),
            AdminError::BadRequest(m) => m.clone(),
        }
    }
}

impl axum::response::IntoResponse for AdminError {
    fn into_response(self) -> axum::response::Response {
        let body = axum::Json(serde_json::json!({ "error": self.message() }));
        let mut r = (self.status(), body).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lb admin\""),
            );
        }
        r
    }
}

#[cfg(test)]
mod log_level_tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::ProxyError;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A scanner's 4xx are not warnings (they would flood the log); the balancer's 5xx are.
    #[test]
    fn client_errors_are_not_warnings() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            for e in [
                ProxyError::MissingHost,
                ProxyError::HostNotAllowed,
                ProxyError::OriginNotAllowed,
                ProxyError::HeadersTooLarge,
                ProxyError::BodyTooLarge,
                ProxyError::BadBody,
                ProxyError::BodyTimeout,
            ] {
                let _ = e.response();
            }
            let _ = ProxyError::NoNode.response();
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("503"), "{text}");
    }
}
