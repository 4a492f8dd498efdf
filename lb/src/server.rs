//! Start and shutdown: binds the listeners, starts the background tasks, and drains on the way
//! out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lb_config::Config;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::listen::{self, bind, Lifetime};
use crate::state::{ReloadStatus, State};

/// A running balancer.
pub struct Server {
    state: Arc<State>,
    proxy_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    module_addr: Option<SocketAddr>,
    /// The named listeners (`[listeners.<name>]`) and the addresses they are bound to.
    named_addrs: Vec<(String, SocketAddr)>,
    tasks: TaskTracker,
}

/// Binds the named listeners (`[listeners.<name>]`) and records their bound addresses.
#[allow(clippy::type_complexity)]
fn bind_named(
    config: &Config,
    state: &State,
) -> anyhow::Result<(Vec<(TcpListener, SocketAddr)>, Vec<(String, SocketAddr)>)> {
    let mut named = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let key = format!("listeners.{}.address", l.name);
        named.push(bind_for(l.address, &key)?);
    }
    let named_addrs: Vec<(String, SocketAddr)> = config
        .listeners
        .iter()
        .zip(&named)
        .map(|(l, (_, a))| (l.name.clone(), *a))
        .collect();
    *state.named_bound.lock().unwrap_or_else(|e| e.into_inner()) =
        named_addrs.iter().map(|(_, a)| *a).collect();
    Ok((named, named_addrs))
}

/// Binds `addr`, naming the configuration key in the error.
fn bind_for(addr: SocketAddr, key: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = bind(addr).with_context(|| format!("cannot listen on {addr} ({key})"))?;
    let bound = l.local_addr()?;
    Ok((l, bound))
}

impl Server {
    /// Binds the listeners and starts serving. Returns once every listener is bound.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        Server::start_with_path(config, None).await
    }

    /// Like [`Server::start`]; `path` is the file that reloads re-read (SIGHUP, admin
    /// `POST /reload`, and changes of the file itself).
    pub async fn start_with_path(config: Config, path: Option<PathBuf>) -> anyhow::Result<Server> {
        let tls = crate::tls::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let module_tls = tls.module.clone();
        crate::tls::warn_insecure(&config);
        let shared = match &config.sticky.shared {
            Some(c) => Some(crate::sticky::SharedStore::new(c)?),
            None => None,
        };
        let state = State::new(config, tls, path.clone(), shared);
        let config = state.snapshot.load().config.clone();
        state
            .telemetry
            .apply_config(&config)
            .map_err(anyhow::Error::msg)?;
        let (proxy, proxy_addr) = bind_for(config.listener.address, "listener.address")?;
        let tasks = TaskTracker::new();
        if let Some(store) = &state.shared {
            store.start(&tasks, state.shutdown.clone()).await?;
        }

        let module_addr = match &config.module {
            Some(module) => {
                let (l, addr) = bind_for(module.address, "module.address")?;
                let router = lb_module_api::router(
                    state.telemetry.module_source(),
                    &module.base_path,
                    lb_module_api::RouterOptions {
                        body_limit: module.body_limit,
                    },
                );
                let tls = module_tls.map(tokio_rustls::TlsAcceptor::from);
                tasks.spawn(listen::serve_router(
                    l,
                    "module",
                    router,
                    tls,
                    Lifetime::of(&state),
                ));
                tracing::info!(%addr, "Qlik load balancing module API ready");
                Some(addr)
            }
            None => None,
        };
        let admin_addr = match &config.admin {
            Some(a) => {
                let (l, addr) = bind_for(a.address, "admin.address")?;
                let reload_state = state.clone();
                let router = crate::admin::router(crate::admin::AdminCtx {
                    state: state.clone(),
                    reload: Arc::new(move || reload_state.reload_file()),
                    metrics: state.metrics.clone(),
                    token: a.token.clone(),
                });
                tasks.spawn(listen::serve_router(
                    l,
                    "admin",
                    router,
                    None,
                    Lifetime::of(&state),
                ));
                tracing::info!(%addr, "admin listener ready");
                Some(addr)
            }
            None => None,
        };
        if let Some(addr) = config.listener.redirect_address {
            let (l, _) = bind_for(addr, "listener.redirect_address")?;
            tasks.spawn(listen::serve_redirect(l, Lifetime::of(&state)));
            tracing::info!(%addr, "HTTP-to-HTTPS redirect listener ready");
        }
        *state.bound.lock().unwrap_or_else(|e| e.into_inner()) =
            [Some(proxy_addr), admin_addr, module_addr];
        let (named, named_addrs) = bind_named(&config, &state)?;
        let accept_state = state.clone();
        tasks.spawn(listen::accept_loop(
            proxy,
            "proxy",
            Lifetime::of(&state),
            move |stream, peer| listen::proxy::accept(&accept_state, 0, stream, peer),
        ));
        for (i, (l, addr)) in named.into_iter().enumerate() {
            let accept_state = state.clone();
            tasks.spawn(listen::accept_loop(
                l,
                "proxy",
                Lifetime::of(&state),
                move |stream, peer| listen::proxy::accept(&accept_state, i + 1, stream, peer),
            ));
            tracing::info!(%addr, listener = %named_addrs[i].0, "proxy listener ready");
        }
        tasks.spawn(crate::tasks::sweeper(state.clone()));
        tasks.spawn(crate::health::run(state.clone()));
        if let Some(p) = path {
            tasks.spawn(crate::tasks::watch_config(state.clone(), p));
        }
        tracing::info!(%proxy_addr, "proxy listener ready");
        Ok(Server {
            state,
            proxy_addr,
            admin_addr,
            module_addr,
            named_addrs,
            tasks,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The bound address of the named listener `name` (`[listeners.<name>]`).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.named_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn module_addr(&self) -> Option<SocketAddr> {
        self.module_addr
    }

    /// Reads, checks and applies the configuration file; on any error the running one stays.
    pub fn reload_from(&self, path: &Path) -> Result<(), String> {
        self.state.reload_from(path)
    }

    /// Applies a checked configuration; on any error the running one stays.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        self.state.reload(config)
    }

    /// The outcome of the last configuration load.
    pub fn reload_status(&self) -> ReloadStatus {
        (**self.state.reload_status.load()).clone()
    }

    /// Read-only access to live state, for the end-to-end tests.
    #[doc(hidden)]
    pub fn test_handle(&self) -> crate::testing::TestHandle<'_> {
        crate::testing::TestHandle::new(&self.state)
    }

    /// Stops accepting, lets requests in flight finish, keeps tunnels open until the drain
    /// deadline (`shutdown.drain_timeout`), then closes them.
    pub async fn shutdown(self) {
        let state = &self.state;
        let drain = state.snapshot.load().config.shutdown.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain;
        tracing::info!("shutting down: draining for up to {drain:?}");
        state.shutdown.cancel();
        self.tasks.close();
        state.conns.close();
        state.tunnels.close();
        let _ = tokio::time::timeout_at(deadline, state.conns.wait()).await;
        let _ = tokio::time::timeout_at(deadline, state.tunnels.wait()).await;
        state.tunnels_close.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), state.tunnels.wait()).await;
        state.telemetry.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        tracing::info!("stopped");
    }
}
