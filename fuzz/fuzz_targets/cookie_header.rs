//! `Cookie` request header values: every pair, and the session-cookie name test on each name.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lb::sticky::cookie::{pairs, SessionCookieNames};

fn names() -> &'static SessionCookieNames {
    static NAMES: OnceLock<SessionCookieNames> = OnceLock::new();
    NAMES.get_or_init(|| {
        SessionCookieNames::new(&["X-Qlik-Session".into()], &["X-Qlik-Session-".into()])
    })
}

fuzz_target!(|data: &[u8]| {
    let names = names();
    for (name, value) in pairs(data) {
        // Names are never empty and never carry separators; values never carry `;`.
        assert!(!name.is_empty());
        assert!(!name.contains(&b'='));
        assert!(!name.contains(&b';') && !value.contains(&b';'));
        assert!(!matches!(name.first(), Some(b' ' | b'\t')));
        assert!(!matches!(name.last(), Some(b' ' | b'\t')));
        let m = names.matches(name);
        // A match is either the exact name or a longer name with the prefix.
        if m {
            assert!(
                name == b"X-Qlik-Session"
                    || (name.len() > b"X-Qlik-Session-".len()
                        && name.starts_with(b"X-Qlik-Session-"))
            );
        }
        let _ = names.matches(value);
    }
});
