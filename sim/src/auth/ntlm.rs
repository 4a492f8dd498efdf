//! NTLM messages as the simulator speaks them, and the client side of the handshake.
//!
//! The layout keeps what matters to a balancer from the real protocol: the `NTLMSSP\0`
//! signature, the message types 1 (negotiate), 2 (challenge) and 3 (authenticate), an 8-byte
//! server challenge, and a type 3 whose response is computed from that challenge, so the node
//! can verify it against the challenge it sent on *this* connection. The payload is simplified:
//! after the type and a flags word, strings are length-prefixed (`u16` little endian) instead
//! of offset/length security buffers, and the response is
//! `SHA-256("lb-sim-ntlm" | challenge | DOMAIN | user)[..24]` instead of NTLMv2.
//!
//! Client side:
//! ```
//! use lb_sim::ntlm;
//! let type1 = ntlm::type1("CORP", "WS1"); // "NTLM TlRMTVNTUAAB..."
//! // ... send it as `Authorization`, read the 401's `WWW-Authenticate: NTLM <challenge>` ...
//! # let www = ntlm::type2_header([7; 8], "QLIK");
//! let challenge = ntlm::challenge_of(&www).expect("a type 2 message");
//! let type3 = ntlm::type3(challenge, "CORP", "alice", "WS1"); // on the same connection
//! # assert!(type3.starts_with("NTLM "));
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
/// NEGOTIATE_UNICODE | NEGOTIATE_NTLM | REQUEST_TARGET | NEGOTIATE_ALWAYS_SIGN.
const FLAGS: u32 = 0x0000_8205;

/// One NTLM message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Type 1: the client offers NTLM.
    Negotiate { domain: String, workstation: String },
    /// Type 2: the server's challenge.
    Challenge { challenge: [u8; 8], target: String },
    /// Type 3: the client's answer to a challenge, naming the user.
    Authenticate {
        domain: String,
        user: String,
        workstation: String,
        response: Vec<u8>,
    },
}

impl Message {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        let (kind, parts): (u32, Vec<&[u8]>) = match self {
            Message::Negotiate {
                domain,
                workstation,
            } => (1, vec![domain.as_bytes(), workstation.as_bytes()]),
            Message::Challenge { challenge, target } => (2, vec![challenge, target.as_bytes()]),
            Message::Authenticate {
                domain,
                user,
                workstation,
                response,
            } => (
                3,
                vec![
                    domain.as_bytes(),
                    user.as_bytes(),
                    workstation.as_bytes(),
                    response,
                ],
            ),
        };
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&FLAGS.to_le_bytes());
        for p in parts {
            let len = p.len().min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&p[..len]);
        }
        out
    }

    /// Parses a message; `None` for anything that is not one.
    pub fn decode(b: &[u8]) -> Option<Message> {
        let rest = b.strip_prefix(SIGNATURE)?;
        let kind = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        let mut r = Reader(rest.get(8..)?);
        let m = match kind {
            1 => Message::Negotiate {
                domain: r.string()?,
                workstation: r.string()?,
            },
            2 => Message::Challenge {
                challenge: r.bytes()?.try_into().ok()?,
                target: r.string()?,
            },
            3 => Message::Authenticate {
                domain: r.string()?,
                user: r.string()?,
                workstation: r.string()?,
                response: r.bytes()?.to_vec(),
            },
            _ => return None,
        };
        r.0.is_empty().then_some(m)
    }

    /// The message in base64, as carried after `NTLM ` or `Negotiate `.
    pub fn to_base64(&self) -> String {
        B64.encode(self.encode())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_le_bytes(self.0.get(..2)?.try_into().ok()?) as usize;
        let v = self.0.get(2..2 + len)?;
        self.0 = &self.0[2 + len..];
        Some(v)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// The response a type 3 must carry for `challenge`, `domain` and `user`.
pub fn response_for(challenge: [u8; 8], domain: &str, user: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"lb-sim-ntlm");
    h.update(challenge);
    h.update(domain.to_ascii_uppercase().as_bytes());
    h.update(b"\\");
    h.update(user.as_bytes());
    h.finalize()[..24].to_vec()
}

/// Parses the token of an `Authorization` or `WWW-Authenticate` value `<scheme> <base64>`
/// for the scheme `NTLM` or `Negotiate`; returns the scheme as written and the message.
pub fn parse_header(value: &str) -> Option<(&str, Message)> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("NTLM") && !scheme.eq_ignore_ascii_case("Negotiate") {
        return None;
    }
    let bytes = B64.decode(token.trim()).ok()?;
    Some((scheme, Message::decode(&bytes)?))
}

/// `Authorization` value of a type 1 message: `NTLM <base64>`.
pub fn type1(domain: &str, workstation: &str) -> String {
    let m = Message::Negotiate {
        domain: domain.to_string(),
        workstation: workstation.to_string(),
    };
    format!("NTLM {}", m.to_base64())
}

/// `WWW-Authenticate` value of a type 2 message (what a node sends).
pub fn type2_header(challenge: [u8; 8], target: &str) -> String {
    let m = Message::Challenge {
        challenge,
        target: target.to_string(),
    };
    format!("NTLM {}", m.to_base64())
}

/// The server challenge of a `WWW-Authenticate: NTLM <type 2>` (or `Negotiate <type 2>`) value.
pub fn challenge_of(www_authenticate: &str) -> Option<[u8; 8]> {
    match parse_header(www_authenticate)? {
        (_, Message::Challenge { challenge, .. }) => Some(challenge),
        _ => None,
    }
}

/// `Authorization` value of the type 3 message answering `challenge` as `domain\user`.
pub fn type3(challenge: [u8; 8], domain: &str, user: &str, workstation: &str) -> String {
    let m = Message::Authenticate {
        domain: domain.to_string(),
        user: user.to_string(),
        workstation: workstation.to_string(),
        response: response_for(challenge, domain, user),
    };
    format!("NTLM {}", m.to_base64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for m in [
            Message::Negotiate {
                domain: "CORP".into(),
                workstation: "WS1".into(),
            },
            Message::Challenge {
                challenge: [1, 2, 3, 4, 5, 6, 7, 8],
                target: "QLIK".into(),
            },
            Message::Authenticate {
                domain: "CORP".into(),
                user: "alice".into(),
                workstation: "".into(),
                response: response_for([9; 8], "CORP", "alice"),
            },
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m.clone()));
        }
        assert_eq!(Message::decode(b"NTLMSSP\0"), None);
        assert_eq!(Message::decode(b"garbage"), None);
        let mut trailing = Message::Negotiate {
            domain: "a".into(),
            workstation: "b".into(),
        }
        .encode();
        trailing.push(0);
        assert_eq!(Message::decode(&trailing), None);
        assert_eq!(challenge_of(&type2_header([3; 8], "Q")), Some([3; 8]));
        assert_eq!(challenge_of(&type1("CORP", "WS")), None);
        assert_ne!(
            response_for([1; 8], "CORP", "alice"),
            response_for([2; 8], "CORP", "alice")
        );
    }
}
