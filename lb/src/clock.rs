//! A process-wide monotonic clock in milliseconds, cheap enough for the hot path.
//!
//! It reads the kernel's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, updated each timer
//! tick: 1 to 4 ms on Linux): a copy of a word the kernel keeps, without reading the CPU's time
//! counter. What it times (idle and stall timeouts, penalties, slow start, last-seen seconds)
//! needs no finer resolution; request durations are measured with [`std::time::Instant`].

use std::sync::OnceLock;

#[allow(unsafe_code)]
fn coarse_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant Linux has had since
    // 2.6.32. It cannot fail with these arguments, and `t` stays zero if it did.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

fn start() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(coarse_ms)
}

/// Milliseconds since the first call in this process (never 0 after start-up).
pub fn now_ms() -> u64 {
    let start = start();
    coarse_ms().saturating_sub(start) + 1
}

/// Seconds since the first call in this process.
pub fn now_secs() -> u32 {
    (now_ms() / 1000) as u32
}
