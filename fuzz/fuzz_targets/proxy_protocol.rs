//! PROXY protocol v1 and v2 headers at the start of a connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lb::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(h)) = parse(data) else {
        return;
    };
    assert!(h.len <= data.len(), "header length {} > input {}", h.len, data.len());
    assert!(h.len > 0);
    // The header is exactly its first `len` bytes: parsing just those gives the same header,
    // and any shorter prefix asks for more bytes.
    assert_eq!(parse(&data[..h.len]), Ok(Some(h_clone(&h))));
    for k in (0..h.len.min(40)).chain([h.len - 1]) {
        assert_eq!(parse(&data[..k]), Ok(None), "prefix of {k} bytes");
    }
});

fn h_clone(h: &lb::proxy_protocol::Header) -> lb::proxy_protocol::Header {
    lb::proxy_protocol::Header {
        source: h.source,
        len: h.len,
    }
}
