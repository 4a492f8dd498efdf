//! Who is still on a node taken out of rotation: the measure behind "drained" in `/status`,
//! the status page and `lb_node_drained`, so an operator can patch a QPS node without logging
//! anyone out.
//!
//! A Qlik user with an app or the hub open holds a WebSocket; a user between clicks shows
//! through requests: a learned Qlik session seen recently, or any request (route-cookie users
//! have no learned session on this balancer). A node is **drained** when it takes no new
//! sessions (admin `drain` or `maint`, or removed by a reload), and it has no request in
//! flight, no open WebSocket, no learned session seen and no request within the last
//! [`RECENT_SECS`] seconds, and, when its engine's telemetry is fresh, no active engine session
//! (`session.active`: patching the node stops its engine too).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::snapshot::Node;
use crate::state::State;
use crate::telemetry::TelemetryState;
use crate::upstream::AdminState;

/// The window of "seen recently".
pub const RECENT_SECS: u32 = 300;

/// The rule, as `/status` spells it.
pub const RULE: &str = "out of rotation, no request in flight, no open WebSocket, no learned \
    session seen and no request in the last 300 s, and no active engine session (when \
    telemetry is fresh)";

/// What a node's users look like now.
#[derive(Debug, Clone, Copy)]
pub struct Users {
    pub out_of_rotation: bool,
    pub in_flight: i64,
    pub open_websockets: i64,
    pub learned_sessions: usize,
    pub recent_sessions: usize,
    pub last_request_age_secs: Option<u64>,
    pub engine_sessions_active: Option<u64>,
}

impl Users {
    pub fn of(
        state: &State,
        n: &Node,
        counts: &HashMap<u32, (usize, usize)>,
        now_ms: u64,
    ) -> Users {
        let st = &n.state;
        let (learned_sessions, recent_sessions) =
            counts.get(&st.idx.0).copied().unwrap_or_default();
        let last = st.last_request_ms();
        let engine_sessions_active = state.telemetry.status(&n.id).and_then(|e| {
            matches!(e.state, TelemetryState::Fresh)
                .then(|| e.sample.as_ref().map(|s| s.sessions_active))
                .flatten()
        });
        Users {
            out_of_rotation: n.retiring_until_ms.is_some() || st.admin_state() != AdminState::Ready,
            in_flight: st.in_flight.load(Ordering::Relaxed),
            open_websockets: st.open_tunnels.load(Ordering::Relaxed),
            learned_sessions,
            recent_sessions,
            last_request_age_secs: (last > 0).then(|| now_ms.saturating_sub(last) / 1000),
            engine_sessions_active,
        }
    }

    /// The rule of [`RULE`].
    pub fn drained(&self) -> bool {
        self.out_of_rotation
            && self.in_flight <= 0
            && self.open_websockets <= 0
            && self.recent_sessions == 0
            && self
                .last_request_age_secs
                .is_none_or(|a| a >= u64::from(RECENT_SECS))
            && self.engine_sessions_active.is_none_or(|s| s == 0)
    }

    pub fn json(&self) -> Value {
        json!({
            "out_of_rotation": self.out_of_rotation,
            "in_flight": self.in_flight,
            "open_websockets": self.open_websockets,
            "learned_sessions": self.learned_sessions,
            "recent_sessions": self.recent_sessions,
            "last_request_age_seconds": self.last_request_age_secs,
            "engine_sessions_active": self.engine_sessions_active,
            "drained": self.drained(),
        })
    }
}

/// The sticky table's counts by node index (all, recent), with the window's start.
pub fn session_counts(state: &State) -> HashMap<u32, (usize, usize)> {
    let since = crate::clock::now_secs().saturating_sub(RECENT_SECS);
    state.sticky.count_by_node_since(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users {
            out_of_rotation: true,
            in_flight: 0,
            open_websockets: 0,
            learned_sessions: 4,
            recent_sessions: 0,
            last_request_age_secs: Some(301),
            engine_sessions_active: Some(0),
        }
    }

    #[test]
    fn each_sign_of_a_user_keeps_a_node_from_drained() {
        assert!(users().drained(), "old sessions alone do not count");
        assert!(Users {
            last_request_age_secs: None,
            engine_sessions_active: None,
            ..users()
        }
        .drained());
        for u in [
            Users {
                out_of_rotation: false,
                ..users()
            },
            Users {
                in_flight: 1,
                ..users()
            },
            Users {
                open_websockets: 1,
                ..users()
            },
            Users {
                recent_sessions: 1,
                ..users()
            },
            Users {
                last_request_age_secs: Some(10),
                ..users()
            },
            Users {
                engine_sessions_active: Some(2),
                ..users()
            },
        ] {
            assert!(!u.drained(), "{u:?}");
        }
    }
}
