//! Tolerant, allocation-free reading of `Cookie` and `Set-Cookie` headers (RFC 6265 §4, §5.2).
//!
//! Garbage never fails: a pair without `=`, non-UTF-8 bytes or an empty name is skipped.

/// The `name=value` pairs of one `Cookie` header value, in order.
pub fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    segments(header).filter_map(pair)
}

/// The `;`-separated parts of a `Cookie` header value, untrimmed.
fn segments(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b';', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// One part's name and value (both trimmed, the value without its quotes); `None` without an
/// `=` or a name.
fn pair(part: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = memchr::memchr(b'=', part)?;
    let name = trim(&part[..eq]);
    if name.is_empty() {
        return None;
    }
    Some((name, strip_quotes(trim(&part[eq + 1..]))))
}

/// The `Cookie` header value without its `name` pairs, the other parts byte for byte as they
/// were; `None` when it has no such pair. `Some` of an empty value when nothing else is left.
pub fn without(header: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let mut kept = Vec::new();
    without_into(header, name, &mut kept).then_some(kept)
}

/// [`without`] into `kept` (cleared first), in one pass; false when there was no such pair
/// (and `kept` is then to be ignored).
pub fn without_into(header: &[u8], name: &[u8], kept: &mut Vec<u8>) -> bool {
    kept.clear();
    let mut found = false;
    for part in segments(header) {
        if pair(part).is_some_and(|(n, _)| n == name) {
            found = true;
            continue;
        }
        if trim(part).is_empty() {
            continue;
        }
        if kept.is_empty() {
            // The first part kept starts without the blanks that followed a `;`.
            let start = part
                .iter()
                .position(|c| !matches!(c, b' ' | b'\t'))
                .unwrap_or(part.len());
            kept.extend_from_slice(&part[start..]);
        } else {
            kept.push(b';');
            kept.extend_from_slice(part);
        }
    }
    found
}

/// What a `Set-Cookie` header says: its name, value, and whether it removes the cookie
/// (`Max-Age=0` or less, or an `Expires` in the past as the year 1970 that Qlik writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetCookie<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub removes: bool,
}

pub fn parse_set_cookie(header: &[u8]) -> Option<SetCookie<'_>> {
    let mut parts = header.split(|&b| b == b';');
    let first = trim(parts.next()?);
    let eq = first.iter().position(|&b| b == b'=')?;
    let name = trim(&first[..eq]);
    if name.is_empty() {
        return None;
    }
    let value = strip_quotes(trim(&first[eq + 1..]));
    let mut removes = value.is_empty();
    for attr in parts {
        let attr = trim(attr);
        if let Some(v) = strip_prefix_ci(attr, b"max-age=") {
            let v = trim(v);
            if v.first() == Some(&b'-') || (!v.is_empty() && v.iter().all(|&b| b == b'0')) {
                removes = true;
            }
        } else if let Some(v) = strip_prefix_ci(attr, b"expires=") {
            if contains(v, b"1970") {
                removes = true;
            }
        }
    }
    Some(SetCookie {
        name,
        value,
        removes,
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn strip_quotes(b: &[u8]) -> &[u8] {
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        &b[1..b.len() - 1]
    } else {
        b
    }
}

fn strip_prefix_ci<'a>(b: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if b.len() >= prefix.len() && b[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&b[prefix.len()..])
    } else {
        None
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Which cookie names are Qlik session cookies: exact names, and names starting with a prefix.
#[derive(Debug, Clone)]
pub struct SessionCookieNames {
    exact: Vec<Box<[u8]>>,
    prefixes: Vec<Box<[u8]>>,
}

impl SessionCookieNames {
    pub fn new(exact: &[String], prefixes: &[String]) -> SessionCookieNames {
        SessionCookieNames {
            exact: exact.iter().map(|s| s.as_bytes().into()).collect(),
            prefixes: prefixes.iter().map(|s| s.as_bytes().into()).collect(),
        }
    }

    pub fn matches(&self, name: &[u8]) -> bool {
        self.exact.iter().any(|e| **e == *name)
            || self
                .prefixes
                .iter()
                .any(|p| name.len() > p.len() && name.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_removed_and_the_rest_kept_as_it_was() {
        let w = |h: &str| without(h.as_bytes(), b"R").map(|v| String::from_utf8(v).unwrap());
        assert_eq!(w("R=1; a=1").as_deref(), Some("a=1"));
        assert_eq!(w("a=1; R=1").as_deref(), Some("a=1"));
        assert_eq!(
            w("a=\"x y\"; R=1;b=2 ; c").as_deref(),
            Some("a=\"x y\";b=2 ; c")
        );
        assert_eq!(w(" R = 1 ;R=2").as_deref(), Some(""));
        assert_eq!(w("a=1; XR=1; R2=1; b=R=1"), None);
        assert_eq!(w(""), None);
        assert_eq!(w("a=1;;R=1;; b=2").as_deref(), Some("a=1; b=2"));
    }

    #[test]
    fn cookie_pairs_are_tolerant() {
        let v: Vec<_> = pairs(b"a=1; X-Qlik-Session=abc ;;junk; =x; b=\"q\"; c=").collect();
        assert_eq!(
            v,
            vec![
                (&b"a"[..], &b"1"[..]),
                (b"X-Qlik-Session", b"abc"),
                (b"b", b"q"),
                (b"c", b""),
            ]
        );
        assert_eq!(pairs(b"").count(), 0);
        assert_eq!(pairs(b"a").count(), 0);
        assert_eq!(pairs(b";;").count(), 0);
        assert_eq!(pairs(&[0xff, 0xfe, b';', b'=']).count(), 0);
    }

    #[test]
    fn set_cookie_parsing() {
        let c = parse_set_cookie(b"X-Qlik-Session=f2b6; Path=/; HttpOnly; Secure").unwrap();
        assert_eq!(
            (c.name, c.value, c.removes),
            (&b"X-Qlik-Session"[..], &b"f2b6"[..], false)
        );
        let c = parse_set_cookie(b"X-Qlik-Session=; Path=/; Max-Age=0").unwrap();
        assert!(c.removes);
        let c =
            parse_set_cookie(b"X-Qlik-Session=x; expires=Thu, 01 Jan 1970 00:00:00 GMT").unwrap();
        assert!(c.removes);
        assert!(parse_set_cookie(b"novalue").is_none());
        assert!(parse_set_cookie(b"=v").is_none());
    }

    #[test]
    fn session_names() {
        let n = SessionCookieNames::new(&["X-Qlik-Session".into()], &["X-Qlik-Session-".into()]);
        assert!(n.matches(b"X-Qlik-Session"));
        assert!(n.matches(b"X-Qlik-Session-HTTP"));
        assert!(n.matches(b"X-Qlik-Session-hdr"));
        assert!(n.matches(b"X-Qlik-Session-hdr-HTTP"));
        assert!(!n.matches(b"X-Qlik-Session-"));
        assert!(!n.matches(b"QLB_ROUTE"));
        assert!(!n.matches(b"x-qlik-session"));
    }
}
