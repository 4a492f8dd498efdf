//! Connection-bound authentication (NTLM, and Kerberos or NTLM inside `Negotiate`): Windows
//! (HTTP.sys) binds the NTLM challenge, then the authenticated identity, to one TCP connection.
//! When a node answers `WWW-Authenticate: NTLM|Negotiate`, or a request carries
//! `Authorization: NTLM|Negotiate`, the client connection and that node connection are paired
//! for the rest of the client connection: the node connection never goes back to the pool,
//! never serves another client, and closes when the client connection closes (it is dropped
//! with the client connection's [`ConnInfo`](super::ConnInfo)). If the node closes it first,
//! the client connection is closed after its answer, so the browser starts over on a new pair.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::header;
use http::HeaderMap;
use hyper::client::conn::http1::SendRequest;

use crate::upstream::pool::UpBody;

/// The node connection paired with one client connection.
pub struct Paired {
    /// Node id (positions change with reloads).
    pub node: Arc<str>,
    pub conn: SendRequest<UpBody>,
}

/// The pairing slot of one client connection (requests of a connection come one at a time:
/// the slot is taken for a request and put back after its answer, never held across `.await`).
#[derive(Default)]
pub struct PairSlot {
    paired: Mutex<Option<Paired>>,
    /// The paired node connection was lost: close the client connection after this answer.
    broken: AtomicBool,
}

impl std::fmt::Debug for PairSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairSlot")
            .field("node", &self.node())
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl PairSlot {
    pub fn take(&self) -> Option<Paired> {
        self.paired.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn put(&self, p: Paired) {
        *self.paired.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// The node id of the pairing, if any (without taking it).
    pub fn node(&self) -> Option<Arc<str>> {
        self.paired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.node.clone())
    }

    pub fn set_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

/// An `Authorization` or `WWW-Authenticate` value of a connection-bound scheme.
fn connection_bound(v: &[u8]) -> bool {
    let scheme = v
        .trim_ascii_start()
        .split(|&b| b == b' ' || b == b',')
        .next()
        .unwrap_or_default();
    scheme.eq_ignore_ascii_case(b"NTLM") || scheme.eq_ignore_ascii_case(b"Negotiate")
}

/// The request carries `Authorization: NTLM|Negotiate ...`.
pub fn request_binds(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| connection_bound(v.as_bytes()))
}

/// The response offers or continues `NTLM` or `Negotiate` (`WWW-Authenticate`).
pub fn response_binds(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(connection_bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(name: header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(name.clone(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn schemes_that_bind_a_connection() {
        assert!(request_binds(&map(
            header::AUTHORIZATION,
            &["NTLM TlRMTVNTUAAB"]
        )));
        assert!(request_binds(&map(
            header::AUTHORIZATION,
            &["negotiate YIIG"]
        )));
        assert!(!request_binds(&map(
            header::AUTHORIZATION,
            &["Basic YWxhZGRpbg=="]
        )));
        assert!(!request_binds(&map(
            header::AUTHORIZATION,
            &["Bearer NTLM"]
        )));
        assert!(!request_binds(&HeaderMap::new()));
        assert!(response_binds(&map(
            header::WWW_AUTHENTICATE,
            &["NTLM", "Negotiate"]
        )));
        assert!(response_binds(&map(
            header::WWW_AUTHENTICATE,
            &["Basic realm=\"x\", Negotiate"]
        )));
        assert!(response_binds(&map(
            header::WWW_AUTHENTICATE,
            &["Negotiate oYG2MIGzo"]
        )));
        assert!(!response_binds(&map(
            header::WWW_AUTHENTICATE,
            &["Basic realm=\"NTLM\""]
        )));
    }
}
