//! Slow start: for `health.slow_start` after a node came back, it takes a growing share of new
//! sessions.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::NodeState;

/// The smallest share of new sessions a node takes at the start of its slow start window.
pub const SLOW_START_MIN_SHARE: f64 = 0.05;

/// Slow start: may node `state` take a new session now? During `window` after the node came
/// back (`up_since_ms`), it admits a share of new sessions growing linearly from 5% to 100%;
/// outside the window, with a zero window or a node never marked up again, always.
pub fn slow_start_admits(state: &NodeState, now_ms: u64, window: Duration) -> bool {
    let up_since = state.up_since_ms.load(Ordering::Relaxed);
    if slow_start_share(up_since, now_ms, window).is_none() {
        return true;
    }
    admits_with(up_since, now_ms, window, rand::random::<f64>())
}

/// True while node `state` is within its slow start window.
pub fn in_slow_start(state: &NodeState, now_ms: u64, window: Duration) -> bool {
    slow_start_share(state.up_since_ms.load(Ordering::Relaxed), now_ms, window).is_some()
}

/// The share of new sessions a node admits, or `None` outside the slow start window.
fn slow_start_share(up_since_ms: u64, now_ms: u64, window: Duration) -> Option<f64> {
    let w = window.as_millis() as u64;
    if w == 0 || up_since_ms == 0 || now_ms >= up_since_ms.saturating_add(w) {
        return None;
    }
    let elapsed = now_ms.saturating_sub(up_since_ms);
    Some((elapsed as f64 / w as f64).clamp(SLOW_START_MIN_SHARE, 1.0))
}

/// [`slow_start_admits`] with the random draw `r` in `[0, 1)` given.
fn admits_with(up_since_ms: u64, now_ms: u64, window: Duration, r: f64) -> bool {
    match slow_start_share(up_since_ms, now_ms, window) {
        None => true,
        Some(share) => r < share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn outside_the_window_always_admits() {
        // Never came back (0), zero window, window over.
        assert!(admits_with(0, 5_000, W, 0.999));
        assert!(admits_with(1_000, 1_500, Duration::ZERO, 0.999));
        assert!(admits_with(1_000, 11_000, W, 0.999));
        assert!(admits_with(1_000, 50_000, W, 0.999));
    }

    #[test]
    fn share_grows_linearly_with_a_floor() {
        // Just back: only the 5% floor.
        assert!(admits_with(1_000, 1_000, W, 0.04));
        assert!(!admits_with(1_000, 1_000, W, 0.05));
        assert!(!admits_with(1_000, 1_200, W, 0.06));
        // A quarter in: 25%.
        assert!(admits_with(1_000, 3_500, W, 0.24));
        assert!(!admits_with(1_000, 3_500, W, 0.26));
        // Halfway: 50%.
        assert!(admits_with(1_000, 6_000, W, 0.49));
        assert!(!admits_with(1_000, 6_000, W, 0.51));
        // Almost done: 99%.
        assert!(admits_with(1_000, 10_900, W, 0.98));
        assert!(!admits_with(1_000, 10_900, W, 0.995));
    }

    #[test]
    fn admitted_fraction_over_many_draws_matches_the_share() {
        let draws = 1_000;
        let admitted = (0..draws)
            .filter(|i| admits_with(1_000, 4_000, W, *i as f64 / draws as f64))
            .count();
        assert_eq!(admitted, 300);
    }
}
