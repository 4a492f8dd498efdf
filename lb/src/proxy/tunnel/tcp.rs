//! The plain TCP splice, with the frame tracking that lets the balancer close a WebSocket with
//! a close frame of its own.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::frames::FrameTracker;
use super::{Closing, Counts, End, CLOSE_GOING_AWAY, CLOSE_GRACE, FIN_LINGER};
use crate::clock;

const BUF: usize = 16 * 1024;

/// The plain TCP splice: one loop in one small future (an idle tunnel's whole cost is this
/// future, two registered sockets and their kernel buffers). It waits for readiness of either
/// socket without a buffer, and borrows one only while bytes flow.
pub(super) async fn splice_tcp(
    client: TcpStream,
    client_pre: Bytes,
    node: TcpStream,
    node_pre: Bytes,
    (idle, stall): (Duration, Duration),
    closing: &Closing<'_>,
    counts: &Counts,
) -> End {
    let mut frames = FrameTracker::default();
    // Bytes hyper read past the upgrade go first; then `pre` (which shares hyper's whole read
    // buffer) is let go at once.
    if let Err(end) = send_pre(&node, client_pre, &counts.to_node, stall, closing).await {
        return end;
    }
    frames.feed(&node_pre);
    if let Err(end) = send_pre(&client, node_pre, &counts.to_client, stall, closing).await {
        return end;
    }

    let (mut up_open, mut down_open) = (true, true);
    let mut last = clock::now_ms();
    let mut linger_until: Option<u64> = None;
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    // Made once: a new one per turn of the loop registered with (and left) both tokens' wait
    // lists, locks included, at every readiness event.
    // Polled only once a token woke it (not at every readiness event, locks and all).
    let mut closed = crate::wake::OnWake::new(closing.cancelled());
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => {
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
                match transfer(&client, &node, None, stall, closing).await {
                    Moved::Some(n) => {
                        counts.to_node.fetch_add(n, Ordering::Relaxed);
                        last = clock::now_ms();
                    }
                    Moved::Eof => {
                        up_open = false;
                        let _ = socket2::SockRef::from(&node).shutdown(std::net::Shutdown::Write);
                    }
                    Moved::Failed => return End::Closed,
                    Moved::Closing { finished } => {
                        if finished && frames.at_boundary() {
                            let _ = client.try_write(&CLOSE_GOING_AWAY);
                        }
                        return End::Closing;
                    }
                }
            }
            r = node.readable(), if down_open => {
                if r.is_err() {
                    return End::Closed;
                }
                match transfer(&node, &client, Some(&mut frames), stall, closing).await {
                    Moved::Some(n) => {
                        counts.to_client.fetch_add(n, Ordering::Relaxed);
                        last = clock::now_ms();
                    }
                    Moved::Eof => {
                        down_open = false;
                        let _ = socket2::SockRef::from(&client).shutdown(std::net::Shutdown::Write);
                    }
                    Moved::Failed => return End::Closed,
                    Moved::Closing { finished } => {
                        if finished && frames.at_boundary() {
                            let _ = client.try_write(&CLOSE_GOING_AWAY);
                        }
                        return End::Closing;
                    }
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

/// Writes the bytes hyper read past the upgrade and counts them; `pre` is dropped on return.
async fn send_pre(
    to: &TcpStream,
    pre: Bytes,
    count: &std::sync::atomic::AtomicU64,
    stall: Duration,
    closing: &Closing<'_>,
) -> Result<(), End> {
    if !pre.is_empty() {
        write_all(to, &pre, stall, closing)
            .await
            .map_err(|e| e.end())?;
    }
    count.fetch_add(pre.len() as u64, Ordering::Relaxed);
    Ok(())
}

enum Moved {
    Some(u64),
    Eof,
    Failed,
    /// Told to close during a blocked write; `finished`: the write completed within the grace.
    Closing {
        finished: bool,
    },
}

/// Why a write did not complete.
enum WriteEnd {
    Failed,
    /// Told to close while blocked; `finished`: the write still completed within the grace.
    Closing {
        finished: bool,
    },
}

impl WriteEnd {
    fn end(self) -> End {
        match self {
            WriteEnd::Failed => End::Closed,
            WriteEnd::Closing { .. } => End::Closing,
        }
    }
}

thread_local! {
    /// Each thread's transfer buffer: bytes pass through it without an allocation, and an
    /// idle tunnel holds none. In the thread's own storage, not on the heap: a heap block made
    /// during a burst would keep the allocator page it shares with the burst's connections.
    static BUF_OF_THREAD: std::cell::RefCell<[u8; BUF]> =
        const { std::cell::RefCell::new([0; BUF]) };
}

/// Moves what `src` has ready to `dst`, until `src` would block. Bytes go through the
/// thread's buffer; only what `dst` does not take at once is copied, to wait on the heap.
async fn transfer(
    src: &TcpStream,
    dst: &TcpStream,
    mut frames: Option<&mut FrameTracker>,
    stall: Duration,
    closing: &Closing<'_>,
) -> Moved {
    let mut moved = 0u64;
    loop {
        let step = BUF_OF_THREAD.with_borrow_mut(|buf| {
            let n = read_some(src, buf)?;
            if let Some(f) = frames.as_deref_mut() {
                f.feed(&buf[..n]);
            }
            let mut off = 0;
            while off < n {
                match dst.try_write(&buf[off..n]) {
                    Ok(w) => off += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok((n, Some(buf[off..n].to_vec())))
                    }
                    // Not a `WouldBlock`: ends the tunnel like a read error.
                    Err(e) => return Err(e),
                }
            }
            Ok((n, None))
        });
        match step {
            Ok((0, _)) => {
                return if moved > 0 {
                    Moved::Some(moved)
                } else {
                    Moved::Eof
                }
            }
            Ok((n, None)) => moved += n as u64,
            Ok((n, Some(rest))) => {
                match write_all(dst, &rest, stall, closing).await {
                    Ok(()) => {}
                    Err(WriteEnd::Failed) => return Moved::Failed,
                    Err(WriteEnd::Closing { finished }) => return Moved::Closing { finished },
                }
                moved += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Moved::Some(moved),
            Err(_) => return Moved::Failed,
        }
    }
}

/// One read. A read that does not fill `buf` drained the socket: it also clears the socket's
/// readiness (edge-triggered, the next bytes raise it again; tokio's readiness ticks keep a
/// raise between the read and the clear), so the next read does not cost a system call that
/// finds nothing.
fn read_some(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let r = src.try_io(tokio::io::Interest::READABLE, || {
        let n = src.try_read(buf)?;
        got = n;
        if n > 0 && n < buf.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// Writes all of `data`, waiting for the peer to read at most `stall` at a time. A close cuts
/// through a blocked write: the write gets [`CLOSE_GRACE`] to finish (so a close frame can
/// follow), then it is given up.
async fn write_all(
    dst: &TcpStream,
    mut data: &[u8],
    stall: Duration,
    closing: &Closing<'_>,
) -> Result<(), WriteEnd> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            // The peer is not reading: the wait (and its timers) lives on the heap, so that
            // every idle tunnel's future stays small.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Box::pin(wait_writable(dst, data, stall, closing)).await?
            }
            Err(_) => return Err(WriteEnd::Failed),
        }
    }
    Ok(())
}

/// Waits until `dst` takes bytes again, at most `stall`; a close cuts through.
async fn wait_writable(
    dst: &TcpStream,
    data: &[u8],
    stall: Duration,
    closing: &Closing<'_>,
) -> Result<(), WriteEnd> {
    tokio::select! {
        r = tokio::time::timeout(stall, dst.writable()) => match r {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteEnd::Failed),
        },
        _ = closing.cancelled() => {
            let finished = tokio::time::timeout(CLOSE_GRACE, write_rest(dst, data))
                .await
                .is_ok_and(|r| r.is_ok());
            Err(WriteEnd::Closing { finished })
        }
    }
}

/// The rest of a write, with no bound of its own.
async fn write_rest(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
