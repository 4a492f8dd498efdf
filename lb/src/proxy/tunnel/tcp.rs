//! The plain TCP splice, with the frame tracking that lets the balancer close a WebSocket with
//! a close frame of its own.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::frames::FrameTracker;
use super::{Closing, Counts, End, CLOSE_GOING_AWAY, FIN_LINGER};
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
    // Made once: a new one per turn of the loop registered with (and left) both tokens' wait
    // lists, locks included, at every readiness event.
    let closed = closing.cancelled();
    tokio::pin!(closed);
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
