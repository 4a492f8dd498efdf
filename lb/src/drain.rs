//! Draining the whole balancer (`POST /drain`, `lb drain`), for a rolling upgrade of several
//! balancers behind one network load balancer.
//!
//! While the balancer drains, `/ready` answers 503 so the load balancer in front stops sending
//! it new connections; everything else goes on: established users keep their connections, open
//! WebSockets keep flowing (and new ones open), and a connection that still arrives is served.
//! Each answer from a node carries `Connection: close` (but a 401, whose NTLM challenge is bound
//! to its connection), so browsers open their next connection through the load balancer in
//! front, which sends it to another balancer; idle keep-alive connections end within
//! `listener.header_read_timeout`. At the
//! optional deadline the WebSockets still open are closed with code 1001 ("going away"); Qlik's
//! client reconnects, through another balancer, to the same node (the signed route cookie).
//! The balancer is *drained* when no client connection and no WebSocket is left: it can then
//! be stopped or upgraded without a user noticing. `POST /ready` (or `/undrain`) ends a drain.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The balancer-wide drain flag, its start and deadline.
#[derive(Debug, Default)]
pub struct Drain {
    active: AtomicBool,
    /// Bumped by every start and stop: a deadline task acts only for its own drain.
    epoch: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    since_unix_ms: u64,
    /// Clock milliseconds ([`clock::now_ms`]) of the deadline.
    deadline_ms: Option<u64>,
    deadline_unix_ms: Option<u64>,
}

/// What `/status` and the drain endpoints show of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainInfo {
    pub draining: bool,
    pub since_unix_ms: Option<u64>,
    pub deadline_unix_ms: Option<u64>,
    pub deadline_passed: bool,
}

impl Drain {
    /// True while the balancer drains.
    pub fn is_draining(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts a drain, or changes the deadline of the one in progress (`None` keeps it).
    /// Returns the epoch a deadline task must check (a new deadline replaces the old one's
    /// task; a repeated drain without one leaves it be).
    pub fn start(&self, deadline: Option<Duration>) -> u64 {
        let mut g = self.lock();
        let fresh = !self.active.load(Ordering::Relaxed);
        if fresh {
            g.since_unix_ms = unix_ms();
            g.deadline_ms = None;
            g.deadline_unix_ms = None;
        }
        if let Some(d) = deadline {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            g.deadline_ms = Some(clock::now_ms().saturating_add(ms));
            g.deadline_unix_ms = Some(unix_ms().saturating_add(ms));
        }
        self.active.store(true, Ordering::Relaxed);
        if fresh || deadline.is_some() {
            self.epoch.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.epoch.load(Ordering::Relaxed)
        }
    }

    /// Ends a drain; returns whether one was in progress.
    pub fn stop(&self) -> bool {
        let mut g = self.lock();
        let was = self.active.swap(false, Ordering::Relaxed);
        if was {
            g.deadline_ms = None;
            g.deadline_unix_ms = None;
        }
        self.epoch.fetch_add(1, Ordering::Relaxed);
        was
    }

    /// True when `epoch` is still the drain in force (no start or stop since).
    pub fn is_epoch(&self, epoch: u64) -> bool {
        self.is_draining() && self.epoch.load(Ordering::Relaxed) == epoch
    }

    pub fn info(&self) -> DrainInfo {
        let g = self.lock();
        let draining = self.is_draining();
        DrainInfo {
            draining,
            since_unix_ms: draining.then_some(g.since_unix_ms),
            deadline_unix_ms: if draining { g.deadline_unix_ms } else { None },
            deadline_passed: draining && g.deadline_ms.is_some_and(|d| clock::now_ms() >= d),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_stop_and_epochs() {
        let d = Drain::default();
        assert!(!d.is_draining());
        let e1 = d.start(None);
        assert!(d.is_draining());
        assert!(d.info().since_unix_ms.is_some());
        assert!(d.info().deadline_unix_ms.is_none());
        let e2 = d.start(Some(Duration::from_secs(60)));
        assert!(
            !d.is_epoch(e1),
            "a new deadline replaces the old one's task"
        );
        assert!(d.is_epoch(e2));
        assert_eq!(
            d.start(None),
            e2,
            "a repeated drain keeps the deadline and its task"
        );
        let i = d.info();
        assert!(i.deadline_unix_ms.is_some() && !i.deadline_passed);
        assert!(d.stop());
        assert!(!d.is_epoch(e2), "an ended drain's deadline does nothing");
        assert_eq!(d.info().since_unix_ms, None);
        assert_eq!(d.info().deadline_unix_ms, None);
        assert!(!d.stop());
    }

    #[test]
    fn a_zero_deadline_has_passed() {
        let d = Drain::default();
        d.start(Some(Duration::ZERO));
        assert!(d.info().deadline_passed);
    }
}
