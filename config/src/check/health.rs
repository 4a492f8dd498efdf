//! `[health]`: active checks of the nodes and the passive error window.

use std::time::Duration;

use super::{Validator, DAY, MS};
use crate::{file, Health};

impl Validator<'_> {
    pub(super) fn health(&mut self, h: &file::HealthFile) -> Health {
        let health = Health {
            enabled: h.enabled,
            path: h.path.clone(),
            path_and_query: check_target(&h.path),
            expect_status: self.expect_status(&h.expect_status),
            interval: self.dur(
                "health.interval",
                &h.interval,
                Duration::from_millis(10),
                DAY,
            ),
            timeout: self.dur("health.timeout", &h.timeout, MS, DAY),
            rise: h.rise,
            fall: h.fall,
            slow_start: self.dur("health.slow_start", &h.slow_start, Duration::ZERO, DAY),
            passive_fail_timeout: self.dur(
                "health.passive_fail_timeout",
                &h.passive_fail_timeout,
                MS,
                DAY,
            ),
            passive_errors: h.passive_errors,
            passive_window: self.dur("health.passive_window", &h.passive_window, MS, DAY),
        };
        if !health.path.is_empty() && !health.path.starts_with('/') {
            self.err(
                "health.path",
                "must start with '/' (or be empty for a TCP connect check)",
            );
        }
        if health.rise == 0 || health.fall == 0 {
            self.err(
                if health.rise == 0 {
                    "health.rise"
                } else {
                    "health.fall"
                },
                "must be at least 1",
            );
        }
        health
    }

    fn expect_status(&mut self, s: &str) -> (u16, u16) {
        match parse_status_range(s) {
            Some(r) => r,
            None => {
                self.err(
                    "health.expect_status",
                    format!("{s:?} is not a status or a range like \"200-399\""),
                );
                (200, 499)
            }
        }
    }
}

/// The request target of an HTTP check; `None` for a TCP connect check: an empty path, or one
/// that is not a valid request target (the check falls back to a TCP connect).
fn check_target(path: &str) -> Option<http::uri::PathAndQuery> {
    if path.is_empty() {
        return None;
    }
    path.parse().ok()
}

/// `"200"` or `"200-399"` as an inclusive range.
fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}
