//! The log step: per-node metrics (handles prepared with the snapshot) and one access-log line.

use std::time::Duration;

use http::{Method, StatusCode};

use super::ConnInfo;
use crate::snapshot::{NodePos, Snapshot};
use crate::sticky::Decision;

/// Which node served a request and how it was chosen, when known.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    pub node: Option<NodePos>,
    pub decision: Option<Decision>,
}

/// Records one finished request; `logged` (method and path) is there when the access log is
/// on. The line is formatted here and queued for the log writer thread (see
/// [`crate::logging`]): it never waits for the write.
pub fn record(
    snap: &Snapshot,
    conn: &ConnInfo,
    logged: Option<(&Method, &str)>,
    status: StatusCode,
    served: Served,
    elapsed: Duration,
) {
    let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
    match served.node {
        Some(pos) => {
            let metrics = &snap.node(pos).metrics;
            metrics.requests[class].increment(1);
            metrics.duration.record(elapsed);
            if let Some(d) = served.decision {
                metrics.decisions[d.index()].increment(1);
            }
        }
        None => snap.no_node[class].increment(1),
    }
    let Some((method, path)) = logged else {
        return;
    };
    if !tracing::enabled!(target: "lb::access", tracing::Level::INFO) {
        return;
    }
    let node = served.node.map_or("-", |p| &snap.node(p).id);
    let sticky = served.decision.map_or("-", Decision::as_str);
    let line = crate::logging::AccessLine {
        client: conn.peer,
        client_ip: conn.peer_ip.to_str().unwrap_or("-"),
        method: method.as_str(),
        path,
        status: status.as_u16(),
        node,
        sticky,
        micros: elapsed.as_micros() as u64,
    };
    if !crate::logging::access(&line) {
        tracing::info!(
            target: "lb::access",
            client = %conn.peer,
            method = %method,
            path = path,
            status = status.as_u16(),
            node = node,
            sticky = sticky,
            ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
}
