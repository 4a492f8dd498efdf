//! The snapshot: everything compiled from one configuration, swapped whole on reload.
//!
//! A request loads the current snapshot once and keeps it to the end; old snapshots live until
//! their last request or tunnel drops them. Node state that must survive a reload lives in the
//! [`NodeRegistry`], keyed by node id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use lb_config::{BalanceStrategy, Config};
use metrics::Counter;

use crate::clock;
use crate::sticky::{Decision, RouteKey, SessionCookieNames};
use crate::tls::Acceptor;
use crate::upstream::pool::Pool;
use crate::upstream::{
    slow_start_admits, Candidate, LeastConnections, LeastLoaded, LoadRanking, NodeConnector,
    NodeIdx, NodeRegistry, NodeState, RoundRobin, Selector,
};

/// Position of a node in its snapshot's node list (valid for that snapshot only; the stable
/// number of a node is its [`NodeIdx`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodePos(pub usize);

/// Status classes used as a metric label.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One node as this snapshot sees it.
#[derive(Debug)]
pub struct Node {
    pub id: Arc<str>,
    pub state: Arc<NodeState>,
    pub scheme: Scheme,
    pub authority: Authority,
    pub zone: Option<String>,
    /// The node is in the balancer's own zone (or no zone preference is set).
    pub local: bool,
    /// Removed from the configuration: serves its pinned sessions until this clock time (ms).
    pub retiring_until_ms: Option<u64>,
    /// The route cookie value that pins to this node.
    pub route_value: Box<[u8]>,
    pub set_cookie: HeaderValue,
    pub set_cookie_secure: HeaderValue,
    pub engine: Option<String>,
    /// Connections to the node (the pool holds the node's one connector).
    pub pool: Arc<Pool>,
    /// Connections to the node's port behind each named listener (`Config::listeners` order).
    pub ports: Box<[Arc<Pool>]>,
    pub metrics: NodeMetrics,
}

/// Metric handles of one node, prepared with the snapshot.
#[derive(Debug)]
pub struct NodeMetrics {
    pub requests: [Counter; 5],
    pub duration: Arc<crate::durations::Histogram>,
    pub decisions: [Counter; 4],
}

impl NodeMetrics {
    fn new(id: &str) -> NodeMetrics {
        let node = id.to_string();
        NodeMetrics {
            requests: CLASSES.map(|c| {
                metrics::counter!("lb_requests_total", "node" => node.clone(), "class" => c)
            }),
            duration: crate::durations::of_node(id),
            decisions: Decision::ALL.map(|d| {
                metrics::counter!("lb_sticky_decisions_total", "node" => node.clone(), "decision" => d.as_str())
            }),
        }
    }
}

impl Node {
    /// The pool behind listener `i` (0: `[listener]`, the node's own address).
    pub fn pool_for(&self, listener: usize) -> &Arc<Pool> {
        match listener {
            0 => &self.pool,
            i => self.ports.get(i - 1).unwrap_or(&self.pool),
        }
    }

    /// Can this node serve a request now?
    pub fn usable(&self, now_ms: u64) -> bool {
        self.retiring_until_ms.is_none_or(|t| now_ms < t) && self.state.usable(now_ms)
    }

    pub fn accepts_new(&self, now_ms: u64) -> bool {
        self.retiring_until_ms.is_none() && self.state.accepts_new(now_ms)
    }
}

/// Everything compiled from one configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub nodes: Vec<Node>,
    by_id: HashMap<Arc<str>, NodePos, foldhash::fast::RandomState>,
    by_idx: HashMap<NodeIdx, NodePos, foldhash::fast::RandomState>,
    pub selector: Box<dyn Selector>,
    pub session_names: SessionCookieNames,
    pub route_key: RouteKey,
    pub route_cookie: Box<[u8]>,
    pub passive_fail_ms: u64,
    /// Requests answered without a node (503 and the like).
    pub no_node: [Counter; 5],
    /// TLS of the proxy listener (new connections use the snapshot current when they arrive).
    pub listener_tls: Option<Acceptor>,
    /// TLS of each named listener (`Config::listeners` order).
    pub named_tls: Vec<Option<Acceptor>>,
    /// `Strict-Transport-Security` value for HTTPS responses, when enabled.
    pub hsts: Option<HeaderValue>,
    /// Host allow list (lowercase; `*.domain` wildcards); empty: any host.
    pub allowed_hosts: Vec<String>,
    /// WebSocket origin allow list (lowercase origins or hosts); empty: no check.
    pub websocket_origins: Vec<String>,
}

impl Snapshot {
    /// Compiles a checked configuration. `prev` is the snapshot being replaced: its nodes that
    /// are not in `config` keep serving their pinned sessions until the drain deadline.
    pub fn build(
        config: Config,
        tls: crate::tls::Loaded,
        prev: Option<&Snapshot>,
        registry: &NodeRegistry,
        route_key: RouteKey,
        ranking: Option<Arc<dyn LoadRanking>>,
    ) -> Snapshot {
        let nodes = {
            let make = NodeMaker::new(&config, &tls, registry, &route_key);
            let configured = config.nodes.iter().map(|n| NodeSpec {
                id: n.id.clone(),
                addr: n.address,
                port_addrs: n.addresses.clone(),
                zone: n.zone.clone(),
                engine: n.engine.clone(),
                https: n.tls,
                retiring_until_ms: None,
            });
            let retiring = prev.map(|p| retiring(p, &config)).unwrap_or_default();
            configured
                .chain(retiring)
                .map(|spec| make.node(spec))
                .collect::<Vec<_>>()
        };
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), NodePos(i)))
            .collect();
        let by_idx = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.state.idx, NodePos(i)))
            .collect();
        Snapshot {
            session_names: SessionCookieNames::new(
                &config.sticky.session_cookies,
                &config.sticky.session_cookie_prefixes,
            ),
            route_cookie: config.sticky.route_cookie.as_bytes().into(),
            route_key,
            passive_fail_ms: config.health.passive_fail_timeout.as_millis() as u64,
            no_node: CLASSES
                .map(|c| metrics::counter!("lb_requests_total", "node" => "", "class" => c)),
            listener_tls: tls
                .listener
                .clone()
                .map(|c| Acceptor(tokio_rustls::TlsAcceptor::from(c))),
            named_tls: tls
                .listeners
                .iter()
                .map(|t| {
                    t.clone()
                        .map(|c| Acceptor(tokio_rustls::TlsAcceptor::from(c)))
                })
                .collect(),
            hsts: hsts(&config),
            allowed_hosts: config.listener.allowed_hosts.clone(),
            websocket_origins: config.listener.websocket_origins.clone(),
            selector: selector(config.balance.strategy, ranking),
            config: Arc::new(config),
            nodes,
            by_id,
            by_idx,
        }
    }

    pub fn pos_of_id(&self, id: &str) -> Option<NodePos> {
        self.by_id.get(id).copied()
    }

    pub fn pos_of_idx(&self, idx: NodeIdx) -> Option<NodePos> {
        self.by_idx.get(&idx).copied()
    }

    /// The TLS acceptor of listener `i` (0: `[listener]`).
    pub fn tls_of(&self, listener: usize) -> Option<&Acceptor> {
        match listener {
            0 => self.listener_tls.as_ref(),
            i => self.named_tls.get(i - 1).and_then(Option::as_ref),
        }
    }

    /// The node at `pos` of this snapshot.
    pub fn node(&self, pos: NodePos) -> &Node {
        &self.nodes[pos.0]
    }

    /// Chooses a node for a new session, skipping `exclude`. Nodes are taken from the best
    /// tier available: local zone before other zones, unsaturated engines before saturated.
    pub fn select_new(&self, now_ms: u64, exclude: Option<NodePos>) -> Option<NodePos> {
        let tier = |n: &Node| -> u8 { (!n.local as u8) + 2 * (n.state.saturated() as u8) };
        let exclude = exclude.map(|p| p.0);
        let best = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, n)| Some(i) != exclude && n.accepts_new(now_ms))
            .map(|(_, n)| tier(n))
            .min()?;
        let window = self.config.health.slow_start;
        // Up to STACK_NODES nodes, the candidates live on the stack: no allocation per new
        // session.
        const STACK_NODES: usize = 16;
        const NONE: Candidate<'static> = Candidate { id: "", load: 0 };
        let mut stack_pos = [NodePos(0); STACK_NODES];
        let mut stack_cand = [NONE; STACK_NODES];
        let (mut heap_pos, mut heap_cand) = (Vec::new(), Vec::new());
        let mut count = 0;
        let mut held_back = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if Some(i) != exclude && n.accepts_new(now_ms) && tier(n) == best {
                // A node in slow start takes only its growing share of new sessions.
                if !slow_start_admits(&n.state, now_ms, window) {
                    held_back.get_or_insert(NodePos(i));
                    continue;
                }
                let c = Candidate {
                    id: &n.id,
                    load: n.state.load(),
                };
                if count < STACK_NODES {
                    stack_pos[count] = NodePos(i);
                    stack_cand[count] = c;
                } else {
                    if heap_pos.is_empty() {
                        heap_pos.extend_from_slice(&stack_pos);
                        heap_cand.extend_from_slice(&stack_cand);
                    }
                    heap_pos.push(NodePos(i));
                    heap_cand.push(c);
                }
                count += 1;
            }
        }
        if count == 0 {
            return held_back;
        }
        let (positions, candidates) = if heap_pos.is_empty() {
            (&stack_pos[..count], &stack_cand[..count])
        } else {
            (&heap_pos[..], &heap_cand[..])
        };
        self.selector.pick(candidates).map(|c| positions[c])
    }
}

/// What a node of a snapshot is made from.
struct NodeSpec {
    id: String,
    addr: SocketAddr,
    /// Behind each named listener of the configuration.
    port_addrs: Vec<SocketAddr>,
    zone: Option<String>,
    engine: Option<String>,
    https: bool,
    retiring_until_ms: Option<u64>,
}

/// The nodes of `prev` that `config` no longer has and whose drain deadline has not passed.
fn retiring(prev: &Snapshot, config: &Config) -> Vec<NodeSpec> {
    let now = clock::now_ms();
    let drain = config.shutdown.drain_timeout.as_millis() as u64;
    let mut out = Vec::new();
    for old in &prev.nodes {
        if config.node(&old.id).is_some() {
            continue;
        }
        // A retiring node keeps its ports for the listeners that are still configured.
        let port_addrs = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, _)| {
                old.ports
                    .get(i)
                    .map_or(old.pool.connector().addr, |p| p.connector().addr)
            })
            .collect();
        let until = old.retiring_until_ms.unwrap_or(now + drain);
        if until <= now {
            continue;
        }
        out.push(NodeSpec {
            id: old.id.to_string(),
            addr: old
                .authority
                .as_str()
                .parse()
                .expect("authority made from a socket address"),
            port_addrs,
            zone: old.zone.clone(),
            engine: old.engine.clone(),
            https: old.scheme == Scheme::HTTPS,
            retiring_until_ms: Some(until),
        });
    }
    out
}

/// Makes the nodes of one snapshot: live state from the registry, prepared route cookie
/// headers and metric handles, a pool with the node's connector.
struct NodeMaker<'a> {
    config: &'a Config,
    registry: &'a NodeRegistry,
    route_key: &'a RouteKey,
    node_tls: tokio_rustls::TlsConnector,
    /// Per named listener: its own client configuration toward the nodes, when it has one.
    port_tls: Vec<Option<tokio_rustls::TlsConnector>>,
    server_names: HashMap<&'a str, &'a str>,
    /// `; Domain=...; SameSite=...` of the route cookie.
    cookie_attrs: String,
}

impl<'a> NodeMaker<'a> {
    fn new(
        config: &'a Config,
        tls: &crate::tls::Loaded,
        registry: &'a NodeRegistry,
        route_key: &'a RouteKey,
    ) -> Self {
        let connector = |c: &rustls::ClientConfig| {
            let mut c = c.clone();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(c))
        };
        let node_tls = connector(&tls.upstream);
        let port_tls = tls
            .node_clients
            .iter()
            .map(|c| c.as_deref().map(connector))
            .collect();
        let mut cookie_attrs = String::new();
        if let Some(d) = &config.sticky.domain {
            cookie_attrs.push_str("; Domain=");
            cookie_attrs.push_str(d);
        }
        cookie_attrs.push_str("; SameSite=");
        cookie_attrs.push_str(config.sticky.same_site.as_str());
        let server_names = config
            .nodes
            .iter()
            .filter_map(|n| n.server_name.as_deref().map(|s| (n.id.as_str(), s)))
            .collect();
        NodeMaker {
            config,
            registry,
            route_key,
            node_tls,
            port_tls,
            server_names,
            cookie_attrs,
        }
    }

    fn node(&self, spec: NodeSpec) -> Node {
        let NodeSpec {
            id,
            addr,
            port_addrs,
            zone,
            engine,
            https,
            retiring_until_ms,
        } = spec;
        let config = self.config;
        let state = self.registry.get_or_create(&id);
        let value = self.route_key.value_for(&id);
        let route_name = &config.sticky.route_cookie;
        let cookie = format!(
            "{route_name}={value}; Path=/; HttpOnly{}",
            self.cookie_attrs
        );
        let local = match (&config.balance.zone, &zone) {
            (Some(own), Some(z)) => own == z,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let name = self.server_names.get(id.as_str()).copied();
        let connector_to =
            |addr: SocketAddr, tls: Option<&tokio_rustls::TlsConnector>| NodeConnector {
                addr,
                timeout: config.upstream.connect_timeout,
                tls: tls.map(|t| (t.clone(), NodeConnector::server_name(addr, name))),
            };
        let pool_of = |c: NodeConnector| {
            Pool::new(
                c,
                config.upstream.pool_max_idle_per_node,
                config.upstream.pool_idle_timeout,
            )
        };
        let connector = connector_to(addr, https.then_some(&self.node_tls));
        let ports = port_addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let l = config.listeners.get(i);
                let rest = l.is_some_and(|l| l.role == lb_config::ListenerRole::RestApi);
                let tls = if rest {
                    l.is_some_and(|l| l.node_tls).then(|| {
                        self.port_tls
                            .get(i)
                            .and_then(Option::as_ref)
                            .unwrap_or(&self.node_tls)
                    })
                } else {
                    https.then_some(&self.node_tls)
                };
                pool_of(connector_to(a, tls))
            })
            .collect();
        Node {
            id: state.id.clone(),
            state,
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            authority: Authority::try_from(addr.to_string().as_str())
                .expect("a socket address is a valid authority"),
            zone,
            local,
            retiring_until_ms,
            route_value: value.into_bytes().into(),
            set_cookie: HeaderValue::from_str(&cookie).expect("checked cookie name and value"),
            set_cookie_secure: HeaderValue::from_str(&format!("{cookie}; Secure"))
                .expect("checked cookie name and value"),
            engine,
            pool: pool_of(connector),
            ports,
            metrics: NodeMetrics::new(&id),
        }
    }
}

fn selector(strategy: BalanceStrategy, ranking: Option<Arc<dyn LoadRanking>>) -> Box<dyn Selector> {
    match (strategy, ranking) {
        (BalanceStrategy::RoundRobin, _) => Box::new(RoundRobin::default()),
        (BalanceStrategy::LeastConnections, _) => Box::new(LeastConnections::default()),
        (BalanceStrategy::LeastLoaded, Some(r)) => Box::new(LeastLoaded::new(r)),
        (BalanceStrategy::LeastLoaded, None) => Box::new(RoundRobin::default()),
    }
}

/// `Strict-Transport-Security` for HTTPS answers, when enabled.
fn hsts(config: &Config) -> Option<HeaderValue> {
    let max_age = config.listener.hsts_max_age;
    (config.listener.tls.is_some() && !max_age.is_zero()).then(|| {
        HeaderValue::from_str(&format!("max-age={}", max_age.as_secs()))
            .expect("digits are a valid header value")
    })
}
