//! A small client of the admin API, for the command line (`lb drain`, `lb undrain`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// An admin API endpoint and its token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub timeout: Duration,
}

/// One answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .map_err(|e| anyhow::anyhow!("answer is not JSON ({e}): {}", self.body.trim()))
    }
}

impl AdminClient {
    /// `addr` as `IP:port`, `host:port` or `http://host:port`; an unspecified IP (`0.0.0.0`,
    /// `[::]`, as an `[admin] address` may say) means this machine.
    pub fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
        let a = addr.trim();
        let a = a.strip_prefix("http://").unwrap_or(a).trim_end_matches('/');
        if a.starts_with("https://") {
            anyhow::bail!("the admin API speaks plain HTTP: {addr:?}");
        }
        let mut found = std::net::ToSocketAddrs::to_socket_addrs(a)
            .map_err(|e| anyhow::anyhow!("admin address {addr:?}: {e} (expected host:port)"))?;
        let mut s = found
            .next()
            .ok_or_else(|| anyhow::anyhow!("admin address {addr:?} resolves to nothing"))?;
        if s.ip().is_unspecified() {
            s.set_ip(if s.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        Ok(s)
    }

    /// Sends one request with an empty body.
    pub async fn call(&self, method: Method, path: &str) -> anyhow::Result<Answer> {
        tokio::time::timeout(self.timeout, self.call_inner(method, path))
            .await
            .map_err(|_| anyhow::anyhow!("admin API at {} did not answer in time", self.addr))?
    }

    async fn call_inner(&self, method: Method, path: &str) -> anyhow::Result<Answer> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {}: {e}", self.addr))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = send.send_request(req.body(Empty::new())?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
