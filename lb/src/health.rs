//! Active health checks of the QPS nodes, and slow start.
//!
//! Every `health.interval`, each node of the current snapshot is checked: an HTTP `GET` of
//! `health.path` on a fresh connection made by the node's own connector (the one the proxy
//! uses: same TLS settings, the certificate checked against the node's `server_name`), or,
//! with an empty path, a plain TCP connect; bounded by `health.timeout`. A status within
//! `health.expect_status` is a success. As in HAProxy, a
//! node goes down after `health.fall` consecutive failures and comes back after `health.rise`
//! consecutive successes; each transition is logged once and flips
//! [`NodeState::set_healthy`], which the proxy reads (a down node gets no new session and its
//! pinned sessions are redispatched).
//!
//! A Qlik Sense proxy has no anonymous health URL: it answers an anonymous `GET /` with a
//! redirect to the login or `401`, hence the defaults `path = "/"` and
//! `expect_status = "200-499"` (a 5xx or no answer is a failure).
//!
//! Metrics: `lb_health_checks_total{node, result="ok"|"fail"}` and `lb_node_up{node}`.
//!
//! Slow start, which begins when a check brings a node back, lives in
//! [`upstream`](crate::upstream::slow_start_admits).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use lb_config::Health;
use tokio::task::JoinSet;

use crate::snapshot::{Node, Snapshot};
use crate::state::State;
use crate::upstream::{NodeConnector, NodeState};

/// How often the configuration is looked at again while checks are disabled.
const DISABLED_POLL: Duration = Duration::from_secs(1);

/// Runs the health checks until `state.shutdown` is cancelled. Interval, path, timeout,
/// rise and fall are read from the current snapshot before every round, so a reload applies
/// at the next round; each node's streak lives in its [`NodeState`] and survives reloads.
pub async fn run(state: Arc<State>) {
    let mut was_enabled = true;
    loop {
        let snap = state.snapshot.load_full();
        let cfg = snap.config.health.clone();
        let wait = if cfg.enabled {
            was_enabled = true;
            let round = check_round(&snap, &cfg);
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = round => {}
            }
            cfg.interval
        } else {
            if was_enabled {
                checks_disabled(&snap);
                was_enabled = false;
            }
            DISABLED_POLL
        };
        drop(snap);
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Checks switched off: nothing would ever bring a down node back, so every node is up.
fn checks_disabled(snap: &Snapshot) {
    for n in &snap.nodes {
        n.state.check_streak.store(0, Ordering::Relaxed);
        if !n.state.healthy() {
            tracing::info!(node = %n.id, "health checks disabled: node considered up");
            n.state.set_healthy(true);
        }
        metrics::gauge!("lb_node_up", "node" => n.id.to_string()).set(1.0);
    }
}

/// Checks every node of a snapshot at once and applies the results.
async fn check_round(snap: &Snapshot, cfg: &Health) {
    let mut set = JoinSet::new();
    for n in &snap.nodes {
        let target = Target::of(n, &cfg.path);
        let (timeout, expect) = (cfg.timeout, cfg.expect_status);
        let state = n.state.clone();
        set.spawn(async move {
            let r = check(&target, timeout, expect).await;
            (state, r)
        });
    }
    while let Some(joined) = set.join_next().await {
        let Ok((state, result)) = joined else {
            continue;
        };
        apply(&state, result, cfg.rise, cfg.fall);
    }
}

/// Where and how to check one node: a `GET` through the node's connector (HTTP or HTTPS), or
/// without one a plain TCP connect.
#[derive(Debug, Clone)]
struct Target {
    connector: NodeConnector,
    get: Option<Get>,
}

#[derive(Debug, Clone)]
struct Get {
    /// The absolute URL, for messages.
    uri: Uri,
    /// The origin-form target sent.
    path: Uri,
    host: HeaderValue,
}

impl Target {
    fn of(n: &Node, path: &str) -> Target {
        let connector = n.pool.connector().clone();
        let web = n.scheme == Scheme::HTTPS || n.scheme == Scheme::HTTP;
        if path.is_empty() || !web {
            return Target {
                connector,
                get: None,
            };
        }
        let uri = Uri::builder()
            .scheme(n.scheme.clone())
            .authority(n.authority.clone())
            .path_and_query(path)
            .build();
        let get = match uri {
            Ok(uri) => match (
                uri.path_and_query().cloned().map(Uri::from),
                HeaderValue::from_str(n.authority.as_str()),
            ) {
                (Some(path), Ok(host)) => Some(Get { uri, path, host }),
                _ => None,
            },
            Err(_) => None,
        };
        Target { connector, get }
    }
}

/// The outcome of one check: `Err` carries a short reason for the log.
type CheckResult = Result<(), String>;

async fn check(target: &Target, timeout: Duration, expect: (u16, u16)) -> CheckResult {
    let connector = &target.connector;
    let Some(get) = &target.get else {
        let addr = connector.addr;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
            Err(_) => Err(format!("connect to {addr}: timed out after {timeout:?}")),
        };
    };
    let req = request(&get.path, &get.host)?;
    let answer = async {
        // Each check opens a fresh connection: a check proves the node still accepts them.
        let mut sender = connector.http1::<Empty<Bytes>>().await?;
        sender.send_request(req).await.map_err(|e| error_chain(&e))
    };
    judge(&get.uri, timeout, expect, answer).await
}

fn request(path: &Uri, host: &HeaderValue) -> Result<Request<Empty<Bytes>>, String> {
    Request::builder()
        .method(Method::GET)
        .uri(path.clone())
        .header(header::HOST, host.clone())
        .header(header::USER_AGENT, "lb-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| e.to_string())
}

/// Waits for the answer to a check request and judges its status.
async fn judge<B>(
    uri: &Uri,
    timeout: Duration,
    expect: (u16, u16),
    answer: impl std::future::Future<Output = Result<http::Response<B>, String>>,
) -> CheckResult {
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(resp)) => {
            let code = resp.status().as_u16();
            if (expect.0..=expect.1).contains(&code) {
                Ok(())
            } else {
                Err(format!(
                    "GET {uri} answered {code}, expected {}-{}",
                    expect.0, expect.1
                ))
            }
        }
        Ok(Err(e)) => Err(format!("GET {uri}: {e}")),
        Err(_) => Err(format!("GET {uri}: timed out after {timeout:?}")),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Applies one check result with rise/fall. `check_streak` counts consecutive results that
/// disagree with the node's current verdict (failures while up, successes while down); a result
/// that agrees resets it.
fn apply(state: &NodeState, result: CheckResult, rise: u32, fall: u32) {
    let node = state.id.to_string();
    let ok = result.is_ok();
    metrics::counter!(
        "lb_health_checks_total",
        "node" => node.clone(),
        "result" => if ok { "ok" } else { "fail" }
    )
    .increment(1);
    let up = state.healthy();
    match step(
        up,
        state.check_streak.load(Ordering::Relaxed),
        ok,
        rise,
        fall,
    ) {
        Step::Streak(n) => {
            state.check_streak.store(n, Ordering::Relaxed);
            if let Err(reason) = &result {
                tracing::debug!(node = %state.id, streak = n, "health check failed: {reason}");
            }
        }
        Step::Flip => {
            state.check_streak.store(0, Ordering::Relaxed);
            state.set_healthy(!up);
            if up {
                let reason = result.err().unwrap_or_default();
                tracing::warn!(node = %state.id, "node DOWN after {fall} failed health checks: {reason}");
            } else {
                tracing::info!(node = %state.id, "node UP after {rise} passed health checks");
            }
        }
    }
    metrics::gauge!("lb_node_up", "node" => node).set(if state.healthy() { 1.0 } else { 0.0 });
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Keep the verdict; the new streak.
    Streak(u32),
    /// Change the verdict (and reset the streak).
    Flip,
}

/// The rise/fall state machine: `up` is the current verdict, `streak` the number of
/// consecutive results against it so far.
fn step(up: bool, streak: u32, ok: bool, rise: u32, fall: u32) -> Step {
    if ok == up {
        return Step::Streak(0);
    }
    let n = streak.saturating_add(1);
    let needed = if up { fall } else { rise }.max(1);
    if n >= needed {
        Step::Flip
    } else {
        Step::Streak(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use crate::upstream::in_slow_start;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn rise_and_fall() {
        // Up: failures count up to `fall`, a success resets.
        assert_eq!(step(true, 0, false, 2, 3), Step::Streak(1));
        assert_eq!(step(true, 1, false, 2, 3), Step::Streak(2));
        assert_eq!(step(true, 2, true, 2, 3), Step::Streak(0));
        assert_eq!(step(true, 2, false, 2, 3), Step::Flip);
        // Down: successes count up to `rise`, a failure resets.
        assert_eq!(step(false, 0, true, 2, 3), Step::Streak(1));
        assert_eq!(step(false, 1, false, 2, 3), Step::Streak(0));
        assert_eq!(step(false, 1, true, 2, 3), Step::Flip);
        // rise/fall of 1 flip at once.
        assert_eq!(step(true, 0, false, 1, 1), Step::Flip);
        assert_eq!(step(false, 0, true, 1, 1), Step::Flip);
    }

    #[test]
    fn apply_flips_the_node_state() {
        let reg = crate::upstream::NodeRegistry::default();
        let st = reg.get_or_create("qps1");
        assert!(st.healthy());
        apply(&st, Err("refused".into()), 2, 3);
        apply(&st, Err("refused".into()), 2, 3);
        assert!(st.healthy());
        apply(&st, Err("refused".into()), 2, 3);
        assert!(!st.healthy());
        apply(&st, Ok(()), 2, 3);
        assert!(!st.healthy());
        apply(&st, Ok(()), 2, 3);
        assert!(st.healthy());
        assert!(st.up_since_ms.load(Ordering::Relaxed) > 0);
        assert!(in_slow_start(&st, clock::now_ms(), W));
        assert!(!in_slow_start(&st, clock::now_ms(), Duration::ZERO));
    }
}
