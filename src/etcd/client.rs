//! A small synchronous client for etcd's v3 JSON gateway.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// How long one request may take unless told otherwise.
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// The most operations one transaction carries: etcd's own default limit
/// (`--max-txn-ops`, 128).
pub const MAX_TXN_OPS: usize = 128;

/// The largest answer read into memory (etcd's default request limit is
/// 1.5 MiB; a range over many keys can be larger, up to this).
const MAX_ANSWER: u64 = 64 << 20;

/// The longest line of a watch stream: one watch response, holding many
/// events. etcd bounds its own at about its request limit.
const MAX_WATCH_LINE: usize = 16 << 20;

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
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": secs.to_string() }))?;
        let id = int(&answer, "ID").filter(|id| *id != 0);
        let granted = int(&answer, "TTL").unwrap_or(0);
        match id {
            Some(id) if granted > 0 => Ok(Lease { id, ttl: Duration::from_secs(granted as u64) }),
            _ => Err(self.odd("/v3/lease/grant", &answer)),
        }
    }

    /// Keeps `lease` alive once. `Ok(None)` when etcd no longer has it
    /// (expired or revoked): whatever was attached to it is gone.
    pub fn keepalive(&self, lease: i64) -> Result<Option<Duration>> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        // The gateway streams: the answer is `{"result": {...}}`.
        let result = answer.get("result").unwrap_or(&answer);
        match int(result, "TTL").unwrap_or(0) {
            ttl if ttl > 0 => Ok(Some(Duration::from_secs(ttl as u64))),
            _ => Ok(None),
        }
    }

    /// Revokes `lease`: every key attached to it is deleted at once. A lease
    /// etcd does not have (expired already) is not an error.
    pub fn revoke(&self, lease: i64) -> Result<()> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            Err(Error::Etcd { what, .. }) if what.contains("lease not found") => Ok(()),
            other => other.map(drop),
        }
    }

    /// How many leases etcd holds (`/v3/lease/leases`).
    pub fn lease_count(&self) -> Result<usize> {
        let answer = self.call("/v3/lease/leases", &json!({}))?;
        Ok(answer.get("leases").and_then(Value::as_array).map_or(0, Vec::len))
    }

    /// Puts `key` = `value`, attached to `lease` (0 for none). Returns the
    /// store's revision after the write.
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if lease != 0 {
            body["lease"] = Value::from(lease.to_string());
        }
        let answer = self.call("/v3/kv/put", &body)?;
        Ok(revision(&answer))
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
        let answer = self.call("/v3/kv/txn", &json!({ "success": success }))?;
        Ok(revision(&answer))
    }

    /// Every key starting with `prefix`, in key order.
    pub fn range_prefix(&self, prefix: &str) -> Result<Range> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes())) });
        let answer = self.call("/v3/kv/range", &body)?;
        let kvs = answer.get("kvs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let kvs = kvs.iter().map(key_value).collect::<Option<Vec<_>>>();
        match kvs {
            Some(kvs) => Ok(Range { kvs, revision: revision(&answer) }),
            None => Err(self.odd("/v3/kv/range", &answer)),
        }
    }

    /// One key, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let answer = self.call("/v3/kv/range", &json!({ "key": B64.encode(key) }))?;
        let first = answer.get("kvs").and_then(Value::as_array).and_then(|kvs| kvs.first());
        match first {
            None => Ok(None),
            Some(kv) => key_value(kv).map(Some).ok_or_else(|| self.odd("/v3/kv/range", &answer)),
        }
    }

    /// Deletes `key`; returns how many keys went (0 or 1).
    pub fn delete(&self, key: &str) -> Result<u64> {
        let answer = self.call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))?;
        Ok(int(&answer, "deleted").unwrap_or(0) as u64)
    }

    /// Deletes every key starting with `prefix`; returns how many went.
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes())) });
        let answer = self.call("/v3/kv/deleterange", &body)?;
        Ok(int(&answer, "deleted").unwrap_or(0) as u64)
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
                    let text = response
                        .body_mut()
                        .with_config()
                        .limit(64 << 10)
                        .read_to_string()
                        .unwrap_or_default();
                    return Err(Error::Etcd { endpoint, what: format!("HTTP {status}: {}", message(&text)) });
                }
                Err(e) => last = format!("{endpoint}: {e}"),
            }
        }
        Err(self.unreachable(last))
    }

    /// Posts `body` to `path` on the current endpoint, failing over to the
    /// others when it cannot be reached.
    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let body = body.to_string();
        let mut last = String::new();
        for endpoint in self.rotation() {
            match self.post(&endpoint, path, &body) {
                Ok(answer) => {
                    self.settle(&endpoint);
                    return Ok(answer);
                }
                Err(Failure::Answered(what)) => return Err(Error::Etcd { endpoint, what }),
                Err(Failure::Unreachable(what)) => {
                    log::debug!("etcd {endpoint}{path}: {what}");
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

    fn post(&self, endpoint: &str, path: &str, body: &str) -> std::result::Result<Value, Failure> {
        let url = format!("{endpoint}{path}");
        let mut response = match self.agent.post(&url).content_type("application/json").send(body) {
            Ok(r) => r,
            Err(e) => return Err(Failure::Unreachable(e.to_string())),
        };
        let status = response.status().as_u16();
        let text = match response.body_mut().with_config().limit(MAX_ANSWER).read_to_string() {
            Ok(t) => t,
            Err(e) => return Err(Failure::Unreachable(format!("reading the answer: {e}"))),
        };
        if !(200..300).contains(&status) {
            return Err(Failure::Answered(format!("HTTP {status}: {}", message(&text))));
        }
        // The gateway's streaming calls answer one JSON object per line.
        let first = text.lines().next().unwrap_or_default();
        let value: Value = serde_json::from_str(first)
            .map_err(|e| Failure::Answered(format!("an answer that is not JSON ({e}): {}", cut(&text))))?;
        if let Some(error) = value.get("error") {
            return Err(Failure::Answered(message_of(error)));
        }
        Ok(value)
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

    fn odd(&self, path: &str, answer: &Value) -> Error {
        let endpoint = self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()].clone();
        Error::Etcd {
            endpoint,
            what: format!("{path}: an answer without what it needs: {}", cut(&answer.to_string())),
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
            let read = (&mut self.reader).take(MAX_WATCH_LINE as u64 + 1).read_until(b'\n', &mut self.line);
            match read {
                Ok(0) => return Ok(None),
                Ok(_) if self.line.len() > MAX_WATCH_LINE => {
                    return Err(self.error(format!("a watch answer longer than {MAX_WATCH_LINE} bytes")));
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) => return Err(self.error(format!("reading the watch: {e}"))),
            }
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(text)
                .map_err(|e| self.error(format!("a watch line that is not JSON: {e}")))?;
            if let Some(error) = value.get("error") {
                return Err(self.error(message_of(error)));
            }
            let result = value.get("result").unwrap_or(&value);
            let compact = int(result, "compact_revision").unwrap_or(0);
            if compact > 0 {
                return Ok(Some(WatchBatch::Compacted { compact_revision: compact }));
            }
            if result.get("canceled").and_then(Value::as_bool) == Some(true) {
                let why = result.get("cancel_reason").and_then(Value::as_str).unwrap_or("no reason given");
                return Err(self.error(format!("the watch was canceled: {why}")));
            }
            if result.get("created").and_then(Value::as_bool) == Some(true) {
                self.created = true;
            }
            let header_revision = result.get("header").map(revision_of).unwrap_or(0);
            let raw = result.get("events").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let mut events = Vec::with_capacity(raw.len());
            for event in raw {
                let kv = event
                    .get("kv")
                    .and_then(key_value)
                    .ok_or_else(|| self.error("an event without a key".into()))?;
                self.next_revision = self.next_revision.max(kv.mod_revision + 1);
                if event.get("type").and_then(Value::as_str) == Some("DELETE") {
                    events.push(WatchEvent::Delete(kv));
                } else {
                    events.push(WatchEvent::Put(kv));
                }
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

/// A 64-bit field, which the gateway writes as a string (or a number).
fn int(v: &Value, field: &str) -> Option<i64> {
    match v.get(field)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn revision_of(header: &Value) -> i64 {
    int(header, "revision").unwrap_or(0)
}

fn revision(answer: &Value) -> i64 {
    answer.get("header").map(revision_of).unwrap_or(0)
}

fn key_value(kv: &Value) -> Option<KeyValue> {
    #[derive(Deserialize)]
    struct Raw {
        key: String,
        #[serde(default)]
        value: String,
    }
    let raw = Raw::deserialize(kv).ok()?;
    Some(KeyValue {
        key: B64.decode(raw.key).ok()?,
        value: B64.decode(raw.value).ok()?,
        mod_revision: int(kv, "mod_revision").unwrap_or(0),
        lease: int(kv, "lease").unwrap_or(0),
    })
}

/// etcd's message out of an error answer, else the answer cut short.
fn message(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => message_of(v.get("error").unwrap_or(&v)),
        Err(_) => cut(text),
    }
}

fn message_of(error: &Value) -> String {
    error
        .get("message")
        .or_else(|| error.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| error.as_str().map(str::to_owned))
        .unwrap_or_else(|| cut(&error.to_string()))
}

fn cut(text: &str) -> String {
    crate::json::cut(text.trim(), 200)
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
        let kv =
            json!({"key": B64.encode("k"), "value": B64.encode("v"), "mod_revision": "7", "lease": "12"});
        let kv = key_value(&kv).unwrap();
        assert_eq!(
            (kv.key_str().as_ref(), kv.value.as_slice(), kv.mod_revision, kv.lease),
            ("k", &b"v"[..], 7, 12)
        );
        // A deleted key in a watch has no value.
        let gone = key_value(&json!({"key": B64.encode("k"), "mod_revision": "9"})).unwrap();
        assert!(gone.value.is_empty());
        assert!(key_value(&json!({"key": "not base64!"})).is_none());
        assert_eq!(int(&json!({"TTL": 5}), "TTL"), Some(5));
        assert_eq!(
            message(r#"{"error":"etcdserver: requested lease not found","code":5}"#),
            "etcdserver: requested lease not found"
        );
        assert_eq!(message(r#"{"code":3,"message":"bad key"}"#), "bad key");
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
