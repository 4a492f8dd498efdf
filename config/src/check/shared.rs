//! `[sticky.shared]`: the Valkey/Redis store several balancers share what they learn through.

use std::time::Duration;

use super::sticky::{read_small_file, trim_bytes};
use super::{Validator, MS};
use crate::{file, SharedStore};

impl Validator<'_> {
    pub(super) fn shared_store(&mut self, f: &file::SharedStoreFile) -> SharedStore {
        let tls = self.store_url(&f.url);
        let password = f.password_file.as_ref().and_then(|p| {
            let p = self.base_dir.join(p);
            let text = match read_small_file(&p, 4096) {
                Ok(b) => String::from_utf8(trim_bytes(&b).to_vec())
                    .map_err(|_| format!("{} is not UTF-8 text", p.display())),
                Err(e) => Err(e),
            };
            match text {
                Ok(t) if t.is_empty() => {
                    self.err(
                        "sticky.shared.password_file",
                        format!("{} is empty", p.display()),
                    );
                    None
                }
                Ok(t) => Some(t),
                Err(e) => {
                    self.err("sticky.shared.password_file", e);
                    None
                }
            }
        });
        let ca_pem = f.ca_file.as_ref().and_then(|p| {
            let p = self.base_dir.join(p);
            if !tls {
                self.err("sticky.shared.ca_file", "only for a rediss:// (TLS) url");
            }
            match read_small_file(&p, 1 << 20) {
                Ok(b) if b.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => Some(b),
                Ok(_) => {
                    self.err(
                        "sticky.shared.ca_file",
                        format!("{} holds no PEM certificate", p.display()),
                    );
                    None
                }
                Err(e) => {
                    self.err("sticky.shared.ca_file", e);
                    None
                }
            }
        });
        if let Some(u) = &f.username {
            if u.is_empty() || u.bytes().any(|b| b <= b' ' || b == 0x7f) {
                self.err(
                    "sticky.shared.username",
                    format!("{u:?} is not a valid user name"),
                );
            } else if f.password_file.is_none() {
                self.err(
                    "sticky.shared.username",
                    "an ACL user needs sticky.shared.password_file",
                );
            }
        }
        if f.key_prefix.len() > 64 || f.key_prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
            self.err(
                "sticky.shared.key_prefix",
                "must be at most 64 printable characters without spaces",
            );
        }
        if !(1..=10_000).contains(&f.write_batch) {
            self.err("sticky.shared.write_batch", "must be 1 to 10000");
        }
        if !(1..=10_000_000).contains(&f.write_queue) {
            self.err("sticky.shared.write_queue", "must be 1 to 10000000");
        } else if f.write_batch > f.write_queue {
            self.err(
                "sticky.shared.write_batch",
                "must not be larger than sticky.shared.write_queue",
            );
        }
        SharedStore {
            url: f.url.clone(),
            tls,
            username: f.username.clone(),
            password,
            ca_pem,
            key_prefix: f.key_prefix.clone(),
            lookup_timeout: self.dur(
                "sticky.shared.lookup_timeout",
                &f.lookup_timeout,
                MS,
                Duration::from_secs(1),
            ),
            connect_timeout: self.dur(
                "sticky.shared.connect_timeout",
                &f.connect_timeout,
                Duration::from_millis(10),
                Duration::from_secs(60),
            ),
            write_timeout: self.dur(
                "sticky.shared.write_timeout",
                &f.write_timeout,
                MS,
                Duration::from_secs(60),
            ),
            write_batch: f.write_batch,
            write_queue: f.write_queue,
        }
    }

    /// Checks `redis://HOST[:PORT][/DB]` or `rediss://…` (TLS); returns whether it is TLS.
    fn store_url(&mut self, url: &str) -> bool {
        const KEY: &str = "sticky.shared.url";
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis://") {
            (false, r)
        } else {
            let msg = if url.is_empty() {
                "is required (e.g. \"redis://127.0.0.1:6379\" or \"rediss://store.example:6379\")"
                    .to_string()
            } else {
                format!("{url:?} is not a redis:// or rediss:// URL")
            };
            self.err(KEY, msg);
            return false;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            self.err(
                KEY,
                "credentials do not belong in the URL: set sticky.shared.username and \
                 sticky.shared.password_file",
            );
            return tls;
        }
        if let Err(e) = check_host_port(authority) {
            self.err(KEY, format!("{url:?}: {e}"));
        }
        let db = path.strip_prefix('/').unwrap_or(path);
        if !db.is_empty() && db.parse::<u16>().is_err() {
            self.err(
                KEY,
                format!("{url:?}: the path must be a database number (e.g. \"/0\") or nothing"),
            );
        }
        tls
    }
}

fn check_host_port(authority: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{p:?} is not a port (1 to 65535)")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::{Config, ConfigErrors};

    const MIN: &str = r#"
        [listener]
        address = "127.0.0.1:18000"
        [[nodes]]
        id = "qps1"
        address = "127.0.0.1:19100"
    "#;

    fn with_store(section: &str, dir: &Path) -> Result<Config, ConfigErrors> {
        Config::from_toml(&format!("{MIN}\n[sticky.shared]\n{section}\n"), dir)
    }

    fn paths(e: &ConfigErrors) -> Vec<&str> {
        e.0.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn off_by_default_and_defaults_when_on() {
        let c = Config::from_toml(MIN, Path::new(".")).unwrap();
        assert!(c.sticky.shared.is_none());
        let c = with_store("url = \"redis://127.0.0.1:6379\"", Path::new(".")).unwrap();
        let s = c.sticky.shared.unwrap();
        assert!(!s.tls);
        assert_eq!(s.key_prefix, "lb:");
        assert_eq!(s.lookup_timeout, Duration::from_millis(5));
        assert_eq!((s.write_batch, s.write_queue), (256, 65_536));
        assert!(s.password.is_none());
    }

    #[test]
    fn bad_urls_are_refused_with_the_key_path() {
        for url in [
            "",
            "http://127.0.0.1:6379",
            "redis://",
            "redis://:6379",
            "redis://host:0",
            "redis://host:99999",
            "redis://ho st:6379",
            "redis://host:6379/x",
            "redis://user:secret@host:6379",
            "redis://[::1:6379",
        ] {
            let e = with_store(&format!("url = {url:?}"), Path::new(".")).unwrap_err();
            assert_eq!(paths(&e), ["sticky.shared.url"], "{url}: {e}");
        }
        for url in [
            "redis://127.0.0.1",
            "redis://store.example:6380/2",
            "rediss://store.example:6379",
            "redis://[::1]:6379/",
        ] {
            let c = with_store(&format!("url = {url:?}"), Path::new(".")).unwrap();
            assert_eq!(c.sticky.shared.unwrap().tls, url.starts_with("rediss"));
        }
    }

    #[test]
    fn password_file_is_read_trimmed_and_must_be_readable() {
        let dir = std::env::temp_dir().join(format!("lb-shared-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let c = with_store(
            "url = \"redis://h:1\"\nusername = \"lb\"\npassword_file = \"pw\"",
            &dir,
        )
        .unwrap();
        let s = c.sticky.shared.unwrap();
        assert_eq!(s.password.as_deref(), Some("s3cret"));
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "Debug shows the password"
        );
        let e = with_store("url = \"redis://h:1\"\npassword_file = \"missing\"", &dir).unwrap_err();
        assert_eq!(paths(&e), ["sticky.shared.password_file"]);
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let e = with_store("url = \"redis://h:1\"\npassword_file = \"empty\"", &dir).unwrap_err();
        assert_eq!(paths(&e), ["sticky.shared.password_file"]);
        let e = with_store("url = \"redis://h:1\"\nusername = \"lb\"", &dir).unwrap_err();
        assert_eq!(paths(&e), ["sticky.shared.username"]);
        let e = with_store("url = \"rediss://h:1\"\nca_file = \"pw\"", &dir).unwrap_err();
        assert_eq!(paths(&e), ["sticky.shared.ca_file"]);
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = with_store("url = \"rediss://h:1\"\nca_file = \"nope.pem\"", &dir).unwrap_err();
        assert_eq!(paths(&e), ["sticky.shared.ca_file"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_are_checked() {
        let e = with_store(
            "url = \"redis://h\"\nwrite_batch = 0\nlookup_timeout = \"5s\"\nkey_prefix = \"a b\"",
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(
            paths(&e),
            [
                "sticky.shared.key_prefix",
                "sticky.shared.write_batch",
                "sticky.shared.lookup_timeout"
            ]
        );
        let e = with_store("url = \"redis://h\"\nbogus = 1", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
