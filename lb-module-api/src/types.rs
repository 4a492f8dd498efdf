//! The JSON bodies of `POST <base URI>/loadbalancing/prioritize`.

use serde::{Deserialize, Serialize};

/// The body the QPS posts: an app and the engines it may open it on.
///
/// `{"AppName": "<app>", "QlikSenseEngines": ["wss://node1:4747", "wss://node2:4747"]}`.
/// Unknown fields are ignored; both fields are required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrioritizeRequest {
    /// The app: a GUID or a name, not documented by Qlik. Echoed back unchanged.
    #[serde(rename = "AppName")]
    pub app_name: String,
    /// The engines offered, usually `scheme://host:port`.
    #[serde(rename = "QlikSenseEngines")]
    pub qlik_sense_engines: Vec<String>,
}

/// The answer: the same object with `QlikSenseEngines` reordered, most preferred first.
pub type PrioritizeResponse = PrioritizeRequest;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_fields() {
        let r: PrioritizeRequest = serde_json::from_str(
            r#"{"AppName":"a\u00e9\"b","QlikSenseEngines":["x"],"Extra":{"y":1}}"#,
        )
        .unwrap();
        assert_eq!(r.app_name, "aé\"b");
        let out = serde_json::to_string(&r).unwrap();
        assert_eq!(out, r#"{"AppName":"aé\"b","QlikSenseEngines":["x"]}"#);
    }
}
