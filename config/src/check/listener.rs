//! `[listener]`: the proxy's own address, limits, trusted proxies, host and origin lists,
//! HTTPS and the HTTP-to-HTTPS redirect.

use std::time::Duration;

use super::{Validator, DAY, MS};
use crate::{file, Listener};

impl Validator<'_> {
    pub(super) fn listener(&mut self, l: &file::ListenerFile) -> Listener {
        let mut listener = Listener {
            address: self.addr("listener.address", &l.address),
            header_read_timeout: self.dur(
                "listener.header_read_timeout",
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
            tls: self.tls("listener.tls", &l.tls),
            redirect_address: l
                .redirect_address
                .as_ref()
                .map(|a| self.addr("listener.redirect_address", a)),
            hsts_max_age: l.hsts_max_age.0,
            body_timeout: self.dur(
                "listener.body_timeout",
                &l.body_timeout,
                Duration::ZERO,
                DAY,
            ),
            send_timeout: self.dur(
                "listener.send_timeout",
                &l.send_timeout,
                Duration::ZERO,
                DAY,
            ),
        };
        listener.trusted_proxies = self.trusted_proxies(&l.trusted_proxies);
        listener.allowed_hosts = self.allowed_hosts(&l.allowed_hosts);
        listener.websocket_origins = self.websocket_origins(&l.websocket_origins);
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
        listener
    }

    /// `listener.trusted_proxies`: CIDR blocks or bare IP addresses.
    fn trusted_proxies(&mut self, list: &[String]) -> Vec<ipnet::IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let parsed = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => out.push(n),
                Err(_) => self.err(
                    format!("listener.trusted_proxies[{i}]"),
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
