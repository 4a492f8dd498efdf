//! WebSocket frame boundary tracking over a byte stream cut at an arbitrary point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lb::proxy::tunnel::FrameTracker;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(stream.len());
    let (a, b) = stream.split_at(cut);

    let mut split = FrameTracker::default();
    split.feed(a);
    let _ = split.at_boundary();
    split.feed(b);

    // The state does not depend on how the stream was cut into reads.
    let mut whole = FrameTracker::default();
    whole.feed(stream);
    assert_eq!(format!("{split:?}"), format!("{whole:?}"));
    assert_eq!(split.at_boundary(), whole.at_boundary());

    if stream.len() <= 64 {
        let mut bytes = FrameTracker::default();
        for byte in stream {
            bytes.feed(std::slice::from_ref(byte));
        }
        assert_eq!(format!("{bytes:?}"), format!("{whole:?}"));
    }
});
