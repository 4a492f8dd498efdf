//! Every node id ever configured in this process, with its live state.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::node::{NodeIdx, NodeState};

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
        let st = Arc::new(NodeState::new(id.clone(), NodeIdx(all.len() as u32)));
        all.push(st.clone());
        self.nodes.insert(id, st.clone());
        st
    }

    pub fn get(&self, id: &str) -> Option<Arc<NodeState>> {
        self.nodes.get(id).map(|n| n.clone())
    }

    /// Every node ever configured, by index.
    pub fn all(&self) -> Vec<Arc<NodeState>> {
        self.by_idx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn by_idx(&self, idx: NodeIdx) -> Option<Arc<NodeState>> {
        self.by_idx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(idx.0 as usize)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::clock;
    use crate::upstream::AdminState;

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
        let other = r.get_or_create("qps2");
        for _ in 0..100 {
            assert!(!other.note_error(0, 60_000, 60_000));
        }
        assert!(other.usable(clock::now_ms()));
        assert_eq!(other.failures_total.load(Ordering::Relaxed), 100);
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
