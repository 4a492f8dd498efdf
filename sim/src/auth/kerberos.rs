//! Kerberos as the simulator speaks it: one `Negotiate` leg carrying a service ticket for the
//! name the browser used, and the client helper that makes one.
//!
//! A token is `SIMKRB5\0`, then length-prefixed (`u16` little endian) client principal
//! (`alice@CORP`) and service principal (`HTTP/<host>`), an issue time (`u64` milliseconds
//! since the Unix epoch) and a 16-byte checksum `SHA-256("lb-sim-krb" | client | service |
//! time)[..16]`. A node accepts it when the service principal is `HTTP/<host of the request's
//! Host header>`: a browser asks its KDC for a ticket to the name in the address bar, so behind
//! a balancer the SPN must be the balancer's DNS name.
//!
//! ```
//! use lb_sim::{kerberos, SimUser};
//! let v = kerberos::negotiate(&SimUser::new("CORP", "alice"), "qlik.example.com");
//! assert!(v.starts_with("Negotiate "));
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::SimUser;

const SIGNATURE: &[u8; 8] = b"SIMKRB5\0";

/// A decoded service ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `user@REALM`.
    pub client: String,
    /// `HTTP/<host>`.
    pub service: String,
    /// Milliseconds since the Unix epoch.
    pub issued_ms: u64,
}

fn checksum(client: &str, service: &str, issued_ms: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"lb-sim-krb");
    h.update(client.as_bytes());
    h.update(b"|");
    h.update(service.as_bytes());
    h.update(issued_ms.to_le_bytes());
    h.finalize()[..16].try_into().unwrap_or([0; 16])
}

impl Token {
    /// The token's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        for s in [&self.client, &self.service] {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.issued_ms.to_le_bytes());
        out.extend_from_slice(&checksum(&self.client, &self.service, self.issued_ms));
        out
    }

    /// Parses and checks a token; `None` when malformed or its checksum is wrong.
    pub fn decode(b: &[u8]) -> Option<Token> {
        let mut r = b.strip_prefix(SIGNATURE)?;
        let mut string = || -> Option<String> {
            let len = u16::from_le_bytes(r.get(..2)?.try_into().ok()?) as usize;
            let s = String::from_utf8(r.get(2..2 + len)?.to_vec()).ok()?;
            r = &r[2 + len..];
            Some(s)
        };
        let client = string()?;
        let service = string()?;
        let issued_ms = u64::from_le_bytes(r.get(..8)?.try_into().ok()?);
        let sum: [u8; 16] = r.get(8..)?.try_into().ok()?;
        (sum == checksum(&client, &service, issued_ms)).then_some(Token {
            client,
            service,
            issued_ms,
        })
    }

    /// The user the ticket names: `alice@CORP` is `CORP\alice`.
    pub fn user(&self) -> Option<SimUser> {
        let (id, realm) = self.client.rsplit_once('@')?;
        let dir = realm
            .split('.')
            .next()
            .unwrap_or(realm)
            .to_ascii_uppercase();
        (!id.is_empty() && !dir.is_empty()).then(|| SimUser::new(&dir, id))
    }

    /// Whether the ticket is for the service `HTTP/<host>` (ASCII case-insensitive).
    pub fn is_for_host(&self, host: &str) -> bool {
        self.service
            .strip_prefix("HTTP/")
            .is_some_and(|h| h.eq_ignore_ascii_case(host))
    }
}

/// Whether `b` looks like a simulated Kerberos token (rather than NTLM inside `Negotiate`).
pub fn is_token(b: &[u8]) -> bool {
    b.starts_with(SIGNATURE)
}

/// Decodes base64 `token` as a Kerberos token.
pub fn parse(token: &str) -> Option<Token> {
    Token::decode(&B64.decode(token.trim()).ok()?)
}

/// `Authorization` value for `user` signing in to the site named `host` (the host the browser
/// used, without a port): `Negotiate <base64>`.
pub fn negotiate(user: &SimUser, host: &str) -> String {
    let issued_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let t = Token {
        client: format!("{}@{}", user.id, user.directory),
        service: format!("HTTP/{host}"),
        issued_ms,
    };
    format!("Negotiate {}", B64.encode(t.encode()))
}

/// The mutual-authentication token a node returns with a successful `Negotiate` leg.
pub fn mutual_reply() -> String {
    format!("Negotiate {}", B64.encode(b"SIMKRB5\0AP-REP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_tampering_fails() {
        let v = negotiate(&SimUser::new("CORP", "alice"), "qlik.example.com");
        let t = parse(v.strip_prefix("Negotiate ").unwrap()).unwrap();
        assert_eq!(t.user(), Some(SimUser::new("CORP", "alice")));
        assert!(t.is_for_host("QLIK.example.com"));
        assert!(!t.is_for_host("node1.example.com"));
        let mut b = t.encode();
        let last = b.len() - 20;
        b[last] ^= 1;
        assert_eq!(Token::decode(&b), None);
    }
}
