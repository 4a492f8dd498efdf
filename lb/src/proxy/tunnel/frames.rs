//! WebSocket frame boundaries (RFC 6455 §5.2) of one direction of a tunnel.

/// Follows the frame boundaries of one direction of a WebSocket byte stream (RFC 6455 §5.2),
/// so that the balancer knows when it may insert a frame of its own.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// Header bytes of the frame being read, while incomplete.
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The stream no longer looks like WebSocket frames.
    lost: bool,
}

impl FrameTracker {
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.head_len == 0 && self.remaining == 0
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.head_len] = data[0];
            self.head_len += 1;
            data = &data[1..];
            if let Some(total) = header_len(&self.head[..self.head_len]) {
                if self.head_len == total {
                    self.remaining = payload_len(&self.head[..total]);
                    self.head_len = 0;
                }
            }
            if self.head_len >= self.head.len() {
                self.lost = true;
            }
        }
    }
}

/// Length of a frame header given its first bytes, once known.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + if masked { 4 } else { 0 })
}

fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_tracker_follows_boundaries() {
        let mut f = FrameTracker::default();
        assert!(f.at_boundary());
        // Unmasked text frame "hi".
        f.feed(&[0x81, 0x02]);
        assert!(!f.at_boundary());
        f.feed(b"h");
        assert!(!f.at_boundary());
        f.feed(b"i");
        assert!(f.at_boundary());
        // 300-byte binary frame with a 16-bit length, split across feeds.
        f.feed(&[0x82, 126]);
        f.feed(&[0x01]);
        assert!(!f.at_boundary());
        f.feed(&[0x2c]);
        f.feed(&vec![0u8; 299]);
        assert!(!f.at_boundary());
        f.feed(&[0u8; 1]);
        assert!(f.at_boundary());
        // Masked frame (client style) with 4 mask bytes.
        let mut frame = vec![0x81, 0x83, 1, 2, 3, 4];
        frame.extend_from_slice(b"abc");
        frame.extend_from_slice(&[0x89, 0x00]);
        f.feed(&frame);
        assert!(f.at_boundary());
    }
}
