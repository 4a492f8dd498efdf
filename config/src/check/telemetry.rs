//! `[telemetry]`: polling the engines' health checks (interval, headers, TLS client files).

use std::time::Duration;

use super::{Validator, DAY, MS};
use crate::{file, Telemetry};

impl Validator<'_> {
    pub(super) fn telemetry(&mut self, t: &file::TelemetryFile) -> Telemetry {
        let telemetry = Telemetry {
            interval: self.dur(
                "telemetry.interval",
                &t.interval,
                Duration::from_millis(50),
                DAY,
            ),
            timeout: self.dur("telemetry.timeout", &t.timeout, MS, DAY),
            headers: t
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ca_file: self.path(&t.ca_file),
            cert_file: self.path(&t.cert_file),
            key_file: self.path(&t.key_file),
            insecure_skip_verify: t.insecure_skip_verify,
        };
        self.headers(&telemetry.headers);
        if telemetry.cert_file.is_some() != telemetry.key_file.is_some() {
            self.err("telemetry.cert_file", "cert_file and key_file go together");
        }
        telemetry
    }

    /// `telemetry.headers`: names of A-Z a-z 0-9 - _, values without control characters but
    /// tab.
    fn headers(&mut self, headers: &[(String, String)]) {
        for (k, v) in headers {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                self.err(format!("telemetry.headers.{k}"), "invalid header name");
            }
            if v.bytes().any(|b| b < 0x20 && b != b'\t') {
                self.err(format!("telemetry.headers.{k}"), "invalid header value");
            }
        }
    }
}
