//! Reading the engine entries the QPS offers (`wss://host:4747`, `host:4747`, `[::1]:4747`).

/// The host (lowercased, without a trailing dot or IPv6 brackets) and port of an engine entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineAddr {
    /// Lowercased host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port: explicit, else from the scheme (ws/http 80, wss/https 443), else 4747.
    pub port: u16,
}

/// The Qlik engine's default port, assumed for a bare `host` without scheme or port.
pub const DEFAULT_ENGINE_PORT: u16 = 4747;

/// Parse one engine entry. Accepts `scheme://host[:port][/path]`, `host:port`, `host`,
/// `[v6]:port` and `scheme://[v6][:port]`. The host is compared case-insensitively, so it is
/// returned lowercased. Returns `None` for anything else (empty, bad port, unknown scheme
/// without a port, whitespace or control characters in the host).
pub fn parse_engine_uri(entry: &str) -> Option<EngineAddr> {
    let entry = entry.trim();
    let (scheme, rest) = match entry.find("://") {
        Some(i) => (Some(&entry[..i]), &entry[i + 3..]),
        None => (None, entry),
    };
    let default_port = match scheme {
        None => Some(DEFAULT_ENGINE_PORT),
        Some(s) if s.eq_ignore_ascii_case("ws") || s.eq_ignore_ascii_case("http") => Some(80),
        Some(s) if s.eq_ignore_ascii_case("wss") || s.eq_ignore_ascii_case("https") => Some(443),
        Some(s)
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            return None
        }
        Some(_) => None,
    };
    let authority = match rest.find(['/', '?', '#']) {
        Some(i) => &rest[..i],
        None => rest,
    };
    let authority = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };

    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let close = after.find(']')?;
        let host = &after[..close];
        let tail = &after[close + 1..];
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':')?),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (host, port)
    } else {
        match authority.rfind(':') {
            Some(i) => {
                let host = &authority[..i];
                if host.contains(':') {
                    return None; // bare IPv6 without brackets is ambiguous
                }
                (host, Some(&authority[i + 1..]))
            }
            None => (authority, None),
        }
    };

    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/\\?#@[]<>\"".contains(c))
    {
        return None;
    }
    let port = match port {
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u16>().ok()?
        }
        None => default_port?,
    };
    Some(EngineAddr {
        host: host.to_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: &str, port: u16) -> Option<EngineAddr> {
        Some(EngineAddr {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn table() {
        let cases: &[(&str, Option<EngineAddr>)] = &[
            (
                "wss://node2.example.com:4747",
                addr("node2.example.com", 4747),
            ),
            (
                "https://NODE2.Example.com:4747/",
                addr("node2.example.com", 4747),
            ),
            ("WSS://node2:4747/app/x?y=1", addr("node2", 4747)),
            ("node2:4747", addr("node2", 4747)),
            ("  node2:4747  ", addr("node2", 4747)),
            ("node2", addr("node2", 4747)),
            ("node2.example.com.:4747", addr("node2.example.com", 4747)),
            ("wss://node2", addr("node2", 443)),
            ("https://node2", addr("node2", 443)),
            ("ws://node2", addr("node2", 80)),
            ("http://node2/", addr("node2", 80)),
            ("[::1]:4747", addr("::1", 4747)),
            ("wss://[FE80::1]:4747", addr("fe80::1", 4747)),
            ("wss://[::1]", addr("::1", 443)),
            ("wss://user@node2:4747", addr("node2", 4747)),
            ("tcp://node2:4747", addr("node2", 4747)),
            ("10.0.0.5:4747", addr("10.0.0.5", 4747)),
            ("tcp://node2", None),
            ("", None),
            ("   ", None),
            ("wss://", None),
            ("wss://:4747", None),
            ("node2:", None),
            ("node2:99999", None),
            ("node2:47a7", None),
            ("node2:+47", None),
            ("::1:4747", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[zz]:1", None),
            ("no de:4747", None),
            ("://node2:4747", None),
            ("w s://node2:4747", None),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_engine_uri(input), want, "input {input:?}");
        }
    }
}
