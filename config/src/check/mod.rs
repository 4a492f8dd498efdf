//! Validation of a parsed file, one module per section. Each section's function turns its
//! `file::*File` into the checked type and records every problem it finds, with its key path,
//! in the [`Validator`]; problems are reported in file order (sections as [`check`] calls
//! them, keys within a section as they come).

mod admin;
mod balance;
mod health;
mod listener;
mod module;
mod nodes;
mod ranking;
mod server;
mod shared;
mod shutdown;
mod sticky;
mod telemetry;
mod tls;
mod upstream;
mod websocket;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{file, Config, ConfigError};

/// One millisecond: the shortest timeout or interval most keys accept.
const MS: Duration = Duration::from_millis(1);
/// One day: the longest timeout or interval most keys accept.
const DAY: Duration = Duration::from_secs(86_400);

/// Collects the problems of one file while its sections are checked.
pub(crate) struct Validator<'a> {
    pub(crate) errors: Vec<ConfigError>,
    /// Relative file paths in the file are taken from here.
    base_dir: &'a Path,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(base_dir: &'a Path) -> Self {
        Validator {
            errors: Vec::new(),
            base_dir,
        }
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn addr(&mut self, path: &str, s: &str) -> SocketAddr {
        match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "invalid socket address {s:?} (expected IP:port, e.g. \"10.0.0.5:443\")"
                    ),
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        }
    }

    fn dur(&mut self, path: &str, d: &file::Dur, min: Duration, max: Duration) -> Duration {
        let v = d.0;
        if v < min || v > max {
            self.err(
                path,
                format!(
                    "{} is out of range ({} to {})",
                    humantime::format_duration(v),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
        v
    }

    fn path(&self, p: &Option<String>) -> Option<PathBuf> {
        p.as_ref().map(|p| self.base_dir.join(p))
    }

    /// Checks every section of `f`; `text` is the file it was parsed from.
    pub(crate) fn check(&mut self, f: file::FileConfig, text: &str) -> Config {
        let server = self.server(&f.server);
        let listener = self.listener("listener", "users", &f.listener);
        let listeners: Vec<_> = f
            .listeners
            .iter()
            .map(|(name, l)| self.named_listener(name, l))
            .collect();
        self.listener_addresses_differ(&listener, &listeners);
        let upstream = self.upstream(&f.upstream);
        let websocket = self.websocket(&f.websocket);
        let sticky = self.sticky(&f.sticky);
        let balance = self.balance(&f.balance);
        let health = self.health(&f.health);
        self.ranking(&f.ranking);
        let shutdown = self.shutdown(&f.shutdown);
        let admin = f.admin.as_ref().map(|a| self.admin(a));
        let module = f.module.as_ref().map(|m| self.module(m));
        let telemetry = self.telemetry(&f.telemetry);
        let nodes = self.nodes(&f.nodes, &listeners);
        self.same_site_needs_https(&sticky, &listener, &listeners);
        self.strategy_needs(&balance, &nodes);
        Config {
            server,
            listener,
            listeners,
            upstream,
            websocket,
            sticky,
            balance,
            health,
            shutdown,
            admin,
            module,
            telemetry,
            ranking: f.ranking.clone(),
            nodes,
            version: version_of(text),
        }
    }
}

impl Validator<'_> {
    /// Two listeners cannot share an address.
    fn listener_addresses_differ(&mut self, main: &crate::Listener, named: &[crate::Listener]) {
        let mut seen = vec![main.address];
        for l in named {
            if l.address.port() != 0 && seen.contains(&l.address) {
                self.err(
                    format!("listeners.{}.address", l.name),
                    format!("{} is already the address of another listener", l.address),
                );
            }
            seen.push(l.address);
        }
    }

    /// `sticky.same_site = "none"` makes the route cookie `Secure`: browsers keep it only
    /// from HTTPS, so every users' listener must be HTTPS (its own TLS or a trusted front's).
    fn same_site_needs_https(
        &mut self,
        sticky: &crate::Sticky,
        main: &crate::Listener,
        named: &[crate::Listener],
    ) {
        if sticky.same_site != file::SameSite::None {
            return;
        }
        let plain: Vec<String> = std::iter::once(main)
            .chain(named)
            .filter(|l| l.role == crate::ListenerRole::Users && !l.clients_use_https())
            .map(|l| l.name.clone())
            .collect();
        if !plain.is_empty() {
            self.err(
                "sticky.same_site",
                format!(
                    "\"none\" makes the route cookie Secure, which browsers keep only over HTTPS; \
                     listener(s) {} are plain HTTP (give them [tls], or tls_front = true when a \
                     trusted front terminates TLS)",
                    plain.join(", ")
                ),
            );
        }
    }
}

/// A short, stable identifier of a configuration text (FNV-1a 64, hex).
fn version_of(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}
