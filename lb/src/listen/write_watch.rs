//! A bound on how long a write to a client may stay blocked (`listener.send_timeout`, HAProxy's
//! `timeout client` on the sending side): a client that stops reading a large download does not
//! hold its socket, and the node connection behind it, forever. The clock starts when a write
//! cannot proceed and stops at the next one that does, so a slow but live reader is not cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose writes fail with `TimedOut` once blocked for `limit` (zero: no bound).
pub struct WriteWatch<T> {
    io: T,
    limit: Duration,
    /// Armed while a write is blocked; allocated at the first blocked write.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<T> WriteWatch<T> {
    pub fn new(io: T, limit: Duration) -> WriteWatch<T> {
        WriteWatch {
            io,
            limit,
            stall: None,
            armed: false,
        }
    }

    /// The stream itself (for a tunnel that takes the socket over).
    pub fn into_inner(self) -> T {
        self.io
    }

    /// A write could not proceed: start (or check) the clock.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.limit.is_zero() {
            return Poll::Pending;
        }
        let limit = self.limit;
        let sleep = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            sleep.as_mut().reset(Instant::now() + limit);
            self.armed = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading (listener.send_timeout)",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn after<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => match self.blocked(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.after(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.after(cx, r)
    }
}
