//! `[admin]`: the admin listener and its token (inline, or from `token_file`).

use super::sticky::{read_small_file, trim_bytes};
use super::Validator;
use crate::{file, Admin};

/// Largest token file read.
const TOKEN_FILE_MAX: u64 = 4096;

impl Validator<'_> {
    pub(super) fn admin(&mut self, a: &file::AdminFile) -> Admin {
        let address = self.addr("admin.address", &a.address);
        let errors = self.errors.len();
        let admin = Admin {
            address,
            token: self.admin_token(a),
            allowed_hosts: a
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        };
        // A token that could not be read is reported once, above.
        let token_failed = self.errors.len() > errors;
        if !token_failed
            && !admin.address.ip().is_loopback()
            && admin.token.as_deref().unwrap_or("").len() < 16
        {
            let key = if a.token_file.is_some() {
                "admin.token_file"
            } else {
                "admin.token"
            };
            self.err(
                key,
                "the admin listener is not on a loopback address: a token of at least 16 characters is required",
            );
        }
        admin
    }

    /// The bearer token, from `token` or `token_file` (trimmed; one line of visible ASCII).
    fn admin_token(&mut self, a: &file::AdminFile) -> Option<String> {
        match (&a.token, &a.token_file) {
            (Some(_), Some(_)) => {
                self.err("admin.token", "set either token or token_file, not both");
                None
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(p)) => {
                let p = self.base_dir.join(p);
                let raw = match read_small_file(&p, TOKEN_FILE_MAX) {
                    Ok(raw) => raw,
                    Err(e) => {
                        self.err("admin.token_file", e);
                        return None;
                    }
                };
                let t = trim_bytes(&raw);
                if t.is_empty() {
                    self.err(
                        "admin.token_file",
                        format!("{} is empty: it must hold the token", p.display()),
                    );
                    return None;
                }
                if !t.iter().all(|c| c.is_ascii_graphic()) {
                    self.err(
                        "admin.token_file",
                        format!(
                            "{} must hold the token alone, on one line of visible ASCII characters",
                            p.display()
                        ),
                    );
                    return None;
                }
                // Visible ASCII only, so valid UTF-8.
                Some(String::from_utf8_lossy(t).into_owned())
            }
            (None, None) => None,
        }
    }
}
