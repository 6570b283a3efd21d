//! `lines`: the hub's line reader ([`LineBuffer`]) fed in chunks. It must
//! split exactly as a plain reading of the whole stream does, refuse a
//! line over the limit at the same place, hold less than the limit of
//! unfinished line, and search and move each byte at most once, so that a line
//! dribbled a byte at a time costs linear work, not quadratic (finding 3 of
//! the first fuzzing round: 2.7 s of the I/O thread for one 40 KB line).
//!
//! Input: the limit (2 bytes, plus 1), the chunking (1 byte: 0 dribbles one
//! byte at a time; otherwise the sizes come from the next 4 bytes), whether
//! to shrink between reads (1 byte), then the stream.

use super::input::Input;
use crate::peer::lines::{LineBuffer, TooLong};

pub(crate) fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let max = usize::from(input.u16()) + 1;
    let sizes: Vec<usize> = match input.u8() {
        0 => vec![1],
        _ => input.array::<4>().iter().map(|&b| usize::from(b) + 1).collect(),
    };
    let shrink = input.bool();
    let stream = input.rest();

    let mut buf = LineBuffer::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut refused = false;
    let (mut fed, mut i) = (0, 0);
    'feed: while fed < stream.len() {
        let n = sizes[i % sizes.len()].min(stream.len() - fed);
        i += 1;
        buf.extend(&stream[fed..fed + n]);
        fed += n;
        loop {
            match buf.next_line(max) {
                Ok(Some(line)) => got.push(line.to_vec()),
                Ok(None) => break,
                Err(TooLong) => {
                    refused = true;
                    break 'feed;
                }
            }
        }
        assert!(buf.len() < max, "{} bytes of unfinished line held, limit {max}", buf.len());
        if shrink {
            buf.shrink(1024);
        }
    }
    // Linear work: each byte searched at most once, however it was split.
    assert!(buf.examined() <= fed, "{} bytes searched for {fed} received", buf.examined());
    // And each byte moved to the front at most once (returned lines are
    // dropped lazily, not by moving the rest after each line).
    assert!(buf.moved() <= fed, "{} bytes moved for {fed} received", buf.moved());

    let (lines, too_long) = plain_reading(stream, max);
    assert_eq!(refused, too_long, "refused: reader {refused}, plain reading {too_long}");
    assert_eq!(got, lines, "the lines differ from a plain reading");
}

/// The stream split at `\n` (a `\r` before it dropped), up to the first line
/// longer than `max` with its terminator, or an unfinished last line of
/// `max` bytes or more: the lines before, and whether one was too long.
fn plain_reading(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut lines = Vec::new();
    let mut rest = stream;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        if end + 1 > max {
            return (lines, true);
        }
        let line = &rest[..end];
        lines.push(line.strip_suffix(b"\r").unwrap_or(line).to_vec());
        rest = &rest[end + 1..];
    }
    (lines, rest.len() >= max)
}
