//! A connection's output queue: bytes the socket did not take yet, as a list
//! of chunks. A broadcast is encoded once and its buffer shared by every
//! recipient that queues it; the hub-wide [`Budget`] counts each byte once,
//! however many queues hold it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Bytes of queued output, hub-wide.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    used: AtomicUsize,
}

impl Budget {
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One encoded message for many recipients. Its bytes count against the
/// budget from the moment one recipient queues it until the last one has
/// written or dropped it.
pub(crate) struct Shared {
    bytes: Box<[u8]>,
    budget: Arc<Budget>,
    counted: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn new(bytes: Vec<u8>, budget: Arc<Budget>) -> Arc<Shared> {
        Arc::new(Shared { bytes: bytes.into_boxed_slice(), budget, counted: Default::default() })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Counts the buffer against the budget, once.
    fn count(&self) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.budget.add(self.bytes.len());
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if *self.counted.get_mut() {
            self.budget.release(self.bytes.len());
        }
    }
}

enum Chunk {
    Own(Vec<u8>),
    Shared(Arc<Shared>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Own(v) => v,
            Chunk::Shared(s) => s.bytes(),
        }
    }
}

/// Small own messages queued one after another share a chunk up to this size.
const COALESCE: usize = 16 * 1024;
/// Most chunks handed to one `writev`.
const IOV_MAX: usize = 64;

/// What a write did.
pub(crate) enum Wrote {
    /// Everything queued is written.
    All,
    /// The socket is full; the rest waits for WRITABLE.
    Some,
}

/// A connection's queue of unwritten output.
pub(crate) struct Output {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes queued and not yet written.
    queued: usize,
    /// Bytes of own chunks queued (the budget's share of this queue).
    own: usize,
    /// Since when output has been waiting (the queue has not drained).
    stalled_since: Option<Instant>,
    /// Bytes ever handed to this queue or written past it.
    total: u64,
}

impl Output {
    pub(crate) fn new() -> Output {
        Output { chunks: VecDeque::new(), head: 0, queued: 0, own: 0, stalled_since: None, total: 0 }
    }

    /// Bytes waiting.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Bytes handed to the connection so far, queued or written: an offset
    /// in its stream.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Bytes of the stream written to the socket so far.
    pub(crate) fn written(&self) -> u64 {
        self.total - self.queued as u64
    }

    /// Since when output has been waiting: the queue has not drained since.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since
    }

    /// The hub itself was stalled for `by`: the queue had no chance to
    /// drain meanwhile, so its wait moves on by the stall (never past `now`).
    pub(crate) fn forgive(&mut self, by: std::time::Duration, now: Instant) {
        if let Some(since) = self.stalled_since.as_mut() {
            *since = since.checked_add(by).map_or(now, |t| t.min(now));
        }
    }

    /// The bytes that dropping this queue would give back: its own bytes,
    /// and the shared buffers no other queue holds.
    pub(crate) fn freeable(&self) -> usize {
        let shared_alone: usize = self
            .chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::Shared(s) if Arc::strong_count(s) == 1 => Some(s.bytes().len()),
                _ => None,
            })
            .sum();
        self.own + shared_alone
    }

    /// Sends `bytes`: written straight to the socket when nothing is queued,
    /// the rest (or all of it) queued as an own copy.
    pub(crate) fn send(
        &mut self,
        stream: &mut impl Write,
        bytes: &[u8],
        now: Instant,
        budget: &Budget,
    ) -> io::Result<Wrote> {
        self.total += bytes.len() as u64;
        let written = if self.queued == 0 { write_some(stream, bytes)? } else { 0 };
        let rest = &bytes[written..];
        if rest.is_empty() {
            return Ok(Wrote::All);
        }
        budget.add(rest.len());
        self.own += rest.len();
        self.queued += rest.len();
        self.stalled_since.get_or_insert(now);
        match self.chunks.back_mut() {
            Some(Chunk::Own(last)) if last.len() + rest.len() <= COALESCE => last.extend_from_slice(rest),
            _ => self.chunks.push_back(Chunk::Own(rest.to_vec())),
        }
        Ok(Wrote::Some)
    }

    /// Sends a shared buffer: written straight when nothing is queued; what
    /// the socket does not take is queued as a reference, not a copy.
    pub(crate) fn send_shared(
        &mut self,
        stream: &mut impl Write,
        shared: &Arc<Shared>,
        now: Instant,
    ) -> io::Result<Wrote> {
        let bytes = shared.bytes();
        self.total += bytes.len() as u64;
        let written = if self.queued == 0 { write_some(stream, bytes)? } else { 0 };
        if written == bytes.len() {
            return Ok(Wrote::All);
        }
        shared.count();
        if self.chunks.is_empty() {
            self.head = written;
        }
        self.queued += bytes.len() - written;
        self.stalled_since.get_or_insert(now);
        self.chunks.push_back(Chunk::Shared(shared.clone()));
        Ok(Wrote::Some)
    }

    /// Writes what the socket takes now.
    pub(crate) fn flush(&mut self, stream: &mut impl Write, budget: &Budget) -> io::Result<Wrote> {
        while self.queued > 0 {
            let n = {
                let mut slices = [IoSlice::new(&[]); IOV_MAX];
                let mut count = 0;
                for (i, chunk) in self.chunks.iter().take(IOV_MAX).enumerate() {
                    let bytes = chunk.bytes();
                    slices[i] = IoSlice::new(if i == 0 { &bytes[self.head..] } else { bytes });
                    count += 1;
                }
                match stream.write_vectored(&slices[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Wrote::Some),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.consume(n, budget);
        }
        Ok(Wrote::All)
    }

    /// `n` bytes from the front were written.
    fn consume(&mut self, mut n: usize, budget: &Budget) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else { break };
            let left = front.bytes().len() - self.head;
            if n < left {
                self.head += n;
                if let Chunk::Own(_) = front {
                    budget.release(n);
                    self.own -= n;
                }
                return;
            }
            n -= left;
            if let Some(Chunk::Own(_)) = self.chunks.pop_front() {
                budget.release(left);
                self.own -= left;
            }
            self.head = 0;
        }
        if self.queued == 0 {
            self.stalled_since = None;
            // A burst is over: give its chunk list back.
            if self.chunks.capacity() > IOV_MAX {
                self.chunks = VecDeque::new();
            }
        }
    }

    /// Drops everything queued (the connection is closing).
    pub(crate) fn clear(&mut self, budget: &Budget) {
        budget.release(self.own);
        self.own = 0;
        self.queued = 0;
        self.head = 0;
        self.chunks.clear();
        self.stalled_since = None;
    }
}

/// Writes what the socket takes now, retrying interruptions.
fn write_some(stream: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes `room` more bytes, then would block.
    struct Pipe {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_straight_through_then_queues_then_flushes_in_order() {
        let budget = Arc::new(Budget::default());
        let now = Instant::now();
        let mut pipe = Pipe { got: Vec::new(), room: 5 };
        let mut out = Output::new();
        assert!(matches!(out.send(&mut pipe, b"hello", now, &budget).unwrap(), Wrote::All));
        assert!(matches!(out.send(&mut pipe, b" wor", now, &budget).unwrap(), Wrote::Some));
        let shared = Shared::new(b"ld, and".to_vec(), budget.clone());
        out.send_shared(&mut pipe, &shared, now).unwrap();
        out.send(&mut pipe, b" more", now, &budget).unwrap();
        assert_eq!(out.queued(), 16);
        assert_eq!(budget.used(), 4 + 7 + 5, "own bytes plus the shared buffer, once");
        assert_eq!(out.stalled_since(), Some(now));
        pipe.room = 6;
        assert!(matches!(out.flush(&mut pipe, &budget).unwrap(), Wrote::Some));
        assert_eq!(out.queued(), 10);
        pipe.room = 100;
        assert!(matches!(out.flush(&mut pipe, &budget).unwrap(), Wrote::All));
        assert_eq!(pipe.got, b"hello world, and more");
        assert_eq!(out.queued(), 0);
        assert_eq!(out.stalled_since(), None);
        assert_eq!(out.written(), 21);
        assert_eq!(budget.used(), 7, "the broadcast buffer lives while its owner holds it");
        drop(shared);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_shared_buffer_counts_once_however_many_queues_hold_it() {
        let budget = Arc::new(Budget::default());
        let now = Instant::now();
        let shared = Shared::new(vec![b'x'; 1000], budget.clone());
        let mut queues: Vec<(Pipe, Output)> =
            (0..10).map(|_| (Pipe { got: Vec::new(), room: 100 }, Output::new())).collect();
        for (pipe, out) in &mut queues {
            out.send_shared(pipe, &shared, now).unwrap();
            assert_eq!(out.queued(), 900);
        }
        drop(shared);
        assert_eq!(budget.used(), 1000);
        for (_, out) in &mut queues {
            out.clear(&budget);
        }
        drop(queues);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_partly_written_front_keeps_its_offset() {
        let budget = Budget::default();
        let now = Instant::now();
        let mut pipe = Pipe { got: Vec::new(), room: 3 };
        let mut out = Output::new();
        out.send(&mut pipe, b"abcdefgh", now, &budget).unwrap();
        out.send(&mut pipe, b"ij", now, &budget).unwrap();
        for _ in 0..10 {
            pipe.room = 1;
            out.flush(&mut pipe, &budget).unwrap();
        }
        assert_eq!(pipe.got, b"abcdefghij"[..pipe.got.len()]);
        assert_eq!(out.queued(), 10 - pipe.got.len());
        assert_eq!(budget.used(), out.queued());
    }

    #[test]
    fn the_backlog_clock_runs_until_the_queue_drains() {
        let budget = Budget::default();
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(1);
        let mut pipe = Pipe { got: Vec::new(), room: 0 };
        let mut out = Output::new();
        out.send(&mut pipe, b"abcdef", t0, &budget).unwrap();
        assert_eq!(out.stalled_since(), Some(t0));
        out.send(&mut pipe, b"gh", t1, &budget).unwrap();
        pipe.room = 2;
        out.flush(&mut pipe, &budget).unwrap();
        assert_eq!(out.stalled_since(), Some(t0), "a trickle is not draining");
        pipe.room = 100;
        out.flush(&mut pipe, &budget).unwrap();
        assert_eq!(out.stalled_since(), None);
        out.send(&mut pipe, b"ij", t1, &budget).unwrap();
        assert_eq!(out.stalled_since(), None, "written straight through");
    }

    #[test]
    fn freeable_counts_own_bytes_and_buffers_held_by_this_queue_alone() {
        let budget = Arc::new(Budget::default());
        let now = Instant::now();
        let mut pipe = Pipe { got: Vec::new(), room: 0 };
        let (mut a, mut b) = (Output::new(), Output::new());
        let shared = Shared::new(vec![b'x'; 100], budget.clone());
        a.send_shared(&mut pipe, &shared, now).unwrap();
        b.send_shared(&mut pipe, &shared, now).unwrap();
        a.send(&mut pipe, b"own", now, &budget).unwrap();
        drop(shared);
        assert_eq!((a.freeable(), b.freeable()), (3, 0), "the broadcast lives while either holds it");
        b.clear(&budget);
        assert_eq!(a.freeable(), 103);
    }
}
