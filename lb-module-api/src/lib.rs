//! The Qlik Sense load balancing module API.
//!
//! A Qlik virtual proxy can delegate engine selection to a third-party "load balancing
//! module" (QMC, virtual proxy, Integration: *Load balancing module base URI*). The Qlik Proxy
//! Service (QPS) then calls one endpoint:
//!
//! ```text
//! POST <base URI>/loadbalancing/prioritize
//! X-Qlik-User: UserDirectory=<dir>; UserId=<id>        (URL-encoded values)
//!
//! {"AppName": "<app>", "QlikSenseEngines": ["wss://node1.example.com:4747", "wss://node2.example.com:4747"]}
//! ```
//!
//! and expects the same object back with `QlikSenseEngines` reordered, most preferred first.
//! Qlik documents neither status codes nor timeouts nor its fallback on errors, so this crate
//! follows three rules:
//!
//! * `AppName` comes back exactly as received;
//! * no engine the QPS offered is ever dropped: engines without telemetry and entries that
//!   cannot be parsed are kept, after the ones known to be healthy;
//! * only malformed input gets an error: 400 with `{"error": "..."}` (413 when over the body
//!   limit). An empty engine list gets an empty list.
//!
//! The crate has four parts:
//!
//! * [`types`]: [`PrioritizeRequest`] / [`PrioritizeResponse`];
//! * [`sample`]: [`EngineSample`] and [`parse_healthcheck`] for the engine's
//!   `GET /engine/healthcheck` body, tolerant of old and new shapes;
//! * [`rank()`](rank::rank) and [`rank_placed`]: the pure ranking functions and their
//!   [`RankPolicy`];
//! * [`placement`]: the [`PlacementLedger`] of recent placements, so a burst ranked on one
//!   telemetry sample spreads instead of herding onto the engine that looked best;
//! * [`router()`](router::router): the axum router, fed by an [`EngineSource`] (feature
//!   `router`, on by default; without it the crate does not depend on axum).
//!
//! Metrics (through the `metrics` facade; the binary installs the exporter):
//! `lb_module_requests_total{result="ok|bad_request|too_large"}` and the histogram
//! `lb_module_rank_duration_seconds`.

pub mod placement;
pub mod rank;
#[cfg(feature = "router")]
pub mod router;
pub mod sample;
pub mod types;
pub mod uri;

pub use placement::{engine_key, PlacementLedger};
pub use rank::{
    app_key, draw_from_seed, rank, rank_placed, EngineState, EngineView, Pending, Placement,
    PlacementCost, RankPolicy,
};
#[cfg(feature = "router")]
pub use router::{
    parse_qlik_user, prioritize, prioritize_path, prioritize_placed, router, router_with_ledger,
    EngineSource, QlikUser, RouterOptions, StaticEngineSource,
};
pub use sample::{parse_healthcheck, EngineSample, ParseError};
pub use types::{PrioritizeRequest, PrioritizeResponse};
pub use uri::{parse_engine_uri, EngineAddr, DEFAULT_ENGINE_PORT};
