//! Header rewriting between the client and a node (RFC 9110 §7.6.1, RFC 7239's de facto
//! `X-Forwarded-*` cousins).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");

/// True for a request that asks to switch protocols (`Connection: upgrade` and `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`, `TE`,
/// `Trailer`, `Transfer-Encoding`, `Upgrade` and `Proxy-*`. With `keep_upgrade` the `Upgrade`
/// header stays and `Connection: upgrade` is set, for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        // Names other than the usual tokens are rare; collect them only when present.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"upgrade")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t) {
                    named.push(n);
                }
            }
        }
        let _ = conn;
        for n in named {
            if keep_upgrade && n == header::UPGRADE {
                continue;
            }
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for n in names {
            headers.remove(n);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, UPGRADE_VALUE.clone());
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Appends `value` to the comma-separated header `name` (one header line), or sets it.
pub fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(v) => {
            v.insert(value.clone());
        }
        header::Entry::Occupied(mut o) => {
            let mut joined = Vec::new();
            for v in o.iter() {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => {
                    o.insert(v);
                }
                Err(_) => {
                    o.insert(value.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
            ("host", "lb.example.com"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-keep", "host"]);
    }

    #[test]
    fn upgrade_is_kept_for_a_switch() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("sec-websocket-protocol", "qix"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert_eq!(h["sec-websocket-protocol"], "qix");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let ip = HeaderValue::from_static("127.0.0.1");
        let mut h = map(&[("x-forwarded-for", "203.0.113.7")]);
        append_list(&mut h, &X_FORWARDED_FOR, &ip);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        let mut h = map(&[("x-forwarded-for", "a"), ("x-forwarded-for", "b")]);
        append_list(&mut h, &X_FORWARDED_FOR, &ip);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "a, b, 127.0.0.1");
        let mut h = HeaderMap::new();
        append_list(&mut h, &X_FORWARDED_FOR, &ip);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}
