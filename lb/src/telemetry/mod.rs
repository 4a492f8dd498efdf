//! Engine health-check polling and the live samples.
//!
//! [`Telemetry`] runs one task per engine that GETs the engine's health check
//! (`https://<node>:4747/engine/healthcheck`, see `lb_module_api::sample`) every `interval`
//! (jittered by ±10%), each poll bounded by `timeout`. The latest result is published
//! lock-free and read by:
//!
//! * the load balancing module API ([`Telemetry::module_source`], an
//!   [`EngineSource`](lb_module_api::EngineSource) keyed by engine host and port);
//! * the proxy's least-loaded selection ([`Telemetry::place_ids`], keyed by node id, through
//!   a [`PlacementLedger`] of node picks: see [`Telemetry::place_ids`]);
//! * the admin status ([`Telemetry::status`], [`Telemetry::all`]).
//!
//! State of an engine, computed when read:
//!
//! * `Unknown` until the first poll ends;
//! * `Unreachable { reason }` when the last poll failed (refused, timed out, TLS, non-2xx,
//!   unparsable body); the last good sample is kept for display;
//! * `Stale` when the last poll did not fail but the last good sample is older than three
//!   intervals (a poll is stuck, e.g. with a timeout longer than the interval);
//! * `Fresh` otherwise.
//!
//! Changes between up and unreachable are logged once per change. Metrics per engine (label
//! `node`): gauges `lb_engine_cpu_percent`, `lb_engine_memory_free_bytes`,
//! `lb_engine_memory_total_bytes`, `lb_engine_saturated`, `lb_engine_sessions_active`,
//! `lb_engine_up`; counter `lb_engine_polls_total{result="ok|timeout|error|bad_status|bad_body"}`.

mod poll;
mod ranking;
mod status;
mod targets;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use lb_module_api::{EngineSample, EngineSource, EngineView, PlacementLedger, RankPolicy};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use poll::CPU_SMOOTHING;
pub use ranking::TelemetryRanking;
pub use status::{EngineStatus, TelemetryState};
use status::{Freshness, Published, Slot};
pub use targets::targets;

/// The header sent with every poll unless the target sets it: Qlik's service account.
pub const DEFAULT_QLIK_USER: &str = "UserDirectory=INTERNAL; UserId=sa_api";

/// A sample older than this many intervals is stale.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// One engine to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTarget {
    /// Node id (the same id the proxy uses for the node).
    pub id: String,
    /// Health check URL, `http` or `https`, e.g. `https://node1:4747/engine/healthcheck`.
    pub url: Uri,
    /// Extra request headers. `X-Qlik-User` defaults to [`DEFAULT_QLIK_USER`].
    pub headers: HeaderMap,
    /// More `(host, port)` pairs under which the QPS may name this engine in a prioritize
    /// call (the URL's own host and port are always registered). Hosts compare
    /// case-insensitively.
    pub aliases: Vec<(String, u16)>,
}

impl EngineTarget {
    /// A target with no extra headers or aliases.
    pub fn new(id: impl Into<String>, url: Uri) -> Self {
        Self {
            id: id.into(),
            url,
            headers: HeaderMap::new(),
            aliases: Vec::new(),
        }
    }
}

/// Client certificate files for HTTPS polling (PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsClientFiles {
    /// CA bundle that signed the engines' certificates (Qlik's site root CA). Required for
    /// https targets unless `insecure_skip_verify`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (Qlik's exported `client.pem`).
    pub cert_file: Option<PathBuf>,
    /// Client private key (Qlik's exported `client_key.pem`).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For tests and emergencies only.
    pub insecure_skip_verify: bool,
}

/// How often and how patiently to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerSettings {
    /// Time between polls of one engine (jittered ±10%). Default 5 s.
    pub interval: Duration,
    /// Limit for one poll: connect, TLS, request and body. Default 2 s.
    pub timeout: Duration,
    /// HTTPS client files.
    pub tls: TlsClientFiles,
}

impl Default for PollerSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            tls: TlsClientFiles::default(),
        }
    }
}

/// Errors of [`Telemetry::set_targets`]. Nothing is changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Called outside a Tokio runtime.
    #[error("telemetry needs a running Tokio runtime")]
    NoRuntime,
    /// Two targets with one id.
    #[error("engine target id {0:?} appears twice")]
    DuplicateId(String),
    /// A target URL that cannot be polled.
    #[error("engine target {id:?}: {reason}")]
    InvalidTarget {
        /// Target id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS files missing, unreadable or invalid.
    #[error("telemetry TLS: {0}")]
    Tls(String),
    /// Called after [`Telemetry::shutdown`].
    #[error("telemetry has been shut down")]
    ShutDown,
    /// Zero interval or timeout.
    #[error("telemetry {0} must be greater than zero")]
    ZeroDuration(&'static str),
}

/// Lookup tables swapped whole by `set_targets`.
#[derive(Debug, Default)]
struct Registry {
    by_id: HashMap<String, Arc<Slot>>,
    /// Lowercased host -> (port, slot) pairs.
    by_host: HashMap<String, Vec<(u16, Arc<Slot>)>>,
}

/// A running poll task and what it was started with.
struct Running {
    fingerprint: (Uri, HeaderMap, Duration, Duration, u64),
    slot: Arc<Slot>,
    cancel: CancellationToken,
}

/// Engine telemetry: the poll tasks and their latest results. Share it as `Arc<Telemetry>`.
pub struct Telemetry {
    registry: ArcSwap<Registry>,
    running: Mutex<HashMap<String, Running>>,
    policy: Arc<ArcSwap<RankPolicy>>,
    rotation: AtomicUsize,
    /// Recent node picks of least-loaded selection (not shared with the module API's ledger).
    node_placements: PlacementLedger,
    root: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("engines", &self.registry.load().by_id.len())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// No targets, the default policy.
    pub fn new() -> Arc<Telemetry> {
        Arc::new(Telemetry {
            registry: ArcSwap::from_pointee(Registry::default()),
            running: Mutex::new(HashMap::new()),
            policy: Arc::new(ArcSwap::from_pointee(RankPolicy::default())),
            rotation: AtomicUsize::new(0),
            node_placements: PlacementLedger::new(),
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }

    /// Poll exactly `targets` from now on. Tasks of removed targets stop; new targets start;
    /// a target whose URL, headers, settings or TLS file contents changed restarts (keeping
    /// its last sample when the URL is unchanged). Unchanged targets keep running untouched.
    /// On error nothing changes. Must be called inside a Tokio runtime.
    pub fn set_targets(
        self: &Arc<Self>,
        targets: Vec<EngineTarget>,
        settings: PollerSettings,
    ) -> Result<(), TelemetryError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        if self.root.is_cancelled() {
            return Err(TelemetryError::ShutDown);
        }
        if settings.interval.is_zero() {
            return Err(TelemetryError::ZeroDuration("interval"));
        }
        if settings.timeout.is_zero() {
            return Err(TelemetryError::ZeroDuration("timeout"));
        }

        // Validate everything before touching the running set.
        let mut seen = std::collections::HashSet::new();
        let mut needs_tls = false;
        let mut prepared = Vec::with_capacity(targets.len());
        for mut t in targets {
            if !seen.insert(t.id.clone()) {
                return Err(TelemetryError::DuplicateId(t.id));
            }
            let (host, port, https) = target_addr(&t)?;
            needs_tls |= https;
            let user = HeaderName::from_static("x-qlik-user");
            if !t.headers.contains_key(&user) {
                t.headers
                    .insert(user, HeaderValue::from_static(DEFAULT_QLIK_USER));
            }
            prepared.push((t, host, port));
        }
        let (tls, tls_fingerprint) = if needs_tls {
            let (cfg, fp) = tls::client_config(&settings.tls)?;
            (Some(cfg), fp)
        } else {
            (None, 0)
        };

        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: HashMap<String, Running> = HashMap::with_capacity(prepared.len());
        let mut registry = Registry::default();
        for (t, host, port) in prepared {
            let fingerprint = (
                t.url.clone(),
                t.headers.clone(),
                settings.interval,
                settings.timeout,
                tls_fingerprint,
            );
            let slot = match running.remove(&t.id) {
                Some(old) if old.fingerprint == fingerprint && !old.cancel.is_cancelled() => {
                    let slot = old.slot.clone();
                    next.insert(t.id.clone(), old);
                    slot
                }
                old => {
                    let carried = old.and_then(|old| {
                        old.cancel.cancel();
                        (old.fingerprint.0 == t.url).then(|| old.slot.snapshot.load_full())
                    });
                    let slot = Arc::new(Slot {
                        snapshot: ArcSwap::new(carried.unwrap_or_default()),
                        interval: settings.interval,
                    });
                    let cancel = self.root.child_token();
                    let job = poll::PollJob {
                        id: t.id.clone(),
                        url: t.url.clone(),
                        headers: t.headers.clone(),
                        interval: settings.interval,
                        timeout: settings.timeout,
                        tls: tls.clone(),
                        slot: slot.clone(),
                        policy: self.policy.clone(),
                        cancel: cancel.clone(),
                    };
                    self.tracker.spawn_on(poll::run(job), &handle);
                    next.insert(
                        t.id.clone(),
                        Running {
                            fingerprint,
                            slot: slot.clone(),
                            cancel,
                        },
                    );
                    slot
                }
            };
            let mut add = |h: &str, p: u16| {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                let h = h.strip_suffix('.').unwrap_or(h).to_lowercase();
                let entry = registry.by_host.entry(h).or_default();
                if !entry.iter().any(|(port, _)| *port == p) {
                    entry.push((p, slot.clone()));
                }
            };
            add(&host, port);
            for (alias_host, alias_port) in &t.aliases {
                add(alias_host, *alias_port);
            }
            registry.by_id.insert(t.id.clone(), slot);
        }
        for (id, old) in running.drain() {
            old.cancel.cancel();
            metrics::gauge!("lb_engine_up", "node" => id).set(0.0);
        }
        *running = next;
        self.registry.store(Arc::new(registry));
        Ok(())
    }

    /// Stop every poll task. Statuses stay readable (and go stale).
    pub fn shutdown(&self) {
        self.root.cancel();
        self.tracker.close();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.clear();
    }

    /// Wait until every poll task has ended after [`shutdown`](Self::shutdown).
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }

    /// The status of the engine of node `id`.
    pub fn status(&self, id: &str) -> Option<EngineStatus> {
        let registry = self.registry.load();
        registry.by_id.get(id).map(|s| s.status(Instant::now()))
    }

    /// True when the telemetry of at least one of nodes `ids` is fresh (no allocation).
    pub fn any_fresh(&self, ids: &[&str]) -> bool {
        let now = Instant::now();
        let registry = self.registry.load();
        ids.iter().any(|id| {
            registry
                .by_id
                .get(*id)
                .is_some_and(|s| s.freshness(now) == Freshness::Fresh)
        })
    }

    /// The latest sample of node `id`'s engine and its smoothed CPU, while fresh.
    pub fn fresh_sample(&self, id: &str) -> Option<(Arc<EngineSample>, f64)> {
        let registry = self.registry.load();
        let slot = registry.by_id.get(id)?;
        let snap = slot.snapshot.load();
        if snap.freshness(slot.interval, Instant::now()) != Freshness::Fresh {
            return None;
        }
        let sample = snap.sample.clone()?;
        let cpu = snap.smoothed_cpu.unwrap_or(sample.cpu_total);
        Some((sample, cpu))
    }

    /// Every engine's status, sorted by node id.
    pub fn all(&self) -> Vec<(String, EngineStatus)> {
        let now = Instant::now();
        let registry = self.registry.load();
        let mut out: Vec<(String, EngineStatus)> = registry
            .by_id
            .iter()
            .map(|(id, s)| (id.clone(), s.status(now)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The ranking policy in force.
    pub fn policy(&self) -> Arc<RankPolicy> {
        self.policy.load_full()
    }

    /// Replace the ranking policy (takes effect on the next ranking).
    pub fn set_policy(&self, policy: RankPolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// Rank nodes `ids` for a new session (of `app`, if known), most preferred first; see
    /// [`lb_module_api::rank`]. Ids without telemetry rank as unknown. Ties rotate between
    /// calls. Records nothing: a pick goes through [`place_ids`](Self::place_ids).
    pub fn rank_ids(&self, ids: &[&str], app: Option<&str>, policy: &RankPolicy) -> Vec<usize> {
        let now = Instant::now();
        let registry = self.registry.load();
        let views: Vec<EngineView> = ids
            .iter()
            .map(|id| match registry.by_id.get(*id) {
                Some(slot) => slot.view(now),
                None => EngineView::unknown(),
            })
            .collect();
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        lb_module_api::rank(&views, app, policy, rotation)
    }

    /// Choose among nodes `ids` for a new session (of `app`, if known): the order, most
    /// preferred first, from [`PlacementLedger::place`] over this telemetry's ledger of node
    /// picks, which records the new session on the node ranked first until a sample of its
    /// engine taken after the pick accounts for it. So a burst of new users ranked on the same
    /// samples spreads over the close nodes in proportion to their headroom instead of herding
    /// onto the one that looked best. Ids without telemetry rank as unknown (and record
    /// nothing).
    ///
    /// With no `app` (least-loaded selection does not know which app a new user will open),
    /// a pick counts one session's RAM and CPU and no app load: `placement_app_ram_mb` is for
    /// the module API, which knows the app.
    ///
    /// The ledger is this telemetry's own, not the module API's: a node pick and the engine
    /// pick the QPS asks the module for later are two decisions about one user (possibly on
    /// different hosts), and one ledger would count that user twice.
    pub fn place_ids(&self, ids: &[&str], app: Option<&str>, policy: &RankPolicy) -> Vec<usize> {
        let now = Instant::now();
        let registry = self.registry.load();
        let views: Vec<EngineView> = ids
            .iter()
            .map(|id| match registry.by_id.get(*id) {
                Some(slot) => slot.view(now),
                None => EngineView::unknown(),
            })
            .collect();
        drop(registry);
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        let node_policy;
        let policy = if app.is_none() && policy.placement_app_ram_mb != 0.0 {
            node_policy = RankPolicy {
                placement_app_ram_mb: 0.0,
                ..policy.clone()
            };
            &node_policy
        } else {
            policy
        };
        self.node_placements
            .place(ids, &views, app, policy, Some(rotation), now)
    }

    /// The load least-loaded selection placed on node `id` that its engine's telemetry does
    /// not show yet.
    pub fn node_pending(&self, id: &str) -> lb_module_api::Pending {
        self.node_placements
            .pending(id, &self.policy(), Instant::now())
    }

    /// The view of the engine named `host` (lowercase) and `port`, if it is a target or alias.
    pub fn view_by_addr(&self, host: &str, port: u16) -> Option<EngineView> {
        let registry = self.registry.load();
        let slot = registry
            .by_host
            .get(host)?
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, s)| s.clone())?;
        Some(slot.view(Instant::now()))
    }

    /// An [`EngineSource`] for [`lb_module_api::router`], backed by this telemetry.
    pub fn module_source(self: &Arc<Self>) -> Arc<dyn EngineSource> {
        Arc::new(TelemetrySource(self.clone()))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// The adapter between [`Telemetry`] and the module API: engines by host and port.
#[derive(Debug, Clone)]
pub struct TelemetrySource(pub Arc<Telemetry>);

impl EngineSource for TelemetrySource {
    fn view(&self, host: &str, port: u16) -> Option<EngineView> {
        self.0.view_by_addr(host, port)
    }

    fn policy(&self) -> Arc<RankPolicy> {
        self.0.policy()
    }

    fn next_rotation(&self) -> usize {
        self.0.rotation.fetch_add(1, Ordering::Relaxed)
    }
}

/// Host (lowercase, no brackets), port and whether TLS is used, or why the URL cannot work.
fn target_addr(t: &EngineTarget) -> Result<(String, u16, bool), TelemetryError> {
    let invalid = |reason: &str| TelemetryError::InvalidTarget {
        id: t.id.clone(),
        reason: format!("{reason} (url {})", t.url),
    };
    let https = match t.url.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(_) => return Err(invalid("scheme must be http or https")),
        None => return Err(invalid("URL must be absolute (http:// or https://)")),
    };
    let host = t
        .url
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("URL has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_lowercase();
    let port = t.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((host, port, https))
}
