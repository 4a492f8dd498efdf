//! `[admin]`: the admin listener and its token.

use super::Validator;
use crate::{file, Admin};

impl Validator<'_> {
    pub(super) fn admin(&mut self, a: &file::AdminFile) -> Admin {
        let admin = Admin {
            address: self.addr("admin.address", &a.address),
            token: a.token.clone(),
            allowed_hosts: a
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        };
        if !admin.address.ip().is_loopback() && admin.token.as_deref().unwrap_or("").len() < 16 {
            self.err(
                "admin.token",
                "the admin listener is not on a loopback address: a token of at least 16 characters is required",
            );
        }
        admin
    }
}
