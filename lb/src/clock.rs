//! A process-wide monotonic clock in milliseconds, cheap enough for the hot path.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process (never 0 after start-up).
pub fn now_ms() -> u64 {
    start().elapsed().as_millis() as u64 + 1
}

/// Seconds since the first call in this process.
pub fn now_secs() -> u32 {
    (now_ms() / 1000) as u32
}
