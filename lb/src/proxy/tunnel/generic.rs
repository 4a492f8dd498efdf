//! The generic splice (TLS on either side): a copy with small buffers and the same idle and
//! close handling as the TCP splice; when the balancer closes the tunnel, the client gets the
//! same 1001 close frame (then TLS `close_notify`) when its stream is at a frame boundary.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frames::FrameTracker;
use super::takeover::Io;
use super::{Closing, Counts, End, CLOSE_GOING_AWAY, FIN_LINGER};
use crate::clock;
use crate::wake::OnWake;

/// How long the balancer's own close frame may take to reach a client.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// The frame boundaries of what reached the client, and whether a write to it was cut short.
#[derive(Default)]
struct ToClient {
    frames: FrameTracker,
    writing: bool,
}

/// The generic path (TLS on either side): a copy with small buffers and the same idle and
/// close handling, with a 1001 close frame for the client when the balancer closes.
pub(super) async fn splice_generic(
    client: Box<dyn Io>,
    node: Box<dyn Io>,
    (idle, stall): (Duration, Duration),
    closing: &Closing<'_>,
    counts: &Counts,
) -> End {
    let last = AtomicU64::new(clock::now_ms());
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut nr, mut nw) = tokio::io::split(node);
    let mut down_state = ToClient::default();
    let end = {
        let up = copy(&mut cr, &mut nw, &last, &counts.to_node, stall, None);
        let down = copy(
            &mut nr,
            &mut cw,
            &last,
            &counts.to_client,
            stall,
            Some(&mut down_state),
        );
        let both = both_with_linger(up, down);
        // The copies are what wake the task; the idle watch and the close are polled only when
        // they woke it.
        let idle_end = OnWake::new(idle_watch(&last, idle));
        let closed = OnWake::new(closing.cancelled());
        tokio::select! {
            biased;
            _ = both => End::Closed,
            _ = idle_end => End::Idle,
            _ = closed => End::Closing,
        }
    };
    if end != End::Closed && !down_state.writing && down_state.frames.at_boundary() {
        let _ = tokio::time::timeout(CLOSE_WRITE, async {
            cw.write_all(&CLOSE_GOING_AWAY).await?;
            cw.shutdown().await
        })
        .await;
    }
    end
}

async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    last: &AtomicU64,
    count: &AtomicU64,
    stall: Duration,
    mut track: Option<&mut ToClient>,
) -> io::Result<()>
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
        // A write cut short (the tunnel closed meanwhile) leaves `writing` set: no frame of
        // the balancer's may follow a partial one.
        if let Some(t) = track.as_deref_mut() {
            t.writing = true;
        }
        // A peer that stopped reading ends the tunnel after `stall`.
        tokio::time::timeout(stall, async {
            w.write_all(&buf[..n]).await?;
            w.flush().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??;
        if let Some(t) = track.as_deref_mut() {
            t.frames.feed(&buf[..n]);
            t.writing = false;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

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
