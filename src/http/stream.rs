//! Streaming responses: a [`StreamSink`] any thread can send into, and the
//! queue it shares with the event loop, which writes it to the client.

use std::sync::Arc;
use std::time::Instant;

use mio::Waker;
use parking_lot::Mutex;

use crate::lograte::{LogLimit, log_limit};

/// A wake-up that failed: once per event sent to a stream, at worst.
pub(crate) static WAKE_FAILED: LogLimit = log_limit!(log::Level::Error, "http: event-loop wake-ups failed");

/// How the event loop learns that a stream has news: the stream's token in
/// a list, and a wakeup.
pub(crate) struct Notify {
    pending: Mutex<Vec<usize>>,
    waker: Arc<Waker>,
}

impl Notify {
    pub(crate) fn new(waker: Arc<Waker>) -> Notify {
        Notify { pending: Mutex::new(Vec::new()), waker }
    }

    /// The tokens of the streams with news since the last call.
    pub(crate) fn take(&self) -> Vec<usize> {
        std::mem::take(&mut *self.pending.lock())
    }

    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            WAKE_FAILED.log(Instant::now(), format_args!("http: cannot wake the event loop: {e}"));
        }
    }

    fn push(&self, token: usize) {
        self.pending.lock().push(token);
        self.wake();
    }
}

/// One stream's queue, shared by its sinks and the event loop.
pub(crate) struct StreamState {
    token: usize,
    max: usize,
    queue: Mutex<Queue>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    closed: bool,
    /// Closed because the queue passed its bound.
    overflowed: bool,
}

/// What the event loop found when it wrote a stream's queue.
pub(crate) struct Drained {
    /// Bytes still queued: the socket took no more.
    pub(crate) left: usize,
    /// The stream is closed (by overflow, or by the loop itself).
    pub(crate) closed: bool,
    /// It was closed because its queue passed `max_stream_queue`.
    pub(crate) overflowed: bool,
}

impl StreamState {
    /// A stream for the connection `token`, its queue starting with `head`.
    pub(crate) fn new(token: usize, max: usize, head: Vec<u8>, notify: Arc<Notify>) -> Arc<StreamState> {
        let queue = Queue { bytes: head, ..Queue::default() };
        Arc::new(StreamState { token, max, queue: Mutex::new(queue), notify })
    }

    /// Writes as much of the queue as `write` takes (it returns the bytes
    /// taken, `Ok(0)` when the socket is full).
    pub(crate) fn drain(
        &self,
        mut write: impl FnMut(&[u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<Drained> {
        let mut queue = self.queue.lock();
        if !queue.overflowed {
            let mut written = 0;
            while written < queue.bytes.len() {
                match write(&queue.bytes[written..]) {
                    Ok(0) => break,
                    Ok(n) => written += n,
                    Err(e) => {
                        queue.bytes.drain(..written);
                        return Err(e);
                    }
                }
            }
            queue.bytes.drain(..written);
            if queue.bytes.is_empty() && queue.bytes.capacity() > 64 * 1024 {
                queue.bytes = Vec::new();
            }
        }
        Ok(Drained { left: queue.bytes.len(), closed: queue.closed, overflowed: queue.overflowed })
    }

    /// Closes the stream: sinks say so from now on, and the queue is freed.
    pub(crate) fn close(&self) {
        let mut queue = self.queue.lock();
        queue.closed = true;
        queue.bytes = Vec::new();
    }
}

/// Where a streaming response's bytes go: any thread may send, the event
/// loop writes them to the client. Cheap to clone; every clone feeds the
/// same connection.
///
/// The queue is bounded by
/// [`max_stream_queue`](super::HttpConfig::max_stream_queue): a client that
/// stops reading fills the kernel's buffers, then the queue, and is dropped
/// once it passes the bound. Sending never blocks.
#[derive(Clone)]
pub struct StreamSink {
    state: Arc<StreamState>,
}

impl StreamSink {
    pub(crate) fn new(state: Arc<StreamState>) -> StreamSink {
        StreamSink { state }
    }

    /// Queues bytes for the client and wakes the event loop. `false` once the stream is closed for any reason
    /// (client gone, queue over its bound, server stopped): the caller then drops the sink. Never blocks.
    pub fn send(&self, bytes: &[u8]) -> bool {
        let state = &self.state;
        let was_empty = {
            let mut queue = state.queue.lock();
            if queue.closed {
                return false;
            }
            if queue.bytes.len().saturating_add(bytes.len()) > state.max {
                queue.closed = true;
                queue.overflowed = true;
                queue.bytes = Vec::new();
                drop(queue);
                state.notify.push(state.token);
                return false;
            }
            let was_empty = queue.bytes.is_empty();
            queue.bytes.extend_from_slice(bytes);
            was_empty
        };
        // A queue that held bytes already has its token in the list.
        if was_empty && !bytes.is_empty() {
            state.notify.push(state.token);
        }
        true
    }

    /// Whether the stream still takes bytes.
    pub fn is_open(&self) -> bool {
        !self.state.queue.lock().closed
    }
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink").field("open", &self.is_open()).finish_non_exhaustive()
    }
}
