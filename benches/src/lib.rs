//! lb-bench: a Qlik Sense node simulator, a load generator with Qlik-like scenarios, and the
//! peer comparison harness for `lb`.
//!
//! - [`sim`]: simulated QPS nodes (session cookies, engine health check, WebSocket echo).
//! - [`client`]: a small keep-alive HTTP/1.1 and WebSocket client with a cookie jar.
//! - [`report`]: latency summaries, stickiness accounting and the JSON result.
//! - [`placement`]: the engine placement simulator (`lb-bench placement`).
//! - [`scenario`]: the load scenarios (`qlik`, `http`, `churn`, `ws-echo`, `ws-idle`).

pub mod client;
pub mod placement;
pub mod report;
pub mod scenario;
pub mod sim;
