//! Taking the sockets of an upgraded request over from hyper: plain TCP on both sides gets the
//! fast splice; anything else (TLS) the generic one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::listen::WriteWatch;

/// One end of a tunnel: plain TCP (the fast path) or anything else (TLS).
pub(super) enum Side {
    Tcp(TcpStream, Bytes),
    Other(Box<dyn Io>),
    /// The socket could not be taken over: the tunnel ends at once.
    Broken,
}

impl Side {
    pub(super) fn boxed(self) -> Box<dyn Io> {
        match self {
            Side::Broken => Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
            Side::Tcp(io, pre) => Box::new(Prefixed {
                pre: if pre.is_empty() { Bytes::new() } else { pre },
                io,
            }),
            Side::Other(b) => b,
        }
    }
}

pub(super) fn client_side(u: Upgraded) -> Side {
    match u.downcast::<TokioIo<WriteWatch<TcpStream>>>() {
        // The tunnel bounds its own blocked writes.
        Ok(p) => tcp_side(p.io.into_inner().into_inner(), p.read_buf),
        Err(u) => Side::Other(Box::new(TokioIo::new(u))),
    }
}

/// A fresh reactor registration for a socket taken over from hyper. The old one may still hold
/// the waker of the HTTP connection task that owned the socket (a write interest the tunnel
/// never replaces), which keeps that whole finished task in memory for the tunnel's lifetime.
fn tcp_side(s: TcpStream, pre: Bytes) -> Side {
    let fresh = s.into_std().and_then(TcpStream::from_std);
    match fresh {
        Ok(s) => Side::Tcp(s, pre),
        Err(e) => {
            tracing::debug!("cannot re-register a tunnel socket: {e}");
            Side::Broken
        }
    }
}

pub(super) fn node_side(u: Upgraded) -> Side {
    // Plain TCP from the node connector is the same type as the client side; then TLS.
    let u = match u.downcast::<TokioIo<TcpStream>>() {
        Ok(p) => return tcp_side(p.io.into_inner(), p.read_buf),
        Err(u) => u,
    };
    let u = match u.downcast::<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>() {
        Ok(p) => {
            return Side::Other(Box::new(Prefixed {
                pre: p.read_buf,
                io: p.io.into_inner(),
            }))
        }
        Err(u) => u,
    };
    Side::Other(Box::new(TokioIo::new(u)))
}

/// Any upgraded stream, for the generic path.
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A stream with bytes already read from it to replay first.
pub(super) struct Prefixed<T> {
    pre: Bytes,
    io: T,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            bytes::Buf::advance(&mut self.pre, n);
            if self.pre.is_empty() {
                // Release the read buffer it was cut from.
                self.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
