//! Reading a gRPC body as it passes, without changing it: where its length-prefixed messages
//! end.
//!
//! Each message is a 5-byte prefix (a compression flag, then the length as a big-endian
//! `u32`) followed by that many bytes. Frames do not align with messages (a message may
//! span frames, a frame may hold several), so the scanner keeps its place across frames.

/// Incremental scanner of length-prefixed messages.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    /// How many bytes of the current prefix have been read (0 to 5; 5 while in the message).
    prefix: u8,
    /// The length read so far while in the prefix; then the bytes of the message still to
    /// come.
    left: u32,
}

const PREFIX: u8 = 5;

impl Scanner {
    /// Feeds the next bytes of the body; returns the offset just past the last message that
    /// ended in them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut last = None;
        let mut i = 0;
        while i < bytes.len() {
            if self.prefix < PREFIX {
                // Byte 0 is the compression flag; bytes 1 to 4 the length.
                if self.prefix > 0 {
                    self.left = (self.left << 8) | u32::from(bytes[i]);
                }
                self.prefix += 1;
                i += 1;
            } else {
                // The message body: only its end matters, so jump to it.
                let take = (bytes.len() - i).min(self.left as usize);
                i += take;
                // `take` is at most `left`, which is a `u32`.
                self.left -= take as u32;
            }
            if self.prefix == PREFIX && self.left == 0 {
                self.prefix = 0;
                last = Some(i);
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', len as usize));
        m
    }

    #[test]
    fn a_message_ends_after_its_announced_length() {
        let mut scanner = Scanner::default();
        let m = message(4);
        assert_eq!(scanner.feed(&m[..7]), None, "2 of 4 bytes: not whole");
        assert_eq!(scanner.feed(&m[7..]), Some(2));
    }

    #[test]
    fn several_messages_in_one_frame_end_at_the_last_whole_one() {
        let mut scanner = Scanner::default();
        let mut bytes = [message(3), message(0), message(300)].concat();
        let whole = bytes.len();
        bytes.extend_from_slice(&message(10)[..3]);
        assert_eq!(scanner.feed(&bytes), Some(whole));
        assert_eq!(scanner.feed(&[0, 10]), None, "the prefix ends, the message has not");
        assert_eq!(scanner.feed(&[b'x'; 10]), Some(10));
    }

    #[test]
    fn an_empty_message_ends_with_its_prefix() {
        let mut scanner = Scanner::default();
        assert_eq!(scanner.feed(&[1, 0, 0]), None);
        assert_eq!(scanner.feed(&[0, 0]), Some(2));
    }

    #[test]
    fn the_largest_length_is_read_without_overflow() {
        let mut scanner = Scanner::default();
        assert_eq!(scanner.feed(&[0, 0xff, 0xff, 0xff, 0xff, b'x']), None);
        assert_eq!(scanner.left, u32::MAX - 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// However a body is cut into frames, the last boundary found is the end of the last
        /// whole message.
        #[test]
        fn framing_does_not_change_where_messages_end(
            lens in prop::collection::vec(0u32..40, 0..12),
            partial in 0usize..45,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut body: Vec<u8> = lens.iter().flat_map(|&len| message(len)).collect();
            let whole = body.len();
            let next = message(39);
            body.extend_from_slice(&next[..partial.min(next.len() - 1)]);
            let mut offsets: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            offsets.extend([0, body.len()]);
            offsets.sort_unstable();
            offsets.dedup();
            let mut scanner = Scanner::default();
            let mut last = None;
            for w in offsets.windows(2) {
                if let Some(b) = scanner.feed(&body[w[0]..w[1]]) {
                    last = Some(w[0] + b);
                }
            }
            prop_assert_eq!(last, (!lens.is_empty()).then_some(whole));
        }
    }
}
