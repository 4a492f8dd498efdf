//! One engine health check sample, parsed tolerantly from `GET /engine/healthcheck`.
//!
//! Current engines answer (sizes in MB, CPU in percent averaged over 30 s):
//!
//! ```json
//! {
//!   "version": "12.612.0", "started": "20250101T101010.000+0000",
//!   "mem": {"committed": 1843.5, "allocated": 2245.1, "free": 27012.3, "totalPhysical": 32768.0},
//!   "cpu": {"total": 12.0},
//!   "session": {"active": 3, "total": 7},
//!   "apps": {"active_docs": ["<guid>"], "in_memory_docs": ["<guid>"], "loaded_docs": ["<guid>"]},
//!   "users": {"active": 2, "total": 5},
//!   "saturated": false
//! }
//! ```
//!
//! Older engines spell `mem.comitted`, lack `mem.totalPhysical`, `apps.in_memory_docs` and
//! `saturated`, and list app file paths instead of GUIDs. A missing (or `null`) field is
//! *unknown*, not an error: the optional ones become `None`, counters and lists default to zero
//! and empty. Only `mem.free` and `cpu.total` are required, since without them the sample says
//! nothing about load. A field that is present with the wrong type is an error.

use serde::Serialize;
use serde_json::{Map, Value};

/// Why a health check body could not be read as an [`EngineSample`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not JSON at all.
    #[error("health check body is not valid JSON: {0}")]
    Json(String),
    /// The body is JSON but not an object.
    #[error("health check body is not a JSON object (found {0})")]
    NotAnObject(&'static str),
    /// A field is present with a type other than the one expected.
    #[error("health check field `{field}` should be {expected}, found {found}")]
    WrongType {
        /// Dotted path of the field, e.g. `cpu.total`.
        field: String,
        /// What was expected, e.g. `a number`.
        expected: &'static str,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A field without which the sample is useless is missing.
    #[error("health check field `{0}` is missing")]
    Missing(&'static str),
}

/// One engine health check sample. Sizes are in MB, CPU in percent, as the engine reports them.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct EngineSample {
    /// Engine version string (`version`), empty when absent.
    pub version: String,
    /// Committed memory (`mem.committed`, or the old spelling `mem.comitted`), MB.
    pub mem_committed: f64,
    /// Allocated memory (`mem.allocated`), MB.
    pub mem_allocated: f64,
    /// Free memory (`mem.free`), MB. Required.
    pub mem_free: f64,
    /// Total physical memory (`mem.totalPhysical`), MB; `None` on older engines.
    pub mem_total_physical: Option<f64>,
    /// CPU use in percent averaged over 30 s (`cpu.total`). Required.
    pub cpu_total: f64,
    /// Active sessions (`session.active`).
    pub sessions_active: u64,
    /// Active users (`users.active`).
    pub users_active: u64,
    /// Apps with active sessions (`apps.active_docs`): GUIDs or file paths.
    pub active_docs: Vec<String>,
    /// Apps held in memory (`apps.in_memory_docs`); `None` on older engines.
    pub in_memory_docs: Option<Vec<String>>,
    /// Loaded apps (`apps.loaded_docs`): GUIDs or file paths.
    pub loaded_docs: Vec<String>,
    /// The engine's own saturation flag (`saturated`); `None` on older engines.
    pub saturated: Option<bool>,
}

/// Parse an engine health check body. See the [module docs](self) for the tolerance rules.
pub fn parse_healthcheck(body: &[u8]) -> Result<EngineSample, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let root = match &value {
        Value::Object(map) => map,
        other => return Err(ParseError::NotAnObject(type_name(other))),
    };

    let mem = object(root, "mem", "mem")?;
    let cpu = object(root, "cpu", "cpu")?;
    let session = object(root, "session", "session")?;
    let users = object(root, "users", "users")?;
    let apps = object(root, "apps", "apps")?;

    let committed = match number(mem, "committed", "mem.committed")? {
        Some(v) => Some(v),
        None => number(mem, "comitted", "mem.comitted")?,
    };

    Ok(EngineSample {
        version: string(root, "version", "version")?.unwrap_or_default(),
        mem_committed: committed.unwrap_or(0.0),
        mem_allocated: number(mem, "allocated", "mem.allocated")?.unwrap_or(0.0),
        mem_free: number(mem, "free", "mem.free")?.ok_or(ParseError::Missing("mem.free"))?,
        mem_total_physical: number(mem, "totalPhysical", "mem.totalPhysical")?,
        cpu_total: number(cpu, "total", "cpu.total")?.ok_or(ParseError::Missing("cpu.total"))?,
        sessions_active: count(session, "active", "session.active")?,
        users_active: count(users, "active", "users.active")?,
        active_docs: strings(apps, "active_docs", "apps.active_docs")?.unwrap_or_default(),
        in_memory_docs: strings(apps, "in_memory_docs", "apps.in_memory_docs")?,
        loaded_docs: strings(apps, "loaded_docs", "apps.loaded_docs")?.unwrap_or_default(),
        saturated: match root.get("saturated") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => return Err(wrong("saturated", "a boolean", other)),
        },
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: &str, expected: &'static str, found: &Value) -> ParseError {
    ParseError::WrongType {
        field: field.to_owned(),
        expected,
        found: type_name(found),
    }
}

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

fn object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Map<String, Value>, ParseError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(EMPTY.get_or_init(Map::new)),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(wrong(path, "an object", other)),
    }
}

fn number(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<f64>, ParseError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(wrong(path, "a number", other)),
    }
}

fn count(map: &Map<String, Value>, key: &str, path: &str) -> Result<u64, ParseError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => Ok(match n.as_u64() {
            Some(v) => v,
            // Negative or fractional counts: clamp and round rather than reject.
            None => {
                let f = n.as_f64().unwrap_or(0.0);
                if f.is_finite() && f > 0.0 {
                    f.round() as u64
                } else {
                    0
                }
            }
        }),
        Some(other) => Err(wrong(path, "a number", other)),
    }
}

fn string(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, ParseError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong(path, "a string", other)),
    }
}

fn strings(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<Vec<String>>, ParseError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    other => {
                        return Err(ParseError::WrongType {
                            field: format!("{path}[{i}]"),
                            expected: "a string",
                            found: type_name(other),
                        })
                    }
                }
            }
            Ok(Some(out))
        }
        Some(other) => Err(wrong(path, "an array of strings", other)),
    }
}

impl EngineSample {
    /// Whether this engine holds `app` in any of its app lists (`active_docs`,
    /// `in_memory_docs`, `loaded_docs`).
    ///
    /// If `app` contains a GUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), an entry matches when
    /// it contains that GUID anywhere, case-insensitively: a bare GUID, `C:\...\Apps\<guid>`
    /// or `/apps/<guid>.qvf` all match. Otherwise the file stem of `app` (last path component
    /// without its extension) is compared case-insensitively to the file stem of each entry.
    pub fn holds_app(&self, app: &str) -> bool {
        let entries = self
            .active_docs
            .iter()
            .chain(self.in_memory_docs.iter().flatten())
            .chain(self.loaded_docs.iter());
        if let Some(guid) = find_guid(app) {
            let mut entries = entries;
            entries.any(|e| contains_ignore_ascii_case(e.as_bytes(), guid.as_bytes()))
        } else {
            let want = file_stem(app);
            if want.is_empty() {
                return false;
            }
            let mut entries = entries;
            entries.any(|e| eq_ignore_case(file_stem(e), want))
        }
    }

    /// Free RAM as a fraction of total physical RAM, when the total is known and positive.
    pub fn free_fraction(&self) -> Option<f64> {
        match self.mem_total_physical {
            Some(total) if total > 0.0 && total.is_finite() && self.mem_free.is_finite() => {
                Some((self.mem_free / total).clamp(0.0, 1.0))
            }
            _ => None,
        }
    }
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        a.to_lowercase() == b.to_lowercase()
    }
}

fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The last path component of `s` (either separator) without its extension.
pub(crate) fn file_stem(s: &str) -> &str {
    let s = s.trim();
    let s = s.trim_end_matches(['/', '\\']);
    let name = match s.rfind(['/', '\\']) {
        Some(i) => &s[i + 1..],
        None => s,
    };
    match name.rfind('.') {
        Some(0) | None => name,
        Some(i) => &name[..i],
    }
}

/// The first GUID (8-4-4-4-12 hex digits, not part of a longer hex run) found in `s`.
pub(crate) fn find_guid(s: &str) -> Option<&str> {
    const LEN: usize = 36;
    let b = s.as_bytes();
    if b.len() < LEN {
        return None;
    }
    (0..=b.len() - LEN).find_map(|start| {
        let w = &b[start..start + LEN];
        let shape_ok = w.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        let before_ok = start == 0 || !b[start - 1].is_ascii_hexdigit();
        let after_ok = start + LEN == b.len() || !b[start + LEN].is_ascii_hexdigit();
        // The window is pure ASCII, so these byte offsets are char boundaries.
        (shape_ok && before_ok && after_ok).then(|| &s[start..start + LEN])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURRENT: &str = r#"{
        "version": "12.612.0", "started": "20250101T101010.000+0000",
        "mem": {"committed": 1843.5, "allocated": 2245.1, "free": 27012.3, "totalPhysical": 32768.0},
        "cpu": {"total": 12.0},
        "session": {"active": 3, "total": 7},
        "apps": {"active_docs": ["0b2a3c4d-1111-2222-3333-444455556666"],
                 "in_memory_docs": ["0B2A3C4D-1111-2222-3333-444455556666", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"],
                 "loaded_docs": ["0b2a3c4d-1111-2222-3333-444455556666"], "calls": 1234, "selections": 56},
        "users": {"active": 2, "total": 5},
        "cache": {"hits": 0, "lookups": 0, "added": 0, "replaced": 0, "bytes_added": 0},
        "saturated": false
    }"#;

    const OLD: &str = r#"{
        "version": "11.11.1",
        "mem": {"comitted": 900.0, "allocated": 1200.0, "free": 5000.0},
        "cpu": {"total": 4},
        "session": {"active": 1, "total": 1},
        "apps": {"active_docs": ["C:\\ProgramData\\Qlik\\Sense\\Apps\\0b2a3c4d-1111-2222-3333-444455556666"],
                 "loaded_docs": ["/data/apps/Sales Dashboard.qvf", "C:\\Apps\\0b2a3c4d-1111-2222-3333-444455556666"]},
        "users": {"active": 1, "total": 1}
    }"#;

    #[test]
    fn parses_current_shape() {
        let s = parse_healthcheck(CURRENT.as_bytes()).unwrap();
        assert_eq!(s.version, "12.612.0");
        assert_eq!(s.mem_committed, 1843.5);
        assert_eq!(s.mem_allocated, 2245.1);
        assert_eq!(s.mem_free, 27012.3);
        assert_eq!(s.mem_total_physical, Some(32768.0));
        assert_eq!(s.cpu_total, 12.0);
        assert_eq!(s.sessions_active, 3);
        assert_eq!(s.users_active, 2);
        assert_eq!(s.in_memory_docs.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.saturated, Some(false));
        assert!(s.holds_app("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"));
        assert!(s.holds_app("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"));
        assert!(!s.holds_app("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeef"));
    }

    #[test]
    fn parses_old_shape() {
        let s = parse_healthcheck(OLD.as_bytes()).unwrap();
        assert_eq!(s.mem_committed, 900.0);
        assert_eq!(s.mem_total_physical, None);
        assert_eq!(s.in_memory_docs, None);
        assert_eq!(s.saturated, None);
        assert_eq!(s.cpu_total, 4.0);
        assert!(s.holds_app("0B2A3C4D-1111-2222-3333-444455556666"));
        assert!(s.holds_app("Sales Dashboard"));
        assert!(s.holds_app("sales dashboard.qvf"));
        assert!(!s.holds_app("Sales"));
        assert!(!s.holds_app(""));
    }

    #[test]
    fn guid_detection() {
        let g = "0b2a3c4d-1111-2222-3333-444455556666";
        assert_eq!(find_guid(g), Some(g));
        assert_eq!(find_guid(&format!("/apps/{g}.qvf")), Some(g));
        assert_eq!(find_guid(&format!("a{g}")), None);
        assert_eq!(find_guid("0b2a3c4d-1111-2222-3333-44445555666"), None);
        assert_eq!(find_guid("é0b2a3c4d-1111-2222-3333-444455556666é"), Some(g));
    }

    #[test]
    fn errors_are_clear() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not valid JSON"),
            ("[1,2]", "not a JSON object (found an array)"),
            ("\"x\"", "not a JSON object (found a string)"),
            (
                r#"{"mem":{"free":1},"cpu":"x"}"#,
                "`cpu` should be an object, found a string",
            ),
            (
                r#"{"mem":{"free":1},"cpu":{"total":"x"}}"#,
                "`cpu.total` should be a number, found a string",
            ),
            (
                r#"{"mem":{"free":1},"cpu":{"total":1},"saturated":"no"}"#,
                "`saturated` should be a boolean",
            ),
            (
                r#"{"mem":{"free":1},"cpu":{"total":1},"apps":{"loaded_docs":[1]}}"#,
                "`apps.loaded_docs[0]` should be a string, found a number",
            ),
            (r#"{"cpu":{"total":1}}"#, "`mem.free` is missing"),
            (r#"{"mem":{"free":1}}"#, "`cpu.total` is missing"),
        ];
        for (body, want) in cases {
            let err = parse_healthcheck(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn nulls_are_unknown() {
        let s = parse_healthcheck(
            br#"{"mem":{"free":1,"totalPhysical":null},"cpu":{"total":1},"saturated":null,
                "session":{"active":-2},"users":{"active":2.6}}"#,
        )
        .unwrap();
        assert_eq!(s.mem_total_physical, None);
        assert_eq!(s.saturated, None);
        assert_eq!(s.sessions_active, 0);
        assert_eq!(s.users_active, 3);
    }
}
