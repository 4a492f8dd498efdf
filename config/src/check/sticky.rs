//! `[sticky]`: session cookie names, the session table and the route cookie with its key.

use std::path::Path;
use std::time::Duration;

use super::{Validator, DAY};
use crate::{file, is_cookie_name, Sticky};

impl Validator<'_> {
    pub(super) fn sticky(&mut self, s: &file::StickyFile) -> Sticky {
        self.cookie_names(s);
        if s.max_sessions == 0 {
            self.err("sticky.max_sessions", "must be at least 1");
        }
        let route_key = self.route_key(s);
        let domain = s
            .domain
            .as_ref()
            .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase());
        if let Some(d) = &domain {
            if d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            {
                self.err("sticky.domain", format!("{d:?} is not a domain name"));
            }
        }
        let shared = s.shared.as_ref().map(|f| self.shared_store(f));
        Sticky {
            session_cookies: s.session_cookies.clone(),
            session_cookie_prefixes: s.session_cookie_prefixes.clone(),
            session_idle_timeout: self.dur(
                "sticky.session_idle_timeout",
                &s.session_idle_timeout,
                Duration::from_secs(1),
                30 * DAY,
            ),
            max_sessions: s.max_sessions,
            route_cookie: s.route_cookie.clone(),
            route_key,
            same_site: s.same_site,
            domain,
            ticket_lifetime: self.dur(
                "sticky.ticket_lifetime",
                &s.ticket_lifetime,
                Duration::from_secs(1),
                DAY,
            ),
            shared,
        }
    }

    fn cookie_names(&mut self, s: &file::StickyFile) {
        for (i, name) in s.session_cookies.iter().enumerate() {
            if !is_cookie_name(name) {
                self.err(
                    format!("sticky.session_cookies[{i}]"),
                    format!("{name:?} is not a valid cookie name"),
                );
            }
        }
        for (i, name) in s.session_cookie_prefixes.iter().enumerate() {
            if !is_cookie_name(name) {
                self.err(
                    format!("sticky.session_cookie_prefixes[{i}]"),
                    format!("{name:?} is not a valid cookie name prefix"),
                );
            }
        }
        if !is_cookie_name(&s.route_cookie) {
            self.err(
                "sticky.route_cookie",
                format!("{:?} is not a valid cookie name", s.route_cookie),
            );
        }
    }

    /// The route cookie's HMAC key, from `route_key` or `route_key_file` (trimmed).
    fn route_key(&mut self, s: &file::StickyFile) -> Option<Vec<u8>> {
        let route_key = match (&s.route_key, &s.route_key_file) {
            (Some(_), Some(_)) => {
                self.err(
                    "sticky.route_key",
                    "set either route_key or route_key_file, not both",
                );
                None
            }
            (Some(k), None) => Some(k.trim().as_bytes().to_vec()),
            (None, Some(p)) => {
                let p = self.base_dir.join(p);
                match read_small_file(&p, 4096) {
                    Ok(k) => Some(trim_bytes(&k).to_vec()),
                    Err(e) => {
                        self.err("sticky.route_key_file", e);
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(k) = &route_key {
            if k.len() < 16 {
                let key = if s.route_key.is_some() {
                    "sticky.route_key"
                } else {
                    "sticky.route_key_file"
                };
                self.err(
                    key,
                    format!("the key must be at least 16 bytes long, got {}", k.len()),
                );
            }
        }
        route_key
    }
}

/// Reads a regular file of at most `max` bytes (a key file): a FIFO, a device or a huge file
/// is an error, not a hang.
pub(super) fn read_small_file(p: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", p.display()));
    }
    if meta.len() > max {
        return Err(format!("{} is larger than {max} bytes", p.display()));
    }
    let mut out = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(max).read_to_end(&mut out))
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(out)
}

pub(super) fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}
