//! The PROXY protocol, versions 1 (text) and 2 (binary), as sent by HAProxy and by an AWS
//! Network Load Balancer with proxy protocol v2 enabled, so that the client address in
//! `X-Forwarded-For` and the logs is the real one.
//!
//! The header is read exactly (its length known from its first bytes or its CRLF), so no byte
//! of the HTTP request that follows is lost. A `LOCAL` header (v2) or `UNKNOWN` (v1), as used by health checks,
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
///
/// Exactly the header's bytes are read (never a byte of the request after it), each read
/// waiting for the socket: 8 bytes tell v1 from v2; a v2 header's length is in its first 16
/// bytes; a v1 header ends at its CRLF (at most 107 bytes). A stalled header costs no CPU;
/// the caller bounds the whole read in time.
pub async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Error> {
    let mut buf = [0u8; 536];
    fill(stream, &mut buf[..8]).await?;
    // Not the start of a header at all: refused at once.
    parse(&buf[..8])?;
    let len = if buf[0] == b'\r' {
        fill(stream, &mut buf[8..16]).await?;
        let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > buf.len() {
            return Err(Error::Malformed("header too long"));
        }
        fill(stream, &mut buf[16..len]).await?;
        len
    } else {
        let mut n = 8;
        while buf[n - 2..n] != *b"\r\n" {
            if n >= V1_MAX {
                return Err(Error::Malformed("header too long"));
            }
            fill(stream, &mut buf[n..n + 1]).await?;
            n += 1;
        }
        n
    };
    match parse(&buf[..len])? {
        Some(h) if h.len == len => Ok(h.source),
        _ => Err(Error::Malformed("header length")),
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), Error> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Closed),
        Err(_) => Err(Error::Io),
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
