//! A browser that signs in the way users of a Qlik site do, for tests of the simulator and of
//! a balancer in front of it: one keep-alive connection per origin, a cookie jar that ignores
//! ports (as browsers do), redirects followed, Windows authentication answered on the
//! connection that was challenged, and identity-provider pages that post themselves submitted.
//!
//! ```no_run
//! # async fn demo(site: std::net::SocketAddr) -> std::io::Result<()> {
//! use lb_sim::browser::{Browser, Identity};
//! let mut b = Browser::new(Identity::ntlm("CORP", "alice"));
//! let page = b.navigate(&format!("http://{site}/hub/")).await?;
//! assert_eq!(page.status, 200); // signed in: redirect, three NTLM legs, ticket, session
//! let me = b.navigate(&format!("http://{site}/_sim/whoami")).await?;
//! assert!(me.body.contains(r#""user":"CORP\\alice""#));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::saml::AutoPost;
use crate::{kerberos, ntlm, SimUser, NODE_HEADER};

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Page {
    /// The URL asked for.
    pub url: String,
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as text.
    pub body: String,
}

impl Page {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }

    /// The simulated node that answered (`X-Sim-Node`).
    pub fn node(&self) -> Option<&str> {
        self.header(NODE_HEADER)
    }

    /// `Location`, for redirects.
    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }
}

/// One HTTP/1.1 keep-alive connection: what NTLM's legs must share.
pub struct Conn {
    authority: String,
    send: SendRequest<Full<Bytes>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("authority", &self.authority)
            .finish()
    }
}

impl Conn {
    /// Connects to `addr`; requests carry `Host: <addr>`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        Conn::connect_as(addr, &addr.to_string()).await
    }

    /// Connects to `addr`; requests carry `Host: <host>`.
    pub async fn connect_as(addr: SocketAddr, host: &str) -> io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Conn {
            authority: host.to_string(),
            send,
        })
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// Sends one request (`target` is the path and query) and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> io::Result<Page> {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, &self.authority)
            .body(Full::new(body.into()))
            .map_err(other)?;
        for (k, v) in headers {
            let k = HeaderName::from_bytes(k.as_bytes()).map_err(other)?;
            req.headers_mut()
                .append(k, HeaderValue::from_str(v).map_err(other)?);
        }
        self.send.ready().await.map_err(other)?;
        let resp = self.send.send_request(req).await.map_err(other)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(other)?.to_bytes();
        Ok(Page {
            url: format!("http://{}{target}", self.authority),
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// `GET target` with extra headers.
    pub async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> io::Result<Page> {
        self.send(Method::GET, target, headers, Bytes::new()).await
    }
}

/// Who the browser's operating system signs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No Windows sign-in (a browser outside the domain): forms or anonymous only.
    None,
    /// NTLM as `domain\user` (User-Agent with `Windows`).
    Ntlm(SimUser),
    /// Kerberos (`Negotiate`) as `user` (User-Agent with `Windows`).
    Kerberos(SimUser),
}

impl Identity {
    /// NTLM as `domain\user`.
    pub fn ntlm(domain: &str, user: &str) -> Identity {
        Identity::Ntlm(SimUser::new(domain, user))
    }

    /// Kerberos as `domain\user`.
    pub fn kerberos(domain: &str, user: &str) -> Identity {
        Identity::Kerberos(SimUser::new(domain, user))
    }
}

/// A Windows browser's User-Agent.
pub const WINDOWS_UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0";
/// A User-Agent without `Windows` (forms login).
pub const MAC_UA: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1";

/// A browser: connections per origin, one cookie jar, an identity.
#[derive(Debug)]
pub struct Browser {
    /// Whom Windows authentication answers for.
    pub identity: Identity,
    /// The User-Agent sent (Windows for NTLM/Kerberos identities, macOS otherwise).
    pub user_agent: String,
    /// Pause between the legs of a handshake (a user's machine is not instant).
    pub leg_pause: Duration,
    /// Every answer of the last [`Browser::navigate`], in order.
    pub trail: Vec<Page>,
    jar: BTreeMap<String, String>,
    conns: BTreeMap<String, Conn>,
}

/// Splits `http://host:port/path?q` into `host:port` and `/path?q`.
pub fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| other(format!("not an http:// URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((authority.to_string(), path.to_string()))
}

impl Browser {
    /// A browser signing in as `identity`.
    pub fn new(identity: Identity) -> Browser {
        let user_agent = match identity {
            Identity::None => MAC_UA,
            _ => WINDOWS_UA,
        };
        Browser {
            identity,
            user_agent: user_agent.to_string(),
            leg_pause: Duration::ZERO,
            trail: Vec::new(),
            jar: BTreeMap::new(),
            conns: BTreeMap::new(),
        }
    }

    /// The value of cookie `name` in the jar.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    /// Puts a cookie in the jar (a portal handing over a session id).
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.jar.insert(name.to_string(), value.to_string());
    }

    /// Closes every connection (the next request opens new ones).
    pub fn close_connections(&mut self) {
        self.conns.clear();
    }

    /// The jar as a `Cookie` header value (to hand the cookies to another client).
    pub fn cookie_header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            self.jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// One request to `url` on the origin's connection (opened or reopened as needed), with
    /// the jar's cookies and `extra` headers; stores what it sets.
    pub async fn fetch(
        &mut self,
        method: Method,
        url: &str,
        extra: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> io::Result<Page> {
        let (authority, target) = split_url(url)?;
        if self.conns.get(&authority).is_none_or(Conn::is_closed) {
            let with_port = if authority
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                authority.clone()
            } else {
                format!("{authority}:80")
            };
            let addr: SocketAddr = tokio::net::lookup_host(&with_port)
                .await?
                .next()
                .ok_or_else(|| other("no address"))?;
            let conn = Conn::connect_as(addr, &authority).await?;
            self.conns.insert(authority.clone(), conn);
        }
        let cookies = self.cookie_header();
        let mut headers: Vec<(&str, &str)> = vec![("user-agent", &self.user_agent)];
        if let Some(c) = &cookies {
            headers.push(("cookie", c));
        }
        headers.extend_from_slice(extra);
        let conn = self
            .conns
            .get_mut(&authority)
            .ok_or_else(|| other("no conn"))?;
        let page = conn.send(method, &target, &headers, body).await?;
        for sc in page.header_all("set-cookie") {
            if let Some((k, v)) = sc.split(';').next().and_then(|kv| kv.split_once('=')) {
                self.jar.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        Ok(page)
    }

    /// Goes to `url` as a user would: follows redirects, answers Windows authentication with
    /// the identity (on the connection that was challenged), and submits pages that post
    /// themselves. Returns the last answer; [`Browser::trail`] has them all.
    pub async fn navigate(&mut self, url: &str) -> io::Result<Page> {
        self.trail.clear();
        let mut next = (Method::GET, url.to_string(), String::new());
        for _ in 0..20 {
            let (method, url, body) = next;
            let is_post = method == Method::POST;
            let form = [("content-type", "application/x-www-form-urlencoded")];
            let extra: &[(&str, &str)] = if is_post { &form } else { &[] };
            let mut page = self.fetch(method, &url, extra, body).await?;
            if page.status == StatusCode::UNAUTHORIZED.as_u16() {
                page = self.windows_auth(&url, page).await?;
            }
            self.trail.push(page.clone());
            if (300..400).contains(&page.status) {
                let loc = page
                    .location()
                    .ok_or_else(|| other("redirect without Location"))?;
                next = (Method::GET, absolute(&url, loc)?, String::new());
                continue;
            }
            if page.status == 200 && page.body.contains("document.forms[0].submit()") {
                if let Some(post) = AutoPost::parse(&page.body) {
                    next = (Method::POST, absolute(&url, &post.action)?, post.body());
                    continue;
                }
            }
            return Ok(page);
        }
        Err(other("too many redirects"))
    }

    /// Answers a `401` that offers NTLM or Negotiate, on the same connection.
    async fn windows_auth(&mut self, url: &str, first: Page) -> io::Result<Page> {
        let offers = first.header_all("www-authenticate");
        let offers_ntlm = offers.iter().any(|o| o.eq_ignore_ascii_case("NTLM"));
        let offers_negotiate = offers.iter().any(|o| o.eq_ignore_ascii_case("Negotiate"));
        match self.identity.clone() {
            Identity::Ntlm(u) if offers_ntlm => {
                tokio::time::sleep(self.leg_pause).await;
                let t1 = ntlm::type1(&u.directory, "WS");
                let second = self
                    .fetch(Method::GET, url, &[("authorization", &t1)], Bytes::new())
                    .await?;
                let challenge = second
                    .header_all("www-authenticate")
                    .iter()
                    .find_map(|v| ntlm::challenge_of(v));
                let Some(challenge) = challenge else {
                    return Ok(second);
                };
                tokio::time::sleep(self.leg_pause).await;
                let t3 = ntlm::type3(challenge, &u.directory, &u.id, "WS");
                self.fetch(Method::GET, url, &[("authorization", &t3)], Bytes::new())
                    .await
            }
            Identity::Kerberos(u) if offers_negotiate => {
                let (authority, _) = split_url(url)?;
                let host = crate::url::host_without_port(&authority).to_string();
                tokio::time::sleep(self.leg_pause).await;
                let token = kerberos::negotiate(&u, &host);
                self.fetch(Method::GET, url, &[("authorization", &token)], Bytes::new())
                    .await
            }
            _ => Ok(first),
        }
    }
}

/// `loc` resolved against `base` (absolute URLs, absolute paths, and `?query` only).
fn absolute(base: &str, loc: &str) -> io::Result<String> {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return Ok(loc.to_string());
    }
    let (authority, path) = split_url(base)?;
    if loc.starts_with('/') {
        return Ok(format!("http://{authority}{loc}"));
    }
    let dir = path.split('?').next().unwrap_or("/");
    if loc.starts_with('?') {
        return Ok(format!("http://{authority}{dir}{loc}"));
    }
    let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
    Ok(format!("http://{authority}{dir}{loc}"))
}
