//! `Set-Cookie` response header values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lb::sticky::cookie::parse_set_cookie;

fuzz_target!(|data: &[u8]| {
    if let Some(c) = parse_set_cookie(data) {
        assert!(!c.name.is_empty());
        assert!(!c.name.contains(&b'=') && !c.name.contains(&b';'));
        assert!(!c.value.contains(&b';'));
        // An empty value always removes the cookie.
        if c.value.is_empty() {
            assert!(c.removes);
        }
        // The name and value are slices of the input.
        let range = data.as_ptr_range();
        assert!(range.contains(&c.name.as_ptr()));
    }
});
