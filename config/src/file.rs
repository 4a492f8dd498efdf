//! Serde types of the TOML file. Every optional key has its default here; the README's
//! configuration reference documents each one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written the humantime way: `"500ms"`, `"10s"`, `"35m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: {e} (e.g. \"10s\", \"35m\")"
            ))
        })
    }
}

fn secs(s: u64) -> Dur {
    Dur(Duration::from_secs(s))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    pub listener: ListenerFile,
    /// More proxy listeners by name (`[listeners.auth]`, `[listeners.rest]`).
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerFile>,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub websocket: WebSocketFile,
    #[serde(default)]
    pub sticky: StickyFile,
    #[serde(default)]
    pub balance: BalanceFile,
    #[serde(default)]
    pub health: HealthFile,
    #[serde(default)]
    pub shutdown: ShutdownFile,
    pub admin: Option<AdminFile>,
    pub module: Option<ModuleFile>,
    #[serde(default)]
    pub telemetry: TelemetryFile,
    #[serde(default)]
    pub ranking: lb_module_api::RankPolicy,
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub worker_threads: usize,
    pub access_log: bool,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            worker_threads: 0,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyProtocolMode {
    /// No PROXY protocol header expected.
    #[default]
    Off,
    /// Version 1 (text) or 2 (binary) header required on every connection.
    Required,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub address: String,
    #[serde(default = "d_header_read_timeout")]
    pub header_read_timeout: Dur,
    #[serde(default = "d_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolMode,
    #[serde(default)]
    pub max_connections_per_client: usize,
    #[serde(default)]
    pub max_body_bytes: u64,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub websocket_origins: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub redirect_address: Option<String>,
    #[serde(default = "d_hsts")]
    pub hsts_max_age: Dur,
    #[serde(default = "d_body_timeout")]
    pub body_timeout: Dur,
    #[serde(default = "d_send_timeout")]
    pub send_timeout: Dur,
    /// Named listeners only: the nodes' port behind this listener (a node's address for it
    /// defaults to the node's host with this port).
    #[serde(default)]
    pub node_port: Option<u16>,
    #[serde(default)]
    pub role: ListenerRole,
    /// Request headers removed from every client request on this listener.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Request headers kept only from `trusted_proxies`, removed from everyone else.
    #[serde(default)]
    pub trusted_headers: Vec<String>,
    /// A trusted front (a TLS-terminating load balancer) serves this listener's clients over
    /// HTTPS: cookies are `Secure` although this listener speaks plain HTTP.
    #[serde(default)]
    pub tls_front: bool,
    /// REST API listener only: the nodes' REST ports speak HTTPS.
    #[serde(default)]
    pub node_tls: bool,
    /// REST API listener only: the client certificate (PEM) shown to the nodes.
    #[serde(default)]
    pub node_cert_file: Option<String>,
    #[serde(default)]
    pub node_key_file: Option<String>,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerRole {
    /// Users' traffic (the user port, the Windows authentication port, ...).
    #[default]
    Users,
    /// The QPS REST API (port 4243) for portals: tickets and sessions are learned.
    RestApi,
}

fn d_body_timeout() -> Dur {
    secs(60)
}
fn d_send_timeout() -> Dur {
    secs(60)
}

fn d_hsts() -> Dur {
    secs(0)
}

/// HTTPS on a listener: a default certificate and more chosen by SNI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_file: String,
    pub key_file: String,
    #[serde(default)]
    pub sni: Vec<SniFile>,
    /// Module listener only: PEM CA bundle; clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniFile {
    pub server_names: Vec<String>,
    pub cert_file: String,
    pub key_file: String,
}

fn d_header_read_timeout() -> Dur {
    secs(10)
}
fn d_max_header_bytes() -> usize {
    65_536
}
fn d_max_connections() -> usize {
    20_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    pub ca_file: Option<String>,
    pub insecure_skip_verify: bool,
    pub connect_timeout: Dur,
    pub response_timeout: Dur,
    pub pool_idle_timeout: Dur,
    pub pool_max_idle_per_node: usize,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        UpstreamFile {
            ca_file: None,
            insecure_skip_verify: false,
            connect_timeout: secs(3),
            response_timeout: secs(60),
            pool_idle_timeout: secs(90),
            pool_max_idle_per_node: 256,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketFile {
    pub idle_timeout: Dur,
}

impl Default for WebSocketFile {
    fn default() -> Self {
        WebSocketFile {
            idle_timeout: secs(3600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StickyFile {
    pub session_cookies: Vec<String>,
    pub session_cookie_prefixes: Vec<String>,
    pub session_idle_timeout: Dur,
    pub max_sessions: usize,
    pub route_cookie: String,
    pub route_key: Option<String>,
    pub route_key_file: Option<String>,
    pub same_site: SameSite,
    pub domain: Option<String>,
    pub ticket_lifetime: Dur,
    /// `[sticky.shared]`: the store several balancers share what they learn through.
    pub shared: Option<SharedStoreFile>,
}

/// `SameSite` of the route cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

impl Default for StickyFile {
    fn default() -> Self {
        StickyFile {
            session_cookies: vec!["X-Qlik-Session".into()],
            session_cookie_prefixes: vec!["X-Qlik-Session-".into()],
            session_idle_timeout: secs(35 * 60),
            max_sessions: 1_000_000,
            route_cookie: "QLB_ROUTE".into(),
            route_key: None,
            route_key_file: None,
            same_site: SameSite::Lax,
            domain: None,
            ticket_lifetime: secs(90),
            shared: None,
        }
    }
}

/// `[sticky.shared]`: a Valkey/Redis store (off unless the section is present).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedStoreFile {
    pub url: String,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
    pub key_prefix: String,
    pub lookup_timeout: Dur,
    pub connect_timeout: Dur,
    pub write_timeout: Dur,
    pub write_batch: usize,
    pub write_queue: usize,
}

impl Default for SharedStoreFile {
    fn default() -> Self {
        SharedStoreFile {
            url: String::new(),
            username: None,
            password_file: None,
            ca_file: None,
            key_prefix: "lb:".into(),
            lookup_timeout: Dur(Duration::from_millis(5)),
            connect_timeout: secs(1),
            write_timeout: secs(1),
            write_batch: 256,
            write_queue: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceStrategy {
    #[default]
    RoundRobin,
    LeastConnections,
    LeastLoaded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceFile {
    pub strategy: BalanceStrategy,
    pub zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthFile {
    pub enabled: bool,
    pub path: String,
    pub expect_status: String,
    pub interval: Dur,
    pub timeout: Dur,
    pub rise: u32,
    pub fall: u32,
    pub slow_start: Dur,
    pub passive_fail_timeout: Dur,
    pub passive_errors: u32,
    pub passive_window: Dur,
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile {
            enabled: true,
            path: "/".into(),
            expect_status: "200-499".into(),
            interval: secs(5),
            timeout: secs(2),
            rise: 2,
            fall: 3,
            slow_start: secs(30),
            passive_fail_timeout: secs(10),
            passive_errors: 10,
            passive_window: secs(10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownFile {
    pub drain_timeout: Dur,
}

impl Default for ShutdownFile {
    fn default() -> Self {
        ShutdownFile {
            drain_timeout: secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub address: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleFile {
    pub address: String,
    #[serde(default = "d_base_path")]
    pub base_path: String,
    #[serde(default = "d_body_limit")]
    pub body_limit: usize,
    #[serde(default)]
    pub tls: Option<TlsFile>,
}

fn d_base_path() -> String {
    "/".into()
}
fn d_body_limit() -> usize {
    65_536
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryFile {
    pub interval: Dur,
    pub timeout: Dur,
    pub headers: BTreeMap<String, String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub insecure_skip_verify: bool,
}

impl Default for TelemetryFile {
    fn default() -> Self {
        TelemetryFile {
            interval: secs(5),
            timeout: secs(2),
            headers: BTreeMap::from([(
                "X-Qlik-User".to_string(),
                "UserDirectory=INTERNAL; UserId=sa_api".to_string(),
            )]),
            ca_file: None,
            cert_file: None,
            key_file: None,
            insecure_skip_verify: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub id: String,
    pub address: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub engine: Option<String>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub server_name: Option<String>,
    /// The node's address behind each named listener (default: its host with the listener's
    /// `node_port`).
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
}
