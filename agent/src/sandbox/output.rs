//! Reading one output stream of a sandbox through a capped buffer.
//!
//! The cap bounds the agent's memory per execution whatever the program writes: bytes past it
//! are never stored. The caller kills the sandbox as soon as a stream overflows, so a flood
//! costs at most one pipe buffer more than the cap to read.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What was kept of one stream.
#[derive(Debug, Default)]
pub(super) struct Captured {
    bytes: Vec<u8>,
    /// The program wrote more than the cap.
    pub truncated: bool,
}

/// Reads `reader` to end-of-file, keeping at most `cap` bytes. `Ok(true)` as soon as a byte
/// past the cap arrives (the rest is not read), `Ok(false)` at end-of-file within the cap.
pub(super) async fn capture<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
    into: &mut Captured,
) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        let room = cap.saturating_sub(into.bytes.len());
        if n > room {
            into.bytes.extend_from_slice(&chunk[..room]);
            into.truncated = true;
            return Ok(true);
        }
        into.bytes.extend_from_slice(&chunk[..n]);
    }
}

impl Captured {
    /// The kept bytes as UTF-8 text of at most `cap` bytes, and whether anything was cut.
    ///
    /// Invalid UTF-8 becomes U+FFFD, which is 3 bytes: a stream of invalid bytes grows when
    /// converted, so the text is cut again at the cap (on a character boundary) and then counts
    /// as truncated. A character split by the cap itself is dropped rather than replaced.
    pub fn into_text(self, cap: usize) -> (String, bool) {
        let mut bytes = self.bytes;
        let mut truncated = self.truncated;
        if truncated {
            // Trailing bytes that form no character (at most 3): the cap split a character.
            let dangling = bytes.utf8_chunks().last().map_or(0, |c| c.invalid().len());
            bytes.truncate(bytes.len() - dangling);
        }
        let mut text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if text.len() > cap {
            let mut end = cap;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            truncated = true;
        }
        (text, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn captured(input: &[u8], cap: usize) -> (bool, String, bool) {
        let mut c = Captured::default();
        let overflow = capture(input, cap, &mut c).await.unwrap();
        let (text, truncated) = c.into_text(cap);
        (overflow, text, truncated)
    }

    #[tokio::test]
    async fn output_within_the_cap_is_kept_whole() {
        assert_eq!(captured(b"hello", 5).await, (false, "hello".into(), false));
        assert_eq!(captured(b"", 0).await, (false, String::new(), false));
    }

    #[tokio::test]
    async fn output_past_the_cap_keeps_exactly_the_cap() {
        let flood = vec![b'x'; 100_000];
        let (overflow, text, truncated) = captured(&flood, 10_000).await;
        assert!(overflow && truncated);
        assert_eq!(text.len(), 10_000);
        assert_eq!(captured(b"abc", 0).await, (true, String::new(), true));
    }

    #[tokio::test]
    async fn a_character_split_by_the_cap_is_dropped_not_replaced() {
        // "é" is 2 bytes: a cap of 2 keeps "a" and half of "é".
        assert_eq!(captured("aé".as_bytes(), 2).await, (true, "a".into(), true));
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_and_the_text_still_fits_the_cap() {
        assert_eq!(
            captured(b"a\xffb", 10).await,
            (false, "a\u{fffd}b".into(), false)
        );
        let (overflow, text, truncated) = captured(&[0xff; 10], 10).await;
        assert!(!overflow);
        assert!(truncated, "10 invalid bytes make 30 bytes of text");
        assert_eq!(text, "\u{fffd}".repeat(3));
    }
}
