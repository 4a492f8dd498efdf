//! Configuration of the `lb` load balancer.
//!
//! Two layers, as in sozu: [`file`] holds the serde types of the TOML file (every optional key
//! has a default, unknown keys are refused), and [`Config`] is the checked result of
//! [`Config::from_toml`]: addresses parsed, durations in range, node ids unique, key files read.
//! Every problem found is reported with its key path (`nodes[2].address: ...`), all of them at
//! once where the file parses. Each section is checked in its own module under `check/`.
//!
//! Values that `lb` uses as HTTP or TLS types come out typed as well, next to their text:
//! [`Node::engine_uri`], [`Node::authority`], [`Node::tls_server_name`],
//! [`Telemetry::typed_headers`] (and [`Telemetry::header_map`]) and [`Health::path_and_query`].

mod check;
pub mod file;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use file::{BalanceStrategy, ListenerRole, LogFormat, ProxyProtocolMode, SameSite};

/// One problem in a configuration file, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `nodes[2].address`; empty for problems of the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub listener: Listener,
    /// The named listeners (`[listeners.<name>]`), by name; listener `i + 1` of
    /// [`Config::listener_at`].
    pub listeners: Vec<Listener>,
    pub upstream: Upstream,
    pub websocket: WebSocket,
    pub sticky: Sticky,
    pub balance: Balance,
    pub health: Health,
    pub shutdown: Shutdown,
    pub admin: Option<Admin>,
    pub module: Option<Module>,
    pub telemetry: Telemetry,
    pub ranking: lb_module_api::RankPolicy,
    pub nodes: Vec<Node>,
    /// The file text this was built from, hashed: identifies the config version.
    pub version: String,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub worker_threads: usize,
    pub access_log: bool,
    pub log_format: LogFormat,
    /// Log to this file (reopened on SIGUSR1) instead of stderr.
    pub log_file: Option<PathBuf>,
    /// Lines the log writer's queue holds; more are dropped (and counted), never waited for.
    pub log_queue_lines: usize,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub proxy_protocol: ProxyProtocolMode,
    /// 0: no per-client limit.
    pub max_connections_per_client: usize,
    /// 0: no limit.
    pub max_body_bytes: u64,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Lowercase host names (`*.example.com` wildcards allowed); empty: any host.
    pub allowed_hosts: Vec<String>,
    /// Lowercase origins or host names; empty: no Origin check.
    pub websocket_origins: Vec<String>,
    pub tls: Option<Tls>,
    pub redirect_address: Option<SocketAddr>,
    pub hsts_max_age: Duration,
    /// Longest wait between two reads of a request body (0: none).
    pub body_timeout: Duration,
    /// Longest a response write to the client may stay blocked (0: none).
    pub send_timeout: Duration,
    /// `users` for `[listener]`, else the name of `[listeners.<name>]`.
    pub name: String,
    pub node_port: Option<u16>,
    pub role: ListenerRole,
    pub strip_headers: Vec<HeaderName>,
    pub trusted_headers: Vec<HeaderName>,
    pub tls_front: bool,
    pub node_tls: bool,
    pub node_cert_file: Option<PathBuf>,
    pub node_key_file: Option<PathBuf>,
}

impl Listener {
    /// Clients reach this listener over HTTPS (its own TLS, or a trusted front's).
    pub fn clients_use_https(&self) -> bool {
        self.tls.is_some() || self.tls_front
    }
}

/// Certificate files of an HTTPS listener (read and checked by `lb` when it compiles the
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub sni: Vec<Sni>,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sni {
    pub server_names: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_node: usize,
}

#[derive(Debug, Clone)]
pub struct WebSocket {
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub session_cookies: Vec<String>,
    pub session_cookie_prefixes: Vec<String>,
    pub session_idle_timeout: Duration,
    pub max_sessions: usize,
    pub route_cookie: String,
    /// HMAC key of the route cookie. `None`: a random key for this process only.
    pub route_key: Option<Vec<u8>>,
    pub same_site: SameSite,
    pub domain: Option<String>,
    /// How long a ticket made through the REST API listener pins its node.
    pub ticket_lifetime: Duration,
    /// The shared store (`[sticky.shared]`); `None`: what this balancer learns stays local.
    pub shared: Option<SharedStore>,
}

/// A checked `[sticky.shared]`: where the store is and how long to wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedStore {
    /// `redis://` or `rediss://` (TLS) URL, without credentials.
    pub url: String,
    pub tls: bool,
    pub username: Option<String>,
    /// Read from `password_file` (trimmed).
    pub password: Option<String>,
    /// PEM certificates from `ca_file`, trusted for `rediss://` instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    pub key_prefix: String,
    pub lookup_timeout: Duration,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub write_batch: usize,
    pub write_queue: usize,
}

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStore")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("key_prefix", &self.key_prefix)
            .field("lookup_timeout", &self.lookup_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Balance {
    pub strategy: BalanceStrategy,
    pub zone: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub enabled: bool,
    pub path: String,
    /// `path` as the request target of an HTTP check; `None`: a TCP connect check (`path` is
    /// empty, or is not a valid request target).
    pub path_and_query: Option<http::uri::PathAndQuery>,
    /// Inclusive range of statuses that count as healthy.
    pub expect_status: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub slow_start: Duration,
    pub passive_fail_timeout: Duration,
    /// 5xx answers, timeouts and broken answers within `passive_window` that take a node out
    /// for `passive_fail_timeout`; 0 disables.
    pub passive_errors: u32,
    pub passive_window: Duration,
}

#[derive(Debug, Clone)]
pub struct Shutdown {
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    /// The bearer token: `admin.token`, or the content of `admin.token_file` (trimmed).
    pub token: Option<String>,
    /// Host names (lowercase) the admin API answers to besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Module {
    pub address: SocketAddr,
    pub base_path: String,
    pub body_limit: usize,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone)]
pub struct Telemetry {
    pub interval: Duration,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    /// `headers`, typed, in the same order.
    pub typed_headers: Vec<(HeaderName, HeaderValue)>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub address: SocketAddr,
    /// `address` as a URI authority (`10.0.0.5:443`, `[2001:db8::5]:443`).
    pub authority: http::uri::Authority,
    pub zone: Option<String>,
    /// Health check URL of this node's engine, when telemetry is wanted.
    pub engine: Option<String>,
    /// `engine` as a URI: `Some` exactly when `engine` is.
    pub engine_uri: Option<http::Uri>,
    /// The node's proxy speaks HTTPS.
    pub tls: bool,
    /// The name the node's certificate must carry (and SNI); default its IP address.
    pub server_name: Option<String>,
    /// The name the certificate of an HTTPS node is checked against (and SNI):
    /// `server_name` when it is a DNS name or an IP address, else the node's IP address.
    pub tls_server_name: rustls_pki_types::ServerName<'static>,
    /// The node's address behind each named listener, in the order of [`Config::listeners`].
    pub addresses: Vec<SocketAddr>,
}

impl Telemetry {
    /// The headers of every telemetry request (a later name replaces an earlier one that
    /// differs only in case).
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.typed_headers.len());
        for (name, value) in &self.typed_headers {
            map.insert(name.clone(), value.clone());
        }
        map
    }
}

impl Config {
    /// Reads and checks a file; relative paths in it are taken from the file's folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base)
    }

    /// Parses and checks TOML text; relative file paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let de = toml::Deserializer::new(text);
        let raw: file::FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigErrors::one(path, e.into_inner().message().trim().to_string())
        })?;
        let mut v = check::Validator::new(base_dir);
        let cfg = v.check(raw, text);
        if v.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    /// Listener `i`: 0 is `[listener]`, `i > 0` is `listeners[i - 1]`.
    pub fn listener_at(&self, i: usize) -> &Listener {
        match i {
            0 => &self.listener,
            i => self.listeners.get(i - 1).unwrap_or(&self.listener),
        }
    }

    /// Every listener: `[listener]` first, then the named ones.
    pub fn all_listeners(&self) -> impl Iterator<Item = &Listener> {
        std::iter::once(&self.listener).chain(self.listeners.iter())
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// RFC 6265 cookie-name: an HTTP token.
pub fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
