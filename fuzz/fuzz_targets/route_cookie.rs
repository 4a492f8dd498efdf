//! The balancer's signed route cookie (`<node id>.<signature>`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lb::sticky::route::{node_id_of, RouteKey};

fn key() -> &'static RouteKey {
    static KEY: OnceLock<RouteKey> = OnceLock::new();
    KEY.get_or_init(|| RouteKey::new(b"fuzz-route-key-0123456789"))
}

fuzz_target!(|data: &[u8]| {
    let key = key();

    // The input as a presented cookie value.
    let unverified = node_id_of(data);
    if let Some(id) = unverified {
        assert!(!id.is_empty());
        assert!(data.starts_with(id.as_bytes()));
        assert_eq!(data.get(id.len()), Some(&b'.'));
    }
    if let Some(id) = key.verify(data) {
        // Only a value the key itself produced verifies.
        assert_eq!(Some(id), unverified);
        assert_eq!(key.value_for(id).as_bytes(), data);
    }

    // The input as a node id: the value for it always verifies back to it.
    if let Ok(id) = std::str::from_utf8(data) {
        let value = key.value_for(id);
        let expected = (!id.is_empty()).then_some(id);
        assert_eq!(key.verify(value.as_bytes()), expected, "value {value:?}");
        assert_eq!(node_id_of(value.as_bytes()), expected);
        // A tampered signature never verifies.
        if !id.is_empty() {
            let mut forged = value.into_bytes();
            let last = forged.len() - 1;
            forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
            assert_eq!(key.verify(&forged), None);
        }
    }
});
