//! lb: a sticky, WebSocket-aware load balancer for Qlik Sense proxy nodes.
//!
//! One process, three listeners: the proxy (users' HTTP and WebSocket traffic to the Qlik
//! Sense Proxy Service nodes, each session kept on the node that issued it), the Qlik load
//! balancing module API (engine ranking from live telemetry), and the admin API.
//!
//! - [`sticky`]: learned Qlik session cookies, the signed route cookie, precedence.
//! - [`upstream`]: node state that survives reloads, and node selection.
//! - [`runtime`]: the snapshot compiled from one configuration.
//! - [`proxy`]: forwarding, header rewriting, WebSocket tunnels, error statuses.
//! - [`server`]: listeners, background tasks, graceful shutdown.
//! - [`telemetry`]: engine health-check polling.

pub mod admin;
pub mod clock;
pub mod health;
pub mod proxy;
pub mod proxy_protocol;
pub mod runtime;
pub mod server;
pub mod sticky;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use server::Server;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lb_config::{Config, ConfigErrors};

/// Checks a configuration file exactly as a start or a reload does.
pub fn check_config(path: &Path) -> Result<Config, ConfigErrors> {
    let c = Config::from_file(path)?;
    tls::load(&c)?;
    Ok(c)
}

/// A human summary of a checked configuration, as `lb check` prints it.
pub fn summary(c: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  version       {}", c.version);
    let _ = writeln!(s, "  proxy         {}", c.listener.address);
    match &c.admin {
        Some(a) => {
            let _ = writeln!(
                s,
                "  admin         {}{}",
                a.address,
                if a.token.is_some() {
                    " (token required)"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(s, "  admin         off");
        }
    }
    match &c.module {
        Some(m) => {
            let _ = writeln!(
                s,
                "  module API    {} (base path {})",
                m.address, m.base_path
            );
        }
        None => {
            let _ = writeln!(s, "  module API    off");
        }
    }
    let _ = writeln!(
        s,
        "  balance       {:?}{}",
        c.balance.strategy,
        c.balance
            .zone
            .as_deref()
            .map(|z| format!(", own zone {z}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "  sticky        session cookies {:?} + prefixes {:?}, route cookie {} ({})",
        c.sticky.session_cookies,
        c.sticky.session_cookie_prefixes,
        c.sticky.route_cookie,
        if c.sticky.route_key.is_some() {
            "shared key"
        } else {
            "random key per process"
        }
    );
    let _ = writeln!(s, "  nodes         {}", c.nodes.len());
    for n in &c.nodes {
        let _ = writeln!(
            s,
            "    {:<12} {:<22} zone {:<12} engine {}",
            n.id,
            n.address.to_string(),
            n.zone.as_deref().unwrap_or("-"),
            n.engine.as_deref().unwrap_or("-")
        );
    }
    s
}

/// Runs the balancer until SIGTERM or SIGINT, reloading `path` on SIGHUP.
pub async fn run_until_signal(config: Config, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let server = Server::start_with_path(config, Some(path.clone())).await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", path.display());
                let _ = server.reload_from(&path);
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    server.shutdown().await;
    Ok(())
}
