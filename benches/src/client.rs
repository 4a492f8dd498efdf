//! A small, fast client for the load scenarios: one keep-alive HTTP/1.1 connection per virtual
//! user (hyper's `http1::handshake` over a `TcpStream`), a cookie jar, and WebSocket connect.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use lb_sim::NODE_HEADER;

/// A WebSocket over a plain TCP connection.
pub type WsStream = WebSocketStream<TcpStream>;

/// Where the load goes: `http://host[:port][/base/path]`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// `host:port` for the `Host` header.
    pub authority: String,
    /// The resolved address connections go to.
    pub addr: SocketAddr,
    /// Path prefix (without trailing slash, possibly empty) put before every request path.
    pub base_path: String,
}

impl Target {
    /// Parses and resolves `url`. Refuses anything but loopback addresses unless `allow_remote`.
    pub fn parse(url: &str, allow_remote: bool) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("only http:// targets are supported: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("no host in {url}");
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {authority}"))?
            .collect();
        let Some(addr) = addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4())
            .or(addrs.first().copied())
        else {
            bail!("{authority} resolves to no address");
        };
        if !allow_remote && !addrs.iter().all(|a| a.ip().is_loopback()) {
            bail!("refusing non-loopback target {url} (pass --allow-remote to allow it)");
        }
        Ok(Target {
            url: url.to_string(),
            authority: authority.to_string(),
            addr,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `base_path + path`.
    pub fn path(&self, path: &str) -> String {
        format!("{}{}", self.base_path, path)
    }
}

/// All cookies a user was given, in the order first set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CookieJar {
    cookies: Vec<(String, String)>,
}

impl CookieJar {
    /// Stores one `Set-Cookie` value (a cookie with `Max-Age=0` or an empty value is removed).
    pub fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            return;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return;
        }
        let expired = parts.any(|a| {
            a.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("max-age") && v.trim().starts_with(['0', '-'])
            })
        });
        if expired || value.is_empty() {
            self.cookies.retain(|(n, _)| n != name);
            return;
        }
        match self.cookies.iter_mut().find(|(n, _)| n == name) {
            Some(c) => c.1 = value.to_string(),
            None => self.cookies.push((name.to_string(), value.to_string())),
        }
    }

    /// Stores every `Set-Cookie` of a response.
    pub fn store_all(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(header::SET_COOKIE) {
            if let Ok(s) = v.to_str() {
                self.store(s);
            }
        }
    }

    /// The value of cookie `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Cookie` header to send, if any cookie is set.
    pub fn header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        let mut s = String::new();
        for (i, (n, v)) in self.cookies.iter().enumerate() {
            if i > 0 {
                s.push_str("; ");
            }
            s.push_str(n);
            s.push('=');
            s.push_str(v);
        }
        Some(s)
    }

    /// Number of cookies.
    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    /// Whether the jar is empty.
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    /// Cookie names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.cookies.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// A received response with its whole body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The simulated node that answered (`X-Sim-Node`).
    pub fn node(&self) -> Option<&str> {
        node_of(&self.headers)
    }
}

/// The `X-Sim-Node` header of `headers`.
pub fn node_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(NODE_HEADER).and_then(|v| v.to_str().ok())
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl HttpConn {
    /// Opens a connection to `target`.
    pub async fn connect(target: &Target) -> anyhow::Result<HttpConn> {
        let stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            host: HeaderValue::from_str(&target.authority)?,
        })
    }

    /// Whether the connection can still carry requests.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `method path` with the jar's cookies (if any) and reads the whole response.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        cookies: Option<&CookieJar>,
        body: Bytes,
    ) -> anyhow::Result<HttpResponse> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.clone());
        if let Some(c) = cookies.and_then(CookieJar::header) {
            req = req.header(header::COOKIE, c);
        }
        let req = req.body(Full::new(body))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(
        &mut self,
        path: &str,
        cookies: Option<&CookieJar>,
    ) -> anyhow::Result<HttpResponse> {
        self.request(Method::GET, path, cookies, Bytes::new()).await
    }
}

/// Outcome of a WebSocket upgrade attempt.
pub enum WsConnect {
    /// 101: the socket and the node that accepted it.
    Open(Box<WsStream>, Option<String>),
    /// The server answered without upgrading: status and node.
    Refused(StatusCode, Option<String>),
}

/// Opens a WebSocket to `path` (already including the target's base path) with the jar's
/// cookies, offering `protocol` if given.
pub async fn ws_connect(
    target: &Target,
    path: &str,
    cookies: &CookieJar,
    protocol: Option<&str>,
    read_buffer: usize,
) -> anyhow::Result<WsConnect> {
    let mut req = format!("ws://{}{}", target.authority, path).into_client_request()?;
    if let Some(c) = cookies.header() {
        req.headers_mut()
            .insert(header::COOKIE, HeaderValue::from_str(&c)?);
    }
    if let Some(p) = protocol {
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p)?);
    }
    let stream = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connect {}", target.addr))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(lb_sim::MAX_WS_MESSAGE))
        .max_frame_size(Some(lb_sim::MAX_WS_MESSAGE));
    match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
        Ok((ws, resp)) => {
            let node = node_of(resp.headers()).map(str::to_string);
            Ok(WsConnect::Open(Box::new(ws), node))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let node = node_of(resp.headers()).map(str::to_string);
            Ok(WsConnect::Refused(resp.status(), node))
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `fut` with a timeout, turning the timeout into an error.
pub async fn timed<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => bail!("timed out after {timeout:?}"),
    }
}
