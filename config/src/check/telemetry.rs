//! `[telemetry]`: polling the engines' health checks (interval, headers, TLS client files).

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

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
            typed_headers: self.headers(&t.headers),
            ca_file: self.path(&t.ca_file),
            cert_file: self.path(&t.cert_file),
            key_file: self.path(&t.key_file),
            insecure_skip_verify: t.insecure_skip_verify,
        };
        if telemetry.cert_file.is_some() != telemetry.key_file.is_some() {
            self.err("telemetry.cert_file", "cert_file and key_file go together");
        }
        telemetry
    }

    /// `telemetry.headers`, typed, in file order: names of A-Z a-z 0-9 - _, values without
    /// control characters but tab.
    fn headers(&mut self, headers: &BTreeMap<String, String>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(headers.len());
        for (k, v) in headers {
            let name = k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                .then(|| HeaderName::from_bytes(k.as_bytes()).ok())
                .flatten();
            if name.is_none() {
                self.err(format!("telemetry.headers.{k}"), "invalid header name");
            }
            let value = (!v.bytes().any(|b| b < 0x20 && b != b'\t'))
                .then(|| HeaderValue::from_str(v).ok())
                .flatten();
            if value.is_none() {
                self.err(format!("telemetry.headers.{k}"), "invalid header value");
            }
            if let (Some(name), Some(value)) = (name, value) {
                out.push((name, value));
            }
        }
        out
    }
}
