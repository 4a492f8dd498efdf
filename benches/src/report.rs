//! Measurements of a scenario run: latency summaries, stickiness accounting, counters shared by
//! the virtual users, and the final [`Report`] (table and JSON).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// Summary of a histogram of microsecond values.
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// A histogram for microsecond latencies from 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one response says about a user's stickiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Answered by the user's node (or the first answer, which fixes it).
    Sticky,
    /// A 401 (session unknown to the node) or an answer from another node.
    Violation,
    /// No node header (e.g. an error page of the balancer): not a stickiness fact.
    Unknown,
}

/// The node a user is pinned to, learned from its first answered response.
#[derive(Debug, Clone, Default)]
pub struct Stickiness {
    first: Option<String>,
}

impl Stickiness {
    /// A user with no answer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The user's node, once known.
    pub fn node(&self) -> Option<&str> {
        self.first.as_deref()
    }

    /// Accounts one response (`status`, `X-Sim-Node`).
    pub fn observe(&mut self, status: u16, node: Option<&str>) -> Observation {
        if status == 401 {
            return Observation::Violation;
        }
        let Some(node) = node else {
            return Observation::Unknown;
        };
        match &self.first {
            None => {
                self.first = Some(node.to_string());
                Observation::Sticky
            }
            Some(f) if f == node => Observation::Sticky,
            Some(_) => Observation::Violation,
        }
    }
}

const MAX_ERROR_SAMPLES: usize = 10;

/// Counters and histograms shared by the virtual users of one run.
pub struct Recorder {
    http: Mutex<Histogram<u64>>,
    ws: Mutex<Histogram<u64>>,
    pub requests: AtomicU64,
    pub messages: AtomicU64,
    pub errors: AtomicU64,
    pub violations: AtomicU64,
    pub rejections_401: AtomicU64,
    /// Answers that sent a signed-in user to log in again (401 or a redirect to a login).
    pub sessions_lost: AtomicU64,
    pub users_served: AtomicU64,
    pub ws_opened: AtomicU64,
    pub ws_open_at_end: AtomicU64,
    pub bytes: AtomicU64,
    nodes: Mutex<HashMap<String, u64>>,
    error_samples: Mutex<BTreeMap<String, u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            http: Mutex::new(new_histogram()),
            ws: Mutex::new(new_histogram()),
            requests: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            rejections_401: AtomicU64::new(0),
            sessions_lost: AtomicU64::new(0),
            users_served: AtomicU64::new(0),
            ws_opened: AtomicU64::new(0),
            ws_open_at_end: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            nodes: Mutex::new(HashMap::new()),
            error_samples: Mutex::new(BTreeMap::new()),
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl Recorder {
    /// A fresh recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// One HTTP response: latency, node counts and stickiness (when `sticky` is given).
    /// Returns the observation.
    pub fn http_response(
        &self,
        latency: Duration,
        status: u16,
        node: Option<&str>,
        sticky: Option<&mut Stickiness>,
    ) -> Observation {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let _ = self.http.lock().unwrap().record(micros(latency));
        self.count_node(node);
        self.status(status, node, sticky)
    }

    /// A response or upgrade answer: 401 and stickiness accounting, 5xx and other 4xx as errors.
    pub fn status(
        &self,
        status: u16,
        node: Option<&str>,
        sticky: Option<&mut Stickiness>,
    ) -> Observation {
        let obs = match sticky {
            Some(s) => s.observe(status, node),
            None if status == 401 => Observation::Violation,
            None => Observation::Unknown,
        };
        if status == 401 {
            self.rejections_401.fetch_add(1, Ordering::Relaxed);
        }
        if obs == Observation::Violation {
            self.violations.fetch_add(1, Ordering::Relaxed);
        } else if status >= 400 {
            self.error(format!("HTTP {status}"));
        }
        obs
    }

    /// Counts an answer by `node`.
    pub fn count_node(&self, node: Option<&str>) {
        let node = node.unwrap_or("(none)");
        let mut m = self.nodes.lock().unwrap();
        match m.get_mut(node) {
            Some(c) => *c += 1,
            None => {
                m.insert(node.to_string(), 1);
            }
        }
    }

    /// One WebSocket round trip.
    pub fn ws_message(&self, rtt: Duration, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let _ = self.ws.lock().unwrap().record(micros(rtt));
    }

    /// One error, with a short description kept as a sample.
    pub fn error(&self, what: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.error_samples.lock().unwrap();
        let what = what.into();
        if let Some(c) = s.get_mut(&what) {
            *c += 1;
        } else if s.len() < MAX_ERROR_SAMPLES {
            s.insert(what, 1);
        }
    }

    /// Builds the report of a run that lasted `elapsed`.
    pub fn report(&self, scenario: &str, target: &str, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let requests = self.requests.load(Ordering::Relaxed);
        let messages = self.messages.load(Ordering::Relaxed);
        let http = LatencySummary::from_histogram(&self.http.lock().unwrap());
        let ws = LatencySummary::from_histogram(&self.ws.lock().unwrap());
        Report {
            scenario: scenario.to_string(),
            target: target.to_string(),
            duration_secs: round3(secs),
            requests,
            messages,
            errors: self.errors.load(Ordering::Relaxed),
            violations: self.violations.load(Ordering::Relaxed),
            rejections_401: self.rejections_401.load(Ordering::Relaxed),
            sessions_lost: self.sessions_lost.load(Ordering::Relaxed),
            users_served: self.users_served.load(Ordering::Relaxed),
            requests_per_sec: round3(requests as f64 / secs),
            messages_per_sec: round3(messages as f64 / secs),
            http_latency: (http.count > 0).then_some(http),
            ws_latency: (ws.count > 0).then_some(ws),
            ws_opened: self.ws_opened.load(Ordering::Relaxed),
            ws_open_at_end: self.ws_open_at_end.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            nodes: self
                .nodes
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            error_samples: self.error_samples.lock().unwrap().clone(),
            ..Report::default()
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The result of one scenario run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    /// Load generator worker threads.
    pub threads: usize,
    /// Virtual users / connections / WebSockets asked for.
    pub users: u64,
    pub duration_secs: f64,
    /// HTTP responses received (any status).
    pub requests: u64,
    /// WebSocket echo round trips completed.
    pub messages: u64,
    pub errors: u64,
    /// Stickiness violations: 401s and answers from another node than the user's first one.
    pub violations: u64,
    pub rejections_401: u64,
    /// Signed-in users sent to log in again (401 or a redirect to an authentication module).
    #[serde(default)]
    pub sessions_lost: u64,
    /// The request rate limit of the run, per second.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Users that completed their journey (qlik) or connections that ran (others).
    pub users_served: u64,
    pub requests_per_sec: f64,
    pub messages_per_sec: f64,
    pub http_latency: Option<LatencySummary>,
    /// WebSocket round-trip latency.
    pub ws_latency: Option<LatencySummary>,
    pub ws_opened: u64,
    pub ws_open_at_end: u64,
    /// WebSocket payload bytes echoed.
    pub bytes: u64,
    /// Balancer resident memory before opening the WebSockets (ws-idle with a pid), KiB.
    pub rss_before_kb: Option<u64>,
    /// Balancer resident memory with all WebSockets open, KiB.
    pub rss_open_kb: Option<u64>,
    /// (rss_open - rss_before) / opened, KiB.
    pub rss_per_tunnel_kb: Option<f64>,
    /// Balancer resident memory 5 s after every WebSocket closed, KiB.
    pub rss_closed_kb: Option<u64>,
    /// Answers per simulated node (`X-Sim-Node`).
    pub nodes: BTreeMap<String, u64>,
    /// Distinct error descriptions with their counts (first few only).
    pub error_samples: BTreeMap<String, u64>,
}

impl Report {
    /// Whether the run had no error and no violation.
    pub fn is_clean(&self) -> bool {
        self.errors == 0 && self.violations == 0
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> std::io::Result<()> {
        let s = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, s + "\n")
    }

    /// A readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<22} {v}");
        };
        let _ = writeln!(s, "scenario {} -> {}", self.scenario, self.target);
        row(&mut s, "threads", self.threads.to_string());
        row(&mut s, "users/connections", self.users.to_string());
        row(&mut s, "duration", format!("{:.2} s", self.duration_secs));
        row(&mut s, "requests", self.requests.to_string());
        if self.requests > 0 {
            row(
                &mut s,
                "requests/s",
                format!("{:.0}", self.requests_per_sec),
            );
        }
        if self.messages > 0 {
            row(&mut s, "ws messages", self.messages.to_string());
            row(
                &mut s,
                "ws messages/s",
                format!("{:.0}", self.messages_per_sec),
            );
        }
        if self.ws_opened > 0 {
            row(&mut s, "ws opened", self.ws_opened.to_string());
            if self.scenario == "ws-idle" {
                row(&mut s, "ws open at end", self.ws_open_at_end.to_string());
            }
        }
        row(&mut s, "users served", self.users_served.to_string());
        if let Some(r) = self.rate_limit {
            row(&mut s, "rate limit", format!("{r} /s"));
        }
        if self.sessions_lost > 0 {
            row(&mut s, "sessions lost", self.sessions_lost.to_string());
        }
        row(&mut s, "errors", self.errors.to_string());
        row(
            &mut s,
            "stickiness violations",
            format!("{} ({} x 401)", self.violations, self.rejections_401),
        );
        let lat = |s: &mut String, name: &str, l: &LatencySummary| {
            let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
            let _ = writeln!(
                s,
                "  {name:<22} p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  (n={})",
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.max_us),
                l.count
            );
        };
        if let Some(l) = &self.http_latency {
            lat(&mut s, "http latency", l);
        }
        if let Some(l) = &self.ws_latency {
            lat(&mut s, "ws round trip", l);
        }
        if let (Some(b), Some(o)) = (self.rss_before_kb, self.rss_open_kb) {
            row(&mut s, "balancer rss", format!("{b} KiB -> {o} KiB"));
        }
        if let Some(p) = self.rss_per_tunnel_kb {
            row(&mut s, "rss per tunnel", format!("{p:.2} KiB"));
        }
        if let Some(c) = self.rss_closed_kb {
            row(&mut s, "rss 5 s after close", format!("{c} KiB"));
        }
        if !self.nodes.is_empty() {
            let nodes: Vec<String> = self.nodes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row(&mut s, "answers per node", nodes.join(" "));
        }
        for (e, c) in &self.error_samples {
            row(&mut s, "error sample", format!("{c} x {e}"));
        }
        s
    }
}

/// Resident memory (`VmRSS`) of process `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&s)
}

/// Resident memory of process `pid` plus its direct children (e.g. nginx's master and its
/// workers), in KiB.
pub fn rss_tree_kb(pid: u32) -> Option<u64> {
    let mut total = rss_kb(pid)?;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            if parent_of_stat(&stat) == Some(pid) {
                total += rss_kb(child).unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// The parent pid in a `/proc/<pid>/stat` line (the field after the `(comm)` and the state).
pub fn parent_of_stat(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The `VmRSS` value in KiB of a `/proc/<pid>/status` text.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix("VmRSS:")?;
        v.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50_us), "{s:?}");
        assert!((899..=901).contains(&s.p90_us), "{s:?}");
        assert!((989..=991).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
        assert!((s.mean_us - 500.5).abs() < 1.0);
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn stickiness_accounting() {
        let mut s = Stickiness::new();
        assert_eq!(s.observe(502, None), Observation::Unknown);
        assert_eq!(s.node(), None);
        assert_eq!(s.observe(200, Some("node2")), Observation::Sticky);
        assert_eq!(s.observe(200, Some("node2")), Observation::Sticky);
        assert_eq!(s.observe(101, Some("node2")), Observation::Sticky);
        assert_eq!(s.observe(200, Some("node1")), Observation::Violation);
        assert_eq!(s.observe(401, Some("node2")), Observation::Violation);
        assert_eq!(s.node(), Some("node2"));

        let r = Recorder::new();
        let mut s = Stickiness::new();
        let d = Duration::from_micros(100);
        r.http_response(d, 200, Some("node1"), Some(&mut s));
        r.http_response(d, 200, Some("node3"), Some(&mut s));
        r.http_response(d, 401, Some("node1"), Some(&mut s));
        r.http_response(d, 503, None, Some(&mut s));
        r.http_response(d, 401, Some("node2"), None);
        let rep = r.report("t", "x", Duration::from_secs(1));
        assert_eq!(rep.requests, 5);
        assert_eq!(rep.violations, 3);
        assert_eq!(rep.rejections_401, 2);
        assert_eq!(rep.errors, 1);
        assert_eq!(rep.error_samples.get("HTTP 503"), Some(&1));
        assert_eq!(rep.nodes.get("node1"), Some(&2));
        assert_eq!(rep.nodes.get("(none)"), Some(&1));
    }

    #[test]
    fn json_round_trip_and_table() {
        let r = Recorder::new();
        r.http_response(Duration::from_millis(2), 200, Some("node1"), None);
        r.ws_message(Duration::from_millis(1), 10);
        let mut rep = r.report("http", "http://127.0.0.1:1", Duration::from_secs(2));
        rep.rss_per_tunnel_kb = Some(12.5);
        assert_eq!(rep.requests_per_sec, 0.5);
        let dir = std::env::temp_dir().join(format!("lb-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        rep.write_json(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["scenario"], "http");
        assert_eq!(v["requests"], 1);
        assert_eq!(v["violations"], 0);
        assert_eq!(v["ws_latency"]["count"], 1);
        assert_eq!(v["rss_per_tunnel_kb"], 12.5);
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rep);
        let _ = std::fs::remove_dir_all(&dir);
        let t = rep.table();
        assert!(t.contains("stickiness violations"));
        assert!(t.contains("node1=1"));
    }

    #[test]
    fn vmrss_parsing() {
        let s = "Name:\tlb\nVmPeak:\t  1000 kB\nVmRSS:\t   5432 kB\nThreads:\t2\n";
        assert_eq!(parse_vmrss(s), Some(5432));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert!(rss_kb(std::process::id()).is_some());
        // Memory moves while other tests run: only check that it is read.
        assert!(rss_tree_kb(std::process::id()).is_some_and(|kb| kb > 0));
        assert_eq!(parent_of_stat("12 (a b) c) S 7 12 12 0"), Some(7));
    }
}
