//! lb-bench: a load generator with Qlik-like scenarios, and the
//! peer comparison harness for `lb`.
//!
//! - [`sim`]: the Qlik node simulator, which is the `lb-sim` crate (re-exported here so
//!   `lb_bench::sim::...` keeps naming it).
//! - [`client`]: a small keep-alive HTTP/1.1 and WebSocket client with a cookie jar, over TCP
//!   or TLS ([`tls`]), with extra headers and cookies, and a request pacer.
//! - [`report`]: latency summaries, stickiness accounting and the JSON result.
//! - [`placement`]: the engine placement simulator (`lb-bench placement`).
//! - [`scenario`]: the load scenarios (`qlik`, `http`, `churn`, `ws-echo`, `ws-idle`).
//! - [`signin`]: the demo's Windows sign-in phase through the balancer.
//! - [`portal`]: portal sign-ins per second (`lb-bench portal`), a ticket from one balancer
//!   redeemed through another.
//! - [`soak`]: the soak scenario (`lb-bench soak`): users, a fault script, invariants.

pub mod client;
pub mod placement;
pub mod portal;
pub mod report;
pub mod scenario;
pub mod signin;
pub mod soak;
pub mod tls;
pub use lb_sim as sim;
