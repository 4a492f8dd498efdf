//! A future polled again only after its own waker fired.
//!
//! For the rarely-ready branches of a hot `select!` (a shutdown signal or a timeout beside a
//! socket): `select!` polls every branch at each wake-up of its task, and a cancellation
//! token's poll takes the waiter list's lock, twice per echo in a WebSocket tunnel. Wrapped,
//! such a branch costs an atomic swap until it is actually woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

struct Flag {
    woken: AtomicBool,
    /// The task polling the wrapper, woken with the flag set.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// `fut`, polled at the first poll and after each wake-up it asked for, not at others.
pub struct OnWake<F> {
    fut: Pin<Box<F>>,
    flag: Arc<Flag>,
    waker: Waker,
}

impl<F: Future> OnWake<F> {
    pub fn new(fut: F) -> OnWake<F> {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        OnWake {
            fut: Box::pin(fut),
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // The task first: a wake-up after the swap below then reaches it.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.fut
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `open` is set (and woken through the waker it kept).
    struct Gate {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polled_only_when_its_own_waker_fired() {
        let polls = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let gate = OnWake::new(Gate {
            polls: polls.clone(),
            open: open.clone(),
            waker: waker.clone(),
        });
        tokio::pin!(gate);
        // Ten wake-ups of the task that the gate did not ask for: one poll of the gate.
        for _ in 0..10 {
            let mut cx = Context::from_waker(Waker::noop());
            assert!(gate.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Opened and woken from another task: the waiting task gets it.
        let opener = {
            let (open, waker) = (open.clone(), waker.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                open.store(true, Ordering::SeqCst);
                if let Some(w) = waker.lock().unwrap().take() {
                    w.wake();
                }
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), gate)
            .await
            .expect("the wake-up reached the task");
        opener.await.unwrap();
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
