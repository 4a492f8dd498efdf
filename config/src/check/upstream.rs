//! `[upstream]`: how the proxy reaches the nodes (TLS trust, timeouts, connection pool).

use super::{Validator, DAY, MS};
use crate::{file, Upstream};

impl Validator<'_> {
    pub(super) fn upstream(&mut self, u: &file::UpstreamFile) -> Upstream {
        Upstream {
            ca_file: self.path(&u.ca_file),
            insecure_skip_verify: u.insecure_skip_verify,
            connect_timeout: self.dur("upstream.connect_timeout", &u.connect_timeout, MS, DAY),
            response_timeout: self.dur("upstream.response_timeout", &u.response_timeout, MS, DAY),
            pool_idle_timeout: self.dur(
                "upstream.pool_idle_timeout",
                &u.pool_idle_timeout,
                MS,
                DAY,
            ),
            pool_max_idle_per_node: u.pool_max_idle_per_node,
        }
    }
}
