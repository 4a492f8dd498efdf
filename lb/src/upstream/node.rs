//! The live state of one node: health verdict, passive marks, admin state, counters. Shared
//! by every snapshot that names the node, so a reload neither resets counters nor forgets
//! that a node is down.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::clock;

/// Stable small number of a node id for the life of the process (never reused); the sticky
/// table stores it instead of the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdx(pub u32);

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
    pub idx: NodeIdx,
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
    /// Clock milliseconds of the last request sent to this node (to the second): how a drained
    /// node's users who hold only a route cookie are seen.
    last_request_ms: AtomicU64,
    /// Consecutive active check results, for rise/fall.
    pub check_streak: AtomicU32,
    /// Passive error window: its start (clock ms) and the errors counted in it.
    err_window_ms: AtomicU64,
    err_count: AtomicU32,
    /// Cancelled to close every tunnel of this node (removed node past its drain deadline).
    tunnels_cancel: Mutex<CancellationToken>,
}

impl NodeState {
    pub(super) fn new(id: Arc<str>, idx: NodeIdx) -> NodeState {
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
            last_request_ms: AtomicU64::new(0),
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

    /// A request goes to this node. Written at most once a second, so the cache line stays
    /// shared between workers.
    #[inline]
    pub fn note_request(&self, now_ms: u64) {
        let last = self.last_request_ms.load(Ordering::Relaxed);
        if last == 0 || last + 1000 <= now_ms {
            self.last_request_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Clock milliseconds of the last request sent to this node (0: none yet).
    pub fn last_request_ms(&self) -> u64 {
        self.last_request_ms.load(Ordering::Relaxed)
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
