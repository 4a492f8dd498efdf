//! Every metric the balancer exports, with its HELP text, described once at start-up (before
//! any is recorded, so every family on `/metrics` has its `# HELP` line). Names follow
//! Prometheus' conventions: base units, `_total` for counters; the `process_*` families use the
//! names of Prometheus' own client libraries so that existing dashboards apply.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Name, kind and HELP text of every metric.
pub const CATALOG: &[(&str, Kind, &str)] = &[
    ("lb_build_info", Kind::Gauge, "Always 1; the labels name the running build (version, commit)."),
    ("lb_requests_total", Kind::Counter, "Requests answered, by node (empty: answered by the balancer itself) and status class."),
    ("lb_request_duration_seconds", Kind::Histogram, "Time from the request to the response head, by node."),
    ("lb_proxy_errors_total", Kind::Counter, "Requests the balancer answered with an error of its own, by kind."),
    ("lb_sticky_decisions_total", Kind::Counter, "How each request's node was chosen (learned, cookie, new, redispatch), by node."),
    ("lb_sticky_learned_total", Kind::Counter, "Qlik session cookies learned from node responses."),
    ("lb_sticky_sessions", Kind::Gauge, "Learned Qlik sessions held in the sticky table."),
    ("lb_sticky_evictions_total", Kind::Counter, "Learned sessions dropped to keep the table within sticky.max_sessions."),
    ("lb_sticky_expirations_total", Kind::Counter, "Learned sessions dropped after sticky.session_idle_timeout without use."),
    ("lb_open_connections", Kind::Gauge, "Open client connections on the proxy listener."),
    ("lb_open_websockets", Kind::Gauge, "Open WebSocket tunnels."),
    ("lb_node_open_websockets", Kind::Gauge, "Open WebSocket tunnels, by node."),
    ("lb_websocket_bytes_total", Kind::Counter, "Bytes moved by WebSocket tunnels, by direction (to_node, to_client); open tunnels are counted at each scrape."),
    ("lb_websockets_closed_total", Kind::Counter, "WebSocket tunnels closed, by reason (closed, idle_timeout, closed_by_balancer)."),
    ("lb_connections_refused_total", Kind::Counter, "Client connections refused, by reason."),
    ("lb_tls_handshake_failures_total", Kind::Counter, "Failed or timed-out TLS handshakes with clients."),
    ("lb_health_checks_total", Kind::Counter, "Active health checks of nodes, by node and result (ok, fail)."),
    ("lb_node_up", Kind::Gauge, "Active health check verdict of a node (1 up, 0 down)."),
    ("lb_node_recent_sessions", Kind::Gauge, "Learned Qlik sessions of a node seen within the last 5 minutes."),
    ("lb_node_drained", Kind::Gauge, "1 when a node taken out of rotation (drain, maint, removed) has no user left (see /status: drain.rule), else 0."),
    ("lb_draining", Kind::Gauge, "1 while the whole balancer drains (POST /drain), else 0."),
    ("lb_reloads_total", Kind::Counter, "Configuration reloads, by result (ok, error)."),
    ("lb_admin_actions_total", Kind::Counter, "Admin state changes, by action."),
    ("lb_module_requests_total", Kind::Counter, "Load balancing module API calls, by result."),
    ("lb_module_rank_duration_seconds", Kind::Histogram, "Time to rank the engines of one prioritize call."),
    ("lb_engine_up", Kind::Gauge, "Engine telemetry of a node reachable (1) or not (0)."),
    ("lb_engine_saturated", Kind::Gauge, "Engine of a node saturated (1) or not (0), from telemetry."),
    ("lb_engine_cpu_percent", Kind::Gauge, "Engine CPU use of a node, percent (Qlik's 30-second average)."),
    ("lb_engine_sessions_active", Kind::Gauge, "Active engine sessions of a node (Qlik's session.active)."),
    ("lb_engine_memory_free_bytes", Kind::Gauge, "Free RAM of a node's engine host."),
    ("lb_engine_memory_total_bytes", Kind::Gauge, "Physical RAM of a node's engine host."),
    ("lb_engine_polls_total", Kind::Counter, "Engine telemetry polls, by node and result."),
    ("lb_auth_paired_connections_total", Kind::Counter, "Client connections paired with a node connection of their own (NTLM/Negotiate, connection-bound authentication)."),
    ("lb_rest_learned_total", Kind::Counter, "Tickets and sessions learned from the REST API listener, by kind (ticket, session)."),
    ("lb_shared_store_up", Kind::Gauge, "Shared store reachable (1) or not (0); only with [sticky.shared]."),
    ("lb_shared_store_lookups_total", Kind::Counter, "Store lookups of sessions or tickets unknown here, by result (hit, miss, unavailable)."),
    ("lb_shared_store_writes_total", Kind::Counter, "Entries written to the shared store."),
    ("lb_shared_store_dropped_writes_total", Kind::Counter, "Writes to the shared store lost, by reason (queue_full, store_error)."),
    ("lb_shared_store_timeouts_total", Kind::Counter, "Shared store commands that timed out."),
    ("lb_shared_store_errors_total", Kind::Counter, "Shared store commands that failed."),
    ("lb_shared_store_queued_writes", Kind::Gauge, "Writes waiting in the shared store's queue."),
    ("lb_log_lines_dropped_total", Kind::Counter, "Log lines dropped because the log writer's queue was full (server.log_queue_lines)."),
    ("process_cpu_seconds_total", Kind::Gauge, "User and system CPU time of the balancer process, seconds."),
    ("process_open_fds", Kind::Gauge, "Open file descriptors of the process (sockets included)."),
    ("process_max_fds", Kind::Gauge, "The process's limit of open file descriptors (RLIMIT_NOFILE, systemd's LimitNOFILE)."),
    ("process_resident_memory_bytes", Kind::Gauge, "Resident memory of the process."),
    ("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory of the process."),
    ("process_threads", Kind::Gauge, "Threads of the process."),
    ("process_start_time_seconds", Kind::Gauge, "Start time of the process, seconds since the Unix epoch."),
];

/// The commit the binary was built from (set by the build script when it knows it).
pub const COMMIT: &str = match option_env!("LB_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The request duration histogram, rendered apart from the recorder's metrics
/// (by the proxy's own histograms).
pub const REQUEST_DURATION: &str = "lb_request_duration_seconds";

/// The HELP text of metric `name`.
pub fn help_of(name: &str) -> Option<&'static str> {
    CATALOG.iter().find(|c| c.0 == name).map(|c| c.2)
}

/// Describes every metric of [`CATALOG`] to the installed recorder and sets `lb_build_info`
/// (but [`REQUEST_DURATION`], which is rendered apart).
pub fn describe() {
    for &(name, kind, help) in CATALOG {
        if name == REQUEST_DURATION {
            continue;
        }
        let unit = if name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else if name.ends_with("_bytes") || name.ends_with("_bytes_total") {
            Some(Unit::Bytes)
        } else {
            None
        };
        match (kind, unit) {
            (Kind::Counter, Some(u)) => describe_counter!(name, u, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => describe_gauge!(name, u, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => describe_histogram!(name, u, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
    metrics::gauge!(
        "lb_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => COMMIT
    )
    .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &std::path::Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }

    /// Every metric name in the sources of `lb` and `lb-module-api` is in the catalog, and the
    /// README's metrics table lists every one.
    #[test]
    fn catalog_covers_the_sources_and_the_readme() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut src = String::new();
        sources(&root.join("src"), &mut src);
        sources(&root.join("../lb-module-api/src"), &mut src);
        let names: Vec<&str> = CATALOG.iter().map(|c| c.0).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a metric named twice in CATALOG");
        for lit in src.split('"').skip(1).step_by(2) {
            let is_metric = lit.starts_with("lb_")
                && lit.len() > 3
                && lit.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if is_metric {
                assert!(
                    names.contains(&lit),
                    "metric {lit} has no HELP text in CATALOG"
                );
            }
        }
        let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
        for n in names {
            assert!(
                readme.contains(&format!("`{n}`")),
                "README's metrics table lacks {n}"
            );
        }
    }
}
