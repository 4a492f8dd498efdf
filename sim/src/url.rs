//! Small URL helpers: percent-encoding, query strings and `application/x-www-form-urlencoded`
//! bodies, and the host part of a `Host` header.

/// Percent-encodes `s` for a query value or a form field (unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes stay as they are.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded pairs of a query string or form body.
pub fn pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

/// The first value of `key` (ASCII case-insensitive) in a query string or form body.
pub fn param(s: Option<&str>, key: &str) -> Option<String> {
    pairs(s?)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// `query` without the parameters named `key` (ASCII case-insensitive); `None` when nothing is left.
pub fn without_param(query: Option<&str>, key: &str) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !kv.is_empty() && !decode(k).eq_ignore_ascii_case(key)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// `url` with `key=value` appended to its query.
pub fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode(value))
}

/// The host of a `Host` header value without its port (`[::1]:80` -> `[::1]`).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hosts() {
        let s = "CORP\\alice & bob=1/2?";
        assert_eq!(decode(&encode(s)), s);
        assert_eq!(decode("a+b%2Fc%zz%4"), "a b/c%zz%4");
        assert_eq!(
            param(Some("x=1&QlikTicket=ab%2Bc"), "qlikticket").as_deref(),
            Some("ab+c")
        );
        assert_eq!(
            without_param(Some("a=1&qlikTicket=2&b=3"), "qlikticket").as_deref(),
            Some("a=1&b=3")
        );
        assert_eq!(without_param(Some("qlikTicket=2"), "qlikticket"), None);
        assert_eq!(
            with_param("http://h/hub/", "qlikTicket", "K"),
            "http://h/hub/?qlikTicket=K"
        );
        assert_eq!(
            with_param("http://h/hub/?a=1", "t", "K"),
            "http://h/hub/?a=1&t=K"
        );
        assert_eq!(host_without_port("site.example:18000"), "site.example");
        assert_eq!(host_without_port("site.example"), "site.example");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
    }
}
