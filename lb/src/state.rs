//! What survives reloads: the current snapshot (swapped whole), the node registry, the sticky
//! table, the telemetry, the connection and tunnel counters and trackers, and the outcome of
//! the last reload. One [`State`] per running balancer, shared by every connection.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use lb_config::Config;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::snapshot::Snapshot;
use crate::sticky::{RouteKey, StickyTable};
use crate::telemetry::{Telemetry, TelemetryRanking};
use crate::upstream::{LoadRanking, NodeRegistry};

/// State shared by every connection, surviving reloads.
pub struct State {
    /// The snapshot in force; a request loads it once and keeps it to its end.
    pub snapshot: ArcSwap<Snapshot>,
    pub telemetry: Arc<Telemetry>,
    /// The least-loaded ranking every snapshot's selector asks (backed by `telemetry`).
    pub ranking: Arc<dyn LoadRanking>,
    pub reload_status: ArcSwap<ReloadStatus>,
    /// Held for the whole of a reload: concurrent reloads apply one after the other.
    pub reload_lock: Mutex<()>,
    /// The configuration file, when the balancer was started from one (for reloads).
    pub config_path: Option<PathBuf>,
    pub metrics: PrometheusHandle,
    /// Addresses the listeners are bound to (proxy, admin, module): a configuration naming
    /// either the configured or the bound address keeps its listener.
    pub bound: Mutex<[Option<SocketAddr>; 3]>,
    pub registry: NodeRegistry,
    pub sticky: StickyTable,
    pub route_key: RouteKey,
    /// Cancelled when the balancer stops accepting (shutdown begins).
    pub shutdown: CancellationToken,
    /// Cancelled when open tunnels must close (drain deadline passed).
    pub tunnels_close: CancellationToken,
    pub conns: TaskTracker,
    pub tunnels: TaskTracker,
    pub open_connections: AtomicI64,
    pub open_tunnels: AtomicI64,
    /// Open connections per client address (only with `listener.max_connections_per_client`).
    pub per_client: DashMap<IpAddr, u32>,
    pub metrics_handles: StateMetrics,
}

/// Metric handles of the process-wide counters, made once.
pub struct StateMetrics {
    pub learned_total: Counter,
    pub open_connections: Gauge,
    pub open_tunnels: Gauge,
    pub ws_bytes_to_node: Counter,
    pub ws_bytes_to_client: Counter,
}

/// The outcome of the last configuration load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Version of the configuration in force.
    pub version: String,
    pub at_unix_ms: u64,
    pub ok: bool,
    /// Why the last attempt was refused (the configuration in force stays).
    pub error: Option<String>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Prometheus recorder of this process (installed once; several servers in one test
/// process share it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::debug!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

impl State {
    /// The state of a balancer starting with `config` (its first snapshot compiled).
    pub fn new(
        config: Config,
        tls: crate::tls::Loaded,
        config_path: Option<PathBuf>,
    ) -> Arc<State> {
        // First: metric handles made before the recorder is installed count nowhere (the first
        // snapshot's per-node handles are made below).
        let metrics = prometheus();
        let route_key = match &config.sticky.route_key {
            Some(k) => RouteKey::new(k),
            None => {
                tracing::warn!(
                    "no sticky.route_key or sticky.route_key_file: using a random key; route cookies \
                     will not survive a restart nor be shared with other balancers"
                );
                RouteKey::random()
            }
        };
        let registry = NodeRegistry::default();
        let sticky = StickyTable::new(
            config.sticky.max_sessions,
            config.sticky.session_idle_timeout.as_secs() as u32,
        );
        let telemetry = Telemetry::new();
        telemetry.set_policy(config.ranking.clone());
        let ranking: Arc<dyn LoadRanking> = Arc::new(TelemetryRanking(telemetry.clone()));
        let reload_status = ReloadStatus {
            version: config.version.clone(),
            at_unix_ms: unix_ms(),
            ok: true,
            error: None,
        };
        let snapshot = Snapshot::build(
            config,
            tls,
            None,
            &registry,
            route_key.clone(),
            Some(ranking.clone()),
        );
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(snapshot),
            telemetry,
            ranking,
            reload_status: ArcSwap::from_pointee(reload_status),
            reload_lock: Mutex::new(()),
            config_path,
            metrics,
            bound: Mutex::new([None; 3]),
            registry,
            sticky,
            route_key,
            shutdown: CancellationToken::new(),
            tunnels_close: CancellationToken::new(),
            conns: TaskTracker::new(),
            tunnels: TaskTracker::new(),
            open_connections: AtomicI64::new(0),
            open_tunnels: AtomicI64::new(0),
            per_client: DashMap::new(),
            metrics_handles: StateMetrics {
                learned_total: metrics::counter!("lb_sticky_learned_total"),
                open_connections: metrics::gauge!("lb_open_connections"),
                open_tunnels: metrics::gauge!("lb_open_websockets"),
                ws_bytes_to_node: metrics::counter!("lb_websocket_bytes_total", "direction" => "to_node"),
                ws_bytes_to_client: metrics::counter!("lb_websocket_bytes_total", "direction" => "to_client"),
            },
        })
    }
}
