//! What a node's engine reports in its health check, and the health check document.

use serde::{Deserialize, Serialize};

/// What a node's engine reports in its health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineTelemetry {
    /// CPU use in percent (`cpu.total`).
    pub cpu: f64,
    /// Free physical memory in MB (`mem.free`).
    pub mem_free_mb: f64,
    /// Total physical memory in MB (`mem.totalPhysical`); omitted when `None`.
    pub mem_total_mb: Option<f64>,
    /// Committed memory in MB (`mem.committed`, or `mem.comitted` in the old shape).
    pub mem_committed_mb: f64,
    /// The `saturated` flag; omitted when `None` (and always in the old shape).
    pub saturated: Option<bool>,
    /// Loaded apps (`apps.loaded_docs`, `apps.in_memory_docs`). In the old shape, entries that
    /// are not already paths are reported as `C:\ProgramData\Qlik\Sense\Apps\<entry>`.
    pub loaded_apps: Vec<String>,
    /// Active engine sessions (`session.active`, `users.active`).
    pub active_sessions: u64,
    /// Emit the pre-2019 shape: `comitted`, no `totalPhysical`, `in_memory_docs`, `saturated`.
    pub old_format: bool,
}

impl Default for EngineTelemetry {
    fn default() -> Self {
        EngineTelemetry {
            cpu: 2.0,
            mem_free_mb: 28_000.0,
            mem_total_mb: Some(32_768.0),
            mem_committed_mb: 1_024.0,
            saturated: Some(false),
            loaded_apps: Vec::new(),
            active_sessions: 0,
            old_format: false,
        }
    }
}

impl EngineTelemetry {
    /// The engine health check document (`GET /engine/healthcheck`) for this telemetry.
    pub fn healthcheck_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let allocated = self.mem_committed_mb * 1.2;
        let mut mem = Map::new();
        if self.old_format {
            mem.insert("comitted".into(), json!(self.mem_committed_mb));
        } else {
            mem.insert("committed".into(), json!(self.mem_committed_mb));
        }
        mem.insert("allocated".into(), json!(allocated));
        mem.insert("free".into(), json!(self.mem_free_mb));
        if !self.old_format {
            if let Some(total) = self.mem_total_mb {
                mem.insert("totalPhysical".into(), json!(total));
            }
        }
        let docs: Vec<String> = if self.old_format {
            self.loaded_apps
                .iter()
                .map(|a| {
                    if a.contains('\\') || a.contains('/') {
                        a.clone()
                    } else {
                        format!("C:\\ProgramData\\Qlik\\Sense\\Apps\\{a}")
                    }
                })
                .collect()
        } else {
            self.loaded_apps.clone()
        };
        let active_docs: Vec<String> = if self.active_sessions > 0 {
            docs.clone()
        } else {
            Vec::new()
        };
        let mut apps = Map::new();
        apps.insert("active_docs".into(), json!(active_docs));
        if !self.old_format {
            apps.insert("in_memory_docs".into(), json!(docs));
        }
        apps.insert("loaded_docs".into(), json!(docs));
        apps.insert("calls".into(), json!(self.active_sessions * 10));
        apps.insert("selections".into(), json!(self.active_sessions * 2));
        let mut doc = Map::new();
        doc.insert(
            "version".into(),
            json!(if self.old_format {
                "12.171.0"
            } else {
                "12.612.0"
            }),
        );
        doc.insert("started".into(), json!("20250101T101010.000+0000"));
        doc.insert("mem".into(), Value::Object(mem));
        doc.insert("cpu".into(), json!({ "total": self.cpu }));
        doc.insert(
            "session".into(),
            json!({ "active": self.active_sessions, "total": self.active_sessions }),
        );
        doc.insert("apps".into(), Value::Object(apps));
        doc.insert(
            "users".into(),
            json!({ "active": self.active_sessions, "total": self.active_sessions }),
        );
        doc.insert(
            "cache".into(),
            json!({ "hits": 0, "lookups": 0, "added": 0, "replaced": 0, "bytes_added": 0 }),
        );
        if !self.old_format {
            if let Some(s) = self.saturated {
                doc.insert("saturated".into(), json!(s));
            }
        }
        Value::Object(doc)
    }

    /// This telemetry with the fields present in `patch` (a JSON object) replaced.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<EngineTelemetry, serde_json::Error> {
        let mut current = serde_json::to_value(self)?;
        if let (Some(cur), Some(p)) = (current.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                cur.insert(k.clone(), v.clone());
            }
        } else if !patch.is_object() {
            return Err(serde::de::Error::custom("telemetry must be a JSON object"));
        }
        serde_json::from_value(current)
    }
}
