//! Active health checks of the QPS nodes, and slow start.
//!
//! Every `health.interval`, each node of the current snapshot is checked: an HTTP `GET` of
//! `health.path` on a fresh connection (an HTTPS node through the proxy's own client, with its
//! TLS settings), or, with an empty path, a plain TCP connect; bounded by `health.timeout`. A status within `health.expect_status` is a success. As in HAProxy, a
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
//! Slow start ([`slow_start_admits`]): for `health.slow_start` after a node came back, it
//! takes a growing share of new sessions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{Either, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use lb_config::Health;
use tokio::task::JoinSet;

use crate::runtime::{NodeRt, Runtime, UpstreamClient};
use crate::server::Shared;
use crate::upstream::NodeState;

type CheckClient = Client<HttpConnector, Empty<Bytes>>;

/// How often the configuration is looked at again while checks are disabled.
const DISABLED_POLL: Duration = Duration::from_secs(1);

/// The smallest share of new sessions a node takes at the start of its slow start window.
pub const SLOW_START_MIN_SHARE: f64 = 0.05;

/// Runs the health checks until `shared.shutdown` is cancelled. Interval, path, timeout,
/// rise and fall are read from the current snapshot before every round, so a reload applies
/// at the next round; each node's streak lives in its [`NodeState`] and survives reloads.
pub async fn run(shared: Arc<Shared>) {
    let client = build_client();
    let mut was_enabled = true;
    loop {
        let rt = shared.runtime.load_full();
        let cfg = rt.config.health.clone();
        let wait = if cfg.enabled {
            was_enabled = true;
            let round = check_round(&client, &rt, &cfg);
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = round => {}
            }
            cfg.interval
        } else {
            if was_enabled {
                // Checks switched off: nothing would ever bring a down node back.
                for n in &rt.nodes {
                    n.state.check_streak.store(0, Ordering::Relaxed);
                    if !n.state.healthy() {
                        tracing::info!(node = %n.id, "health checks disabled: node considered up");
                        n.state.set_healthy(true);
                    }
                    metrics::gauge!("lb_node_up", "node" => n.id.to_string()).set(1.0);
                }
                was_enabled = false;
            }
            DISABLED_POLL
        };
        drop(rt);
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Checks every node of a snapshot at once and applies the results.
async fn check_round(client: &CheckClient, rt: &Runtime, cfg: &Health) {
    let mut set = JoinSet::new();
    for n in &rt.nodes {
        let target = Target::of(n, &cfg.path, &rt.client);
        let client = client.clone();
        let (timeout, expect) = (cfg.timeout, cfg.expect_status);
        let state = n.state.clone();
        set.spawn(async move {
            let r = check(&client, &target, timeout, expect).await;
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

/// Where and how to check one node.
#[derive(Debug, Clone)]
enum Target {
    Http {
        uri: Uri,
        host: HeaderValue,
    },
    /// An HTTPS node, checked through the proxy's own client (same TLS settings).
    Https {
        uri: Uri,
        host: HeaderValue,
        client: UpstreamClient,
    },
    Tcp {
        authority: String,
    },
}

impl Target {
    fn of(n: &NodeRt, path: &str, tls_client: &UpstreamClient) -> Target {
        let authority = n.authority.as_str().to_string();
        let tls = n.scheme == Scheme::HTTPS;
        if path.is_empty() || !(tls || n.scheme == Scheme::HTTP) {
            return Target::Tcp { authority };
        }
        let uri = Uri::builder()
            .scheme(n.scheme.clone())
            .authority(n.authority.clone())
            .path_and_query(path)
            .build();
        match (uri, HeaderValue::from_str(&authority)) {
            (Ok(uri), Ok(host)) if tls => Target::Https {
                uri,
                host,
                client: tls_client.clone(),
            },
            (Ok(uri), Ok(host)) => Target::Http { uri, host },
            _ => Target::Tcp { authority },
        }
    }
}

/// The outcome of one check: `Err` carries a short reason for the log.
type CheckResult = Result<(), String>;

async fn check(
    client: &CheckClient,
    target: &Target,
    timeout: Duration,
    expect: (u16, u16),
) -> CheckResult {
    match target {
        Target::Tcp { authority } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority.as_str()))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect to {authority}: {e}")),
                Err(_) => Err(format!(
                    "connect to {authority}: timed out after {timeout:?}"
                )),
            }
        }
        Target::Http { uri, host } => {
            let req = request(uri, host, Empty::new())?;
            judge(uri, timeout, expect, client.request(req)).await
        }
        Target::Https { uri, host, client } => {
            let req = request(uri, host, Either::Right(Empty::new()))?;
            judge(uri, timeout, expect, client.request(req)).await
        }
    }
}

fn request<B>(uri: &Uri, host: &HeaderValue, body: B) -> Result<Request<B>, String> {
    Request::builder()
        .method(Method::GET)
        .uri(uri.clone())
        .header(header::HOST, host.clone())
        .header(header::USER_AGENT, "lb-health-check")
        .header(header::CONNECTION, "close")
        .body(body)
        .map_err(|e| e.to_string())
}

/// Waits for the answer to a check request and judges its status.
async fn judge<B, E: std::error::Error>(
    uri: &Uri,
    timeout: Duration,
    expect: (u16, u16),
    answer: impl std::future::Future<Output = Result<http::Response<B>, E>>,
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
        Ok(Err(e)) => Err(format!("GET {uri}: {}", error_chain(&e))),
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

fn build_client() -> CheckClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // Each check opens a fresh connection: a check proves the node still accepts them.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(http)
}

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
    use crate::clock;

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
