//! lb: a sticky, WebSocket-aware load balancer for Qlik Sense proxy nodes.

pub mod telemetry;
