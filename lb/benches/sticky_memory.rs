//! Memory of the learned session table: resident memory added by 1,000,000 learned Qlik
//! sessions (GUID values, as a QPS issues them). Target: at most 150 MB.
//!
//! `cargo bench -p lb --bench sticky_memory`

use lb::sticky::StickyTable;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n: u64 = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kb();
    let table = StickyTable::new(n as usize, 3600);
    let mut value = String::with_capacity(36);
    for i in 0..n {
        value.clear();
        use std::fmt::Write;
        let _ = write!(
            value,
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            i as u32,
            (i >> 7) & 0xffff,
            i & 0xfff,
            (i >> 3) & 0xfff,
            i.wrapping_mul(0x9e37_79b9)
        );
        table.learn(value.as_bytes(), (i % 8) as u32);
    }
    let after = rss_kb();
    let mb = (after - before) as f64 / 1024.0;
    println!(
        "sticky table: {} sessions, {:.1} MB resident ({:.0} bytes per session); target <= 150 MB: {}",
        table.len(),
        mb,
        (after - before) as f64 * 1024.0 / n as f64,
        if mb <= 150.0 { "met" } else { "NOT met" }
    );
}
