//! lb: a sticky, WebSocket-aware load balancer for Qlik Sense proxy nodes.
//!
//! One process, three listeners: the proxy (users' HTTP and WebSocket traffic to the Qlik
//! Sense Proxy Service nodes, each session kept on the node that issued it), the Qlik load
//! balancing module API (engine ranking from live telemetry), and the admin API.
//!
//! The face is [`Server`] (start, reload, shutdown), [`check_config`] and [`summary`]. A
//! request's steps run in [`proxy::serve`](crate::proxy) (admit -> choose -> rewrite -> send ->
//! respond -> log). The modules, from the top down:
//!
//! - `server`: start and shutdown; owns the listeners and the background tasks.
//! - `state`: what survives reloads (current snapshot, node registry, sticky table, counters).
//! - [`snapshot`]: everything compiled from one configuration, swapped whole.
//! - `reload`: old vs new configuration, refused (needs a restart) or applied, one at a time.
//! - `listen`: bind, the one accept loop, the proxy connection (PROXY header, client slot, TLS).
//! - `limits`: a client connection's place in the connection limits, held to its tunnel's end.
//! - `tasks`: the sticky sweeper, saturation sync, retired-node tunnels, the config watcher.
//! - [`proxy`]: one request as named steps; `proxy::tunnel` splices an upgraded WebSocket.
//! - [`status`]: every status the balancer itself answers (proxy errors, refusals, redirect,
//!   admin API errors).
//! - [`admin`]: the admin API (status, metrics, drain/ready/maint, reload) and status page.
//! - `health`: active health checks (rise/fall) of the nodes.
//! - [`upstream`]: node state and registry, slow start, selection, the one node connector, the
//!   per-node pool.
//! - [`sticky`]: learned Qlik session cookies, the signed route cookie, precedence.
//! - [`telemetry`]: engine health-check polling, freshness, the least-loaded ranking adapter.
//! - [`tls`]: rustls server and client configurations.
//! - [`proxy_protocol`]: the PROXY protocol v1/v2 header.
//! - [`clock`]: the coarse millisecond clock of the hot path.
//! - `wake`: a future polled again only after its own waker fired (quiet `select!` branches).
//! - [`drain`]: draining the whole balancer (`POST /drain`, `lb drain`) and node drain progress.
//! - `meter`: WebSocket byte counters of the open tunnels, collected at each scrape.
//! - `metrics_catalog`: every metric with its HELP text, described once at start-up.
//! - [`logging`]: log lines through a bounded queue to a writer thread (stderr or a file
//!   reopened on SIGUSR1).
//! - `testing`: a narrow read-only handle for the end-to-end tests (hidden).

pub mod admin;
pub mod clock;
pub mod drain;
pub mod durations;
mod health;
mod limits;
mod listen;
pub mod logging;
mod meter;
mod metrics_catalog;
pub mod proxy;
mod reload;
mod server;
pub mod snapshot;
mod state;
pub mod status;
pub mod sticky;
mod tasks;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod upstream;
mod wake;

pub use listen::proxy_protocol;
pub use server::Server;
pub use state::ReloadStatus;

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
    for l in &c.listeners {
        let _ = writeln!(
            s,
            "  {:<13} {} ({:?}{})",
            l.name,
            l.address,
            l.role,
            l.node_port
                .map(|p| format!(", node port {p}"))
                .unwrap_or_default()
        );
    }
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
        Some(module) => {
            let _ = writeln!(
                s,
                "  module API    {} (base path {})",
                module.address, module.base_path
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
    if let Some(st) = &c.sticky.shared {
        let _ = writeln!(
            s,
            "  shared store  {} (prefix {:?}{}, lookups within {})",
            st.url,
            st.key_prefix,
            match (&st.username, &st.password) {
                (Some(u), _) => format!(", user {u}"),
                (None, Some(_)) => ", password".to_string(),
                (None, None) => String::new(),
            },
            format_args!("{:?}", st.lookup_timeout)
        );
    }
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
        for (l, a) in c.listeners.iter().zip(&n.addresses) {
            let _ = writeln!(s, "      {:<10} {a}", l.name);
        }
    }
    s
}

/// Runs the balancer until SIGTERM or SIGINT, reloading `path` on SIGHUP and reopening the log
/// file on SIGUSR1.
pub async fn run_until_signal(config: Config, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let server = Server::start_with_path(config, Some(path.clone())).await?;
    logging::register_metric();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", path.display());
                let _ = server.reload_from(&path);
            }
            _ = usr1.recv() => logging::reopen(),
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    server.shutdown().await;
    Ok(())
}
