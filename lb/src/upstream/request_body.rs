//! The request body as a node gets it: the client's, bounded by `listener.max_body_bytes` and
//! by `listener.body_timeout` between two reads, and watched to its end.
//!
//! What happened to the body ([`BodyEnd`]) decides two things: whether the node's connection
//! can go back to the pool (only once the whole body was sent), and who is to blame when the
//! request fails (a body the client broke, stopped sending or made too large is the client's
//! fault, never a passive error of the node).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::clock;

type BoxError = Box<dyn StdError + Send + Sync>;

const SENDING: u8 = 0;
const COMPLETE: u8 = 1;
const CLIENT_FAILED: u8 = 2;
const TIMED_OUT: u8 = 3;
const TOO_LARGE: u8 = 4;

/// How a request body ended, when it was the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Malformed (a broken chunked encoding) or cut short (the client went away).
    Broken,
    /// Nothing arrived for `listener.body_timeout`.
    TimedOut,
    /// Larger than `listener.max_body_bytes`.
    TooLarge,
}

#[derive(Debug)]
struct Progress {
    state: AtomicU8,
    /// Clock milliseconds when the body ended (for `COMPLETE`).
    done_ms: AtomicU64,
    /// Clock milliseconds of the last bytes read from the client (or of the start).
    data_ms: AtomicU64,
    /// The last read found nothing yet: the body waits on the client (else on the node, which
    /// has not taken the last bytes).
    awaiting_client: AtomicBool,
}

/// Where a request body is: shared by the body and whoever sent it. A request without a body
/// is complete from the start and allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct BodyEnd(Option<Arc<Progress>>);

impl BodyEnd {
    /// The whole body was read from the client (and handed to the node's connection).
    pub fn complete(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|p| p.state.load(Ordering::Acquire) == COMPLETE)
    }

    /// Clock milliseconds when the body ended; `None` while it is still being sent or failed.
    pub fn completed_at_ms(&self) -> Option<u64> {
        match &self.0 {
            None => Some(0),
            Some(p) if p.state.load(Ordering::Acquire) == COMPLETE => {
                Some(p.done_ms.load(Ordering::Relaxed))
            }
            Some(_) => None,
        }
    }

    /// The body has not moved for `window_ms` because the node is not taking it (not because
    /// the client is not sending it): the node's fault.
    pub fn stalled_by_node(&self, window_ms: u64) -> bool {
        match &self.0 {
            None => false,
            Some(p) => {
                p.state.load(Ordering::Acquire) == SENDING
                    && !p.awaiting_client.load(Ordering::Relaxed)
                    && clock::now_ms().saturating_sub(p.data_ms.load(Ordering::Relaxed))
                        >= window_ms
            }
        }
    }

    /// The body failed through the client's fault.
    pub fn client_fault(&self) -> Option<ClientFault> {
        match self.0.as_ref()?.state.load(Ordering::Acquire) {
            CLIENT_FAILED => Some(ClientFault::Broken),
            TIMED_OUT => Some(ClientFault::TimedOut),
            TOO_LARGE => Some(ClientFault::TooLarge),
            _ => None,
        }
    }

    /// A read of the body: bytes came (`waiting` false), or it now waits on the client.
    fn moved(&self, waiting: bool) {
        if let Some(p) = &self.0 {
            if !waiting {
                p.data_ms.store(clock::now_ms(), Ordering::Relaxed);
            }
            p.awaiting_client.store(waiting, Ordering::Relaxed);
        }
    }

    fn set(&self, state: u8) {
        if let Some(p) = &self.0 {
            if state == COMPLETE {
                p.done_ms.store(clock::now_ms(), Ordering::Relaxed);
            }
            let _ = p
                .state
                .compare_exchange(SENDING, state, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Request body sent to a node: the client's (bounded in size and in time between reads), or
/// empty.
pub struct UpBody {
    inner: Either<Limited<Incoming>, Empty<Bytes>>,
    end: BodyEnd,
    /// `listener.body_timeout` and the deadline of the next read (0: none).
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl std::fmt::Debug for UpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpBody").field("end", &self.end).finish()
    }
}

impl UpBody {
    /// The client's body, at most `limit` bytes, failing when nothing arrives for
    /// `idle_timeout` (zero: no bound).
    pub fn client(body: Incoming, limit: usize, idle_timeout: Duration) -> UpBody {
        if body.is_end_stream() {
            return UpBody {
                inner: Either::Left(Limited::new(body, limit)),
                end: BodyEnd::default(),
                idle: None,
            };
        }
        let idle = (!idle_timeout.is_zero())
            .then(|| (idle_timeout, Box::pin(tokio::time::sleep(idle_timeout))));
        UpBody {
            inner: Either::Left(Limited::new(body, limit)),
            end: BodyEnd(Some(Arc::new(Progress {
                state: AtomicU8::new(SENDING),
                done_ms: AtomicU64::new(0),
                data_ms: AtomicU64::new(clock::now_ms()),
                awaiting_client: AtomicBool::new(false),
            }))),
            idle,
        }
    }

    /// No body.
    pub fn empty() -> UpBody {
        UpBody {
            inner: Either::Right(Empty::new()),
            end: BodyEnd::default(),
            idle: None,
        }
    }

    /// A handle on where this body is.
    pub fn end(&self) -> BodyEnd {
        self.end.clone()
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.end.moved(false);
                if this.inner.is_end_stream() {
                    this.end.set(COMPLETE);
                    this.idle = None;
                } else if let Some((d, sleep)) = &mut this.idle {
                    sleep.as_mut().reset(Instant::now() + *d);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => {
                this.end.set(COMPLETE);
                this.idle = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let state = if e.downcast_ref::<LengthLimitError>().is_some() {
                    TOO_LARGE
                } else {
                    CLIENT_FAILED
                };
                this.end.set(state);
                this.idle = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                this.end.moved(true);
                if let Some((_, sleep)) = &mut this.idle {
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.end.set(TIMED_OUT);
                        this.idle = None;
                        return Poll::Ready(Some(Err("request body timed out".into())));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
