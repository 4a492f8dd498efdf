//! A small, fast client for the load scenarios: one keep-alive HTTP/1.1 connection per virtual
//! user (hyper's `http1::handshake` over TCP or TLS), a cookie jar, WebSocket connect, extra
//! headers and cookies on every request, a request pacer (rate limit with a ramp), and the
//! signs of a lost Qlik session.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use lb_sim::NODE_HEADER;

/// A WebSocket over TCP or TLS.
pub type WsStream = WebSocketStream<Stream>;

/// A connection to the target: plain TCP or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to reach a target beyond its URL: TLS trust, extra headers and cookies.
#[derive(Debug, Clone, Default)]
pub struct TargetOpts {
    /// PEM CA bundle for `https://`/`wss://` targets (default: the system roots).
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Extra request headers, `Name: value`, sent with every request and upgrade.
    pub headers: Vec<String>,
    /// Cookies, `name=value`, every user starts with (e.g. a Qlik session from a browser).
    pub cookies: Vec<String>,
}

/// TLS of a target: the connector and the name its certificate must carry.
#[derive(Clone)]
pub struct TargetTls {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetTls({:?})", self.name)
    }
}

/// Where the load goes: `http[s]://host[:port][/base/path]` (`ws://`, `wss://` alike).
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
    /// TLS, for `https://` and `wss://`.
    pub tls: Option<TargetTls>,
    /// Extra headers of every request and upgrade.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    /// The cookies every user starts with.
    pub cookies: CookieJar,
}

impl Target {
    /// Parses and resolves `url` (`http://` only, or `https://` against the system roots).
    /// Refuses anything but loopback addresses unless `allow_remote`.
    pub fn parse(url: &str, allow_remote: bool) -> anyhow::Result<Target> {
        Target::parse_with(url, allow_remote, &TargetOpts::default())
    }

    /// Parses and resolves `url`, `http://`, `https://`, `ws://` or `wss://`, with `opts`.
    /// Refuses anything but loopback addresses unless `allow_remote`.
    pub fn parse_with(url: &str, allow_remote: bool, opts: &TargetOpts) -> anyhow::Result<Target> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://").or(url.strip_prefix("ws://"))
        {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://").or(url.strip_prefix("wss://")) {
            (true, r)
        } else {
            bail!("the target must be an http://, https://, ws:// or wss:// URL: {url}");
        };
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
            format!("{authority}:{}", if tls { 443 } else { 80 })
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
        let tls = if tls {
            let host = with_port
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .with_context(|| format!("{host} is not a valid TLS server name"))?;
            let cfg = crate::tls::client_config(opts.ca_file.as_deref(), opts.insecure)?;
            Some(TargetTls {
                connector: tokio_rustls::TlsConnector::from(cfg),
                name,
            })
        } else {
            if opts.ca_file.is_some() || opts.insecure {
                bail!("--ca-file and --insecure apply to https:// and wss:// targets only");
            }
            None
        };
        let mut headers = Vec::new();
        for h in &opts.headers {
            let (n, v) = h
                .split_once(':')
                .with_context(|| format!("header {h:?}: expected \"Name: value\""))?;
            let name = HeaderName::from_bytes(n.trim().as_bytes())
                .with_context(|| format!("header {h:?}: invalid name"))?;
            if name == header::HOST {
                bail!("header {h:?}: the Host header comes from the URL");
            }
            let value = HeaderValue::from_str(v.trim())
                .with_context(|| format!("header {h:?}: invalid value"))?;
            headers.push((name, value));
        }
        let mut cookies = CookieJar::default();
        for c in &opts.cookies {
            match c.split_once('=') {
                Some((n, v)) if !n.trim().is_empty() && !v.trim().is_empty() => cookies.store(c),
                _ => bail!("cookie {c:?}: expected name=value"),
            }
        }
        Ok(Target {
            url: url.to_string(),
            authority: authority.to_string(),
            addr,
            base_path: path.trim_end_matches('/').to_string(),
            tls,
            headers: headers.into(),
            cookies,
        })
    }

    /// A new user's cookie jar: the cookies of `--cookie`.
    pub fn jar(&self) -> CookieJar {
        self.cookies.clone()
    }

    /// Connects to the target, with TLS for `https://` and `wss://`.
    pub async fn connect(&self) -> anyhow::Result<Stream> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        stream.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Stream::Plain(stream)),
            Some(t) => {
                let s = t
                    .connector
                    .connect(t.name.clone(), stream)
                    .await
                    .with_context(|| format!("TLS handshake with {}", self.authority))?;
                Ok(Stream::Tls(Box::new(s)))
            }
        }
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
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl HttpConn {
    /// Opens a connection to `target`.
    pub async fn connect(target: &Target) -> anyhow::Result<HttpConn> {
        let stream = target.connect().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            host: HeaderValue::from_str(&target.authority)?,
            headers: target.headers.clone(),
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
        for (n, v) in self.headers.iter() {
            req = req.header(n, v);
        }
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
    let scheme = if target.tls.is_some() { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{}{}", target.authority, path).into_client_request()?;
    for (n, v) in target.headers.iter() {
        req.headers_mut().insert(n, v.clone());
    }
    if let Some(c) = cookies.header() {
        req.headers_mut()
            .insert(header::COOKIE, HeaderValue::from_str(&c)?);
    }
    if let Some(p) = protocol {
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p)?);
    }
    let stream = target.connect().await?;
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

/// The QPS's paths of its authentication modules: a redirect there means "not signed in".
pub const LOGIN_PATHS: [&str; 5] = [
    "/windows_authentication",
    "/internal_forms_authentication",
    "/form/",
    "/samlauthn",
    "/login",
];

/// Whether an answer says the user has no session, as a QPS says it: 401, or a redirect to an
/// authentication module (Windows authentication on port 4244, the forms login, SAML) or any
/// other location whose path names a login.
pub fn signed_out(status: StatusCode, headers: &HeaderMap) -> bool {
    if status == StatusCode::UNAUTHORIZED {
        return true;
    }
    if !status.is_redirection() {
        return false;
    }
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let lower = loc.to_ascii_lowercase();
    let path = lower.split(['?', '#']).next().unwrap_or("");
    LOGIN_PATHS.iter().any(|p| path.contains(p))
        || path.contains(":4244/")
        || path.contains(":4248/")
}

/// A request pacer shared by every user of a run: at most `rate` requests per second, the rate
/// growing linearly from 0 over `ramp`. Each call to [`Pacer::wait`] takes the next slot.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    rate: f64,
    ramp: Duration,
    issued: AtomicU64,
}

impl Pacer {
    pub fn new(rate: f64, ramp: Duration) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate: rate.max(1e-3),
            ramp,
            issued: AtomicU64::new(0),
        }
    }

    /// When slot `n` is due, after the start: the time at which `n` requests were allowed.
    pub fn due(&self, n: u64) -> Duration {
        let (r, t) = (self.rate, self.ramp.as_secs_f64());
        let n = n as f64;
        // Allowed by time x: r x^2 / 2t during the ramp, then r t / 2 + r (x - t).
        let secs = if t > 0.0 && n < r * t / 2.0 {
            (2.0 * t * n / r).sqrt()
        } else {
            t / 2.0 + n / r
        };
        Duration::from_secs_f64(secs)
    }

    /// Waits for the next slot; false when it falls after `deadline` (the run is over).
    pub async fn wait(&self, deadline: Instant) -> bool {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let at = self.start + self.due(n);
        if at >= deadline {
            return false;
        }
        tokio::time::sleep_until(at.into()).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_slots_follow_the_rate_and_the_ramp() {
        let p = Pacer::new(100.0, Duration::ZERO);
        assert_eq!(p.due(0), Duration::ZERO);
        assert!((p.due(100).as_secs_f64() - 1.0).abs() < 1e-9);
        // A 10 s ramp to 100/s allows 500 requests in its 10 s, then 100 a second.
        let p = Pacer::new(100.0, Duration::from_secs(10));
        assert!((p.due(500).as_secs_f64() - 10.0).abs() < 1e-6);
        assert!((p.due(600).as_secs_f64() - 11.0).abs() < 1e-6);
        assert!(
            (p.due(125).as_secs_f64() - 5.0).abs() < 1e-6,
            "a quarter by half time"
        );
    }

    #[test]
    fn signed_out_is_a_401_or_a_redirect_to_a_login() {
        let loc = |l: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_str(l).unwrap());
            h
        };
        let none = HeaderMap::new();
        assert!(signed_out(StatusCode::UNAUTHORIZED, &none));
        assert!(signed_out(
            StatusCode::FOUND,
            &loc("https://qlik.example.com:4244/windows_authentication/?targetId=1")
        ));
        assert!(signed_out(
            StatusCode::FOUND,
            &loc("/internal_forms_authentication/?targetId=1")
        ));
        assert!(signed_out(
            StatusCode::SEE_OTHER,
            &loc("https://idp.example.com/Login")
        ));
        assert!(!signed_out(StatusCode::FOUND, &loc("/hub/")));
        assert!(!signed_out(StatusCode::FOUND, &loc("/hub/?next=/login")));
        assert!(!signed_out(StatusCode::OK, &none));
        assert!(!signed_out(StatusCode::FOUND, &none));
    }

    #[test]
    fn targets_schemes_headers_and_cookies() {
        let t = Target::parse("http://127.0.0.1:1/p/", false).unwrap();
        assert!(t.tls.is_none());
        assert_eq!(t.base_path, "/p");
        let t = Target::parse_with(
            "wss://localhost/x",
            false,
            &TargetOpts {
                insecure: true,
                headers: vec!["X-Qlik-User: UserDirectory=A; UserId=b".into()],
                cookies: vec!["X-Qlik-Session=abc".into()],
                ..TargetOpts::default()
            },
        )
        .unwrap();
        assert!(t.tls.is_some());
        assert_eq!(t.addr.port(), 443);
        assert_eq!(t.headers.len(), 1);
        assert_eq!(t.jar().get("X-Qlik-Session"), Some("abc"));
        assert!(Target::parse("ftp://127.0.0.1", false).is_err());
        assert!(
            Target::parse("https://192.0.2.1", false).is_err(),
            "remote needs --allow-remote"
        );
        let bad = |o: TargetOpts| Target::parse_with("https://127.0.0.1", false, &o).is_err();
        assert!(bad(TargetOpts {
            headers: vec!["nocolon".into()],
            ..Default::default()
        }));
        assert!(bad(TargetOpts {
            headers: vec!["Host: x".into()],
            ..Default::default()
        }));
        assert!(bad(TargetOpts {
            cookies: vec!["novalue".into()],
            ..Default::default()
        }));
        assert!(Target::parse_with(
            "http://127.0.0.1",
            false,
            &TargetOpts {
                insecure: true,
                ..Default::default()
            }
        )
        .is_err());
    }
}
