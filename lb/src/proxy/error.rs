//! The one place where a failed forward becomes a status code.
//!
//! | error | status | meaning |
//! |---|---|---|
//! | [`ProxyError::NoNode`] | 503 | no node can take the request (all down, in maintenance or draining) |
//! | [`ProxyError::Connect`] | 502 | the node could not be reached (and no other could take the request) |
//! | [`ProxyError::Upstream`] | 502 | the node failed mid-request (reset, garbage, early close) |
//! | [`ProxyError::Timeout`] | 504 | the node sent no response headers within `upstream.response_timeout` |
//! | [`ProxyError::HeadersTooLarge`] | 431 | the request head is larger than `listener.max_header_bytes` |
//! | [`ProxyError::BodyTooLarge`] | 413 | `Content-Length` above `listener.max_body_bytes` (a chunked body over it is cut: the node sees an aborted request) |
//! | [`ProxyError::MissingHost`] | 400 | no `Host` while `listener.allowed_hosts` is set |
//! | [`ProxyError::HostNotAllowed`] | 421 | the host is not in `listener.allowed_hosts` |
//! | [`ProxyError::OriginNotAllowed`] | 403 | a WebSocket upgrade whose `Origin` is missing or not allowed |
//!
//! The listener answers 503 itself when `listener.max_connections` is reached.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::RespBody;

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
        }
    }

    /// The response the client gets; also logs the cause and counts it.
    pub fn response(&self) -> Response<RespBody> {
        tracing::warn!(status = self.status().as_u16(), "{self}");
        metrics::counter!("lb_proxy_errors_total", "kind" => self.kind()).increment(1);
        let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(
            self.body().as_bytes(),
        ))));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, ProxyError::HeadersTooLarge | ProxyError::BodyTooLarge) {
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
        }
    }
}
