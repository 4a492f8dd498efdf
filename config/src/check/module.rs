//! `[module]`: the listener of the Qlik load balancing module API.

use super::Validator;
use crate::{file, Module};

impl Validator<'_> {
    pub(super) fn module(&mut self, m: &file::ModuleFile) -> Module {
        let module = Module {
            address: self.addr("module.address", &m.address),
            base_path: m.base_path.clone(),
            body_limit: m.body_limit,
            tls: self.tls("module.tls", &m.tls),
        };
        if !module.base_path.starts_with('/') {
            self.err("module.base_path", "must start with '/'");
        }
        if module.body_limit < 1024 {
            self.err("module.body_limit", "must be at least 1024 bytes");
        }
        module
    }
}
