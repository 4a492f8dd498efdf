//! `[listener.tls]` and `[module.tls]`: certificate files (read and checked by `lb` when it
//! compiles the configuration) and names for SNI.

use super::Validator;
use crate::{file, Sni, Tls};

impl Validator<'_> {
    /// `key` is the table's own path, `listener.tls` or `module.tls`.
    pub(super) fn tls(&mut self, key: &str, t: &Option<file::TlsFile>) -> Option<Tls> {
        let t = t.as_ref()?;
        if key == "listener.tls" && t.client_ca_file.is_some() {
            // (A named listener checks its own: the REST API listener takes one.)
            self.err(
                format!("{key}.client_ca_file"),
                "client certificates are for the module listener only",
            );
        }
        let mut sni = Vec::new();
        for (i, s) in t.sni.iter().enumerate() {
            if s.server_names.is_empty() {
                self.err(
                    format!("{key}.sni[{i}].server_names"),
                    "at least one name is required",
                );
            }
            sni.push(Sni {
                server_names: s
                    .server_names
                    .iter()
                    .map(|n| n.trim().to_ascii_lowercase())
                    .collect(),
                cert_file: self.base_dir.join(&s.cert_file),
                key_file: self.base_dir.join(&s.key_file),
            });
        }
        Some(Tls {
            cert_file: self.base_dir.join(&t.cert_file),
            key_file: self.base_dir.join(&t.key_file),
            sni,
            client_ca_file: self.path(&t.client_ca_file),
        })
    }
}
