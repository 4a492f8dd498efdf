//! Reloads: the old configuration against the new one, in one place and under one lock.
//!
//! A new configuration is refused, and the running one stays, when it cannot apply without a
//! restart (a listener address changed), when its certificates or telemetry targets do not
//! load, or when the file does not parse. Otherwise a new snapshot is compiled and swapped in:
//! in-flight requests and open tunnels keep the snapshot they started with; node state,
//! learned sessions and tunnels survive. Concurrent reloads (SIGHUP, the admin API, the file
//! watcher) apply one after the other.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use lb_config::Config;

use crate::snapshot::Snapshot;
use crate::state::{unix_ms, ReloadStatus, State};

impl State {
    /// Reads, checks and applies a configuration file; on any error the running one stays.
    pub fn reload_from(&self, path: &Path) -> Result<(), String> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        match Config::from_file(path) {
            Ok(c) => self.apply(c),
            Err(e) => Err(self.refuse(e.to_string())),
        }
    }

    /// Checks and applies `bytes`, the content of the file `path` as the watcher read it once
    /// it had settled (relative paths resolve against the file's directory).
    pub fn reload_from_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => return Err(self.refuse(format!("{}: not UTF-8: {e}", path.display()))),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        match Config::from_toml(text, base) {
            Ok(c) => self.apply(c),
            Err(e) => Err(self.refuse(e.to_string())),
        }
    }

    /// Re-reads the file the balancer was started from.
    pub fn reload_file(&self) -> Result<(), String> {
        match &self.config_path {
            Some(p) => self.reload_from(p),
            None => Err("the balancer was not started from a file".into()),
        }
    }

    /// Applies a checked configuration (see the module documentation).
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.apply(config)
    }

    /// Refuses or applies `config`; the caller holds `reload_lock`.
    fn apply(&self, config: Config) -> Result<(), String> {
        let old = self.snapshot.load_full();
        let bound = *self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(moved) = listeners_kept(&old.config, &config, &bound) {
            return Err(self.refuse(moved));
        }
        if let Err(e) = restart_settings_kept(&old.config, &config) {
            return Err(self.refuse(e));
        }
        let named = self
            .named_bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Err(moved) = named_listeners_kept(&old.config, &config, &named) {
            return Err(self.refuse(moved));
        }
        if config.sticky.route_key.is_some()
            && config.sticky.route_key != old.config.sticky.route_key
        {
            tracing::warn!("sticky.route_key changed: it applies after a restart");
        }
        if config.sticky.shared != old.config.sticky.shared {
            tracing::warn!("sticky.shared changed: it applies after a restart");
        }
        crate::logging::warn_restart_only(&old.config.server, &config.server);
        let tls = match crate::tls::load(&config) {
            Ok(t) => t,
            Err(e) => return Err(self.refuse(e.to_string())),
        };
        if let Err(e) = self.telemetry.apply_config(&config) {
            return Err(self.refuse(e));
        }
        crate::tls::warn_insecure(&config);
        self.telemetry.set_policy(config.ranking.clone());
        self.sticky.set_limits(
            config.sticky.max_sessions,
            config.sticky.session_idle_timeout.as_secs() as u32,
        );
        let version = config.version.clone();
        let snapshot = Snapshot::build(
            config,
            tls,
            Some(&old),
            &self.registry,
            self.route_key.clone(),
            Some(self.ranking.clone()),
        );
        self.snapshot.store(Arc::new(snapshot));
        self.reload_status.store(Arc::new(ReloadStatus {
            version: version.clone(),
            at_unix_ms: unix_ms(),
            ok: true,
            error: None,
        }));
        metrics::counter!("lb_reloads_total", "result" => "ok").increment(1);
        tracing::info!(%version, "configuration reloaded");
        Ok(())
    }

    fn refuse(&self, msg: String) -> String {
        tracing::error!("reload refused, the running configuration stays:\n{msg}");
        metrics::counter!("lb_reloads_total", "result" => "error").increment(1);
        let cur = self.reload_status.load();
        self.reload_status.store(Arc::new(ReloadStatus {
            version: cur.version.clone(),
            at_unix_ms: unix_ms(),
            ok: false,
            error: Some(msg.clone()),
        }));
        msg
    }
}

/// Settings read when a listener starts: a change is refused with the key named, rather than
/// reported as applied. The redirect listener's address, and the module API's TLS, base path
/// and body limit (its router is built at start).
fn restart_settings_kept(old: &Config, new: &Config) -> Result<(), String> {
    let mut changed = Vec::new();
    if old.listener.redirect_address != new.listener.redirect_address {
        changed.push("listener.redirect_address");
    }
    // Adding or removing the module listener is refused as an address change.
    if let (Some(a), Some(b)) = (&old.module, &new.module) {
        if a.tls != b.tls {
            changed.push("module.tls");
        }
        if a.base_path != b.base_path {
            changed.push("module.base_path");
        }
        if a.body_limit != b.body_limit {
            changed.push("module.body_limit");
        }
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: this change needs a restart (the running configuration stays)",
            changed.join(", ")
        ))
    }
}

/// The named listeners cannot be added, removed or moved without a restart: the same names,
/// each at its old configured or bound address.
fn named_listeners_kept(old: &Config, new: &Config, bound: &[SocketAddr]) -> Result<(), String> {
    let names = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| l.name.clone())
            .collect::<Vec<_>>()
    };
    if names(old) != names(new) {
        return Err(format!(
            "listeners: [{}] -> [{}]: adding or removing a listener needs a restart",
            names(old).join(", "),
            names(new).join(", ")
        ));
    }
    let mut moved = Vec::new();
    for (i, (was, now)) in old.listeners.iter().zip(&new.listeners).enumerate() {
        if now.address != was.address && Some(&now.address) != bound.get(i) {
            moved.push(format!(
                "listeners.{}.address: {} -> {}",
                now.name, was.address, now.address
            ));
        }
    }
    if moved.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: a listener address change needs a restart",
            moved.join("; ")
        ))
    }
}

/// Listener addresses cannot change without a restart: each of `new`'s must be the old
/// configured one or the address the listener is bound to.
fn listeners_kept(
    old: &Config,
    new: &Config,
    bound: &[Option<SocketAddr>; 3],
) -> Result<(), String> {
    let addrs = |c: &Config| {
        [
            Some(c.listener.address),
            c.admin.as_ref().map(|a| a.address),
            c.module.as_ref().map(|module| module.address),
        ]
    };
    let (was, now) = (addrs(old), addrs(new));
    let mut moved = Vec::new();
    for (i, key) in ["listener.address", "admin.address", "module.address"]
        .iter()
        .enumerate()
    {
        if now[i] != was[i] && (now[i].is_none() || now[i] != bound[i]) {
            let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
            moved.push(format!("{key}: {} -> {}", show(was[i]), show(now[i])));
        }
    }
    if moved.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: a listener address change needs a restart",
            moved.join("; ")
        ))
    }
}
