//! The PROXY protocol, versions 1 (text) and 2 (binary), as sent by HAProxy and by an AWS
//! Network Load Balancer with proxy protocol v2 enabled, so that the client address in
//! `X-Forwarded-For` and the logs is the real one.
//!
//! The header is read with `peek` first and consumed exactly, so no byte of the HTTP request
//! that follows is lost. A `LOCAL` header (v2) or `UNKNOWN` (v1), as used by health checks,
//! keeps the connection's own peer address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("connection closed before a PROXY protocol header")]
    Closed,
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("i/o error reading the PROXY protocol header")]
    Io,
}

/// What a complete header says: the client's address, if it gives one, and its length.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    pub source: Option<SocketAddr>,
    pub len: usize,
}

/// Parses a header at the start of `buf`. `Ok(None)`: more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'\r' {
        let n = buf.len().min(V2_SIG.len());
        if buf[..n] != V2_SIG[..n] {
            return Err(Error::Missing);
        }
        if buf.len() < 16 {
            return Ok(None);
        }
        return parse_v2(buf);
    }
    if buf[0] == b'P' {
        let n = buf.len().min(6);
        if buf[..n] != b"PROXY "[..n] {
            return Err(Error::Missing);
        }
        return parse_v1(buf);
    }
    Err(Error::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Error> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Error::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(Error::Malformed("v1 line must end with CRLF"));
    }
    let line =
        std::str::from_utf8(&buf[..end - 1]).map_err(|_| Error::Malformed("v1 not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let source = match parts.next() {
        Some("UNKNOWN") => None,
        Some("TCP4") | Some("TCP6") => {
            let src: IpAddr = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(Error::Malformed("v1 source address"))?;
            let _dst: IpAddr = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(Error::Malformed("v1 destination address"))?;
            let sport: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(Error::Malformed("v1 source port"))?;
            let _dport: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(Error::Malformed("v1 destination port"))?;
            if parts.next().is_some() {
                return Err(Error::Malformed("v1 trailing fields"));
            }
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(Error::Malformed("v1 protocol")),
    };
    Ok(Some(Header {
        source,
        len: end + 1,
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Error> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Error::Malformed("v2 version"));
    }
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = 16 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let source = match (ver_cmd & 0x0f, fam >> 4) {
        (0, _) => None, // LOCAL: health checks and the like
        (1, 1) => {
            if body.len() < 12 {
                return Err(Error::Malformed("v2 IPv4 addresses"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 2) => {
            if body.len() < 36 {
                return Err(Error::Malformed("v2 IPv6 addresses"));
            }
            let mut o = [0u8; 16];
            o.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(o).into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        (1, _) => None, // UNSPEC or unix sockets: keep the peer address
        _ => return Err(Error::Malformed("v2 command")),
    };
    Ok(Some(Header { source, len: total }))
}

/// Reads and consumes the header from `stream`; returns the client address it names.
pub async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Error> {
    let mut buf = [0u8; 536];
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| Error::Io)?;
        if n == 0 {
            return Err(Error::Closed);
        }
        match parse(&buf[..n])? {
            Some(h) => {
                let mut sink = vec![0u8; h.len];
                stream.read_exact(&mut sink).await.map_err(|_| Error::Io)?;
                return Ok(h.source);
            }
            None if n == buf.len() => return Err(Error::Malformed("header too long")),
            None => {
                // More bytes are on their way; the caller bounds the whole read in time.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = parse(b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 443\r\nGET / HTTP/1.1\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(h.len, 43);
        let h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let h = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(h.source, None);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        assert!(parse(b"PROXY TCP4 x y 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n").is_err());
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
        assert!(parse(&[b'P'; 200]).is_err());
    }

    #[test]
    fn v2() {
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 5, 0xC0, 0x01, 0x01, 0xBB,
        ]);
        b.extend_from_slice(b"GET /");
        let h = parse(&b).unwrap().unwrap();
        assert_eq!(h.source, Some("198.51.100.9:49153".parse().unwrap()));
        assert_eq!(h.len, 28);
        assert_eq!(parse(&b[..20]).unwrap(), None);
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap().source, None);
        let mut bad = V2_SIG.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert!(parse(&bad).is_err());
        assert_eq!(parse(b"\r\nX"), Err(Error::Missing));
    }
}
