//! What an etcd answer costs in memory, counted by a global allocator of
//! this binary's own: a fake etcd on 127.0.0.1 answers each request with a
//! prepared answer (a huge array in a field the client does not read, a
//! huge watch line, many keys), and the test asserts the peak of allocated
//! bytes during the call, against the answer's size. No timing.
//!
//! The counter sees every thread of the process, so the tests take turns
//! (`MEASURING`) and the fake etcd builds every answer before the call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use heartbeat::Error;
use heartbeat::etcd::{
    Client, MAX_ANSWER, MAX_RANGE_ANSWER, MAX_RANGE_KEYS, MAX_WATCH_EVENTS, MAX_WATCH_LINE, WatchBatch,
    WatchEvent,
};

/// Counts the bytes allocated now and the most at any time since the last
/// reset. A `realloc` counts what it adds or frees: glibc moves a large
/// block by remapping its pages, without a copy, so the old and the new
/// block never both hold memory (a small one is copied, but is small).
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = NOW.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

fn shrank(n: usize) {
    NOW.fetch_sub(n, Ordering::SeqCst);
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static MEASURING: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one request costs beyond the answer: the HTTP client's buffers
/// (128 KiB each way), the connection, the request's JSON.
const SLACK: usize = 1 << 20;

/// Runs `f`; returns what it gave and the most bytes allocated at once
/// meanwhile, above what was allocated before.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(base);
    eprintln!("{}: peaked at {}", thread::current().name().unwrap_or("?"), mib(peak));
    (out, peak)
}

const MIB: f64 = (1 << 20) as f64;

fn mib(n: usize) -> String {
    format!("{:.1} MiB", n as f64 / MIB)
}

/// A fake etcd: answers every request for `path` with `head` + `body`, and
/// anything else with a 404. Stops (and is joined) on drop; every wait is
/// bounded.
struct Fake {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How an answer's length is told.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length`.
    Length,
    /// No length: the answer ends when the connection closes (as a stream).
    Close,
}

impl Fake {
    fn start(path: &'static str, body: Vec<u8>, framing: Framing) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut answer = match framing {
            Framing::Length => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            Framing::Close => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".into(),
        }
        .into_bytes();
        answer.extend_from_slice(&body);
        drop(body);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => answer_one(conn, path, &answer),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Fake { url, stop, thread: Some(thread) }
    }

    fn client(&self) -> Client {
        Client::with_timeout(&[self.url.as_str()], Duration::from_secs(20)).unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (its head through httparse, then its body) and
/// answers it. Every read is bounded by a timeout; a client that went away
/// midway is not an error here.
fn answer_one(conn: TcpStream, path: &str, answer: &[u8]) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => head.extend_from_slice(&line),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(&head), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let length = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    if reader.by_ref().take(length).read_to_end(&mut body).is_err() {
        return;
    }
    let mut conn = conn;
    if request.path == Some(path) {
        let _ = conn.write_all(answer);
    } else {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
    // Let the client read to the end before the socket goes.
    let _ = reader.read_to_end(&mut Vec::new());
}

/// `"pad":[0,0,...,0]`: about `bytes` bytes of an array no client reads,
/// 2 bytes an element (as a `serde_json::Value`, 32 bytes an element).
fn pad(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    s.push_str("\"pad\":[0");
    while s.len() < bytes {
        s.push_str(",0");
    }
    s.push(']');
    s
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

#[test]
fn a_huge_ignored_array_in_a_range_answer_is_skipped_not_built() {
    let _turn = turn();
    let body = format!(
        r#"{{"header":{{"revision":"42"}},{},"kvs":[{{"key":"{}","value":"{}","mod_revision":"7","lease":"9"}}],"count":"1"}}"#,
        pad(8 << 20),
        b64("p/a"),
        b64("one")
    );
    let size = body.len();
    for framing in [Framing::Length, Framing::Close] {
        let fake = Fake::start("/v3/kv/range", body.clone().into_bytes(), framing);
        let client = fake.client();
        let (range, peak) = peak_of(|| client.range_prefix("p/"));
        let range = range.unwrap();
        assert_eq!(range.revision, 42);
        assert_eq!(range.kvs.len(), 1);
        assert_eq!((range.kvs[0].key.as_slice(), range.kvs[0].value.as_slice()), (&b"p/a"[..], &b"one"[..]));
        assert_eq!((range.kvs[0].mod_revision, range.kvs[0].lease), (7, 9));
        // Its bytes once (twice while a buffer without a length hint grows),
        // never an element per zero.
        let bound = match framing {
            Framing::Length => size + SLACK,
            Framing::Close => 2 * size + SLACK,
        };
        assert!(peak <= bound, "a {} answer peaked at {} (bound {})", mib(size), mib(peak), mib(bound));
    }
}

#[test]
fn a_lease_grant_answer_is_small_or_refused() {
    let _turn = turn();
    // Under the cap: granted, the array skipped.
    let body = format!(r#"{{"header":{{"revision":"1"}},"ID":"77","TTL":"30",{}}}"#, pad(MAX_ANSWER - 4096));
    let size = body.len();
    let fake = Fake::start("/v3/lease/grant", body.into_bytes(), Framing::Length);
    let client = fake.client();
    let (lease, peak) = peak_of(|| client.grant(Duration::from_secs(30)));
    let lease = lease.unwrap();
    assert_eq!((lease.id, lease.ttl), (77, Duration::from_secs(30)));
    assert!(peak <= size + SLACK, "a {} grant answer peaked at {}", mib(size), mib(peak));
    drop(fake);

    // Far over it: refused once the cap is read, without reading on.
    let body = format!(r#"{{"ID":"77","TTL":"30",{}}}"#, pad(16 << 20));
    let fake = Fake::start("/v3/lease/grant", body.into_bytes(), Framing::Close);
    let client = fake.client();
    let (lease, peak) = peak_of(|| client.grant(Duration::from_secs(30)));
    match lease {
        Err(Error::Etcd { what, .. }) => {
            assert!(what.contains(&format!("longer than {MAX_ANSWER} bytes")), "{what}")
        }
        other => panic!("{other:?}"),
    }
    assert!(peak <= MAX_ANSWER + SLACK, "a refused grant answer peaked at {}", mib(peak));
}

#[test]
fn a_huge_ignored_array_in_a_watch_line_is_skipped_not_built() {
    let _turn = turn();
    let line = format!(
        r#"{{"result":{{"header":{{"revision":"9"}},"created":true,{},"events":[{{"type":"PUT","kv":{{"key":"{}","value":"{}","mod_revision":"8"}}}}]}}}}"#,
        pad(8 << 20),
        b64("p/w"),
        b64("v")
    ) + "\n";
    let size = line.len();
    let fake = Fake::start("/v3/watch", line.into_bytes(), Framing::Close);
    let client = fake.client();
    let (batch, peak) = peak_of(|| {
        let mut watch = client.watch_prefix("p/", 0, Duration::from_secs(10)).unwrap();
        (watch.next_batch(), watch.next_revision())
    });
    let (batch, next) = batch;
    match batch.unwrap() {
        Some(WatchBatch::Events(events)) => {
            assert_eq!(events.len(), 1);
            assert!(matches!(&events[0], WatchEvent::Put(kv) if kv.key == b"p/w" && kv.value == b"v"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next, 9);
    // The line buffer grows by doubling up to the line: at most twice it.
    assert!(peak <= 2 * size + SLACK, "a {} watch line peaked at {}", mib(size), mib(peak));

    // A line over the cap is refused.
    let line = format!(r#"{{"result":{{{}}}}}"#, pad(MAX_WATCH_LINE + 1024)) + "\n";
    let fake = Fake::start("/v3/watch", line.into_bytes(), Framing::Close);
    let client = fake.client();
    let (batch, peak) =
        peak_of(|| client.watch_prefix("p/", 0, Duration::from_secs(10)).unwrap().next_batch());
    let err = batch.unwrap_err().to_string();
    assert!(err.contains(&format!("longer than {MAX_WATCH_LINE} bytes")), "{err}");
    assert!(peak <= MAX_WATCH_LINE + SLACK, "a refused watch line peaked at {}", mib(peak));
}

#[test]
fn deep_nesting_in_an_ignored_field_costs_at_most_the_answer_again() {
    let _turn = turn();
    // serde_json skips nested arrays with one byte of state per level (in a
    // buffer grown by doubling).
    let depth = 4 << 20;
    let body = format!(
        r#"{{"header":{{"revision":"3"}},"pad":{}{},"kvs":[]}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let size = body.len();
    let fake = Fake::start("/v3/kv/range", body.into_bytes(), Framing::Length);
    let client = fake.client();
    let (range, peak) = peak_of(|| client.range_prefix("p/"));
    assert_eq!(range.unwrap().revision, 3);
    assert!(peak <= size + 2 * depth + SLACK, "a {} answer peaked at {}", mib(size), mib(peak));
}

/// `{"key":"..."}` a key: the smallest a kept key can be.
fn tiny_kvs(n: usize) -> String {
    let key = b64("k");
    let mut s = String::from(r#"{"header":{"revision":"5"},"kvs":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r#"{"key":""#);
        s.push_str(&key);
        s.push_str(r#""}"#);
    }
    s.push_str("]}");
    s
}

#[test]
fn kept_keys_cost_what_they_hold_and_are_counted() {
    let _turn = turn();
    let n = 100_000;
    let body = tiny_kvs(n);
    let size = body.len();
    let fake = Fake::start("/v3/kv/range", body.into_bytes(), Framing::Length);
    let client = fake.client();
    let (range, peak) = peak_of(|| client.range_prefix("k"));
    let range = range.unwrap();
    assert_eq!(range.kvs.len(), n);
    // The answer, the list (grown by doubling) and a byte of key each.
    let kept = n.next_power_of_two() * std::mem::size_of::<heartbeat::etcd::KeyValue>() + n;
    assert!(peak <= size + kept + SLACK, "{n} keys in {} peaked at {}", mib(size), mib(peak));
    drop((range, fake));

    // One more than a range may hold: refused, not built.
    let body = tiny_kvs(MAX_RANGE_KEYS + 1);
    assert!(body.len() < MAX_RANGE_ANSWER);
    let fake = Fake::start("/v3/kv/range", body.into_bytes(), Framing::Length);
    let client = fake.client();
    let err = client.range_prefix("k").unwrap_err().to_string();
    assert!(err.contains(&format!("more than {MAX_RANGE_KEYS} keys")), "{err}");
}

#[test]
fn a_watch_line_holds_a_bounded_number_of_events() {
    let _turn = turn();
    let kv = format!(r#"{{"type":"DELETE","kv":{{"key":"{}","mod_revision":"4"}}}}"#, b64("k"));
    let events = vec![kv; MAX_WATCH_EVENTS + 1].join(",");
    let line = format!(r#"{{"result":{{"events":[{events}]}}}}"#) + "\n";
    assert!(line.len() < MAX_WATCH_LINE);
    let fake = Fake::start("/v3/watch", line.into_bytes(), Framing::Close);
    let client = fake.client();
    let err = client.watch_prefix("k", 0, Duration::from_secs(10)).unwrap().next_batch().unwrap_err();
    let err = err.to_string();
    assert!(err.contains(&format!("more than {MAX_WATCH_EVENTS} events")), "{err}");
}

#[test]
fn a_member_records_detail_is_checked_not_built() {
    let _turn = turn();
    // A session key whose record carries an array of zeros in its detail,
    // just under the member value limit.
    let owner = "h/1-u";
    let mut record = format!(
        r#"{{"kind":"session","id":"s","owner":"{owner}","state":"alive","since":"2024-01-01T00:00:00Z","detail":{{{}}}}}"#,
        pad(heartbeat::etcd::MAX_MEMBER_BYTES - 4096)
    );
    assert!(record.len() < heartbeat::etcd::MAX_MEMBER_BYTES);
    let value = B64.encode(std::mem::take(&mut record));
    let body = format!(
        r#"{{"header":{{"revision":"5"}},"kvs":[{{"key":"{}","value":"{value}","mod_revision":"4"}}]}}"#,
        b64(&format!("heartbeat/sessions/{owner}/s"))
    );
    let size = body.len();
    let fake = Fake::start("/v3/kv/range", body.into_bytes(), Framing::Length);
    let scanner = heartbeat::etcd::EtcdScanner::builder(fake.client()).build().unwrap();
    let (scan, peak) = peak_of(|| scanner.scan());
    let scan = scan.unwrap();
    assert_eq!(scan.entries.len(), 1, "{:?}", scan.ignored);
    // The answer, the value decoded, the HTTP client's buffers; not an
    // element per zero (32 bytes each, a MiB).
    let bound = size + size + (512 << 10);
    assert!(peak <= bound, "a {} KiB record peaked at {}", size >> 10, mib(peak));
}
