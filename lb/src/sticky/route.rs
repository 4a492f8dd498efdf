//! The balancer's own route cookie: `<node id>.<signature>`, where the signature is the first
//! 16 bytes of HMAC-SHA256(key, "lb-route-v1:" + node id), base64url without padding.
//!
//! Balancers that share the key produce and accept the same values with no shared state, and a
//! restarted balancer keeps users on their nodes. The value of each configured node is computed
//! once per configuration snapshot, so the request path only compares bytes (in constant time).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const CONTEXT: &[u8] = b"lb-route-v1:";
const SIG_BYTES: usize = 16;

#[derive(Clone)]
pub struct RouteKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteKey(..)")
    }
}

impl RouteKey {
    pub fn new(key: &[u8]) -> RouteKey {
        RouteKey { key: key.to_vec() }
    }

    /// A random key for this process only (no key configured).
    pub fn random() -> RouteKey {
        let mut k = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut k[..]);
        RouteKey { key: k.to_vec() }
    }

    /// The cookie value that pins to `node_id`.
    pub fn value_for(&self, node_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(CONTEXT);
        mac.update(node_id.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!("{node_id}.{}", URL_SAFE_NO_PAD.encode(&sig[..SIG_BYTES]))
    }

    /// The node id a cookie value names, if its signature is valid.
    pub fn verify<'a>(&self, value: &'a [u8]) -> Option<&'a str> {
        let id = node_id_of(value)?;
        let expected = self.value_for(id);
        bool::from(expected.as_bytes().ct_eq(value)).then_some(id)
    }
}

/// The node id part of a cookie value (unverified).
pub fn node_id_of(value: &[u8]) -> Option<&str> {
    let dot = value.iter().rposition(|&b| b == b'.')?;
    let id = std::str::from_utf8(&value[..dot]).ok()?;
    (!id.is_empty()).then_some(id)
}

/// Constant-time comparison of a presented value with the expected one.
pub fn matches(expected: &[u8], presented: &[u8]) -> bool {
    bool::from(expected.ct_eq(presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_verify_and_tampering_fails() {
        let k = RouteKey::new(b"0123456789abcdef0123");
        let v = k.value_for("qps1");
        assert!(v.starts_with("qps1."));
        assert_eq!(k.verify(v.as_bytes()), Some("qps1"));
        let forged = v.replacen("qps1", "qps2", 1);
        assert_eq!(k.verify(forged.as_bytes()), None);
        let mut flipped = v.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(k.verify(&flipped), None);
        for garbage in [&b""[..], b".", b"qps1.", b"qps1", b"\xff\xfe.abc", b"a.b.c"] {
            assert_eq!(k.verify(garbage), None);
        }
    }

    #[test]
    fn same_key_same_values_other_key_differs() {
        let a = RouteKey::new(b"shared-key-of-two-balancers");
        let b = RouteKey::new(b"shared-key-of-two-balancers");
        let c = RouteKey::new(b"another-key-entirely-here");
        assert_eq!(a.value_for("n1"), b.value_for("n1"));
        assert_ne!(a.value_for("n1"), c.value_for("n1"));
        assert_eq!(b.verify(a.value_for("n1").as_bytes()), Some("n1"));
        assert_eq!(c.verify(a.value_for("n1").as_bytes()), None);
    }
}
