//! A set of simulated nodes and the options they share.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::{Auth, SimNode, SimUser};

/// Options shared by every node of a [`SimCluster`].
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Name of the session cookie the nodes issue and check (default `X-Qlik-Session`).
    pub cookie_name: String,
    /// Node names are `<name_prefix>1`, `<name_prefix>2`, ... (default `node`).
    pub name_prefix: String,
    /// How users sign in (default [`Auth::FirstRequest`]: a session on the first request).
    pub auth: Auth,
    /// First authentication port when the nodes sign users in: node `i` gets
    /// `auth_base_port + i`. `None`: `base_port + 40` (19100 -> 19140), ephemeral when
    /// `base_port` is 0.
    pub auth_base_port: Option<u16>,
    /// First REST API port, likewise; `None`: `base_port + 60` (19100 -> 19160), or ephemeral.
    pub rest_base_port: Option<u16>,
    /// The authentication port redirects name (`None`: each node's own). A QPS builds the
    /// redirect from the request's host and its configured port, so behind a balancer this is
    /// the balancer's authentication listener port. Also settable later with
    /// [`SimCluster::set_advertised_auth_port`].
    pub advertised_auth_port: Option<u16>,
    /// The REST API port an external module is told in `proxyRestUri` (`None`: each node's
    /// own; a balancer's REST API listener when one is in front).
    pub advertised_rest_port: Option<u16>,
    /// Scheme of the URLs the nodes build (redirects, targets, SAML ACS): `http` (default) or
    /// `https` when TLS is terminated in front of them.
    pub scheme: String,
    /// Virtual proxy prefix (default none): forms login and SAML ACS live under it.
    pub prefix: String,
    /// The virtual proxy's Windows authentication pattern (default `Windows`): a User-Agent
    /// containing it is sent to Windows authentication, any other to the forms login.
    pub windows_pattern: String,
    /// How long a ticket stays valid (default 60 s).
    pub ticket_lifetime: Duration,
    /// The password the forms login accepts for every user (default `qlik`).
    pub form_password: String,
    /// The virtual proxy's session inactivity timeout (a QPS's default is 30 minutes); `None`
    /// (the default here) keeps sessions for the node's life. Requests and WebSocket messages
    /// of a session count as activity; the sign-in clock measures it.
    pub session_timeout: Option<Duration>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            cookie_name: "X-Qlik-Session".to_string(),
            name_prefix: "node".to_string(),
            auth: Auth::FirstRequest,
            auth_base_port: None,
            rest_base_port: None,
            advertised_auth_port: None,
            advertised_rest_port: None,
            scheme: "http".to_string(),
            prefix: String::new(),
            windows_pattern: "Windows".to_string(),
            ticket_lifetime: Duration::from_secs(60),
            form_password: "qlik".to_string(),
            session_timeout: None,
        }
    }
}

impl SimOptions {
    /// Default options with sign-in `auth`.
    pub fn with_auth(auth: Auth) -> SimOptions {
        SimOptions {
            auth,
            ..SimOptions::default()
        }
    }
}

/// A set of simulated nodes on consecutive (or ephemeral) ports of 127.0.0.1.
#[derive(Debug)]
pub struct SimCluster {
    nodes: Vec<SimNode>,
}

/// `base + i` on 127.0.0.1, or port 0 when `base` is 0.
fn port_at(base: u16, i: usize) -> io::Result<SocketAddr> {
    let port = if base == 0 {
        0
    } else {
        u16::try_from(i)
            .ok()
            .and_then(|i| base.checked_add(i))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "port out of range"))?
    };
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// The first port of a sign-in listener: explicit, or `base_port + offset`, or ephemeral.
fn signin_base(explicit: Option<u16>, base_port: u16, offset: u16) -> io::Result<u16> {
    match explicit {
        Some(p) => Ok(p),
        None if base_port == 0 => Ok(0),
        None => base_port
            .checked_add(offset)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "port out of range")),
    }
}

impl SimCluster {
    /// Starts `n` nodes. `base_port` 0 binds ephemeral ports on 127.0.0.1, otherwise the
    /// consecutive ports `base_port`, `base_port + 1`, ... When `opts.auth` signs users in,
    /// each node also gets an authentication port and a REST API port
    /// ([`SimOptions::auth_base_port`], [`SimOptions::rest_base_port`]).
    pub async fn start(n: usize, base_port: u16, opts: SimOptions) -> io::Result<SimCluster> {
        let signs_in = opts.auth.signs_in();
        let auth_base = signin_base(opts.auth_base_port, base_port, 40)?;
        let rest_base = signin_base(opts.rest_base_port, base_port, 60)?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let addr = port_at(base_port, i)?;
            let (auth, rest) = if signs_in {
                (Some(port_at(auth_base, i)?), Some(port_at(rest_base, i)?))
            } else {
                (None, None)
            };
            let name = format!("{}{}", opts.name_prefix, i + 1);
            nodes.push(SimNode::start(&name, addr, auth, rest, &opts).await?);
        }
        Ok(SimCluster { nodes })
    }

    /// The nodes' user port addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }

    /// The nodes' authentication port addresses (empty without sign-in).
    pub fn auth_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().filter_map(|n| n.auth_addr()).collect()
    }

    /// The nodes' REST API port addresses (empty without sign-in).
    pub fn rest_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().filter_map(|n| n.rest_addr()).collect()
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Stops every node.
    pub async fn stop_all(&self) {
        for n in &self.nodes {
            n.stop().await;
        }
    }

    /// Sessions per node, in order.
    pub fn session_counts(&self) -> Vec<usize> {
        self.nodes.iter().map(|n| n.session_count()).collect()
    }

    /// The names of the nodes holding a session of `user`, with how many each.
    pub fn sessions_of(&self, user: &SimUser) -> Vec<(String, usize)> {
        self.nodes
            .iter()
            .map(|n| (n.name().to_string(), n.sessions_of(user)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    /// Sets the authentication port every node's redirects name (see
    /// [`SimNode::set_advertised_auth_port`]).
    pub fn set_advertised_auth_port(&self, port: u16) {
        for n in &self.nodes {
            n.set_advertised_auth_port(port);
        }
    }

    /// Sets the REST API port every node's `proxyRestUri` names.
    pub fn set_advertised_rest_port(&self, port: u16) {
        for n in &self.nodes {
            n.set_advertised_rest_port(port);
        }
    }

    /// Moves every node's sign-in clock forward.
    pub fn advance_clock(&self, by: Duration) {
        for n in &self.nodes {
            n.advance_clock(by);
        }
    }
}
