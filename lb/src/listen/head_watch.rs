//! `listener.header_read_timeout` for a client connection, with one timer per connection
//! instead of one per request.
//!
//! The clock runs while the connection has no request in flight: from the accept (or the TLS
//! handshake) and from the end of each answer (its body sent or dropped) until the next request
//! head is complete. A connection that stays that way for the whole timeout (an idle keep-alive
//! connection, or a client trickling its head) is closed. The request path only stores a
//! coarse timestamp; the timer wakes once per timeout, finds the deadline moved and re-arms.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};

use crate::clock;

/// The shared state of one connection's clock.
#[derive(Debug)]
pub struct HeadWatch {
    in_flight: AtomicU32,
    /// When the connection last had nothing in flight (coarse milliseconds).
    idle_since_ms: AtomicU64,
}

impl HeadWatch {
    /// A clock that starts now.
    pub fn new() -> Arc<HeadWatch> {
        Arc::new(HeadWatch {
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(clock::now_ms()),
        })
    }

    /// A request head is complete: the clock stops until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had nothing in flight for `timeout`.
    pub async fn expired(&self, timeout: Duration) {
        let timeout_ms = timeout.as_millis().max(1) as u64;
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = clock::now_ms();
            let next = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again a timeout later (its end restarts the clock anyway).
                now + timeout_ms
            } else {
                let deadline = self.idle_since_ms.load(Ordering::Acquire) + timeout_ms;
                if now >= deadline && self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                deadline.max(now + 1)
            };
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(next - now));
        }
    }
}

/// A request in flight; dropped with its answer's body (or when the request is abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<HeadWatch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The timestamp first: a timer that sees nothing in flight sees the new start.
        self.0
            .idle_since_ms
            .store(clock::now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that ends its request's [`InFlight`] when it is dropped.
pub struct Watched<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Watched<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Watched<B> {
        Watched {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn an_idle_connection_expires_and_a_busy_one_does_not() {
        let w = HeadWatch::new();
        let t = Instant::now();
        w.expired(Duration::from_millis(50)).await;
        assert!(
            t.elapsed() >= Duration::from_millis(45),
            "{:?}",
            t.elapsed()
        );

        // In flight for three timeouts: no expiry until the answer ends, then one timeout.
        let w = HeadWatch::new();
        let guard = w.begin();
        let t = Instant::now();
        let w2 = w.clone();
        let end = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            drop(guard);
        });
        w2.expired(Duration::from_millis(50)).await;
        end.await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t.elapsed()
        );

        // Requests every 30 ms keep a 50 ms clock from running out.
        let w = HeadWatch::new();
        let w3 = w.clone();
        let traffic = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                drop(w3.begin());
            }
        });
        let t = Instant::now();
        w.expired(Duration::from_millis(50)).await;
        traffic.await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(220),
            "{:?}",
            t.elapsed()
        );
    }
}
