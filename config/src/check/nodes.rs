//! `[[nodes]]`: the Qlik Proxy Service nodes, their addresses and engine health check URLs.

use std::collections::HashSet;
use std::net::SocketAddr;

use rustls_pki_types::ServerName;

use super::Validator;
use crate::{file, Listener, Node};

impl Validator<'_> {
    pub(super) fn nodes(&mut self, list: &[file::NodeFile], listeners: &[Listener]) -> Vec<Node> {
        let mut nodes = Vec::with_capacity(list.len());
        let mut seen_ids = HashSet::new();
        let mut seen_addrs = HashSet::new();
        if list.is_empty() {
            self.err("nodes", "at least one node is required");
        }
        for (i, n) in list.iter().enumerate() {
            self.node_id(i, &n.id, &mut seen_ids);
            let address = self.addr(&format!("nodes[{i}].address"), &n.address);
            if address.port() != 0 && !seen_addrs.insert(address) {
                self.err(
                    format!("nodes[{i}].address"),
                    format!("duplicate node address {address}"),
                );
            }
            let (engine, engine_uri) = self.engine(i, n.engine.as_deref(), address);
            let addresses = self.node_addresses(i, n, address, listeners, &mut seen_addrs);
            nodes.push(Node {
                id: n.id.clone(),
                address,
                authority: authority_of(address),
                zone: n.zone.clone(),
                engine,
                engine_uri,
                tls: n.tls,
                server_name: n.server_name.clone(),
                tls_server_name: tls_server_name(n.server_name.as_deref(), address),
                addresses,
            });
        }
        nodes
    }

    /// `nodes[i].addresses`: the node's address behind each named listener, by default its host
    /// with the listener's `node_port`.
    fn node_addresses(
        &mut self,
        i: usize,
        n: &file::NodeFile,
        address: SocketAddr,
        listeners: &[Listener],
        seen: &mut HashSet<SocketAddr>,
    ) -> Vec<SocketAddr> {
        for name in n.addresses.keys() {
            if !listeners.iter().any(|l| &l.name == name) {
                self.err(
                    format!("nodes[{i}].addresses.{name}"),
                    format!("there is no [listeners.{name}]"),
                );
            }
        }
        let mut out = Vec::with_capacity(listeners.len());
        for l in listeners {
            let key = format!("nodes[{i}].addresses.{}", l.name);
            let a = match (n.addresses.get(&l.name), l.node_port) {
                (Some(a), _) => self.addr(&key, a),
                (None, Some(port)) => SocketAddr::new(address.ip(), port),
                (None, None) => {
                    self.err(
                        &key,
                        format!(
                            "no address for listener {:?}: set it here, or node_port in [listeners.{}]",
                            l.name, l.name
                        ),
                    );
                    address
                }
            };
            if a.port() != 0 && !seen.insert(a) {
                self.err(&key, format!("duplicate node address {a}"));
            }
            out.push(a);
        }
        out
    }

    /// A node id is 1 to 64 of A-Z a-z 0-9 - _, and unique.
    fn node_id(&mut self, i: usize, id: &str, seen: &mut HashSet<String>) {
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            self.err(
                format!("nodes[{i}].id"),
                format!("{id:?} is not a valid node id (1 to 64 of A-Z a-z 0-9 - _)"),
            );
        } else if !seen.insert(id.to_string()) {
            self.err(
                format!("nodes[{i}].id"),
                format!("duplicate node id {id:?}"),
            );
        }
    }

    /// `nodes[i].engine`: `"same-host"` (the node's IP, port 4747) or an http(s) URL; as
    /// written and as a URI.
    fn engine(
        &mut self,
        i: usize,
        engine: Option<&str>,
        address: SocketAddr,
    ) -> (Option<String>, Option<http::Uri>) {
        let url = match engine {
            None => return (None, None),
            Some("same-host") => format!("https://{}:4747/engine/healthcheck", host_of(address)),
            Some(url) => url.to_string(),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            self.err(
                format!("nodes[{i}].engine"),
                format!("{url:?} is neither \"same-host\" nor an http:// or https:// URL"),
            );
            return (Some(url), None);
        }
        match url.parse::<http::Uri>() {
            Ok(uri) => (Some(url), Some(uri)),
            Err(e) => {
                self.err(
                    format!("nodes[{i}].engine"),
                    format!("invalid URL {url:?}: {e}"),
                );
                (Some(url), None)
            }
        }
    }
}

fn host_of(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => format!("[{}]", v.ip()),
    }
}

fn authority_of(a: SocketAddr) -> http::uri::Authority {
    http::uri::Authority::try_from(a.to_string().as_str())
        .expect("a socket address is a valid authority")
}

/// The name an HTTPS node's certificate must carry (and SNI): `server_name` when it is a DNS
/// name or an IP address, else the node's IP address.
fn tls_server_name(server_name: Option<&str>, address: SocketAddr) -> ServerName<'static> {
    server_name
        .and_then(|n| ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()))
}
