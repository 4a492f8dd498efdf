//! Selection of a node for a new session.
//!
//! The caller has already filtered the nodes to the best eligible tier (healthy, in rotation,
//! in the preferred zone, unsaturated where possible); a [`Selector`] only chooses among equals.
//! Selectors are pure apart from their own rotation counter, and never block.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A node that may take a new session.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// Requests in flight plus open tunnels.
    pub load: i64,
}

/// Chooses one of the candidates for a new session; returns its index in `cands`.
pub trait Selector: Send + Sync + fmt::Debug {
    fn pick(&self, cands: &[Candidate<'_>]) -> Option<usize>;
    fn name(&self) -> &'static str;
}

/// Each candidate in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Selector for RoundRobin {
    fn pick(&self, cands: &[Candidate<'_>]) -> Option<usize> {
        if cands.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % cands.len())
    }
    fn name(&self) -> &'static str {
        "round-robin"
    }
}

/// The candidate with the fewest requests in flight plus open tunnels; ties rotate.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl Selector for LeastConnections {
    fn pick(&self, cands: &[Candidate<'_>]) -> Option<usize> {
        let min = cands.iter().map(|c| c.load).min()?;
        let ties = cands.iter().filter(|c| c.load == min).count();
        let nth = self.next.fetch_add(1, Ordering::Relaxed) % ties;
        cands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.load == min)
            .nth(nth)
            .map(|(i, _)| i)
    }
    fn name(&self) -> &'static str {
        "least-connections"
    }
}

/// Ranks node ids by their engines' telemetry.
pub trait LoadRanking: Send + Sync + fmt::Debug {
    /// The order of `ids`, most preferred first, or `None` when no telemetry of them is fresh.
    fn rank(&self, ids: &[&str]) -> Option<Vec<usize>>;
}

/// The node whose engine ranks first by live telemetry; round robin when none is fresh.
#[derive(Debug)]
pub struct LeastLoaded {
    ranking: Arc<dyn LoadRanking>,
    fallback: RoundRobin,
}

impl LeastLoaded {
    pub fn new(ranking: Arc<dyn LoadRanking>) -> LeastLoaded {
        LeastLoaded {
            ranking,
            fallback: RoundRobin::default(),
        }
    }
}

impl Selector for LeastLoaded {
    fn pick(&self, cands: &[Candidate<'_>]) -> Option<usize> {
        if cands.len() <= 1 {
            return if cands.is_empty() { None } else { Some(0) };
        }
        let ids: Vec<&str> = cands.iter().map(|c| c.id).collect();
        match self.ranking.rank(&ids) {
            Some(order) => order.first().copied().filter(|&i| i < cands.len()),
            None => self.fallback.pick(cands),
        }
    }
    fn name(&self) -> &'static str {
        "least-loaded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(loads: &[i64]) -> Vec<Candidate<'static>> {
        const IDS: [&str; 4] = ["a", "b", "c", "d"];
        loads
            .iter()
            .enumerate()
            .map(|(i, &load)| Candidate { id: IDS[i], load })
            .collect()
    }

    #[test]
    fn round_robin_rotates() {
        let rr = RoundRobin::default();
        let c = candidates(&[0, 0, 0]);
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&c).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.pick(&[]), None);
    }

    #[test]
    fn least_connections_prefers_idle_and_rotates_ties() {
        let lc = LeastConnections::default();
        assert_eq!(lc.pick(&candidates(&[5, 1, 3])), Some(1));
        let c = candidates(&[2, 0, 0, 7]);
        let mut seen = [0; 4];
        for _ in 0..10 {
            seen[lc.pick(&c).unwrap()] += 1;
        }
        assert_eq!(seen, [0, 5, 5, 0]);
    }

    #[derive(Debug)]
    struct Fixed(Option<Vec<usize>>);
    impl LoadRanking for Fixed {
        fn rank(&self, _: &[&str]) -> Option<Vec<usize>> {
            self.0.clone()
        }
    }

    #[test]
    fn least_loaded_follows_ranking_or_falls_back() {
        let ll = LeastLoaded::new(Arc::new(Fixed(Some(vec![2, 0, 1]))));
        assert_eq!(ll.pick(&candidates(&[0, 0, 0])), Some(2));
        let ll = LeastLoaded::new(Arc::new(Fixed(None)));
        let picks: Vec<_> = (0..3)
            .map(|_| ll.pick(&candidates(&[0, 0, 0])).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }
}
