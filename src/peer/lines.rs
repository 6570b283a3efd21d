//! Splitting received bytes into lines, for the hub (non-blocking sockets)
//! and the client (blocking ones).
//!
//! [`LineBuffer`] remembers how far it has searched for a `\n`, so a long
//! line that arrives in many small reads is scanned once, not once per read.
//! Returned lines are not moved out: the buffer keeps an offset to the first
//! unreturned byte and compacts lazily, moving each byte at most about once.

/// Why no line could be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

/// Received bytes, split into lines ended by `\n` (a `\r` before it dropped).
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    /// Received bytes; those before `start` were returned already.
    bytes: Vec<u8>,
    /// Offset of the first byte not yet returned.
    start: usize,
    /// Offset up to which `bytes[start..]` is known to hold no `\n`.
    scanned: usize,
    /// Bytes examined by the `\n` search, for the checks that keep it
    /// linear (a unit test, and the `lines` fuzz target).
    examined: usize,
    /// Bytes moved to the front by compaction, for the same checks.
    moved: usize,
}

impl LineBuffer {
    /// An empty buffer; it allocates on the first [`extend`](Self::extend).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    ///
    /// When at least half the buffer is lines already returned, those are
    /// dropped first: the bytes moved are never more than the bytes dropped.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.bytes.len() - self.start {
            self.compact();
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// The next whole line without its terminator (`\n`; a `\r` right before
    /// it is dropped too), or `Ok(None)` if no whole line is buffered.
    ///
    /// `Err(TooLong)` when the next line, terminator included, is longer than
    /// `max` bytes, or `max` bytes or more are buffered with no `\n` among
    /// them (so a peer cannot make us buffer more than `max` + one read). The
    /// error leaves the buffer as it was: the caller is expected to drop the
    /// connection. The slice lives until the next `&mut` call.
    ///
    /// Each byte is searched at most once however the line was split across
    /// [`extend`](Self::extend)s, and never more than `max` bytes past the
    /// start of the line.
    pub(crate) fn next_line(&mut self, max: usize) -> Result<Option<&[u8]>, TooLong> {
        // A `\n` at or beyond `start + max` would make the line too long.
        let limit = self.bytes.len().min(self.start.saturating_add(max));
        let from = self.scanned.max(self.start);
        if from < limit {
            let found = self.bytes[from..limit].iter().position(|&b| b == b'\n');
            self.examined += found.map_or(limit - from, |i| i + 1);
            if let Some(i) = found {
                let end = from + i;
                let line_start = self.start;
                self.start = end + 1;
                self.scanned = self.start;
                let line = &self.bytes[line_start..end];
                return Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)));
            }
            self.scanned = limit;
        }
        if self.len() >= max { Err(TooLong) } else { Ok(None) }
    }

    /// Bytes buffered and not yet returned.
    #[allow(dead_code, reason = "the hub's reader asks; the client does not")]
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Bytes the `\n` search has examined so far: at most the bytes
    /// extended, each byte searched at most once.
    pub(crate) fn examined(&self) -> usize {
        self.examined
    }

    /// Bytes compaction has moved so far. When every whole line is taken
    /// before the next [`extend`](Self::extend) (as the client does), at
    /// most the bytes extended: each byte moved at most once.
    pub(crate) fn moved(&self) -> usize {
        self.moved
    }

    /// Drops consumed bytes and, when the capacity is above `keep` while at
    /// most `keep / 4` bytes are buffered, gives the memory back (a burst is
    /// over). Call it when no whole line is left, e.g. before the next read:
    /// what it moves is then only the start of a line.
    pub(crate) fn shrink(&mut self, keep: usize) {
        self.compact();
        if self.bytes.capacity() > keep && self.bytes.len() <= keep / 4 {
            self.bytes.shrink_to(keep);
        }
    }

    /// Moves the unreturned bytes to the front.
    fn compact(&mut self) {
        if self.start == 0 {
            // Nothing returned since the last compaction: nothing to drop.
            return;
        }
        if self.start == self.bytes.len() {
            self.bytes.clear();
        } else {
            self.moved += self.bytes.len() - self.start;
            self.bytes.drain(..self.start);
        }
        self.scanned -= self.start.min(self.scanned);
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line the buffer holds now, or the error that stopped it.
    fn lines(buf: &mut LineBuffer, max: usize) -> Result<Vec<Vec<u8>>, TooLong> {
        let mut out = Vec::new();
        while let Some(line) = buf.next_line(max)? {
            out.push(line.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn crlf_and_lf_end_lines() {
        let mut buf = LineBuffer::new();
        assert_eq!(buf.next_line(100), Ok(None));
        buf.extend(b"one\r\ntwo\n\r\n\n\r\rx\r\nthr");
        let got = lines(&mut buf, 100).unwrap();
        assert_eq!(got, [&b"one"[..], b"two", b"", b"", b"\r\rx"]);
        assert_eq!(buf.len(), 3);
        buf.extend(b"ee\r");
        assert_eq!(buf.next_line(100), Ok(None));
        assert_eq!(buf.len(), 6);
        buf.extend(b"\n");
        assert_eq!(buf.next_line(100), Ok(Some(&b"three"[..])));
        assert_eq!(buf.len(), 0);
        assert_eq!(buf.next_line(100), Ok(None));
    }

    #[test]
    fn a_line_split_across_many_extends() {
        let mut buf = LineBuffer::new();
        let text = b"{\"type\": 798, \"line\": \"\"}\r\n";
        for &byte in &text[..text.len() - 1] {
            buf.extend(&[byte]);
            assert_eq!(buf.next_line(100), Ok(None));
        }
        buf.extend(b"\nnext");
        assert_eq!(buf.next_line(100), Ok(Some(&text[..text.len() - 2])));
        assert_eq!(buf.next_line(100), Ok(None));
        buf.extend(b"\n");
        assert_eq!(buf.next_line(100), Ok(Some(&b"next"[..])));
    }

    #[test]
    fn the_limit_counts_the_terminator() {
        let max = 10;
        // Exactly `max` with "\n" or "\r\n": accepted.
        let mut buf = LineBuffer::new();
        buf.extend(b"123456789\n12345678\r\n");
        assert_eq!(lines(&mut buf, max).unwrap(), [&b"123456789"[..], b"12345678"]);
        // One more, either way: refused, and refused again if asked again.
        for long in [&b"1234567890\n"[..], b"123456789\r\n"] {
            let mut buf = LineBuffer::new();
            buf.extend(long);
            assert_eq!(buf.next_line(max), Err(TooLong));
            assert_eq!(buf.next_line(max), Err(TooLong));
        }
        // The limit applies to each line, not to what is buffered.
        let mut buf = LineBuffer::new();
        buf.extend(b"12345\n123456789\n1\n");
        assert_eq!(lines(&mut buf, max).unwrap().len(), 3);
        buf.extend(b"ok\n1234567890\n");
        assert_eq!(buf.next_line(max), Ok(Some(&b"ok"[..])));
        assert_eq!(buf.next_line(max), Err(TooLong));
    }

    #[test]
    fn max_bytes_without_a_newline_are_refused() {
        let max = 10;
        let mut buf = LineBuffer::new();
        buf.extend(b"123456789");
        assert_eq!(buf.next_line(max), Ok(None));
        buf.extend(b"0");
        assert_eq!(buf.next_line(max), Err(TooLong));
        // Also when a previous line shares the buffer, and in one extend.
        let mut buf = LineBuffer::new();
        buf.extend(b"a\n1234567890123");
        assert_eq!(buf.next_line(max), Ok(Some(&b"a"[..])));
        assert_eq!(buf.next_line(max), Err(TooLong));
        assert_eq!(LineBuffer::new().next_line(0), Err(TooLong));
    }

    #[test]
    fn a_long_line_byte_by_byte_is_scanned_once() {
        let n = 40_000;
        let mut buf = LineBuffer::new();
        for _ in 0..n - 1 {
            buf.extend(b"x");
            assert_eq!(buf.next_line(n), Ok(None));
        }
        buf.extend(b"\n");
        assert_eq!(buf.next_line(n).unwrap().map(<[u8]>::len), Some(n - 1));
        // Each byte once: the rescanning reader examined n * (n + 1) / 2.
        assert_eq!(buf.examined, n);
        // Many short lines in pieces: still once per byte.
        let mut buf = LineBuffer::new();
        let text = b"ab\r\ncd\nef\n".repeat(1000);
        for piece in text.chunks(3) {
            buf.extend(piece);
            while buf.next_line(n).unwrap().is_some() {}
        }
        assert_eq!(buf.examined, text.len());
    }

    #[test]
    fn returned_lines_are_not_moved_each_time() {
        let mut buf = LineBuffer::new();
        buf.extend(&b"line\n".repeat(100));
        let first = buf.bytes.as_ptr();
        for _ in 0..100 {
            assert_eq!(buf.next_line(100), Ok(Some(&b"line"[..])));
        }
        assert_eq!(buf.start, 500, "consumed lines stay put until a compaction");
        assert_eq!(buf.bytes.as_ptr(), first);
        // Extending after everything was returned starts from the front.
        buf.extend(b"partial");
        assert_eq!((buf.start, buf.bytes.len()), (0, 7));
        // Less than half consumed: no compaction yet.
        buf.extend(b"\nrest of it");
        assert_eq!(buf.next_line(100), Ok(Some(&b"partial"[..])));
        buf.extend(b"...");
        assert_eq!(buf.start, 8);
        assert_eq!(buf.next_line(100), Ok(None));
        buf.extend(b"\n");
        assert_eq!(buf.next_line(100), Ok(Some(&b"rest of it..."[..])));
    }

    #[test]
    fn shrink_gives_memory_back_after_a_burst() {
        let keep = 1024;
        let mut buf = LineBuffer::new();
        buf.extend(&[b'x'; 10_000]);
        buf.extend(b"\nhead");
        assert!(buf.next_line(20_000).unwrap().is_some());
        assert!(buf.bytes.capacity() >= 10_000);
        buf.shrink(keep);
        assert_eq!(buf.len(), 4);
        assert!(buf.bytes.capacity() >= keep && buf.bytes.capacity() < 10_000);
        assert_eq!(buf.bytes, b"head");
        // A partial line above keep / 4 keeps its memory.
        let mut buf = LineBuffer::new();
        buf.extend(&[b'x'; 10_000]);
        buf.extend(b"\n");
        buf.extend(&[b'y'; 300]);
        assert!(buf.next_line(20_000).unwrap().is_some());
        buf.shrink(keep);
        assert_eq!(buf.len(), 300);
        assert!(buf.bytes.capacity() >= 10_000);
        // The scan position survives a compaction.
        buf.extend(b"\n");
        assert_eq!(buf.next_line(20_000).unwrap().map(<[u8]>::len), Some(300));
        assert_eq!(buf.len(), 0);
    }
}
