//! Configuration files: parsing and validation must never panic (errors are fine).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Validation reads `sticky.route_key_file`. Relative paths resolve under a folder that does not
/// exist; an absolute one could name `/dev/zero` or a FIFO, so such inputs are skipped.
fn reads_absolute_file(text: &str) -> bool {
    let Ok(v) = text.parse::<toml::Table>() else {
        return false;
    };
    match v.get("sticky").and_then(|s| s.get("route_key_file")) {
        Some(toml::Value::String(p)) => Path::new(p).is_absolute(),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if reads_absolute_file(text) {
        return;
    }
    match lb_config::Config::from_toml(text, Path::new("/nonexistent")) {
        Ok(cfg) => {
            let _ = lb::summary(&cfg);
            for n in &cfg.nodes {
                assert!(cfg.node(&n.id).is_some());
            }
        }
        Err(errs) => {
            let _ = errs.to_string();
        }
    }
});
