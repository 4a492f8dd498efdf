//! A set of simulated nodes and the options they share.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use crate::SimNode;

/// Options shared by every node of a [`SimCluster`].
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Name of the session cookie the nodes issue and check (default `X-Qlik-Session`).
    pub cookie_name: String,
    /// Node names are `<name_prefix>1`, `<name_prefix>2`, ... (default `node`).
    pub name_prefix: String,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            cookie_name: "X-Qlik-Session".to_string(),
            name_prefix: "node".to_string(),
        }
    }
}

/// A set of simulated nodes on consecutive (or ephemeral) ports of 127.0.0.1.
#[derive(Debug)]
pub struct SimCluster {
    nodes: Vec<SimNode>,
}

impl SimCluster {
    /// Starts `n` nodes. `base_port` 0 binds ephemeral ports on 127.0.0.1, otherwise the
    /// consecutive ports `base_port`, `base_port + 1`, ...
    pub async fn start(n: usize, base_port: u16, opts: SimOptions) -> io::Result<SimCluster> {
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let port = if base_port == 0 {
                0
            } else {
                base_port.checked_add(i as u16).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "port out of range")
                })?
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let name = format!("{}{}", opts.name_prefix, i + 1);
            nodes.push(SimNode::bind(&name, addr, &opts.cookie_name).await?);
        }
        Ok(SimCluster { nodes })
    }

    /// The nodes' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr()).collect()
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
}
