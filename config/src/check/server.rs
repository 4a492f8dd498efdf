//! `[server]`: worker threads, the access log and where logs go.

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
        if !(64..=1_048_576).contains(&s.log_queue_lines) {
            self.err("server.log_queue_lines", "must be 64 to 1048576");
        }
        if s.log_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
            self.err(
                "server.log_file",
                "must name a file (leave the key out to log to stderr)",
            );
        }
        Server {
            worker_threads: s.worker_threads,
            access_log: s.access_log,
            log_format: s.log_format,
            log_file: self.path(&s.log_file),
            log_queue_lines: s.log_queue_lines,
        }
    }
}
