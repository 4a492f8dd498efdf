//! WebSocket bytes counted while they flow. Each open tunnel counts into its own two counters
//! (touched only by its own task, so no shared cache line per read); the process-wide
//! `lb_websocket_bytes_total` takes what every open tunnel moved since it last looked at each
//! scrape of `/metrics` and `/status`, and the rest when the tunnel closes. An hour-long tunnel
//! therefore shows as a steady rate, and the hot path pays nothing beyond its own counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use metrics::Counter;

/// Bytes moved by one tunnel, and how much of them the process-wide counters already hold.
#[derive(Debug, Default)]
pub struct Counts {
    pub to_node: AtomicU64,
    pub to_client: AtomicU64,
    reported_to_node: AtomicU64,
    reported_to_client: AtomicU64,
}

impl Counts {
    /// Moves what is new since the last report into `to_node` / `to_client`. Callers make sure
    /// one report of a tunnel runs at a time (the registry's shard lock, or the tunnel removed).
    fn report(&self, to_node: &Counter, to_client: &Counter) -> (u64, u64) {
        let n = self.to_node.load(Ordering::Relaxed);
        let c = self.to_client.load(Ordering::Relaxed);
        let dn = n.saturating_sub(self.reported_to_node.swap(n, Ordering::Relaxed));
        let dc = c.saturating_sub(self.reported_to_client.swap(c, Ordering::Relaxed));
        to_node.increment(dn);
        to_client.increment(dc);
        (dn, dc)
    }
}

/// The open tunnels' counters and the process-wide byte counters.
pub struct Meters {
    open: DashMap<u64, Arc<Counts>>,
    next: AtomicU64,
    to_node: Counter,
    to_client: Counter,
    /// Bytes reported so far by this balancer (for `/status`; the counters are process-wide).
    total_to_node: AtomicU64,
    total_to_client: AtomicU64,
}

/// One open tunnel's place among the meters; hand it back to [`Meters::close`].
pub struct Ticket {
    id: u64,
    pub counts: Arc<Counts>,
}

impl Meters {
    pub fn new(to_node: Counter, to_client: Counter) -> Meters {
        Meters {
            open: DashMap::new(),
            next: AtomicU64::new(0),
            to_node,
            to_client,
            total_to_node: AtomicU64::new(0),
            total_to_client: AtomicU64::new(0),
        }
    }

    /// A tunnel opens.
    pub fn open(&self) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let counts = Arc::new(Counts::default());
        self.open.insert(id, counts.clone());
        Ticket { id, counts }
    }

    /// A tunnel closed: what it moved since the last collection is reported now.
    pub fn close(&self, t: Ticket) {
        if let Some((_, c)) = self.open.remove(&t.id) {
            self.add(c.report(&self.to_node, &self.to_client));
        }
    }

    /// Gives back the table's room once most tunnels have closed (a burst's 10,000 slots are
    /// a few hundred KiB). Run by the sweeper.
    pub fn shrink(&self) {
        if self.open.capacity() > 4 * self.open.len() + 256 {
            self.open.shrink_to_fit();
        }
    }

    /// Reports what every open tunnel moved since the last collection. Each shard is read
    /// under its lock, so a tunnel closing meanwhile reports only the rest.
    pub fn collect(&self) {
        let mut sum = (0, 0);
        for e in self.open.iter() {
            let (n, c) = e.value().report(&self.to_node, &self.to_client);
            sum.0 += n;
            sum.1 += c;
        }
        self.add(sum);
    }

    fn add(&self, (n, c): (u64, u64)) {
        self.total_to_node.fetch_add(n, Ordering::Relaxed);
        self.total_to_client.fetch_add(c, Ordering::Relaxed);
    }

    /// Bytes moved by this balancer's tunnels (to the nodes, to the clients), open ones
    /// included; collects first.
    pub fn totals(&self) -> (u64, u64) {
        self.collect();
        (
            self.total_to_node.load(Ordering::Relaxed),
            self.total_to_client.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_tunnels_are_counted_once_whatever_the_order() {
        let m = Meters::new(Counter::noop(), Counter::noop());
        let a = m.open();
        let b = m.open();
        a.counts.to_node.fetch_add(100, Ordering::Relaxed);
        b.counts.to_client.fetch_add(7, Ordering::Relaxed);
        assert_eq!(m.totals(), (100, 7));
        assert_eq!(m.totals(), (100, 7), "a second look adds nothing");
        a.counts.to_node.fetch_add(5, Ordering::Relaxed);
        m.close(a);
        assert_eq!(m.totals(), (105, 7));
        b.counts.to_client.fetch_add(1, Ordering::Relaxed);
        m.close(b);
        assert_eq!(m.totals(), (105, 8));
    }
}
