//! Responses: bodies, text and JSON answers, and the deterministic download pattern.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Size of one chunk of `/_sim/download`.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// Body of every simulated response.
pub(crate) type SimBody = BoxBody<Bytes, io::Error>;

pub(crate) fn full(b: impl Into<Bytes>) -> SimBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn json_resp(status: StatusCode, v: &serde_json::Value) -> Response<SimBody> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The byte at offset `i` of `/_sim/download`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn pattern_block() -> &'static Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BLOCK.get_or_init(|| {
        let v: Vec<u8> = (0..(DOWNLOAD_CHUNK + 251) as u64)
            .map(pattern_byte)
            .collect();
        Bytes::from(v)
    })
}

/// Streams `n` bytes of the deterministic pattern in chunks of 64 KiB.
pub(crate) struct PatternBody {
    pos: u64,
    len: u64,
}

impl PatternBody {
    pub(crate) fn new(len: u64) -> Self {
        PatternBody { pos: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.pos >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.pos).min(DOWNLOAD_CHUNK as u64) as usize;
        let off = (self.pos % 251) as usize;
        let chunk = pattern_block().slice(off..off + n);
        self.pos += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.pos)
    }
}
