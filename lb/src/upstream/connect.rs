//! The one way to open a connection to a node: TCP (no delay), TLS for an HTTPS node (its
//! certificate checked against its `server_name`, else its IP address), then the HTTP/1.1
//! handshake. The proxy's pool and the active health checks both connect through it, so a
//! check sees the node exactly as a forwarded request does.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// How connections to one node are made. Cheap to clone.
#[derive(Clone)]
pub struct NodeConnector {
    pub addr: SocketAddr,
    /// Bound on the TCP connect and on the TLS handshake, each.
    pub timeout: Duration,
    /// TLS for an HTTPS node: the connector and the name its certificate must carry.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for NodeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConnector")
            .field("addr", &self.addr)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish_non_exhaustive()
    }
}

impl NodeConnector {
    /// The name an HTTPS node's certificate must carry: `server_name` when set and valid, else
    /// the node's IP address.
    pub fn server_name(addr: SocketAddr, server_name: Option<&str>) -> ServerName<'static> {
        server_name
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// A plain TCP connection to the node, bounded by `timeout`.
    pub async fn tcp(&self) -> Result<TcpStream, String> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| format!("connect to {} timed out", self.addr))?
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// A new HTTP/1.1 connection (over TLS for an HTTPS node), driven by its own task, which
    /// allows upgrades.
    pub async fn http1<B>(&self) -> Result<SendRequest<B>, String>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = self.tcp().await?;
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| format!("TLS handshake with {} timed out", self.addr))?
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

async fn handshake<I, B>(io: I) -> Result<SendRequest<B>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("node connection ended: {e}");
        }
    });
    Ok(sender)
}
