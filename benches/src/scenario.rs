//! Load scenarios. Each one runs virtual users against a target URL, bounded by time and/or
//! count, and returns a [`Report`].
//!
//! - `qlik`: the mixed user journey (login, hub/qmc requests, one app WebSocket with an echo
//!   burst), repeated until the time is up, stickiness checked on every answer;
//! - `http`: keep-alive users with sticky sessions hammering one path;
//! - `churn`: every request without cookies, so every request is a new session;
//! - `ws-echo`: WebSockets exchanging messages of a given size, round-trip latency;
//! - `ws-idle`: many idle WebSockets held open, then verified, with the balancer's memory.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{
    signed_out, timed, ws_connect, CookieJar, HttpConn, HttpResponse, Pacer, Target, TargetOpts,
    WsConnect, WsStream,
};
use crate::report::{rss_tree_kb, Observation, Recorder, Report, Stickiness};

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Qlik,
    Http,
    Churn,
    WsEcho,
    WsIdle,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 5] = [
        Scenario::Qlik,
        Scenario::Http,
        Scenario::Churn,
        Scenario::WsEcho,
        Scenario::WsIdle,
    ];

    /// The scenario's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Qlik => "qlik",
            Scenario::Http => "http",
            Scenario::Churn => "churn",
            Scenario::WsEcho => "ws-echo",
            Scenario::WsIdle => "ws-idle",
        }
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| anyhow!("unknown scenario {s}"))
    }
}

/// Options of a run. Not every scenario uses every field.
#[derive(Debug, Clone)]
pub struct ScenarioOpts {
    /// Target, `http://host:port[/prefix]`.
    pub url: String,
    /// Allow a non-loopback target.
    pub allow_remote: bool,
    /// Time bound (for `ws-idle`: how long the sockets are held open).
    pub duration: Duration,
    /// Count bound: total requests (`http`, `churn`) or messages (`ws-echo`); `None` = time only.
    pub max_count: Option<u64>,
    /// Users (`qlik`), connections (`http`, `churn`), WebSockets (`ws-echo`, `ws-idle`).
    pub connections: usize,
    /// Users running a journey at once (`qlik`), sockets being opened at once (`ws-idle`).
    pub concurrency: usize,
    /// Timeout of one request, upgrade or round trip.
    pub timeout: Duration,
    /// Worker threads of the load generator (recorded in the report).
    pub threads: usize,
    /// Request path for `http` and `churn`.
    pub path: String,
    /// WebSocket message size in bytes (`ws-echo`, `qlik`).
    pub message_size: usize,
    /// HTTP requests after the login in one `qlik` journey.
    pub requests_per_user: usize,
    /// Echo messages in one `qlik` journey.
    pub messages_per_user: usize,
    /// Journeys per `qlik` user: 0 = repeat until the time is up (at least one).
    pub journeys: u64,
    /// Balancer process id, to measure its memory per tunnel (`ws-idle`); the resident memory
    /// of its direct children (worker processes) is added.
    pub pid: Option<u32>,
    /// TLS trust, extra headers and cookies.
    pub target: TargetOpts,
    /// At most this many requests (`qlik`, `http`, `churn`) or messages (`ws-echo`) per second
    /// across all users; `None`: as fast as they go.
    pub rate: Option<f64>,
    /// Users start spread over this time, and the rate limit grows from 0 over it.
    pub ramp: Duration,
    /// Hard caps: a run asking for more users or a longer duration is refused.
    pub max_users: usize,
    pub max_duration: Duration,
}

/// Default hard caps against a loopback target, and against a remote one.
pub const MAX_USERS: usize = 100_000;
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
pub const MAX_REMOTE_USERS: usize = 1_000;
pub const MAX_REMOTE_DURATION: Duration = Duration::from_secs(3600);

impl Default for ScenarioOpts {
    fn default() -> Self {
        ScenarioOpts {
            url: "http://127.0.0.1:18000".to_string(),
            allow_remote: false,
            duration: Duration::from_secs(10),
            max_count: None,
            connections: 50,
            concurrency: 64,
            timeout: Duration::from_secs(10),
            threads: 1,
            path: "/hub".to_string(),
            message_size: 1024,
            requests_per_user: 5,
            messages_per_user: 10,
            journeys: 0,
            pid: None,
            target: TargetOpts::default(),
            rate: None,
            ramp: Duration::ZERO,
            max_users: MAX_USERS,
            max_duration: MAX_DURATION,
        }
    }
}

/// Runs `scenario` and returns its report.
pub async fn run(scenario: Scenario, opts: &ScenarioOpts) -> anyhow::Result<Report> {
    let target = Arc::new(Target::parse_with(
        &opts.url,
        opts.allow_remote,
        &opts.target,
    )?);
    if opts.connections == 0 {
        bail!("at least one user/connection is needed");
    }
    if opts.connections > opts.max_users {
        bail!(
            "{} users is over the cap of {} (raise it with --max-users)",
            opts.connections,
            opts.max_users
        );
    }
    if opts.duration > opts.max_duration {
        bail!(
            "a duration of {:?} is over the cap of {:?} (raise it with --max-duration-secs)",
            opts.duration,
            opts.max_duration
        );
    }
    if let Some(r) = opts.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("the rate limit must be a positive number of requests per second");
        }
    }
    let rec = Arc::new(Recorder::new());
    let start = Instant::now();
    let mut extra = Report::default();
    let pacer = opts.rate.map(|r| Arc::new(Pacer::new(r, opts.ramp)));
    let work = async {
        match scenario {
            Scenario::Qlik => qlik(&target, &rec, opts, &pacer).await,
            Scenario::Http => http(&target, &rec, opts, true, &pacer).await,
            Scenario::Churn => http(&target, &rec, opts, false, &pacer).await,
            Scenario::WsEcho => ws_echo(&target, &rec, opts, &pacer).await,
            Scenario::WsIdle => extra = ws_idle(&target, &rec, opts).await?,
        }
        anyhow::Ok(())
    };
    // The hard stop: whatever the users are doing, the run ends shortly after its time.
    let hard = opts.duration + opts.ramp + opts.timeout + Duration::from_secs(5);
    let hard = if scenario == Scenario::WsIdle {
        hard + opts.timeout * 2
    } else {
        hard
    };
    match tokio::time::timeout(hard, work).await {
        Ok(r) => r?,
        Err(_) => rec.error(format!("run stopped at its hard limit of {hard:?}")),
    }
    let mut report = rec.report(scenario.name(), &opts.url, start.elapsed());
    report.threads = opts.threads;
    report.users = opts.connections as u64;
    report.rss_before_kb = extra.rss_before_kb;
    report.rss_open_kb = extra.rss_open_kb;
    report.rss_per_tunnel_kb = extra.rss_per_tunnel_kb;
    report.rate_limit = opts.rate;
    report.rss_closed_kb = extra.rss_closed_kb;
    Ok(report)
}

/// Raises the soft limit of open files to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current
}

/// Shared stop conditions: a deadline and an optional count budget.
struct Limits {
    deadline: Instant,
    budget: Option<AtomicU64>,
}

impl Limits {
    fn new(opts: &ScenarioOpts) -> Limits {
        Limits {
            deadline: Instant::now() + opts.duration,
            budget: opts.max_count.map(AtomicU64::new),
        }
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Takes one unit of work; false when the run is over.
    fn take(&self) -> bool {
        if self.expired() {
            return false;
        }
        match &self.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

async fn join_all(mut set: JoinSet<()>, rec: &Recorder) {
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            rec.error(format!("task failed: {e}"));
        }
    }
}

/// Paths of a `qlik` journey after the login.
const JOURNEY_PATHS: [&str; 4] = ["/hub", "/qmc", "/_sim/headers", "/hub/my/work"];

/// How long user `i` of `n` waits before it starts: users spread over the ramp.
fn ramp_delay(opts: &ScenarioOpts, i: usize) -> Duration {
    if opts.ramp.is_zero() || opts.connections == 0 {
        return Duration::ZERO;
    }
    opts.ramp.mul_f64(i as f64 / opts.connections as f64)
}

/// Waits for the pacer's next slot (if any); false when the run is over.
async fn paced(pacer: &Option<Arc<Pacer>>, limits: &Limits) -> bool {
    match pacer {
        Some(p) => p.wait(limits.deadline).await,
        None => true,
    }
}

/// Accounts a lost Qlik session: an answer that says "not signed in" (401, or a redirect to
/// an authentication module) to a user who was signed in (held a Qlik session cookie).
fn session_check(rec: &Recorder, had_session: bool, resp: &HttpResponse) {
    if had_session && signed_out(resp.status, &resp.headers) {
        rec.sessions_lost.fetch_add(1, Ordering::Relaxed);
        if resp.status.as_u16() != 401 {
            // A 401 is already a violation.
            rec.violations.fetch_add(1, Ordering::Relaxed);
            rec.error(format!(
                "session lost: HTTP {} to a login",
                resp.status.as_u16()
            ));
        }
    }
}

/// Whether the jar holds a Qlik session cookie.
fn has_session(jar: &CookieJar) -> bool {
    jar.names().iter().any(|n| n.starts_with("X-Qlik-Session"))
}

async fn qlik(
    target: &Arc<Target>,
    rec: &Arc<Recorder>,
    opts: &ScenarioOpts,
    pacer: &Option<Arc<Pacer>>,
) {
    let limits = Arc::new(Limits::new(opts));
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..opts.connections {
        let (target, rec, opts, limits, sem, pacer) = (
            target.clone(),
            rec.clone(),
            opts.clone(),
            limits.clone(),
            sem.clone(),
            pacer.clone(),
        );
        set.spawn(async move {
            tokio::time::sleep(ramp_delay(&opts, i)).await;
            let mut jar = target.jar();
            let mut sticky = Stickiness::new();
            let mut done = 0u64;
            let mut served = false;
            loop {
                let Ok(_permit) = sem.acquire().await else {
                    return;
                };
                // Every user gets one journey even when the time is already up.
                if done > 0 && (limits.expired() || (opts.journeys > 0 && done >= opts.journeys)) {
                    break;
                }
                let ok =
                    journey(&target, &rec, &opts, &mut jar, &mut sticky, &pacer, &limits).await;
                served |= ok;
                done += 1;
            }
            if served {
                rec.users_served.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    join_all(set, rec).await;
}

/// One journey: login (GET /hub), some requests, one app WebSocket with an echo burst.
/// Returns true when every step went well.
async fn journey(
    target: &Target,
    rec: &Recorder,
    opts: &ScenarioOpts,
    jar: &mut CookieJar,
    sticky: &mut Stickiness,
    pacer: &Option<Arc<Pacer>>,
    limits: &Limits,
) -> bool {
    let mut conn = match timed(opts.timeout, HttpConn::connect(target)).await {
        Ok(c) => c,
        Err(e) => {
            rec.error(format!("connect: {e:#}"));
            return false;
        }
    };
    let mut clean = true;
    for i in 0..=opts.requests_per_user {
        let path = target.path(JOURNEY_PATHS[i % JOURNEY_PATHS.len()]);
        if !paced(pacer, limits).await {
            return clean;
        }
        let had_session = has_session(jar);
        let t0 = Instant::now();
        match timed(opts.timeout, conn.get(&path, Some(jar))).await {
            Ok(resp) => {
                let obs = rec.http_response(
                    t0.elapsed(),
                    resp.status.as_u16(),
                    resp.node(),
                    Some(sticky),
                );
                session_check(rec, had_session, &resp);
                clean &= obs != Observation::Violation && resp.status.as_u16() < 400;
                jar.store_all(&resp.headers);
            }
            Err(e) => {
                rec.error(format!("request: {e:#}"));
                return false;
            }
        }
    }
    drop(conn);

    let path = target.path(&format!("/app/{}?reloadUri=x", uuid::Uuid::new_v4()));
    let ws = match timed(
        opts.timeout,
        ws_connect(target, &path, jar, None, 16 * 1024),
    )
    .await
    {
        Ok(WsConnect::Open(ws, node)) => {
            rec.ws_opened.fetch_add(1, Ordering::Relaxed);
            rec.count_node(node.as_deref());
            if rec.status(101, node.as_deref(), Some(sticky)) == Observation::Violation {
                clean = false;
            }
            ws
        }
        Ok(WsConnect::Refused(status, node)) => {
            rec.count_node(node.as_deref());
            rec.status(status.as_u16(), node.as_deref(), Some(sticky));
            return false;
        }
        Err(e) => {
            rec.error(format!("websocket: {e:#}"));
            return false;
        }
    };
    let mut ws = *ws;
    for i in 0..opts.messages_per_user {
        let msg = if i % 2 == 0 {
            Message::text(format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"GetLayout\",\"handle\":1,\"params\":[]}}"
            ))
        } else {
            Message::binary(payload(opts.message_size, i as u64))
        };
        match timed(opts.timeout, round_trip(&mut ws, msg)).await {
            Ok((rtt, n)) => rec.ws_message(rtt, n),
            Err(e) => {
                rec.error(format!("echo: {e:#}"));
                return false;
            }
        }
    }
    if let Err(e) = timed(opts.timeout, close(&mut ws)).await {
        rec.error(format!("close: {e:#}"));
        return false;
    }
    clean
}

/// A deterministic payload of `size` bytes varying with `seed`.
fn payload(size: usize, seed: u64) -> Bytes {
    (0..size as u64)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Sends `msg` and waits for its echo; returns the round trip and the payload size.
async fn round_trip(ws: &mut WsStream, msg: Message) -> anyhow::Result<(Duration, usize)> {
    let t0 = Instant::now();
    let len = msg.len();
    ws.send(msg.clone()).await?;
    loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                if m != msg {
                    bail!("echo differs from what was sent");
                }
                return Ok((t0.elapsed(), len));
            }
            Some(Ok(Message::Close(_))) | None => bail!("closed by the server"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Sends a close and waits for the server's close.
async fn close(ws: &mut WsStream) -> anyhow::Result<()> {
    ws.close(None).await?;
    while let Some(m) = ws.next().await {
        match m {
            Ok(_) => continue,
            Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn http(
    target: &Arc<Target>,
    rec: &Arc<Recorder>,
    opts: &ScenarioOpts,
    sticky: bool,
    pacer: &Option<Arc<Pacer>>,
) {
    let limits = Arc::new(Limits::new(opts));
    let mut set = JoinSet::new();
    for i in 0..opts.connections {
        let (target, rec, opts, limits, pacer) = (
            target.clone(),
            rec.clone(),
            opts.clone(),
            limits.clone(),
            pacer.clone(),
        );
        set.spawn(async move {
            tokio::time::sleep(ramp_delay(&opts, i)).await;
            let path = target.path(&opts.path);
            let mut jar = target.jar();
            let mut stick = Stickiness::new();
            let mut conn: Option<HttpConn> = None;
            let mut answered = false;
            while limits.take() {
                // Every attempt takes a slot, a failed connect too: a site that refuses
                // connections gets no more than the rate.
                if !paced(&pacer, &limits).await {
                    break;
                }
                if conn.as_ref().is_none_or(HttpConn::is_closed) {
                    match timed(opts.timeout, HttpConn::connect(&target)).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            rec.error(format!("connect: {e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                // Churn sends only the cookies given on the command line.
                let fresh = target.jar();
                let cookies = if sticky { &jar } else { &fresh };
                let had_session = has_session(cookies);
                let t0 = Instant::now();
                match timed(opts.timeout, c.get(&path, Some(cookies))).await {
                    Ok(resp) => {
                        answered = true;
                        session_check(&rec, had_session, &resp);
                        if sticky {
                            rec.http_response(
                                t0.elapsed(),
                                resp.status.as_u16(),
                                resp.node(),
                                Some(&mut stick),
                            );
                            jar.store_all(&resp.headers);
                        } else {
                            rec.http_response(
                                t0.elapsed(),
                                resp.status.as_u16(),
                                resp.node(),
                                None,
                            );
                        }
                    }
                    Err(e) => {
                        rec.error(format!("request: {e:#}"));
                        conn = None;
                    }
                }
            }
            if answered {
                rec.users_served.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    join_all(set, rec).await;
}

/// Logs in (GET /hub) and opens an app WebSocket; accounts both answers.
async fn login_and_open(
    target: &Target,
    rec: &Recorder,
    opts: &ScenarioOpts,
    sticky: &mut Stickiness,
    read_buffer: usize,
) -> Option<WsStream> {
    let mut jar = target.jar();
    let login = async {
        let mut conn = HttpConn::connect(target).await?;
        let t0 = Instant::now();
        let resp = conn.get(&target.path("/hub"), Some(&jar)).await?;
        Ok((t0.elapsed(), resp))
    };
    match timed(opts.timeout, login).await {
        Ok((lat, resp)) => {
            rec.http_response(lat, resp.status.as_u16(), resp.node(), Some(sticky));
            jar.store_all(&resp.headers);
            if !resp.status.is_success() {
                return None;
            }
        }
        Err(e) => {
            rec.error(format!("login: {e:#}"));
            return None;
        }
    }
    let path = target.path(&format!("/app/{}", uuid::Uuid::new_v4()));
    match timed(
        opts.timeout,
        ws_connect(target, &path, &jar, None, read_buffer),
    )
    .await
    {
        Ok(WsConnect::Open(ws, node)) => {
            rec.ws_opened.fetch_add(1, Ordering::Relaxed);
            rec.count_node(node.as_deref());
            rec.status(101, node.as_deref(), Some(sticky));
            Some(*ws)
        }
        Ok(WsConnect::Refused(status, node)) => {
            rec.count_node(node.as_deref());
            rec.status(status.as_u16(), node.as_deref(), Some(sticky));
            None
        }
        Err(e) => {
            rec.error(format!("websocket: {e:#}"));
            None
        }
    }
}

async fn ws_echo(
    target: &Arc<Target>,
    rec: &Arc<Recorder>,
    opts: &ScenarioOpts,
    pacer: &Option<Arc<Pacer>>,
) {
    let limits = Arc::new(Limits::new(opts));
    let mut set = JoinSet::new();
    for i in 0..opts.connections {
        let (target, rec, opts, limits, pacer) = (
            target.clone(),
            rec.clone(),
            opts.clone(),
            limits.clone(),
            pacer.clone(),
        );
        set.spawn(async move {
            tokio::time::sleep(ramp_delay(&opts, i)).await;
            let mut sticky = Stickiness::new();
            let Some(mut ws) = login_and_open(&target, &rec, &opts, &mut sticky, 64 * 1024).await
            else {
                return;
            };
            let data = payload(opts.message_size, i as u64);
            let mut sent = false;
            while limits.take() {
                if !paced(&pacer, &limits).await {
                    break;
                }
                match timed(
                    opts.timeout,
                    round_trip(&mut ws, Message::Binary(data.clone())),
                )
                .await
                {
                    Ok((rtt, n)) => {
                        rec.ws_message(rtt, n);
                        sent = true;
                    }
                    Err(e) => {
                        rec.error(format!("echo: {e:#}"));
                        return;
                    }
                }
            }
            if let Err(e) = timed(opts.timeout, close(&mut ws)).await {
                rec.error(format!("close: {e:#}"));
            }
            if sent {
                rec.users_served.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    join_all(set, rec).await;
}

/// How long after the last idle WebSocket closed ws-idle reads the balancer's memory again.
pub const RSS_SETTLE: Duration = Duration::from_secs(5);

async fn ws_idle(
    target: &Arc<Target>,
    rec: &Arc<Recorder>,
    opts: &ScenarioOpts,
) -> anyhow::Result<Report> {
    raise_nofile();
    let mut extra = Report {
        rss_before_kb: opts.pid.and_then(rss_tree_kb),
        ..Report::default()
    };

    // Open every socket, a bounded number at a time.
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut set = JoinSet::new();
    for _ in 0..opts.connections {
        let (target, rec, opts, sem) = (target.clone(), rec.clone(), opts.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire().await.ok()?;
            let mut sticky = Stickiness::new();
            login_and_open(&target, &rec, &opts, &mut sticky, 4 * 1024).await
        });
    }
    let mut sockets = Vec::with_capacity(opts.connections);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Some(ws)) => sockets.push(ws),
            Ok(None) => {}
            Err(e) => rec.error(format!("task failed: {e}")),
        }
    }
    if let Some(pid) = opts.pid {
        // Let the balancer settle, then read its memory with every tunnel open.
        tokio::time::sleep(Duration::from_millis(300)).await;
        extra.rss_open_kb = rss_tree_kb(pid);
        if let (Some(b), Some(o)) = (extra.rss_before_kb, extra.rss_open_kb) {
            if !sockets.is_empty() {
                let per = (o as f64 - b as f64) / sockets.len() as f64;
                extra.rss_per_tunnel_kb = Some((per * 100.0).round() / 100.0);
            }
        }
    }

    tokio::time::sleep(opts.duration).await;

    // Verify each socket with one echo, then close it.
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut set = JoinSet::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (rec, opts, sem) = (rec.clone(), opts.clone(), sem.clone());
        set.spawn(async move {
            let Ok(_permit) = sem.acquire().await else {
                return;
            };
            let msg = Message::text(format!("still there {i}"));
            match timed(opts.timeout, round_trip(&mut ws, msg)).await {
                Ok((rtt, n)) => {
                    rec.ws_message(rtt, n);
                    rec.ws_open_at_end.fetch_add(1, Ordering::Relaxed);
                    rec.users_served.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    rec.error(format!("idle check: {e:#}"));
                    return;
                }
            }
            if let Err(e) = timed(opts.timeout, close(&mut ws)).await {
                rec.error(format!("close: {e:#}"));
            }
        });
    }
    join_all(set, rec).await;
    if let Some(pid) = opts.pid {
        // Does the memory of the burst go back? Read it a few seconds after the last close.
        tokio::time::sleep(RSS_SETTLE).await;
        extra.rss_closed_kb = rss_tree_kb(pid);
    }
    Ok(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
        }
        assert!("nope".parse::<Scenario>().is_err());
    }

    #[test]
    fn count_budget_limits_work() {
        let opts = ScenarioOpts {
            max_count: Some(3),
            ..ScenarioOpts::default()
        };
        let l = Limits::new(&opts);
        assert!(l.take() && l.take() && l.take());
        assert!(!l.take());
        let opts = ScenarioOpts {
            duration: Duration::ZERO,
            ..ScenarioOpts::default()
        };
        assert!(!Limits::new(&opts).take());
    }

    #[test]
    fn payload_is_deterministic() {
        assert_eq!(payload(100, 7), payload(100, 7));
        assert_ne!(payload(100, 7), payload(100, 8));
        assert_eq!(payload(0, 1).len(), 0);
    }
}
