//! Splicing an upgraded connection (a WebSocket) between the client and its node.
//!
//! Qlik app WebSockets live for hours and are idle most of the time, so an idle tunnel must
//! cost little: on plain TCP on both sides the splice waits for readiness with no buffer and
//! borrows one only while bytes flow. Each direction runs until its reader ends, then
//! half-closes its writer; the tunnel ends when both are done, when nothing moved for the idle
//! timeout, or when it is told to close (shutdown, or its node removed past the drain deadline).
//! On such a close, a WebSocket close frame with code 1001 ("going away") is sent to the client
//! when the node-to-client stream is at a frame boundary.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::clock;

const BUF: usize = 16 * 1024;
/// Close frame from a server: FIN + opcode 8, unmasked, 2-byte payload 1001.
const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// One side closed and the other followed, or an I/O error.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// Closed by the balancer (shutdown or node removal).
    Closing,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Closing => "closed_by_balancer",
        }
    }
}

/// Bytes moved by a tunnel.
#[derive(Debug, Default)]
pub struct Counts {
    pub to_node: AtomicU64,
    pub to_client: AtomicU64,
}

/// Splices the two upgraded connections until the tunnel ends.
/// `close` and `close_all` both end the tunnel: the node's own token (removed past its drain
/// deadline) and the balancer's (shutdown).
pub async fn splice(
    client: Upgraded,
    node: Upgraded,
    idle: Duration,
    close: &CancellationToken,
    close_all: &CancellationToken,
    counts: &Counts,
) -> End {
    let closing = Closing(close, close_all);
    match (client_side(client), node_side(node)) {
        (Side::Tcp(c, cpre), Side::Tcp(n, npre)) => {
            splice_tcp(c, cpre, n, npre, idle, &closing, counts).await
        }
        (c, n) => splice_generic(c.boxed(), n.boxed(), idle, &closing, counts).await,
    }
}

/// The two ways a tunnel is told to close.
struct Closing<'a>(&'a CancellationToken, &'a CancellationToken);

impl Closing<'_> {
    async fn cancelled(&self) {
        tokio::select! {
            _ = self.0.cancelled() => {}
            _ = self.1.cancelled() => {}
        }
    }
}

/// One end of a tunnel: plain TCP (the fast path) or anything else (TLS).
enum Side {
    Tcp(TcpStream, Bytes),
    Other(Box<dyn Io>),
    /// The socket could not be taken over: the tunnel ends at once.
    Broken,
}

impl Side {
    fn boxed(self) -> Box<dyn Io> {
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

fn client_side(u: Upgraded) -> Side {
    match u.downcast::<TokioIo<TcpStream>>() {
        Ok(p) => tcp_side(p.io.into_inner(), p.read_buf),
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

fn node_side(u: Upgraded) -> Side {
    // Plain TCP from the node pool is the same type as the client side; then TLS.
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
    match u.downcast::<MaybeHttpsStream<TokioIo<TcpStream>>>() {
        Ok(p) => match p.io {
            MaybeHttpsStream::Http(io) => tcp_side(io.into_inner(), p.read_buf),
            MaybeHttpsStream::Https(tls) => Side::Other(Box::new(Prefixed {
                pre: p.read_buf,
                io: tls.into_inner(),
            })),
        },
        Err(u) => Side::Other(Box::new(TokioIo::new(u))),
    }
}

/// Any upgraded stream, for the generic path.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The plain TCP splice: one loop in one small future (an idle tunnel's whole cost is this
/// future, two registered sockets and their kernel buffers). It waits for readiness of either
/// socket without a buffer, and borrows one only while bytes flow.
async fn splice_tcp(
    client: TcpStream,
    client_pre: Bytes,
    node: TcpStream,
    node_pre: Bytes,
    idle: Duration,
    closing: &Closing<'_>,
    counts: &Counts,
) -> End {
    let mut frames = FrameTracker::default();
    // Bytes hyper read past the upgrade go first; then `pre` (which shares hyper's whole read
    // buffer) is let go at once.
    if !client_pre.is_empty() && write_all(&node, &client_pre, idle).await.is_err() {
        return End::Closed;
    }
    counts
        .to_node
        .fetch_add(client_pre.len() as u64, Ordering::Relaxed);
    drop(client_pre);
    frames.feed(&node_pre);
    if !node_pre.is_empty() && write_all(&client, &node_pre, idle).await.is_err() {
        return End::Closed;
    }
    counts
        .to_client
        .fetch_add(node_pre.len() as u64, Ordering::Relaxed);
    drop(node_pre);

    let (mut up_open, mut down_open) = (true, true);
    let mut last = clock::now_ms();
    let mut linger_until: Option<u64> = None;
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            _ = closing.cancelled() => {
                // A close frame (1001) when the node-to-client stream is at a frame boundary.
                if frames.at_boundary() {
                    let _ = client.try_write(&CLOSE_GOING_AWAY);
                }
                return End::Closing;
            }
            r = client.readable(), if up_open => {
                if r.is_err() {
                    return End::Closed;
                }
                match transfer(&client, &node, None, idle).await {
                    Moved::Some(n) => {
                        counts.to_node.fetch_add(n, Ordering::Relaxed);
                        last = clock::now_ms();
                    }
                    Moved::Eof => {
                        up_open = false;
                        let _ = socket2::SockRef::from(&node).shutdown(std::net::Shutdown::Write);
                    }
                    Moved::Failed => return End::Closed,
                }
            }
            r = node.readable(), if down_open => {
                if r.is_err() {
                    return End::Closed;
                }
                match transfer(&node, &client, Some(&mut frames), idle).await {
                    Moved::Some(n) => {
                        counts.to_client.fetch_add(n, Ordering::Relaxed);
                        last = clock::now_ms();
                    }
                    Moved::Eof => {
                        down_open = false;
                        let _ = socket2::SockRef::from(&client).shutdown(std::net::Shutdown::Write);
                    }
                    Moved::Failed => return End::Closed,
                }
            }
            _ = &mut timer => {
                let now = clock::now_ms();
                if linger_until.is_some_and(|t| now >= t) {
                    return End::Closed;
                }
                let idle_at = last + idle.as_millis() as u64;
                if now >= idle_at {
                    if frames.at_boundary() {
                        let _ = client.try_write(&CLOSE_GOING_AWAY);
                    }
                    return End::Idle;
                }
                let next = linger_until.map_or(idle_at, |t| t.min(idle_at));
                timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(next - now));
            }
        }
        if !up_open && !down_open {
            return End::Closed;
        }
        if (!up_open || !down_open) && linger_until.is_none() {
            // One side is done: the other gets FIN_LINGER to follow.
            let t = clock::now_ms() + FIN_LINGER.as_millis() as u64;
            linger_until = Some(t);
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + FIN_LINGER);
        }
    }
}

enum Moved {
    Some(u64),
    Eof,
    Failed,
}

/// Moves what `src` has ready to `dst`, until `src` would block.
async fn transfer(
    src: &TcpStream,
    dst: &TcpStream,
    mut frames: Option<&mut FrameTracker>,
    idle: Duration,
) -> Moved {
    let mut buf = Vec::with_capacity(BUF);
    let mut moved = 0u64;
    loop {
        buf.clear();
        match src.try_read_buf(&mut buf) {
            Ok(0) => {
                return if moved > 0 {
                    Moved::Some(moved)
                } else {
                    Moved::Eof
                }
            }
            Ok(n) => {
                if let Some(f) = frames.as_deref_mut() {
                    f.feed(&buf[..n]);
                }
                if write_all(dst, &buf[..n], idle).await.is_err() {
                    return Moved::Failed;
                }
                moved += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return if moved > 0 {
                    Moved::Some(moved)
                } else {
                    Moved::Some(0)
                };
            }
            Err(_) => return Moved::Failed,
        }
    }
}

/// Writes all of `data`, waiting for the peer to read at most `idle` at a time.
async fn write_all(dst: &TcpStream, mut data: &[u8], idle: Duration) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(idle, dst.writable())
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")
                    })??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How long one direction may go on after the other has ended (HAProxy's `timeout
/// client-fin`): a peer that keeps a half-closed tunnel open does not hold it forever.
const FIN_LINGER: Duration = Duration::from_secs(5);

/// Runs both directions; once one ends, the other gets at most [`FIN_LINGER`].
async fn both_with_linger<A: std::future::Future, B: std::future::Future>(a: A, b: B) {
    tokio::pin!(a);
    tokio::pin!(b);
    tokio::select! {
        _ = &mut a => { let _ = tokio::time::timeout(FIN_LINGER, b).await; }
        _ = &mut b => { let _ = tokio::time::timeout(FIN_LINGER, a).await; }
    }
}

async fn idle_watch(last: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let deadline = last.load(Ordering::Relaxed) + idle_ms;
        let now = clock::now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

/// Follows the frame boundaries of one direction of a WebSocket byte stream (RFC 6455 §5.2),
/// so that the balancer knows when it may insert a frame of its own.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// Header bytes of the frame being read, while incomplete.
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The stream no longer looks like WebSocket frames.
    lost: bool,
}

impl FrameTracker {
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.head_len == 0 && self.remaining == 0
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.head_len] = data[0];
            self.head_len += 1;
            data = &data[1..];
            if let Some(total) = header_len(&self.head[..self.head_len]) {
                if self.head_len == total {
                    self.remaining = payload_len(&self.head[..total]);
                    self.head_len = 0;
                }
            }
            if self.head_len >= self.head.len() {
                self.lost = true;
            }
        }
    }
}

/// Length of a frame header given its first bytes, once known.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + if masked { 4 } else { 0 })
}

fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

/// The generic path (TLS on either side): a copy with small buffers and the same idle and
/// close handling, without the frame tracking.
async fn splice_generic(
    client: Box<dyn Io>,
    node: Box<dyn Io>,
    idle: Duration,
    closing: &Closing<'_>,
    counts: &Counts,
) -> End {
    let last = AtomicU64::new(clock::now_ms());
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut nr, mut nw) = tokio::io::split(node);
    let up = copy(&mut cr, &mut nw, &last, &counts.to_node);
    let down = copy(&mut nr, &mut cw, &last, &counts.to_client);
    let both = both_with_linger(up, down);
    tokio::select! {
        _ = both => End::Closed,
        _ = idle_watch(&last, idle) => End::Idle,
        _ = closing.cancelled() => End::Closing,
    }
}

async fn copy<R, W>(r: &mut R, w: &mut W, last: &AtomicU64, count: &AtomicU64) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 4096];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        last.store(clock::now_ms(), Ordering::Relaxed);
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A stream with bytes already read from it to replay first.
struct Prefixed<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_tracker_follows_boundaries() {
        let mut f = FrameTracker::default();
        assert!(f.at_boundary());
        // Unmasked text frame "hi".
        f.feed(&[0x81, 0x02]);
        assert!(!f.at_boundary());
        f.feed(b"h");
        assert!(!f.at_boundary());
        f.feed(b"i");
        assert!(f.at_boundary());
        // 300-byte binary frame with a 16-bit length, split across feeds.
        f.feed(&[0x82, 126]);
        f.feed(&[0x01]);
        assert!(!f.at_boundary());
        f.feed(&[0x2c]);
        f.feed(&vec![0u8; 299]);
        assert!(!f.at_boundary());
        f.feed(&[0u8; 1]);
        assert!(f.at_boundary());
        // Masked frame (client style) with 4 mask bytes.
        let mut frame = vec![0x81, 0x83, 1, 2, 3, 4];
        frame.extend_from_slice(b"abc");
        frame.extend_from_slice(&[0x89, 0x00]);
        f.feed(&frame);
        assert!(f.at_boundary());
    }
}
