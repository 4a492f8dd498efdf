//! Configuration of the `lb` load balancer.
//!
//! Two layers, as in sozu: [`file`] holds the serde types of the TOML file (every optional key
//! has a default, unknown keys are refused), and [`Config`] is the checked result of
//! [`Config::from_toml`]: addresses parsed, durations in range, node ids unique, key files read.
//! Every problem found is reported with its key path (`nodes[2].address: ...`), all of them at
//! once where the file parses.

pub mod file;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{BalanceStrategy, ProxyProtocolMode};

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
    pub token: Option<String>,
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
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub address: SocketAddr,
    pub zone: Option<String>,
    /// Health check URL of this node's engine, when telemetry is wanted.
    pub engine: Option<String>,
    /// The node's proxy speaks HTTPS.
    pub tls: bool,
    /// The name the node's certificate must carry (and SNI); default its IP address.
    pub server_name: Option<String>,
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
        let mut v = Validator {
            errors: Vec::new(),
            base_dir,
        };
        let cfg = v.check(raw, text);
        if v.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

struct Validator<'a> {
    errors: Vec<ConfigError>,
    base_dir: &'a Path,
}

impl Validator<'_> {
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

    fn tls(&mut self, key: &str, t: &Option<file::TlsFile>) -> Option<Tls> {
        let t = t.as_ref()?;
        if key == "listener.tls" && t.client_ca_file.is_some() {
            self.err(
                format!("{key}.client_ca_file"),
                "client certificates are for the module listener only",
            );
        }
        let mut sni = Vec::new();
        for (i, s) in t.sni.iter().enumerate() {
            if s.server_names.is_empty() {
                self.err(
                    format!("{key}.sni[{i}].server_names"),
                    "at least one name is required",
                );
            }
            sni.push(Sni {
                server_names: s
                    .server_names
                    .iter()
                    .map(|n| n.trim().to_ascii_lowercase())
                    .collect(),
                cert_file: self.base_dir.join(&s.cert_file),
                key_file: self.base_dir.join(&s.key_file),
            });
        }
        Some(Tls {
            cert_file: self.base_dir.join(&t.cert_file),
            key_file: self.base_dir.join(&t.key_file),
            sni,
            client_ca_file: self.path(&t.client_ca_file),
        })
    }

    fn path(&self, p: &Option<String>) -> Option<PathBuf> {
        p.as_ref().map(|p| self.base_dir.join(p))
    }

    fn check(&mut self, f: file::FileConfig, text: &str) -> Config {
        const MS: Duration = Duration::from_millis(1);
        const DAY: Duration = Duration::from_secs(86_400);
        let server = Server {
            worker_threads: f.server.worker_threads,
            access_log: f.server.access_log,
        };
        if server.worker_threads > 1024 {
            self.err(
                "server.worker_threads",
                "must be at most 1024 (0 means one per core)",
            );
        }

        let listener = Listener {
            address: self.addr("listener.address", &f.listener.address),
            header_read_timeout: self.dur(
                "listener.header_read_timeout",
                &f.listener.header_read_timeout,
                MS,
                DAY,
            ),
            max_header_bytes: f.listener.max_header_bytes,
            max_connections: f.listener.max_connections,
            proxy_protocol: f.listener.proxy_protocol,
            max_connections_per_client: f.listener.max_connections_per_client,
            max_body_bytes: f.listener.max_body_bytes,
            trusted_proxies: Vec::new(),
            allowed_hosts: Vec::new(),
            websocket_origins: Vec::new(),
            tls: self.tls("listener.tls", &f.listener.tls),
            redirect_address: f
                .listener
                .redirect_address
                .as_ref()
                .map(|a| self.addr("listener.redirect_address", a)),
            hsts_max_age: f.listener.hsts_max_age.0,
        };
        let mut listener = listener;
        for (i, c) in f.listener.trusted_proxies.iter().enumerate() {
            let parsed = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => listener.trusted_proxies.push(n),
                Err(_) => self.err(
                    format!("listener.trusted_proxies[{i}]"),
                    format!("{c:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        for (i, h) in f.listener.allowed_hosts.iter().enumerate() {
            let h = h.trim().to_ascii_lowercase();
            let bare = h.strip_prefix("*.").unwrap_or(&h);
            if bare.is_empty()
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            {
                self.err(
                    format!("listener.allowed_hosts[{i}]"),
                    format!("{h:?} is not a host name"),
                );
            }
            listener.allowed_hosts.push(h);
        }
        for (i, o) in f.listener.websocket_origins.iter().enumerate() {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o.is_empty() || o.contains(char::is_whitespace) {
                self.err(
                    format!("listener.websocket_origins[{i}]"),
                    format!("{o:?} is not an origin or host name"),
                );
            }
            listener.websocket_origins.push(o);
        }
        if listener.redirect_address.is_some() && listener.tls.is_none() {
            self.err(
                "listener.redirect_address",
                "an HTTP-to-HTTPS redirect needs [listener.tls]",
            );
        }
        if !(8192..=1 << 20).contains(&listener.max_header_bytes) {
            self.err(
                "listener.max_header_bytes",
                "must be between 8192 and 1048576",
            );
        }
        if listener.max_connections == 0 {
            self.err("listener.max_connections", "must be at least 1");
        }

        let upstream = Upstream {
            ca_file: self.path(&f.upstream.ca_file),
            insecure_skip_verify: f.upstream.insecure_skip_verify,
            connect_timeout: self.dur(
                "upstream.connect_timeout",
                &f.upstream.connect_timeout,
                MS,
                DAY,
            ),
            response_timeout: self.dur(
                "upstream.response_timeout",
                &f.upstream.response_timeout,
                MS,
                DAY,
            ),
            pool_idle_timeout: self.dur(
                "upstream.pool_idle_timeout",
                &f.upstream.pool_idle_timeout,
                MS,
                DAY,
            ),
            pool_max_idle_per_node: f.upstream.pool_max_idle_per_node,
        };
        let websocket = WebSocket {
            idle_timeout: self.dur(
                "websocket.idle_timeout",
                &f.websocket.idle_timeout,
                MS,
                7 * DAY,
            ),
        };

        let s = &f.sticky;
        for (i, name) in s.session_cookies.iter().enumerate() {
            if !is_cookie_name(name) {
                self.err(
                    format!("sticky.session_cookies[{i}]"),
                    format!("{name:?} is not a valid cookie name"),
                );
            }
        }
        for (i, name) in s.session_cookie_prefixes.iter().enumerate() {
            if !is_cookie_name(name) {
                self.err(
                    format!("sticky.session_cookie_prefixes[{i}]"),
                    format!("{name:?} is not a valid cookie name prefix"),
                );
            }
        }
        if !is_cookie_name(&s.route_cookie) {
            self.err(
                "sticky.route_cookie",
                format!("{:?} is not a valid cookie name", s.route_cookie),
            );
        }
        if s.max_sessions == 0 {
            self.err("sticky.max_sessions", "must be at least 1");
        }
        let route_key = match (&s.route_key, &s.route_key_file) {
            (Some(_), Some(_)) => {
                self.err(
                    "sticky.route_key",
                    "set either route_key or route_key_file, not both",
                );
                None
            }
            (Some(k), None) => Some(k.trim().as_bytes().to_vec()),
            (None, Some(p)) => {
                let p = self.base_dir.join(p);
                match read_small_file(&p, 4096) {
                    Ok(k) => Some(trim_bytes(&k).to_vec()),
                    Err(e) => {
                        self.err("sticky.route_key_file", e);
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(k) = &route_key {
            if k.len() < 16 {
                let key = if s.route_key.is_some() {
                    "sticky.route_key"
                } else {
                    "sticky.route_key_file"
                };
                self.err(
                    key,
                    format!("the key must be at least 16 bytes long, got {}", k.len()),
                );
            }
        }
        let sticky = Sticky {
            session_cookies: s.session_cookies.clone(),
            session_cookie_prefixes: s.session_cookie_prefixes.clone(),
            session_idle_timeout: self.dur(
                "sticky.session_idle_timeout",
                &s.session_idle_timeout,
                Duration::from_secs(1),
                30 * DAY,
            ),
            max_sessions: s.max_sessions,
            route_cookie: s.route_cookie.clone(),
            route_key,
        };

        let balance = Balance {
            strategy: f.balance.strategy,
            zone: f.balance.zone.clone(),
        };
        let h = &f.health;
        let health = Health {
            enabled: h.enabled,
            path: h.path.clone(),
            expect_status: match parse_status_range(&h.expect_status) {
                Some(r) => r,
                None => {
                    self.err(
                        "health.expect_status",
                        format!(
                            "{:?} is not a status or a range like \"200-399\"",
                            h.expect_status
                        ),
                    );
                    (200, 499)
                }
            },
            interval: self.dur(
                "health.interval",
                &h.interval,
                Duration::from_millis(10),
                DAY,
            ),
            timeout: self.dur("health.timeout", &h.timeout, MS, DAY),
            rise: h.rise,
            fall: h.fall,
            slow_start: self.dur("health.slow_start", &h.slow_start, Duration::ZERO, DAY),
            passive_fail_timeout: self.dur(
                "health.passive_fail_timeout",
                &h.passive_fail_timeout,
                MS,
                DAY,
            ),
            passive_errors: h.passive_errors,
            passive_window: self.dur("health.passive_window", &h.passive_window, MS, DAY),
        };
        if !health.path.is_empty() && !health.path.starts_with('/') {
            self.err(
                "health.path",
                "must start with '/' (or be empty for a TCP connect check)",
            );
        }
        if health.rise == 0 || health.fall == 0 {
            self.err(
                if health.rise == 0 {
                    "health.rise"
                } else {
                    "health.fall"
                },
                "must be at least 1",
            );
        }
        if let Err(e) = f.ranking.validate() {
            self.err("ranking", e);
        }
        let shutdown = Shutdown {
            drain_timeout: self.dur(
                "shutdown.drain_timeout",
                &f.shutdown.drain_timeout,
                Duration::ZERO,
                DAY,
            ),
        };
        let admin = f.admin.as_ref().map(|a| Admin {
            address: self.addr("admin.address", &a.address),
            token: a.token.clone(),
        });
        if let Some(a) = &admin {
            if !a.address.ip().is_loopback() && a.token.as_deref().unwrap_or("").len() < 16 {
                self.err(
                    "admin.token",
                    "the admin listener is not on a loopback address: a token of at least 16 characters is required",
                );
            }
        }
        let module = f.module.as_ref().map(|m| Module {
            address: self.addr("module.address", &m.address),
            base_path: m.base_path.clone(),
            body_limit: m.body_limit,
            tls: self.tls("module.tls", &m.tls),
        });
        if let Some(m) = &module {
            if !m.base_path.starts_with('/') {
                self.err("module.base_path", "must start with '/'");
            }
            if m.body_limit < 1024 {
                self.err("module.body_limit", "must be at least 1024 bytes");
            }
        }
        let t = &f.telemetry;
        let telemetry = Telemetry {
            interval: self.dur(
                "telemetry.interval",
                &t.interval,
                Duration::from_millis(50),
                DAY,
            ),
            timeout: self.dur("telemetry.timeout", &t.timeout, MS, DAY),
            headers: t
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ca_file: self.path(&t.ca_file),
            cert_file: self.path(&t.cert_file),
            key_file: self.path(&t.key_file),
            insecure_skip_verify: t.insecure_skip_verify,
        };
        for (k, v) in &telemetry.headers {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                self.err(format!("telemetry.headers.{k}"), "invalid header name");
            }
            if v.bytes().any(|b| b < 0x20 && b != b'\t') {
                self.err(format!("telemetry.headers.{k}"), "invalid header value");
            }
        }
        if telemetry.cert_file.is_some() != telemetry.key_file.is_some() {
            self.err("telemetry.cert_file", "cert_file and key_file go together");
        }

        let mut nodes = Vec::with_capacity(f.nodes.len());
        let mut seen_ids = HashSet::new();
        let mut seen_addrs = HashSet::new();
        if f.nodes.is_empty() {
            self.err("nodes", "at least one node is required");
        }
        for (i, n) in f.nodes.iter().enumerate() {
            if n.id.is_empty()
                || n.id.len() > 64
                || !n
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                self.err(
                    format!("nodes[{i}].id"),
                    format!(
                        "{:?} is not a valid node id (1 to 64 of A-Z a-z 0-9 - _)",
                        n.id
                    ),
                );
            } else if !seen_ids.insert(n.id.clone()) {
                self.err(
                    format!("nodes[{i}].id"),
                    format!("duplicate node id {:?}", n.id),
                );
            }
            let address = self.addr(&format!("nodes[{i}].address"), &n.address);
            if address.port() != 0 && !seen_addrs.insert(address) {
                self.err(
                    format!("nodes[{i}].address"),
                    format!("duplicate node address {address}"),
                );
            }
            let engine = match n.engine.as_deref() {
                None => None,
                Some("same-host") => Some(format!(
                    "https://{}:4747/engine/healthcheck",
                    host_of(address)
                )),
                Some(url) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        self.err(
                            format!("nodes[{i}].engine"),
                            format!(
                                "{url:?} is neither \"same-host\" nor an http:// or https:// URL"
                            ),
                        );
                    }
                    Some(url.to_string())
                }
            };
            nodes.push(Node {
                id: n.id.clone(),
                address,
                zone: n.zone.clone(),
                engine,
                tls: n.tls,
                server_name: n.server_name.clone(),
            });
        }
        if balance.strategy == BalanceStrategy::LeastLoaded
            && nodes.iter().all(|n| n.engine.is_none())
        {
            self.err(
                "balance.strategy",
                "least-loaded needs telemetry: give at least one node an `engine`",
            );
        }
        Config {
            server,
            listener,
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

/// Reads a regular file of at most `max` bytes (a key file): a FIFO, a device or a huge file
/// is an error, not a hang.
fn read_small_file(p: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", p.display()));
    }
    if meta.len() > max {
        return Err(format!("{} is larger than {max} bytes", p.display()));
    }
    let mut out = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(max).read_to_end(&mut out))
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(out)
}

/// `"200"` or `"200-399"` as an inclusive range.
fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

fn host_of(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// RFC 6265 cookie-name: an HTTP token.
pub fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
        [listener]
        address = "127.0.0.1:18000"
        [[nodes]]
        id = "qps1"
        address = "127.0.0.1:19100"
    "#;

    fn parse(s: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(s, Path::new("."))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.listener.address, "127.0.0.1:18000".parse().unwrap());
        assert_eq!(c.websocket.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.sticky.session_idle_timeout, Duration::from_secs(35 * 60));
        assert_eq!(c.sticky.route_cookie, "QLB_ROUTE");
        assert_eq!(c.sticky.session_cookies, vec!["X-Qlik-Session".to_string()]);
        assert_eq!(
            c.sticky.session_cookie_prefixes,
            vec!["X-Qlik-Session-".to_string()]
        );
        assert_eq!(c.balance.strategy, BalanceStrategy::RoundRobin);
        assert!(c.admin.is_none() && c.module.is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let e = parse(
            r#"
            [listener]
            address = "nope"
            [[nodes]]
            id = "a"
            address = "127.0.0.1:1"
            [[nodes]]
            id = "a"
            address = "127.0.0.1:2"
            [[nodes]]
            id = "c"
            address = "10.0.0.1:99999"
            "#,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("listener.address: invalid socket address \"nope\""),
            "{text}"
        );
        assert!(
            text.contains("nodes[1].id: duplicate node id \"a\""),
            "{text}"
        );
        assert!(
            text.contains("nodes[2].address: invalid socket address \"10.0.0.1:99999\""),
            "{text}"
        );
        assert_eq!(e.0.len(), 3);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let e = parse(&format!("{MIN}\n[sticky]\nroute_cokie = \"x\"\n")).unwrap_err();
        assert_eq!(e.0[0].path, "sticky.route_cokie");
        assert!(
            e.0[0].message.contains("unknown field `route_cokie`"),
            "{e}"
        );
        let e = parse(&MIN.replace("id = \"qps1\"", "id = \"qps1\"\nwieght = 3")).unwrap_err();
        assert_eq!(e.0[0].path, "nodes[0].wieght");
    }

    #[test]
    fn bad_values_and_syntax() {
        let e = parse(&format!("{MIN}\n[websocket]\nidle_timeout = \"forever\"\n")).unwrap_err();
        assert_eq!(e.0[0].path, "websocket.idle_timeout");
        let e = parse("[listener\naddress = 1").unwrap_err();
        assert!(!e.0[0].message.is_empty());
        let e = parse(&format!("{MIN}\n[sticky]\nroute_key = \"short\"\n")).unwrap_err();
        assert_eq!(e.0[0].path, "sticky.route_key");
        let e = parse(&format!("{MIN}\n[balance]\nstrategy = \"random\"\n")).unwrap_err();
        assert_eq!(e.0[0].path, "balance.strategy");
        let e = parse(&format!("{MIN}\n[admin]\naddress = \"0.0.0.0:18001\"\n")).unwrap_err();
        assert_eq!(e.0[0].path, "admin.token");
        let e = parse("[listener]\naddress = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.0[0].path, "nodes");
    }

    #[test]
    fn route_key_file_must_be_a_small_regular_file() {
        let e = parse(&format!(
            "{MIN}\n[sticky]\nroute_key_file = \"/dev/zero\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.0[0].path, "sticky.route_key_file");
        assert!(e.0[0].message.contains("not a regular file"), "{e}");
        let dir = std::env::temp_dir().join(format!("lb-config-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "  0123456789abcdef0123  \n").unwrap();
        let c = Config::from_toml(
            &format!("{MIN}\n[sticky]\nroute_key_file = \"key\"\n"),
            &dir,
        )
        .unwrap();
        assert_eq!(
            c.sticky.route_key.as_deref(),
            Some(&b"0123456789abcdef0123"[..])
        );
        std::fs::write(dir.join("key"), vec![b'k'; 5000]).unwrap();
        let e = Config::from_toml(
            &format!("{MIN}\n[sticky]\nroute_key_file = \"key\"\n"),
            &dir,
        )
        .unwrap_err();
        assert!(e.0[0].message.contains("larger than"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn engine_same_host() {
        let c =
            parse(&MIN.replace("id = \"qps1\"", "id = \"qps1\"\nengine = \"same-host\"")).unwrap();
        assert_eq!(
            c.nodes[0].engine.as_deref(),
            Some("https://127.0.0.1:4747/engine/healthcheck")
        );
    }

    #[test]
    fn shipped_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                // Examples naming host files (production.toml: /etc/lb/route.key and the
                // certificates) are checked with those files in place by
                // tests/tests/deploy_lint.rs.
                if std::fs::read_to_string(&p).unwrap().contains("/etc/lb/") {
                    continue;
                }
                Config::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
