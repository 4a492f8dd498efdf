//! A client connection's place in the connection limits: counted in `open_connections` (and,
//! with `max_connections_per_client`, in its client's slots) from accept to the end of the
//! connection and of its WebSocket tunnel, whichever comes last.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::state::State;

/// What an open client connection holds: its place in `open_connections` and, with
/// `listener.max_connections_per_client`, its client's slot. Released when the connection and
/// its tunnel, if it upgraded, are both gone.
pub(crate) struct ConnHold {
    state: Arc<State>,
    client: Option<IpAddr>,
}

impl std::fmt::Debug for ConnHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHold")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl ConnHold {
    pub(crate) fn new(state: &Arc<State>) -> ConnHold {
        state.open_connections.fetch_add(1, Ordering::Relaxed);
        state.metrics_handles.open_connections.increment(1.0);
        ConnHold {
            state: state.clone(),
            client: None,
        }
    }

    /// Takes a slot of client `ip`; false when it has `listener.max_connections_per_client`.
    pub(crate) fn take_slot(&mut self, ip: IpAddr, listener: usize) -> bool {
        let max = self
            .state
            .snapshot
            .load()
            .config
            .listener_at(listener)
            .max_connections_per_client;
        if max == 0 {
            return true;
        }
        let mut n = self.state.per_client.entry(ip).or_insert(0);
        if *n as usize >= max {
            return false;
        }
        *n += 1;
        drop(n);
        self.client = Some(ip);
        true
    }
}

impl Drop for ConnHold {
    fn drop(&mut self) {
        if let Some(ip) = self.client {
            self.state.per_client.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
        self.state.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.state.metrics_handles.open_connections.decrement(1.0);
    }
}
