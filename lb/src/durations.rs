//! `lb_request_duration_seconds`: the per-node request duration histogram, recorded on every
//! request and rendered into `/metrics` beside what the Prometheus recorder holds.
//!
//! Fixed buckets of plain atomic counters: a request adds one to its bucket and its duration to
//! the sum. The recorder's own histograms queue every sample in lock-free blocks until the next
//! upkeep and free the blocks through an epoch collector; that costs a memory fence per request
//! and leaves garbage that outlives a burst.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The metric's name.
pub const NAME: &str = crate::metrics_catalog::REQUEST_DURATION;

/// Upper bounds of the buckets: in microseconds, and as printed in `le`.
const BOUNDS: [(u64, &str); 15] = [
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
    (30_000_000, "30"),
];

/// One node's histogram: a count per bucket (not cumulative; the last one past every bound)
/// and the sum of the durations in nanoseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BOUNDS.partition_point(|&(b, _)| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn render(&self, node: &str, out: &mut String) {
        let mut total = 0u64;
        for (i, (_, le)) in BOUNDS.iter().enumerate() {
            total += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{NAME}_bucket{{node=\"{node}\",le=\"{le}\"}} {total}");
        }
        total += self.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{NAME}_bucket{{node=\"{node}\",le=\"+Inf\"}} {total}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{NAME}_sum{{node=\"{node}\"}} {sum}");
        let _ = writeln!(out, "{NAME}_count{{node=\"{node}\"}} {total}");
    }
}

/// Every node's histogram in this process, by node id: a node keeps its figures across reloads,
/// as the recorder's metrics do.
fn all() -> &'static Mutex<BTreeMap<String, Arc<Histogram>>> {
    static ALL: OnceLock<Mutex<BTreeMap<String, Arc<Histogram>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// The histogram of node `id`, made on first use.
pub fn of_node(id: &str) -> Arc<Histogram> {
    let mut all = all().lock().unwrap_or_else(|e| e.into_inner());
    all.entry(id.to_string()).or_default().clone()
}

/// The Prometheus text of the recorder's metrics followed by the request duration histograms.
pub fn render(recorder: &metrics_exporter_prometheus::PrometheusHandle) -> String {
    let mut out = recorder.render();
    let all = all().lock().unwrap_or_else(|e| e.into_inner());
    if all.is_empty() {
        return out;
    }
    let help = crate::metrics_catalog::help_of(NAME).unwrap_or("");
    let _ = writeln!(out, "# HELP {NAME} {help}");
    let _ = writeln!(out, "# TYPE {NAME} histogram");
    for (node, h) in all.iter() {
        h.render(&escape(node), &mut out);
    }
    out.push('\n');
    out
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.record(Duration::from_micros(500)); // on the first bound: in it
        h.record(Duration::from_micros(501));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60)); // past every bound
        let mut out = String::new();
        h.render("q\"1", &mut out);
        let line = |le: &str| {
            out.lines()
                .find(|l| l.contains(&format!("le=\"{le}\"")))
                .unwrap_or_else(|| panic!("no {le} in {out}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(line("0.0005"), "1");
        assert_eq!(line("0.001"), "2");
        assert_eq!(line("0.0025"), "2");
        assert_eq!(line("0.005"), "3");
        assert_eq!(line("30"), "3");
        assert_eq!(line("+Inf"), "4");
        assert!(
            out.contains(&format!("{NAME}_count{{node=\"q\"1\"}} 4")),
            "{out}"
        );
        let sum: f64 = out
            .lines()
            .find(|l| l.starts_with(&format!("{NAME}_sum")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((sum - 60.004001).abs() < 1e-6, "{sum}");
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
