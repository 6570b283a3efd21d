//! A small synchronous client for etcd's v3 JSON gateway.

use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::wire;
use crate::error::{Error, Result};

/// How long one request may take unless told otherwise.
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// The most operations one transaction carries: etcd's own default limit
/// (`--max-txn-ops`, 128).
pub const MAX_TXN_OPS: usize = 128;

/// The largest answer of a call other than a range or a watch (grant,
/// keep-alive, revoke, put, txn, delete): a few hundred bytes from etcd; a
/// transaction's holds one small response per operation
/// ([`MAX_TXN_OPS`] at most).
pub const MAX_ANSWER: usize = 1 << 20;

/// The largest answer of [`Client::get`]: one key, whose value etcd bounds
/// at its request limit (`--max-request-bytes`, 1.5 MiB by default; 2 MiB
/// in base64).
pub const MAX_GET_ANSWER: usize = 4 << 20;

/// The largest answer of [`Client::range_prefix`] (and of
/// [`Client::lease_count`], which counts without keeping): a range over
/// many keys is the one answer etcd does not bound by its request limit.
pub const MAX_RANGE_ANSWER: usize = 64 << 20;

/// The most keys one range answer may hold (2^19); more is refused, not
/// built.
pub const MAX_RANGE_KEYS: usize = 1 << 19;

/// The longest line of a watch stream: one watch response, holding many
/// events. etcd bounds its own at about its request limit.
pub const MAX_WATCH_LINE: usize = 16 << 20;

/// The most events one watch line may hold (2^17); more is refused, not
/// built.
pub const MAX_WATCH_EVENTS: usize = 1 << 17;

/// One call of the gateway: where, and the largest answer it reads.
#[derive(Clone, Copy)]
struct Call {
    path: &'static str,
    limit: usize,
}

const GRANT: Call = Call { path: "/v3/lease/grant", limit: MAX_ANSWER };
const KEEPALIVE: Call = Call { path: "/v3/lease/keepalive", limit: MAX_ANSWER };
const REVOKE: Call = Call { path: "/v3/lease/revoke", limit: MAX_ANSWER };
const LEASES: Call = Call { path: "/v3/lease/leases", limit: MAX_RANGE_ANSWER };
const PUT: Call = Call { path: "/v3/kv/put", limit: MAX_ANSWER };
const TXN: Call = Call { path: "/v3/kv/txn", limit: MAX_ANSWER };
const RANGE: Call = Call { path: "/v3/kv/range", limit: MAX_RANGE_ANSWER };
const GET: Call = Call { path: "/v3/kv/range", limit: MAX_GET_ANSWER };
const DELETE: Call = Call { path: "/v3/kv/deleterange", limit: MAX_ANSWER };

/// The room a watch stream's line buffer keeps between lines; a longer
/// line's buffer is let go after it.
const KEEP_LINE: usize = 64 << 10;

/// A lease etcd granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease id.
    pub id: i64,
    /// The TTL etcd granted (it may raise a too-short request to its minimum).
    pub ttl: Duration,
}

/// A key and its value, as a range or a watch returned them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in a delete event).
    pub value: Vec<u8>,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The lease it is attached to, 0 for none.
    pub lease: i64,
}

impl KeyValue {
    /// The key as text (lossy).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}

/// What a range returned: the keys, and the store's revision when it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// The store's revision at the read.
    pub revision: i64,
}

/// One change in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put `key` = `value`, attached to `lease` (0 for none).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease, 0 for none.
        lease: i64,
    },
    /// Delete `key`.
    Delete {
        /// The key.
        key: String,
    },
}

/// One change a watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written (created or changed).
    Put(KeyValue),
    /// A key was deleted, or its lease expired or was revoked.
    Delete(KeyValue),
}

/// A blocking client for etcd's v3 JSON gateway (`POST /v3/...`), over one
/// or more endpoints.
///
/// Every request has a timeout ([`DEFAULT_ETCD_TIMEOUT`] unless
/// [`with_timeout`](Self::with_timeout) says otherwise). A request that
/// cannot reach an endpoint (refused, timed out, reset) is tried on the next
/// one, once around the list; the endpoint that answered becomes the first
/// one tried next time. An answer from etcd that is an error is not retried
/// elsewhere: it is returned, naming the endpoint and what etcd said.
///
/// Plain `http://` only: this build has no TLS. No proxy is used and
/// redirects are not followed. Cloning gives another handle on the same
/// endpoints.
///
/// # Memory
/// Every answer is bounded in bytes, by a limit L that fits its call:
/// [`MAX_ANSWER`] (1 MiB) for a grant, keep-alive, revoke, put, txn or
/// delete, [`MAX_GET_ANSWER`] (4 MiB) for [`get`](Self::get),
/// [`MAX_RANGE_ANSWER`] (64 MiB) for [`range_prefix`](Self::range_prefix)
/// and [`lease_count`](Self::lease_count), [`MAX_WATCH_LINE`] (16 MiB) for
/// one line of a watch. A longer answer is refused once L bytes are read.
/// It is parsed into types holding only the fields read (any other is
/// skipped with serde's `IgnoredAny`, never built), keys and values are
/// decoded from base64 as they are read, and lists are capped:
/// [`MAX_RANGE_KEYS`] keys a range, [`MAX_WATCH_EVENTS`] events a watch
/// line. One answer costs at most
///
/// **4 × L + K × s**: its bytes (L), serde_json's scratch buffer (under
/// 2 × L: a string with escapes, or the nesting of a skipped value, one
/// byte a level), what is kept (at most L) and its list (K elements of s
/// bytes: 64 a key, 72 a watch event), plus the HTTP client's buffers
/// (about 128 KiB):
///
/// | call | worst case |
/// |---|---|
/// | grant, keep-alive, revoke, put, txn, delete | 4 × 1 MiB = 4 MiB |
/// | get | 4 × 4 MiB = 16 MiB |
/// | range | 4 × 64 MiB + 2^19 × 64 B = 288 MiB |
/// | one watch line | 4 × 16 MiB + 2^17 × 72 B = 73 MiB |
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<[String]>,
    /// The endpoint to try first.
    current: Arc<AtomicUsize>,
    agent: ureq::Agent,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A failure that another endpoint may not have.
enum Failure {
    /// Could not talk to this endpoint: try the next.
    Unreachable(String),
    /// The endpoint answered, with an error.
    Answered(String),
}

impl Client {
    /// A client for `endpoints` (`http://host:port`, at least one), with the
    /// default timeout.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Client> {
        Self::with_timeout(endpoints, DEFAULT_ETCD_TIMEOUT)
    }

    /// A client whose every request takes at most `timeout` per endpoint tried.
    pub fn with_timeout<S: AsRef<str>>(endpoints: &[S], timeout: Duration) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::InvalidConfig("etcd: at least one endpoint is needed".into()));
        }
        if timeout.is_zero() {
            return Err(Error::InvalidConfig("etcd: the request timeout must be above zero".into()));
        }
        let endpoints = endpoints.iter().map(|e| check_endpoint(e.as_ref())).collect::<Result<Vec<_>>>()?;
        Ok(Client {
            endpoints: endpoints.into(),
            current: Arc::new(AtomicUsize::new(0)),
            agent: agent(Some(timeout), None),
            timeout,
        })
    }

    /// Parses a comma-separated endpoint list, as `--etcd` takes it.
    pub fn from_list(list: &str) -> Result<Client> {
        let endpoints: Vec<&str> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        Self::new(&endpoints)
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub fn grant(&self, ttl: Duration) -> Result<Lease> {
        let secs = ttl.as_secs().max(1);
        self.call(GRANT, &json!({ "TTL": secs.to_string() }), |a: wire::Grant| {
            let id = a.id.0.filter(|id| *id != 0)?;
            let granted = a.ttl.0.filter(|ttl| *ttl > 0)?;
            Some(Lease { id, ttl: Duration::from_secs(granted as u64) })
        })
    }

    /// Keeps `lease` alive once. `Ok(None)` when etcd no longer has it
    /// (expired or revoked): whatever was attached to it is gone.
    pub fn keepalive(&self, lease: i64) -> Result<Option<Duration>> {
        self.call(KEEPALIVE, &json!({ "ID": lease.to_string() }), |a: wire::Keepalive| {
            // The gateway streams: the answer is `{"result": {...}}`.
            let ttl = match a.result {
                Some(result) => result.0.and_then(|r| r.ttl.0),
                None => a.ttl.0,
            };
            Some(ttl.filter(|ttl| *ttl > 0).map(|ttl| Duration::from_secs(ttl as u64)))
        })
    }

    /// Revokes `lease`: every key attached to it is deleted at once. A lease
    /// etcd does not have (expired already) is not an error.
    pub fn revoke(&self, lease: i64) -> Result<()> {
        match self.call(REVOKE, &json!({ "ID": lease.to_string() }), |_: wire::Revision| Some(())) {
            Err(Error::Etcd { what, .. }) if what.contains("lease not found") => Ok(()),
            other => other,
        }
    }

    /// How many leases etcd holds (`/v3/lease/leases`), counted as the
    /// answer is read (none is kept).
    pub fn lease_count(&self) -> Result<usize> {
        self.call(LEASES, &json!({}), |a: wire::Leases| Some(a.leases.0))
    }

    /// Puts `key` = `value`, attached to `lease` (0 for none). Returns the
    /// store's revision after the write.
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if lease != 0 {
            body["lease"] = Value::from(lease.to_string());
        }
        self.call(PUT, &body, |a: wire::Revision| Some(wire::revision_of(&a.header)))
    }

    /// Applies `ops` in one transaction (at most [`MAX_TXN_OPS`]; etcd
    /// refuses more, and two ops on one key). Returns the revision after.
    pub fn txn(&self, ops: &[Op]) -> Result<i64> {
        if ops.len() > MAX_TXN_OPS {
            return Err(Error::InvalidConfig(format!(
                "etcd: {} operations in one transaction, more than {MAX_TXN_OPS}",
                ops.len()
            )));
        }
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
                    if *lease != 0 {
                        put["lease"] = Value::from(lease.to_string());
                    }
                    json!({ "request_put": put })
                }
                Op::Delete { key } => json!({ "request_delete_range": { "key": B64.encode(key) } }),
            })
            .collect();
        self.call(TXN, &json!({ "success": success }), |a: wire::Revision| Some(wire::revision_of(&a.header)))
    }

    /// Every key starting with `prefix`, in key order.
    ///
    /// The answer is bounded in bytes ([`MAX_RANGE_ANSWER`]) and in keys
    /// ([`MAX_RANGE_KEYS`]); past either it is refused. At most
    /// 4 × [`MAX_RANGE_ANSWER`] + 64 B × [`MAX_RANGE_KEYS`] (288 MiB) of
    /// memory while it is read (see [`Client`], "Memory"); an answer of `n`
    /// bytes costs about `n` plus what its keys hold.
    pub fn range_prefix(&self, prefix: &str) -> Result<Range> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes())) });
        self.call(RANGE, &body, |a: wire::RangeAnswer| {
            if a.kvs.bad {
                return None;
            }
            Some(Range { kvs: a.kvs.items, revision: wire::revision_of(&a.header) })
        })
    }

    /// One key, if it exists (an answer of at most [`MAX_GET_ANSWER`] bytes).
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.call(GET, &json!({ "key": B64.encode(key) }), |a: wire::RangeAnswer| {
            if a.kvs.bad {
                return None;
            }
            Some(a.kvs.items.into_iter().next())
        })
    }

    /// Deletes `key`; returns how many keys went (0 or 1).
    pub fn delete(&self, key: &str) -> Result<u64> {
        self.call(DELETE, &json!({ "key": B64.encode(key) }), deleted)
    }

    /// Deletes every key starting with `prefix`; returns how many went.
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes())) });
        self.call(DELETE, &body, deleted)
    }

    /// Opens a watch on every key starting with `prefix`, from
    /// `start_revision` (0: from now). The stream is read on the calling
    /// thread with [`WatchStream::next_batch`]; a stream that shows nothing for
    /// `idle` ends (`Ok(None)`) so that its reader can look at a stop flag
    /// and open a new one from [`WatchStream::next_revision`]: nothing is
    /// missed in between.
    pub fn watch_prefix(&self, prefix: &str, start_revision: i64, idle: Duration) -> Result<WatchStream> {
        let mut create = json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix.as_bytes())),
        });
        if start_revision > 0 {
            create["start_revision"] = Value::from(start_revision.to_string());
        }
        let body = json!({ "create_request": create }).to_string();
        // A watch stays open: no overall timeout, but connecting and the
        // answer's head are bounded, and so is each silence.
        let agent = agent(None, Some(idle));
        let mut last = String::new();
        for endpoint in self.rotation() {
            let url = format!("{endpoint}/v3/watch");
            let request = agent
                .post(&url)
                .config()
                .timeout_connect(Some(self.timeout))
                .timeout_recv_response(Some(self.timeout))
                .build()
                .content_type("application/json");
            match request.send(&body) {
                Ok(response) if response.status().is_success() => {
                    self.settle(&endpoint);
                    let reader = BufReader::new(response.into_body().into_reader());
                    return Ok(WatchStream {
                        endpoint,
                        reader,
                        next_revision: start_revision,
                        line: Vec::new(),
                        created: false,
                    });
                }
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let mut text = Vec::new();
                    let mut reader = BufReader::new(response.body_mut().as_reader());
                    let what = match read_bounded(&mut reader, &mut text, 64 << 10, false) {
                        Ok(true) => message(&text),
                        Ok(false) => "an answer longer than 65536 bytes".into(),
                        Err(e) => format!("reading the answer: {e}"),
                    };
                    return Err(Error::Etcd { endpoint, what: format!("/v3/watch: HTTP {status}: {what}") });
                }
                Err(e) => last = format!("{endpoint}: {e}"),
            }
        }
        Err(self.unreachable(last))
    }

    /// Posts `request` to `call`'s path on the current endpoint (failing
    /// over to the others when it cannot be reached), parses the answer
    /// into `A` and makes the result of it with `output`; `None` from
    /// `output` is an answer without what the call needs.
    fn call<A: wire::Answer, T>(
        &self,
        call: Call,
        request: &Value,
        output: impl FnOnce(A) -> Option<T>,
    ) -> Result<T> {
        let request = request.to_string();
        let mut last = String::new();
        for endpoint in self.rotation() {
            match self.post(&endpoint, call, &request) {
                Ok(answer) => {
                    self.settle(&endpoint);
                    let what = |what: String| Error::Etcd {
                        endpoint: endpoint.clone(),
                        what: format!("{}: {what}", call.path),
                    };
                    let mut parsed: A = wire::first(&answer).map_err(what)?;
                    if let Some(complaint) = parsed.complaint() {
                        return Err(what(complaint.text()));
                    }
                    return output(parsed).ok_or_else(|| {
                        what(format!("an answer without what it needs: {}", wire::cut_bytes(&answer)))
                    });
                }
                Err(Failure::Answered(what)) => {
                    return Err(Error::Etcd { endpoint, what: format!("{}: {what}", call.path) });
                }
                Err(Failure::Unreachable(what)) => {
                    log::debug!("etcd {endpoint}{}: {what}", call.path);
                    last = format!("{endpoint}: {what}");
                }
            }
        }
        Err(self.unreachable(last))
    }

    fn unreachable(&self, last: String) -> Error {
        let endpoint = self.endpoints.join(",");
        let what = if self.endpoints.len() == 1 {
            last.split_once(": ").map_or(last.clone(), |(_, w)| w.to_owned())
        } else {
            format!("no endpoint answered (last: {last})")
        };
        Error::Etcd { endpoint, what }
    }

    /// The answer's bytes (at most `call.limit`), if it is a success.
    fn post(&self, endpoint: &str, call: Call, body: &str) -> std::result::Result<Vec<u8>, Failure> {
        let url = format!("{endpoint}{}", call.path);
        let mut response = match self.agent.post(&url).content_type("application/json").send(body) {
            Ok(r) => r,
            Err(e) => return Err(Failure::Unreachable(e.to_string())),
        };
        let status = response.status().as_u16();
        // A length given up front is room made once, never past the limit.
        let hint = response.body().content_length().unwrap_or(0).min(call.limit as u64) as usize;
        let mut answer = Vec::with_capacity(hint);
        let mut reader = BufReader::new(response.body_mut().as_reader());
        match read_bounded(&mut reader, &mut answer, call.limit, false) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Failure::Unreachable(format!(
                    "{}: an answer longer than {} bytes",
                    call.path, call.limit
                )));
            }
            Err(e) => return Err(Failure::Unreachable(format!("{}: reading the answer: {e}", call.path))),
        }
        if !(200..300).contains(&status) {
            return Err(Failure::Answered(format!("HTTP {status}: {}", message(&answer))));
        }
        Ok(answer)
    }

    /// The endpoints, the current one first.
    fn rotation(&self) -> impl Iterator<Item = String> + '_ {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |k| self.endpoints[(first + k) % n].clone())
    }

    fn settle(&self, endpoint: &str) {
        if let Some(i) = self.endpoints.iter().position(|e| e == endpoint) {
            self.current.store(i, Ordering::Relaxed);
        }
    }
}

fn deleted(a: wire::Deleted) -> Option<u64> {
    Some(a.deleted.0.unwrap_or(0).max(0) as u64)
}

/// Reads `reader` into `buf` to the end (or through the first `\n` when
/// `line`); `Ok(false)` as soon as that would take more than `limit`
/// bytes. The buffer grows by doubling but never past `limit`: it never
/// holds room for more than `limit` bytes.
fn read_bounded(reader: &mut impl BufRead, buf: &mut Vec<u8>, limit: usize, line: bool) -> io::Result<bool> {
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(true);
        }
        let newline = if line { chunk.iter().position(|&b| b == b'\n') } else { None };
        let take = newline.map_or(chunk.len(), |i| i + 1);
        if buf.len() + take > limit {
            return Ok(false);
        }
        if buf.capacity() - buf.len() < take {
            let room = (buf.len() + take).max(buf.capacity() * 2).max(8 << 10).min(limit);
            buf.reserve_exact(room - buf.len());
        }
        buf.extend_from_slice(&chunk[..take]);
        reader.consume(take);
        if newline.is_some() {
            return Ok(true);
        }
    }
}

/// An open watch: one streamed answer of the gateway, read line by line.
pub struct WatchStream {
    endpoint: String,
    reader: BufReader<ureq::BodyReader<'static>>,
    next_revision: i64,
    line: Vec<u8>,
    created: bool,
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream")
            .field("endpoint", &self.endpoint)
            .field("next_revision", &self.next_revision)
            .finish_non_exhaustive()
    }
}

/// What one read of a watch stream gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes, in revision order (possibly none: a progress report).
    Events(Vec<WatchEvent>),
    /// The revision asked for was compacted away: read the keys again
    /// ([`Client::range_prefix`]) and watch from that range's revision + 1.
    Compacted {
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
}

impl WatchStream {
    /// The next batch of events; `Ok(None)` when the stream ended or stayed
    /// silent for its idle time (open a new one from
    /// [`next_revision`](Self::next_revision)).
    pub fn next_batch(&mut self) -> Result<Option<WatchBatch>> {
        loop {
            self.line.clear();
            if self.line.capacity() > KEEP_LINE {
                self.line = Vec::new();
            }
            match read_bounded(&mut self.reader, &mut self.line, MAX_WATCH_LINE, true) {
                Ok(true) if self.line.is_empty() => return Ok(None),
                Ok(true) => {}
                Ok(false) => {
                    return Err(self.error(format!("a watch answer longer than {MAX_WATCH_LINE} bytes")));
                }
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) => return Err(self.error(format!("reading the watch: {e}"))),
            }
            let text = self.line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let line: wire::WatchLine =
                wire::first(text).map_err(|e| self.error(format!("a watch line: {e}")))?;
            if let Some(complaint) = line.error {
                return Err(self.error(complaint.text()));
            }
            let result = match line.result {
                Some(result) => result.0.unwrap_or_default(),
                // Not wrapped in `result`: the line is the response itself.
                None => wire::first(text).map_err(|e| self.error(format!("a watch line: {e}")))?,
            };
            let compact = result.compact_revision.0.unwrap_or(0);
            if compact > 0 {
                return Ok(Some(WatchBatch::Compacted { compact_revision: compact }));
            }
            if result.canceled.0 == Some(true) {
                let why = result.cancel_reason.0.as_deref().unwrap_or("no reason given");
                return Err(self.error(format!("the watch was canceled: {}", crate::json::cut(why, 200))));
            }
            if result.created.0 == Some(true) {
                self.created = true;
            }
            let header_revision = wire::revision_of(&result.header);
            if result.events.bad {
                return Err(self.error("an event without a key".into()));
            }
            let events = result.events.items;
            for event in &events {
                let (WatchEvent::Put(kv) | WatchEvent::Delete(kv)) = event;
                self.next_revision = self.next_revision.max(kv.mod_revision + 1);
            }
            if events.is_empty() && self.next_revision == 0 && header_revision > 0 {
                // Watching "from now": start the next stream after what this one saw.
                self.next_revision = header_revision + 1;
            }
            return Ok(Some(WatchBatch::Events(events)));
        }
    }

    /// The revision to open the next stream from so that nothing is missed
    /// or seen twice (0 if the stream told nothing yet).
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// The endpoint this stream reads.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn error(&self, what: String) -> Error {
        Error::Etcd { endpoint: self.endpoint.clone(), what }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
        || e.to_string().to_ascii_lowercase().contains("timeout")
}

fn agent(global: Option<Duration>, per_read: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(global)
        .timeout_per_read(per_read)
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("heartbeat/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// `url` without a trailing `/`, if it is a plain `http://host:port`.
fn check_endpoint(url: &str) -> Result<String> {
    let bad = |why: &str| Err(Error::InvalidConfig(format!("etcd endpoint {url:?}: {why}")));
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return bad("https is not supported (this build has no TLS): use http://");
        }
        return bad("must start with http://");
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return bad("must be http://host:port, without a path");
    }
    if url.bytes().any(|b| !b.is_ascii_graphic() || matches!(b, b'?' | b'#' | b'@')) {
        return bad("must be printable ASCII without spaces, user, query or fragment");
    }
    if url.parse::<ureq::http::Uri>().is_err() {
        return bad("is not a valid URL");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // all keys
}

/// etcd's message out of an error answer, else the answer cut short.
fn message(answer: &[u8]) -> String {
    match wire::first::<wire::Complaint>(answer) {
        Ok(complaint) => complaint.text(),
        Err(_) => wire::cut_bytes(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_host_port() {
        let c = Client::from_list("http://127.0.0.1:2379/, http://10.0.0.2:2379").unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]);
        let err = Client::new(&["https://x:2379"]).unwrap_err().to_string();
        assert!(err.contains("https is not supported"), "{err}");
        for bad in ["", "x:2379", "http://", "http://x/v3", "http://a b", "http://u@x:1", "http://x/?q"] {
            assert!(matches!(Client::new(&[bad]), Err(Error::InvalidConfig(_))), "{bad:?} accepted");
        }
        assert!(Client::from_list(" , ").is_err());
        assert!(Client::with_timeout(&["http://x:1"], Duration::ZERO).is_err());
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn gateway_fields_parse() {
        let kv = |text: &str| wire::first::<wire::RawKv>(text.as_bytes()).unwrap().into_key_value();
        let one = format!(
            r#"{{"key":"{}","value":"{}","mod_revision":"7","lease":"12"}}"#,
            B64.encode("k"),
            B64.encode("v")
        );
        let one = kv(&one).unwrap();
        assert_eq!(
            (one.key_str().as_ref(), one.value.as_slice(), one.mod_revision, one.lease),
            ("k", &b"v"[..], 7, 12)
        );
        // A deleted key in a watch has no value.
        let gone = kv(&format!(r#"{{"key":"{}","mod_revision":9}}"#, B64.encode("k"))).unwrap();
        assert!(gone.value.is_empty());
        assert_eq!(gone.mod_revision, 9);
        assert!(kv(r#"{"key":"not base64!"}"#).is_none());
        assert!(kv(r#"{"key":"aw==","value":"not base64!"}"#).is_none());
        assert!(kv(r#"{"value":"aw=="}"#).is_none());
        assert_eq!(
            message(br#"{"error":"etcdserver: requested lease not found","code":5}"#),
            "etcdserver: requested lease not found"
        );
        assert_eq!(message(br#"{"code":3,"message":"bad key"}"#), "bad key");
        assert_eq!(message(b"<html>gone</html>"), "<html>gone</html>");
    }

    #[test]
    fn reads_stop_at_the_limit_with_room_for_no_more() {
        let mut buf = Vec::new();
        let mut input = &b"0123456789"[..];
        assert!(read_bounded(&mut input, &mut buf, 10, false).unwrap());
        assert_eq!((buf.as_slice(), buf.capacity()), (&b"0123456789"[..], 10));
        let mut buf = Vec::new();
        let mut input = &b"0123456789x"[..];
        assert!(!read_bounded(&mut input, &mut buf, 10, false).unwrap());
        assert!(buf.capacity() <= 10);
        // A line: through its newline, the rest left for the next.
        let mut buf = Vec::new();
        let mut input = &b"ab\ncd"[..];
        assert!(read_bounded(&mut input, &mut buf, 3, true).unwrap());
        assert_eq!(buf, b"ab\n");
        buf.clear();
        assert!(read_bounded(&mut input, &mut buf, 3, true).unwrap());
        assert_eq!(buf, b"cd");
        let mut input = &b"abcd\n"[..];
        buf.clear();
        assert!(!read_bounded(&mut input, &mut buf, 4, true).unwrap());
    }

    #[test]
    fn an_unreachable_endpoint_is_named() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let c = Client::with_timeout(&[url.as_str()], Duration::from_secs(2)).unwrap();
        match c.put("k", b"v", 0) {
            Err(Error::Etcd { endpoint, what }) => {
                assert_eq!(endpoint, url);
                assert!(!what.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}
