//! Engine telemetry targets from a configuration: the nodes that name an engine.

use lb_config::Config;

use super::{EngineTarget, PollerSettings, Telemetry, TlsClientFiles};

impl Telemetry {
    /// Polls the engines `config` names from now on (see [`Telemetry::set_targets`]); on error
    /// nothing changes and the message names the key.
    pub fn apply_config(self: &std::sync::Arc<Self>, config: &Config) -> Result<(), String> {
        let (targets, settings) = targets(config)?;
        self.set_targets(targets, settings)
            .map_err(|e| format!("telemetry: {e}"))
    }
}

/// The targets and poller settings of a configuration.
pub fn targets(config: &Config) -> Result<(Vec<EngineTarget>, PollerSettings), String> {
    let mut targets = Vec::new();
    // Engine URLs and headers come checked and typed from the configuration.
    let headers = config.telemetry.header_map();
    for n in &config.nodes {
        let Some(uri) = n.engine_uri.clone() else {
            continue;
        };
        let mut t = EngineTarget::new(n.id.clone(), uri);
        t.headers = headers.clone();
        // The QPS names engines by host and the engine port: the node's own address is an
        // alias when no other node shares its IP.
        if config
            .nodes
            .iter()
            .filter(|o| o.address.ip() == n.address.ip())
            .count()
            == 1
        {
            t.aliases.push((n.address.ip().to_string(), 4747));
        }
        targets.push(t);
    }
    let t = &config.telemetry;
    let settings = PollerSettings {
        interval: t.interval,
        timeout: t.timeout,
        tls: TlsClientFiles {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            insecure_skip_verify: t.insecure_skip_verify,
        },
    };
    Ok((targets, settings))
}
