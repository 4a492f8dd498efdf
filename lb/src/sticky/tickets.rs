//! Qlik tickets made through the REST API listener: ticket id -> the node that made it, until
//! the ticket's life is over (a QPS ticket is valid about a minute, once, on its own node).
//!
//! A browser arriving on a users' listener with `?qlikTicket=<id>` goes to that node. Tickets
//! are few and short-lived; expired ones are dropped by [`Tickets::sweep`] (the sticky
//! sweeper), and a lookup never returns one past its life.

use dashmap::DashMap;

use super::table::SessionKey;
use crate::clock;

/// Learned tickets, bounded (the oldest go first past the bound).
#[derive(Debug)]
pub struct Tickets {
    map: DashMap<SessionKey, (u32, u64), foldhash::fast::RandomState>,
    max: usize,
}

impl Tickets {
    pub fn new(max: usize) -> Tickets {
        Tickets {
            map: DashMap::default(),
            max,
        }
    }

    /// Pins ticket `id` to node `node` (a [`NodeIdx`](crate::upstream::NodeIdx) number) for
    /// `ttl_ms`. The one place tickets are learned.
    pub fn learn_ticket(&self, id: &[u8], node: u32, ttl_ms: u64) {
        if self.map.len() >= self.max {
            self.sweep();
        }
        if self.map.len() < self.max {
            let until = clock::now_ms().saturating_add(ttl_ms);
            self.map.insert(SessionKey::from_value(id), (node, until));
        }
    }

    /// The node of a live ticket.
    pub fn node_of_ticket(&self, id: &[u8]) -> Option<u32> {
        let e = self.map.get(&SessionKey::from_value(id))?;
        let (node, until) = *e;
        (clock::now_ms() < until).then_some(node)
    }

    /// Drops expired tickets; returns how many.
    pub fn sweep(&self) -> usize {
        let now = clock::now_ms();
        let before = self.map.len();
        self.map.retain(|_, (_, until)| now < *until);
        before - self.map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The value of the `qlikTicket` query parameter of a request target, if any.
pub fn ticket_in_query(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "qlikTicket" && !v.is_empty() && v.len() <= 256).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_pin_until_their_life_ends() {
        let t = Tickets::new(10);
        t.learn_ticket(b"abc", 2, 60_000);
        t.learn_ticket(b"old", 1, 0);
        assert_eq!(t.node_of_ticket(b"abc"), Some(2));
        assert_eq!(t.node_of_ticket(b"old"), None);
        assert_eq!(t.node_of_ticket(b"nope"), None);
        assert_eq!(t.sweep(), 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn query_parameter() {
        assert_eq!(ticket_in_query("a=1&qlikTicket=K1"), Some("K1"));
        assert_eq!(ticket_in_query("qlikTicket="), None);
        assert_eq!(ticket_in_query("xqlikTicket=K"), None);
        assert_eq!(ticket_in_query(""), None);
    }
}
