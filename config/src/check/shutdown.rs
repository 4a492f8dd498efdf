//! `[shutdown]`: how long open connections may drain.

use std::time::Duration;

use super::{Validator, DAY};
use crate::{file, Shutdown};

impl Validator<'_> {
    pub(super) fn shutdown(&mut self, s: &file::ShutdownFile) -> Shutdown {
        Shutdown {
            drain_timeout: self.dur(
                "shutdown.drain_timeout",
                &s.drain_timeout,
                Duration::ZERO,
                DAY,
            ),
        }
    }
}
