//! `[listener]`: the proxy's own address, limits, trusted proxies, host and origin lists,
//! HTTPS and the HTTP-to-HTTPS redirect.

use std::time::Duration;

use super::{Validator, DAY, MS};
use crate::{file, Listener, ListenerRole};

impl Validator<'_> {
    /// `[listener]` (`key` "listener", name "users") or `[listeners.<name>]`.
    pub(super) fn listener(&mut self, key: &str, name: &str, l: &file::ListenerFile) -> Listener {
        let mut listener = Listener {
            address: self.addr(&format!("{key}.address"), &l.address),
            header_read_timeout: self.dur(
                &format!("{key}.header_read_timeout"),
                &l.header_read_timeout,
                MS,
                DAY,
            ),
            max_header_bytes: l.max_header_bytes,
            max_connections: l.max_connections,
            proxy_protocol: l.proxy_protocol,
            max_connections_per_client: l.max_connections_per_client,
            max_body_bytes: l.max_body_bytes,
            trusted_proxies: Vec::new(),
            allowed_hosts: Vec::new(),
            websocket_origins: Vec::new(),
            tls: self.tls(&format!("{key}.tls"), &l.tls),
            redirect_address: l
                .redirect_address
                .as_ref()
                .map(|a| self.addr(&format!("{key}.redirect_address"), a)),
            hsts_max_age: l.hsts_max_age.0,
            body_timeout: self.dur(
                &format!("{key}.body_timeout"),
                &l.body_timeout,
                Duration::ZERO,
                DAY,
            ),
            send_timeout: self.dur(
                &format!("{key}.send_timeout"),
                &l.send_timeout,
                Duration::ZERO,
                DAY,
            ),
            name: name.to_string(),
            node_port: l.node_port,
            role: l.role,
            strip_headers: self.header_names(&format!("{key}.strip_headers"), &l.strip_headers),
            trusted_headers: self
                .header_names(&format!("{key}.trusted_headers"), &l.trusted_headers),
            tls_front: l.tls_front,
            node_tls: l.node_tls,
            node_cert_file: self.path(&l.node_cert_file),
            node_key_file: self.path(&l.node_key_file),
        };
        listener.trusted_proxies = self.trusted_proxies(key, &l.trusted_proxies);
        listener.allowed_hosts = self.allowed_hosts(&l.allowed_hosts);
        listener.websocket_origins = self.websocket_origins(&l.websocket_origins);
        if listener.redirect_address.is_some() && listener.tls.is_none() {
            self.err(
                format!("{key}.redirect_address"),
                format!("an HTTP-to-HTTPS redirect needs [{key}.tls]"),
            );
        }
        if !(8192..=1 << 20).contains(&listener.max_header_bytes) {
            self.err(
                format!("{key}.max_header_bytes"),
                "must be between 8192 and 1048576",
            );
        }
        if listener.max_connections == 0 {
            self.err(format!("{key}.max_connections"), "must be at least 1");
        }
        if key == "listener" {
            self.main_listener_only(l);
        }
        if listener.role != ListenerRole::RestApi
            && (l.node_tls || l.node_cert_file.is_some() || l.node_key_file.is_some())
        {
            self.err(
                format!("{key}.node_tls"),
                "node_tls, node_cert_file and node_key_file are for a role = \"rest-api\" listener",
            );
        }
        if l.node_cert_file.is_some() != l.node_key_file.is_some() {
            self.err(
                format!("{key}.node_cert_file"),
                "set both node_cert_file and node_key_file, or neither",
            );
        }
        listener
    }

    /// Keys that only `[listener]` takes (or that it alone can give a meaning).
    fn main_listener_only(&mut self, l: &file::ListenerFile) {
        if l.node_port.is_some() {
            self.err(
                "listener.node_port",
                "the users' listener uses each node's own address; node_port is for [listeners.<name>]",
            );
        }
        if l.role != ListenerRole::Users {
            self.err(
                "listener.role",
                "[listener] is the users' listener; a REST API listener is a [listeners.<name>]",
            );
        }
    }

    /// A named listener (`[listeners.<name>]`): its name, and keys that only `[listener]` has
    /// (they apply to every listener).
    pub(super) fn named_listener(&mut self, name: &str, l: &file::ListenerFile) -> Listener {
        let key = format!("listeners.{name}");
        if name.is_empty()
            || name.len() > 32
            || name == "users"
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
        {
            self.err(
                &key,
                format!("{name:?} is not a listener name (1 to 32 of a-z 0-9 - _, not \"users\")"),
            );
        }
        let shared = [
            ("allowed_hosts", !l.allowed_hosts.is_empty()),
            ("websocket_origins", !l.websocket_origins.is_empty()),
            ("max_body_bytes", l.max_body_bytes != 0),
            ("hsts_max_age", !l.hsts_max_age.0.is_zero()),
            ("redirect_address", l.redirect_address.is_some()),
        ];
        for (k, set) in shared {
            if set {
                self.err(
                    format!("{key}.{k}"),
                    "set in [listener]; it applies to every listener",
                );
            }
        }
        if let Some(t) = &l.tls {
            if t.client_ca_file.is_some() && l.role != ListenerRole::RestApi {
                self.err(
                    format!("{key}.tls.client_ca_file"),
                    "client certificates are for the module and REST API listeners only",
                );
            }
        }
        if l.node_port == Some(0) {
            self.err(format!("{key}.node_port"), "must be a port (1 to 65535)");
        }
        self.listener(&key, name, l)
    }

    /// Header names (lowercased) of `strip_headers` / `trusted_headers`.
    fn header_names(&mut self, key: &str, list: &[String]) -> Vec<http::HeaderName> {
        let mut out = Vec::with_capacity(list.len());
        for (i, h) in list.iter().enumerate() {
            match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(n) => out.push(n),
                Err(_) => self.err(format!("{key}[{i}]"), format!("{h:?} is not a header name")),
            }
        }
        out
    }

    /// `trusted_proxies`: CIDR blocks or bare IP addresses.
    fn trusted_proxies(&mut self, key: &str, list: &[String]) -> Vec<ipnet::IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let parsed = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => out.push(n),
                Err(_) => self.err(
                    format!("{key}.trusted_proxies[{i}]"),
                    format!("{c:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        out
    }

    /// `listener.allowed_hosts`: lowercased host names, `*.` wildcards allowed.
    fn allowed_hosts(&mut self, list: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(list.len());
        for (i, h) in list.iter().enumerate() {
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
            out.push(h);
        }
        out
    }

    /// `listener.websocket_origins`: lowercased, without a trailing `/`.
    fn websocket_origins(&mut self, list: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(list.len());
        for (i, o) in list.iter().enumerate() {
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o.is_empty() || o.contains(char::is_whitespace) {
                self.err(
                    format!("listener.websocket_origins[{i}]"),
                    format!("{o:?} is not an origin or host name"),
                );
            }
            out.push(o);
        }
        out
    }
}
