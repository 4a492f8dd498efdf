//! QPS nodes: their live state (kept across reloads, keyed by node id) and the selection of a
//! node for a new session.
//!
//! A node's configuration lives in the runtime snapshot; what happens to it (health, admin
//! state, open requests and tunnels) lives in a [`NodeState`] found through the
//! [`NodeRegistry`], so that a reload neither resets counters nor forgets that a node is down.

pub mod pool;
mod select;

pub use select::{Cand, LeastConnections, LeastLoaded, LoadRanking, RoundRobin, Selector};

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::clock;

/// What an operator asked of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation.
    Ready,
    /// No new sessions; pinned sessions continue.
    Drain,
    /// Out of rotation: pinned sessions are redispatched too.
    Maint,
}

impl AdminState {
    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            AdminState::Ready => 0,
            AdminState::Drain => 1,
            AdminState::Maint => 2,
        }
    }
}

/// Live state of one node. Shared by every snapshot that names the node.
#[derive(Debug)]
pub struct NodeState {
    pub id: Arc<str>,
    /// Stable small number of this node id for the life of the process (never reused).
    pub idx: u32,
    admin: AtomicU8,
    /// Result of active health checks (true when no checks are configured).
    healthy: AtomicBool,
    /// Passive health: no new traffic until this time (clock milliseconds).
    down_until_ms: AtomicU64,
    /// Clock milliseconds when the node last became usable (for slow start).
    pub up_since_ms: AtomicU64,
    /// Engine saturation, from telemetry.
    saturated: AtomicBool,
    pub in_flight: AtomicI64,
    pub open_tunnels: AtomicI64,
    pub requests_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub redispatches_total: AtomicU64,
    pub pinned_sessions: AtomicI64,
    /// Consecutive active check results, for rise/fall.
    pub check_streak: AtomicU32,
    /// Passive error window: its start (clock ms) and the errors counted in it.
    err_window_ms: AtomicU64,
    err_count: AtomicU32,
    /// Cancelled to close every tunnel of this node (removed node past its drain deadline).
    tunnels_cancel: Mutex<CancellationToken>,
}

impl NodeState {
    fn new(id: Arc<str>, idx: u32) -> NodeState {
        NodeState {
            id,
            idx,
            admin: AtomicU8::new(0),
            healthy: AtomicBool::new(true),
            down_until_ms: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
            in_flight: AtomicI64::new(0),
            open_tunnels: AtomicI64::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            redispatches_total: AtomicU64::new(0),
            pinned_sessions: AtomicI64::new(0),
            check_streak: AtomicU32::new(0),
            err_window_ms: AtomicU64::new(0),
            err_count: AtomicU32::new(0),
            tunnels_cancel: Mutex::new(CancellationToken::new()),
        }
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    pub fn set_admin_state(&self, s: AdminState) {
        let old = self.admin.swap(s.as_u8(), Ordering::Relaxed);
        if old == AdminState::Maint.as_u8() && s != AdminState::Maint {
            self.up_since_ms.store(clock::now_ms(), Ordering::Relaxed);
        }
    }

    /// Active health check verdict.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, up: bool) {
        let was = self.healthy.swap(up, Ordering::Relaxed);
        if up && !was {
            self.up_since_ms.store(clock::now_ms(), Ordering::Relaxed);
        }
    }

    /// True while a passive failure keeps the node out.
    pub fn passively_down(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// A connection to the node failed: keep it out for `for_ms`.
    pub fn mark_failed(&self, for_ms: u64) {
        let now = clock::now_ms();
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        let prev = self.down_until_ms.swap(now + for_ms, Ordering::Relaxed);
        if prev <= now {
            tracing::warn!(node = %self.id, "node failed: out of rotation for {for_ms} ms");
        }
    }

    /// An error answer (5xx, timeout, broken response). `limit` of them within `window_ms`
    /// take the node out for `for_ms`; returns true when that happened.
    pub fn note_error(&self, limit: u32, window_ms: u64, for_ms: u64) -> bool {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        if limit == 0 {
            return false;
        }
        let now = clock::now_ms();
        let start = self.err_window_ms.load(Ordering::Relaxed);
        let n = if now.saturating_sub(start) > window_ms {
            self.err_window_ms.store(now, Ordering::Relaxed);
            self.err_count.store(1, Ordering::Relaxed);
            1
        } else {
            self.err_count.fetch_add(1, Ordering::Relaxed) + 1
        };
        if n >= limit {
            self.err_count.store(0, Ordering::Relaxed);
            self.failures_total.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(node = %self.id, "{n} errors within {window_ms} ms");
            self.mark_failed(for_ms);
            return true;
        }
        false
    }

    /// The node answered: a passive mark is lifted.
    pub fn mark_ok(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            let prev = self.down_until_ms.swap(0, Ordering::Relaxed);
            if prev > clock::now_ms() {
                self.up_since_ms.store(clock::now_ms(), Ordering::Relaxed);
            }
        }
    }

    pub fn saturated(&self) -> bool {
        self.saturated.load(Ordering::Relaxed)
    }

    pub fn set_saturated(&self, s: bool) {
        self.saturated.store(s, Ordering::Relaxed);
    }

    /// Can the node serve its pinned sessions?
    pub fn usable(&self, now_ms: u64) -> bool {
        self.healthy() && !self.passively_down(now_ms) && self.admin_state() != AdminState::Maint
    }

    /// Can the node take a new session?
    pub fn accepts_new(&self, now_ms: u64) -> bool {
        self.usable(now_ms) && self.admin_state() == AdminState::Ready
    }

    /// Load figure for least-connections: requests in flight plus open tunnels.
    pub fn load(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed) + self.open_tunnels.load(Ordering::Relaxed)
    }

    /// A token cancelled when this node's tunnels must close.
    pub fn tunnels_token(&self) -> CancellationToken {
        self.tunnels_cancel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Close every open tunnel of this node; later tunnels get a fresh token.
    pub fn close_tunnels(&self) {
        let mut t = self
            .tunnels_cancel
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        t.cancel();
        *t = CancellationToken::new();
    }
}

/// Every node id ever configured in this process, with its live state.
#[derive(Debug, Default)]
pub struct NodeRegistry {
    nodes: DashMap<Arc<str>, Arc<NodeState>>,
    by_idx: Mutex<Vec<Arc<NodeState>>>,
}

impl NodeRegistry {
    /// The state of node `id`, created on first sight.
    pub fn get_or_create(&self, id: &str) -> Arc<NodeState> {
        if let Some(n) = self.nodes.get(id) {
            return n.clone();
        }
        let mut all = self.by_idx.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock so that one id gets one index.
        if let Some(n) = self.nodes.get(id) {
            return n.clone();
        }
        let id: Arc<str> = Arc::from(id);
        let st = Arc::new(NodeState::new(id.clone(), all.len() as u32));
        all.push(st.clone());
        self.nodes.insert(id, st.clone());
        st
    }

    pub fn get(&self, id: &str) -> Option<Arc<NodeState>> {
        self.nodes.get(id).map(|n| n.clone())
    }

    pub fn by_idx(&self, idx: u32) -> Option<Arc<NodeState>> {
        self.by_idx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(idx as usize)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_errors_within_the_window_take_a_node_out() {
        let r = NodeRegistry::default();
        let n = r.get_or_create("qps1");
        let now = clock::now_ms();
        assert!(n.usable(now));
        assert!(!n.note_error(3, 60_000, 60_000));
        assert!(!n.note_error(3, 60_000, 60_000));
        assert!(n.usable(clock::now_ms()));
        assert!(
            n.note_error(3, 60_000, 60_000),
            "third error within the window"
        );
        assert!(!n.usable(clock::now_ms()));
        assert!(n.passively_down(clock::now_ms()));
        // Disabled: never out.
        let m = r.get_or_create("qps2");
        for _ in 0..100 {
            assert!(!m.note_error(0, 60_000, 60_000));
        }
        assert!(m.usable(clock::now_ms()));
        assert_eq!(m.failures_total.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn registry_keeps_one_state_per_id() {
        let r = NodeRegistry::default();
        let a = r.get_or_create("a");
        let b = r.get_or_create("b");
        assert!(Arc::ptr_eq(&a, &r.get_or_create("a")));
        assert_ne!(a.idx, b.idx);
        assert!(Arc::ptr_eq(&b, &r.by_idx(b.idx).unwrap()));
        a.set_admin_state(AdminState::Drain);
        assert!(a.usable(clock::now_ms()) && !a.accepts_new(clock::now_ms()));
        a.set_admin_state(AdminState::Maint);
        assert!(!a.usable(clock::now_ms()));
    }
}
