//! `[server]`: worker threads and the access log.

use super::Validator;
use crate::{file, Server};

impl Validator<'_> {
    pub(super) fn server(&mut self, s: &file::ServerFile) -> Server {
        if s.worker_threads > 1024 {
            self.err(
                "server.worker_threads",
                "must be at most 1024 (0 means one per core)",
            );
        }
        Server {
            worker_threads: s.worker_threads,
            access_log: s.access_log,
        }
    }
}
