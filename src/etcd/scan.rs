//! Reading presence back: the [`EtcdScanner`] judges what publishers keep
//! in etcd with the local scanner's verdicts, once or as a live watch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, select};
use parking_lot::Mutex;

use super::client::{Client, KeyValue, WatchBatch, WatchEvent};
use super::{ALIVE, DEFAULT_PREFIX, check_prefix};
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::lograte::{LogLimit, log_limit};
use crate::scanner::{DEFAULT_STALE_AFTER, ScanStatus};
use crate::state::{HeartbeatState, MAX_STATE_BYTES, beat_age, parse_timestamp};

/// The largest value of a `sessions/...` or `peers/...` key that is read;
/// a larger one is ignored (with why). A member record is a few hundred
/// bytes. Process keys are bounded by [`MAX_STATE_BYTES`](crate::MAX_STATE_BYTES),
/// as heartbeat files are.
pub const MAX_MEMBER_BYTES: usize = 64 << 10;

/// How many events an [`EtcdWatch`] holds for its reader unless told otherwise.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How long a watch stream may stay silent before it is opened again (from
/// the revision it reached), and so the longest [`EtcdWatch::stop`] waits
/// for a read in progress.
const WATCH_IDLE: Duration = Duration::from_secs(1);

/// How long opening a watch stream may take: short, so that a stop is not
/// held up by an endpoint that does not answer.
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a watch judges every key again, so that ages move on between
/// writes (a process whose beats stopped while its lease lives turns STALE).
const REJUDGE_EVERY: Duration = Duration::from_secs(1);

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// `hosts/<host>/<pid>-<uuid>`: a process's own heartbeat.
    Process,
    /// `sessions/<host>/<pid>-<uuid>/<session>`: a monitor's session.
    Session,
    /// `peers/<host>/<pid>-<uuid>/<nick>`: a hub's peer.
    Peer,
}

impl EntryKind {
    /// `process`, `session` or `peer`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Process => "process",
            EntryKind::Session => "session",
            EntryKind::Peer => "peer",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One published key, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEntry {
    /// The whole key, prefix included.
    pub key: String,
    /// What it stands for.
    pub kind: EntryKind,
    /// The publisher's host (from the key).
    pub host: String,
    /// The publisher's process id (from the key).
    pub pid: u32,
    /// The publisher's run id (from the key).
    pub uuid: String,
    /// The session id or the peer's nick; `None` for a process.
    pub id: Option<String>,
    /// The publisher, `<host>/<pid>-<uuid>`.
    pub owner: String,
    /// A session's or peer's state word ([`ALIVE`](super::ALIVE) when
    /// healthy); `None` for a process.
    pub state: Option<String>,
    /// The last beat: a process's own; for a session or peer, its owner's
    /// (`None` when the owner has no process key).
    pub last_beat: Option<SystemTime>,
    /// When a session or peer entered its state; `None` for a process.
    pub since: Option<SystemTime>,
    /// How long ago `last_beat` was; `None` when there is none or it lies in
    /// the future beyond [`SKEW_TOLERANCE`](crate::SKEW_TOLERANCE).
    pub age: Option<Duration>,
    /// The verdict: FRESH, STALE or SKEWED (never ORPHAN or REMOTE: no
    /// process is probed, the lease is what proves it runs).
    pub status: ScanStatus,
    /// Why, in words.
    pub why: String,
    /// The lease the key is attached to (0 for none).
    pub lease: i64,
    /// The revision of the key's last write.
    pub mod_revision: i64,
}

/// A key under the prefix that could not be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    /// The key (lossy UTF-8).
    pub key: String,
    /// What is wrong with it.
    pub why: String,
}

/// What one [`EtcdScanner::scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdScan {
    /// Every key judged, in key order.
    pub entries: Vec<EtcdEntry>,
    /// Keys of no known shape, or whose value could not be read, in key order.
    pub ignored: Vec<IgnoredKey>,
    /// The store's revision at the read.
    pub revision: i64,
}

impl EtcdScan {
    /// How many entries are FRESH.
    pub fn fresh_count(&self) -> usize {
        self.entries.iter().filter(|e| e.status == ScanStatus::Fresh).count()
    }
}

/// Configures an [`EtcdScanner`]. Get one from [`EtcdScanner::builder`].
#[must_use]
pub struct EtcdScannerBuilder {
    client: Client,
    prefix: String,
    stale_after: Duration,
    clock: SharedClock,
    event_capacity: usize,
}

impl EtcdScannerBuilder {
    /// The key prefix publishers write under. Default [`DEFAULT_PREFIX`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The max age of a process key whose heartbeat does not give its
    /// interval (one that does is allowed 3 of its intervals). Default
    /// [`DEFAULT_STALE_AFTER`](crate::DEFAULT_STALE_AFTER), as the local scanner.
    pub fn stale_after(mut self, limit: Duration) -> Self {
        self.stale_after = limit;
        self
    }

    /// The clock ages are measured by (wall) and a watch re-judges by
    /// (monotonic). Default: the system's.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// How many events an [`EtcdWatch`] holds for a reader that lags.
    /// Default [`DEFAULT_EVENT_CAPACITY`]; at least 1.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Builds the scanner. Fails on a bad prefix or a zero stale threshold.
    pub fn build(self) -> Result<EtcdScanner> {
        check_prefix(&self.prefix)?;
        if self.stale_after.is_zero() {
            return Err(Error::InvalidConfig("an etcd scanner's stale threshold must be positive".into()));
        }
        Ok(EtcdScanner {
            client: self.client,
            prefix: self.prefix,
            stale_after: self.stale_after,
            clock: self.clock,
            event_capacity: self.event_capacity,
        })
    }
}

/// Judges what publishers keep in etcd under a prefix, with the local
/// scanner's verdicts.
///
/// - `<prefix>hosts/<host>/<pid>-<uuid>` holds a process's heartbeat JSON
///   (the file schema): FRESH if its last beat is within its max age (3 of
///   its own `interval_sec` when it gives one, else the stale threshold),
///   SKEWED if dated in the future beyond
///   [`SKEW_TOLERANCE`](crate::SKEW_TOLERANCE), else STALE. The host and pid
///   are not probed (they are remote): the lease is what proves the process
///   is there, and a key whose lease is gone is simply absent.
/// - `<prefix>sessions/<owner>/<id>` and `<prefix>peers/<owner>/<nick>` hold
///   a [`MemberRecord`](super::MemberRecord): STALE when its state is not [`ALIVE`] (the reason
///   says which), else as its owner's `hosts/<owner>` key is (STALE when
///   that key is missing).
/// - Anything else under the prefix, and values that cannot be read, are
///   listed as ignored with why.
///
/// ```no_run
/// use heartbeat::etcd::{Client, EtcdScanner};
///
/// let scanner = EtcdScanner::new(Client::from_list("http://127.0.0.1:2379")?);
/// for e in scanner.scan()?.entries {
///     println!("{} {} {}", e.status, e.kind, e.key);
/// }
/// # Ok::<(), heartbeat::Error>(())
/// ```
#[derive(Clone)]
pub struct EtcdScanner {
    client: Client,
    prefix: String,
    stale_after: Duration,
    clock: SharedClock,
    event_capacity: usize,
}

impl fmt::Debug for EtcdScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdScanner")
            .field("endpoints", &self.client.endpoints())
            .field("prefix", &self.prefix)
            .field("stale_after", &self.stale_after)
            .finish_non_exhaustive()
    }
}

impl EtcdScanner {
    /// A scanner with the defaults.
    pub fn new(client: Client) -> EtcdScanner {
        EtcdScanner::builder(client).build().expect("the defaults are valid")
    }

    /// Configures a scanner that reads through `client`.
    pub fn builder(client: Client) -> EtcdScannerBuilder {
        EtcdScannerBuilder {
            client,
            prefix: DEFAULT_PREFIX.to_owned(),
            stale_after: DEFAULT_STALE_AFTER,
            clock: Arc::new(SystemClock),
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One range read over the prefix, every key judged.
    pub fn scan(&self) -> Result<EtcdScan> {
        let range = self.client.range_prefix(&self.prefix)?;
        let mut picture = Picture::new(&self.prefix, self.stale_after);
        picture.reset(&range.kvs);
        let now = self.clock.wall();
        Ok(EtcdScan {
            entries: picture.records.keys().filter_map(|k| picture.judge(k, now)).collect(),
            ignored: picture
                .ignored
                .iter()
                .map(|(key, why)| IgnoredKey { key: key.clone(), why: why.clone() })
                .collect(),
            revision: range.revision,
        })
    }

    /// Starts a thread that follows etcd's watch stream and sends what
    /// changes on [`EtcdWatch::events`]; see [`EtcdWatch`].
    pub fn watch(&self) -> Result<EtcdWatch> {
        EtcdWatch::start(self.clone())
    }
}

/// A change an [`EtcdWatch`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdEvent {
    /// A key that was not known before (every key is new to the first read).
    Appeared(EtcdEntry),
    /// A key's verdict, or a session's or peer's state, changed. A rewrite
    /// that changes neither (every beat rewrites its key) sends nothing.
    Changed {
        /// The verdict before.
        from: ScanStatus,
        /// The entry now.
        entry: EtcdEntry,
    },
    /// A key that is gone (deleted, its lease expired or revoked, or no
    /// longer readable), as last seen.
    Gone(EtcdEntry),
    /// A key under the prefix that cannot be judged (sent when it is first
    /// seen so, or its reason changes).
    Ignored(IgnoredKey),
    /// etcd cannot be read: the watch retries with backoff and keeps its
    /// picture (nothing is reported gone, nothing is re-judged) until it can
    /// read the whole range again. Sent once per outage.
    Down(String),
    /// etcd answers again after a [`Down`](Self::Down); the differences
    /// from the picture before were sent just before this.
    Up,
}

/// Where an [`EtcdWatch`] stands with etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdWatchState {
    /// The first range read has not succeeded yet.
    Connecting,
    /// Following the watch stream.
    Up,
    /// etcd cannot be read: retrying with backoff.
    Down,
    /// The thread has stopped.
    Stopped,
}

/// A snapshot of an [`EtcdWatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdWatchStatus {
    /// Where it stands.
    pub state: EtcdWatchState,
    /// The last error, while down.
    pub last_error: Option<String>,
    /// Whole-range reads: the first, then one after each outage or
    /// compaction.
    pub range_reads: u64,
    /// The revision the watch has seen up to (exclusive).
    pub revision: i64,
    /// Keys known (judged or ignored).
    pub keys: usize,
}

/// A thread following etcd's watch stream over a prefix, started by
/// [`EtcdScanner::watch`]. Stops when [`stop`](Self::stop)ped or dropped
/// (which joins the thread), within about a second.
///
/// It reads the whole range first (an [`EtcdEvent::Appeared`] per key),
/// then follows the stream from the range's revision + 1, reopening it from
/// where it got after each second of silence, so nothing is missed or seen
/// twice. Each change re-judges the key it touched (and, for a process key,
/// that process's sessions and peers); every second every key is judged
/// again, so a process whose beats stopped while its lease is kept alive
/// turns STALE. When the stream reports a compaction, or etcd could not be
/// reached, it reads the whole range again and sends only the differences.
/// While etcd is down it retries with backoff (250 ms doubling to 5 s),
/// sends [`EtcdEvent::Down`] once and [`EtcdEvent::Up`] when back.
///
/// Bounded: events go to a bounded channel (see
/// [`EtcdScannerBuilder::event_capacity`]). When it is full the thread waits
/// for the reader (or a stop), reading nothing from etcd meanwhile; etcd
/// keeps what was not read, and if it compacts it away the thread reads the
/// range again and sends the differences. The thread's own memory is one
/// parsed record per key under the prefix (a heartbeat's few fields, not
/// its metadata): bounded by what etcd holds there.
#[must_use = "dropping an EtcdWatch stops it"]
pub struct EtcdWatch {
    events: Receiver<EtcdEvent>,
    status: Arc<Mutex<EtcdWatchStatus>>,
    worker: Option<(Sender<()>, JoinHandle<()>)>,
}

impl fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdWatch").field("status", &*self.status.lock()).finish_non_exhaustive()
    }
}

impl EtcdWatch {
    fn start(scanner: EtcdScanner) -> Result<EtcdWatch> {
        let (tx, events) = crossbeam_channel::bounded(scanner.event_capacity);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let status = Arc::new(Mutex::new(EtcdWatchStatus {
            state: EtcdWatchState::Connecting,
            last_error: None,
            range_reads: 0,
            revision: 0,
            keys: 0,
        }));
        let timeout = scanner.client.timeout().min(WATCH_OPEN_TIMEOUT);
        let opener = Client::with_timeout(scanner.client.endpoints(), timeout)?;
        let follower = Follower {
            picture: Picture::new(&scanner.prefix, scanner.stale_after),
            scanner,
            opener,
            known: HashMap::new(),
            known_ignored: HashMap::new(),
            tx,
            stop: stop_rx,
            status: status.clone(),
        };
        let handle = thread::Builder::new().name("heartbeat-etcd-watch".into()).spawn(move || {
            let shared = follower.status.clone();
            if crate::ticker::contained("etcd watch", move || follower.run()).is_none() {
                shared.lock().last_error = Some("the watch thread panicked (a bug; see the log)".into());
            }
            shared.lock().state = EtcdWatchState::Stopped;
        })?;
        Ok(EtcdWatch { events, status, worker: Some((stop_tx, handle)) })
    }

    /// The events. Clone the receiver to read them from another thread.
    pub fn events(&self) -> &Receiver<EtcdEvent> {
        &self.events
    }

    /// Where it stands.
    pub fn status(&self) -> EtcdWatchStatus {
        self.status.lock().clone()
    }

    /// Stops the thread and waits for it (about a second at most, longer
    /// only while a range read is in flight: up to the client's timeout).
    /// Idempotent; events already sent stay readable.
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            drop(stop); // a disconnected channel is the signal, and it stays set
            if handle.join().is_err() {
                log::error!("heartbeat etcd watch thread panicked");
            }
        }
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a key's value said, reduced to what judging needs.
#[derive(Debug, Clone)]
enum Parsed {
    Process {
        host: String,
        pid: u32,
        uuid: String,
        last_beat: SystemTime,
        /// Three intervals, when the heartbeat gives one.
        own_max_age: Option<Duration>,
    },
    Member {
        kind: EntryKind,
        host: String,
        pid: u32,
        uuid: String,
        id: String,
        state: String,
        since: SystemTime,
    },
}

#[derive(Debug, Clone)]
struct Record {
    parsed: Parsed,
    lease: i64,
    mod_revision: i64,
}

/// Every key under the prefix, parsed; judged on demand.
struct Picture {
    prefix: String,
    stale_after: Duration,
    /// Keys relative to nothing: whole keys.
    records: BTreeMap<String, Record>,
    ignored: BTreeMap<String, String>,
}

impl Picture {
    fn new(prefix: &str, stale_after: Duration) -> Picture {
        Picture { prefix: prefix.to_owned(), stale_after, records: BTreeMap::new(), ignored: BTreeMap::new() }
    }

    fn reset(&mut self, kvs: &[KeyValue]) {
        self.records.clear();
        self.ignored.clear();
        for kv in kvs {
            self.put(kv);
        }
    }

    /// Records a key's new value; returns the key.
    fn put(&mut self, kv: &KeyValue) -> String {
        let key = kv.key_str().into_owned();
        match parse(&self.prefix, &key, kv) {
            Ok(parsed) => {
                self.ignored.remove(&key);
                self.records
                    .insert(key.clone(), Record { parsed, lease: kv.lease, mod_revision: kv.mod_revision });
            }
            Err(why) => {
                self.records.remove(&key);
                self.ignored.insert(key.clone(), why);
            }
        }
        key
    }

    fn remove(&mut self, key: &str) {
        self.records.remove(key);
        self.ignored.remove(key);
    }

    /// The keys of a process's sessions and peers, when `key` is a process key.
    fn members_of(&self, key: &str) -> Vec<String> {
        let Some(owner) = key.strip_prefix(&self.prefix).and_then(|k| k.strip_prefix("hosts/")) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        for kind in ["sessions/", "peers/"] {
            let start = format!("{}{kind}{owner}/", self.prefix);
            keys.extend(
                self.records
                    .range(start.clone()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(&start))
                    .cloned(),
            );
        }
        keys
    }

    /// `key` judged at `now`; `None` when it is not a judged key.
    fn judge(&self, key: &str, now: SystemTime) -> Option<EtcdEntry> {
        let record = self.records.get(key)?;
        let entry = |kind, host: &String, pid, uuid: &String| EtcdEntry {
            key: key.to_owned(),
            kind,
            host: host.clone(),
            pid,
            uuid: uuid.clone(),
            id: None,
            owner: format!("{host}/{pid}-{uuid}"),
            state: None,
            last_beat: None,
            since: None,
            age: None,
            status: ScanStatus::Stale,
            why: String::new(),
            lease: record.lease,
            mod_revision: record.mod_revision,
        };
        match &record.parsed {
            Parsed::Process { host, pid, uuid, last_beat, own_max_age } => {
                let mut e = entry(EntryKind::Process, host, *pid, uuid);
                let (status, age, why) = self.judge_beat(*last_beat, *own_max_age, now);
                e.last_beat = Some(*last_beat);
                (e.status, e.age, e.why) = (status, age, why);
                Some(e)
            }
            Parsed::Member { kind, host, pid, uuid, id, state, since } => {
                let mut e = entry(*kind, host, *pid, uuid);
                e.id = Some(id.clone());
                e.state = Some(state.clone());
                e.since = Some(*since);
                let owner_key = format!("{}hosts/{}", self.prefix, e.owner);
                let owner = self.records.get(&owner_key).and_then(|r| match &r.parsed {
                    Parsed::Process { last_beat, own_max_age, .. } => Some((*last_beat, *own_max_age)),
                    Parsed::Member { .. } => None,
                });
                if let Some((last_beat, own_max_age)) = owner {
                    let (status, age, why) = self.judge_beat(last_beat, own_max_age, now);
                    e.last_beat = Some(last_beat);
                    e.age = age;
                    (e.status, e.why) = if state != ALIVE {
                        (ScanStatus::Stale, format!("state {state:?}, not {ALIVE:?}"))
                    } else {
                        match status {
                            ScanStatus::Fresh => (status, format!("{ALIVE}; its process: {why}")),
                            _ => (status, format!("its process is {status}: {why}")),
                        }
                    };
                } else {
                    e.status = ScanStatus::Stale;
                    e.why = if state != ALIVE {
                        format!("state {state:?}, not {ALIVE:?}; its process has no key")
                    } else {
                        "its process has no key (hosts/<owner>)".to_owned()
                    };
                }
                Some(e)
            }
        }
    }

    fn judge_beat(
        &self,
        last_beat: SystemTime,
        own_max_age: Option<Duration>,
        now: SystemTime,
    ) -> (ScanStatus, Option<Duration>, String) {
        let (limit, from) = match own_max_age {
            Some(limit) => (limit, "3 of its intervals"),
            None => (self.stale_after, "the stale threshold"),
        };
        match beat_age(last_beat, now) {
            Err(ahead) => {
                (ScanStatus::Skewed, None, format!("last beat {} in the future (clock skew)", secs(ahead)))
            }
            Ok(age) if age <= limit => (
                ScanStatus::Fresh,
                Some(age),
                format!("last beat {} ago, within {} ({from})", secs(age), secs(limit)),
            ),
            Ok(age) => (
                ScanStatus::Stale,
                Some(age),
                format!("last beat {} ago, over {} ({from})", secs(age), secs(limit)),
            ),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `<host>/<pid>-<uuid>` with nothing after it.
fn split_owner(s: &str) -> Option<(&str, u32, &str)> {
    let (host, rest) = s.split_once('/')?;
    let (pid, uuid) = rest.split_once('-')?;
    let pid_ok = !pid.is_empty() && pid.len() <= 10 && pid.bytes().all(|b| b.is_ascii_digit());
    if host.is_empty() || uuid.is_empty() || uuid.contains('/') || !pid_ok {
        return None;
    }
    Some((host, pid.parse().ok()?, uuid))
}

const SHAPES: &str = "not a key of the layout (hosts/<host>/<pid>-<uuid>, sessions/<host>/<pid>-<uuid>/<id>, peers/<host>/<pid>-<uuid>/<nick>)";

/// Parses one key and its value; `Err(why)` when it cannot be judged.
fn parse(prefix: &str, key: &str, kv: &KeyValue) -> std::result::Result<Parsed, String> {
    if std::str::from_utf8(&kv.key).is_err() {
        return Err("a key that is not UTF-8".into());
    }
    let rest = key.strip_prefix(prefix).ok_or_else(|| SHAPES.to_owned())?;
    if let Some(owner) = rest.strip_prefix("hosts/") {
        let (host, pid, uuid) = split_owner(owner).ok_or_else(|| SHAPES.to_owned())?;
        if kv.value.len() as u64 > MAX_STATE_BYTES {
            return Err(format!(
                "a value of {} bytes, over the {MAX_STATE_BYTES}-byte limit",
                kv.value.len()
            ));
        }
        let state = HeartbeatState::from_json(&kv.value, Path::new(key))
            .map_err(|e| format!("not heartbeat JSON: {}", crate::json::cut(&e.to_string(), 200)))?;
        let own_max_age = state.interval.filter(|i| !i.is_zero()).and_then(|i| i.checked_mul(3));
        return Ok(Parsed::Process {
            host: host.to_owned(),
            pid,
            uuid: uuid.to_owned(),
            last_beat: state.last_beat,
            own_max_age,
        });
    }
    let (kind, rest) = if let Some(rest) = rest.strip_prefix("sessions/") {
        (EntryKind::Session, rest)
    } else if let Some(rest) = rest.strip_prefix("peers/") {
        (EntryKind::Peer, rest)
    } else {
        return Err(SHAPES.to_owned());
    };
    // <host>/<pid>-<uuid>/<id>: the id is what follows the second slash.
    let second = rest.match_indices('/').nth(1).map(|(i, _)| i).ok_or_else(|| SHAPES.to_owned())?;
    let (owner, id) = (&rest[..second], &rest[second + 1..]);
    let (host, pid, uuid) = split_owner(owner).ok_or_else(|| SHAPES.to_owned())?;
    if id.is_empty() {
        return Err(SHAPES.to_owned());
    }
    if kv.value.len() > MAX_MEMBER_BYTES {
        return Err(format!("a value of {} bytes, over the {MAX_MEMBER_BYTES}-byte limit", kv.value.len()));
    }
    if !kv.value.trim_ascii_start().starts_with(b"{") {
        return Err("not a member record: its top level is not an object".into());
    }
    let record: MemberFields = serde_json::from_slice(&kv.value)
        .map_err(|e| format!("not a member record: {}", crate::json::cut(&e.to_string(), 200)))?;
    if record.kind != kind.as_str() {
        return Err(format!(
            "its value is a {} record under a {} key",
            crate::json::cut(&record.kind, 64),
            kind.as_str()
        ));
    }
    if record.owner != owner {
        return Err(format!("its value names owner {}, the key {owner}", crate::json::quote(&record.owner)));
    }
    let since = parse_timestamp(&record.since)
        .ok_or_else(|| format!("since {} is not an RFC 3339 time", crate::json::quote(&record.since)))?;
    Ok(Parsed::Member {
        kind,
        host: host.to_owned(),
        pid,
        uuid: uuid.to_owned(),
        id: id.to_owned(),
        state: record.state,
        since,
    })
}

/// What a scan reads of a [`MemberRecord`](super::MemberRecord): the same fields, by the same
/// rules, but `detail` is only checked to be an object and skipped, never
/// built (64 KiB of `[0,0,...]` in it would be a `serde_json::Value` of
/// 1 MiB).
#[derive(serde::Deserialize)]
struct MemberFields {
    kind: String,
    #[serde(rename = "id")]
    _id: String,
    owner: String,
    state: String,
    since: String,
    #[serde(default, rename = "detail")]
    _detail: SkippedObject,
}

/// An object, walked and dropped as it is read.
#[derive(Default)]
struct SkippedObject;

impl<'de> serde::Deserialize<'de> for SkippedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SkippedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<SkippedObject, E> {
                Ok(SkippedObject)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<SkippedObject, A::Error> {
                serde::de::IgnoredAny.visit_map(map).map(|_| SkippedObject)
            }
        }
        // As `serde_json::Map` asks for it: an object, nothing else.
        d.deserialize_map(V)
    }
}

/// The watch thread's side.
struct Follower {
    scanner: EtcdScanner,
    /// A client with a short timeout, for opening streams.
    opener: Client,
    picture: Picture,
    /// What the reader was last told about each judged key.
    known: HashMap<String, EtcdEntry>,
    /// Ignored keys the reader was told about, with why.
    known_ignored: HashMap<String, String>,
    tx: Sender<EtcdEvent>,
    stop: Receiver<()>,
    status: Arc<Mutex<EtcdWatchStatus>>,
}

/// Whoever may compact the cluster decides how often a watch is compacted
/// past: each costs a range read and this line, limited.
static COMPACTED: LogLimit = log_limit!(log::Level::Info, "etcd watches compacted past");

/// The thread was told to stop (or its reader is gone).
struct Stopped;

type Step = std::result::Result<(), Stopped>;

impl Follower {
    fn run(mut self) {
        let _ = self.follow();
        COMPACTED.finish(self.scanner.clock.now());
    }

    fn follow(&mut self) -> Step {
        let prefix = self.scanner.prefix.clone();
        let clock = self.scanner.clock.clone();
        let mut backoff = FIRST_BACKOFF;
        let mut need_range = true;
        let mut revision = 0;
        let mut next_tick = clock.now() + REJUDGE_EVERY;
        loop {
            self.check_stop()?;
            if need_range {
                match self.scanner.client.range_prefix(&prefix) {
                    Ok(range) => {
                        self.picture.reset(&range.kvs);
                        let keys = self.all_keys();
                        self.reconcile(keys)?;
                        revision = range.revision + 1;
                        need_range = false;
                        self.up(revision)?;
                        next_tick = clock.now() + REJUDGE_EVERY;
                    }
                    Err(e) => {
                        self.down(&e)?;
                        self.pause(&mut backoff)?;
                        continue;
                    }
                }
            }
            let mut stream = match self.opener.watch_prefix(&prefix, revision, WATCH_IDLE) {
                Ok(stream) => stream,
                Err(e) => {
                    self.down(&e)?;
                    need_range = true;
                    self.pause(&mut backoff)?;
                    continue;
                }
            };
            loop {
                self.check_stop()?;
                let batch = stream.next_batch();
                revision = revision.max(stream.next_revision());
                self.status.lock().revision = revision;
                match batch {
                    Ok(Some(WatchBatch::Events(events))) => {
                        backoff = FIRST_BACKOFF;
                        self.apply(&events)?;
                    }
                    Ok(Some(WatchBatch::Compacted { compact_revision })) => {
                        COMPACTED.log(
                            clock.now(),
                            format_args!(
                                "etcd compacted past revision {revision} (now {compact_revision}): reading {prefix} again"
                            ),
                        );
                        need_range = true;
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.down(&e)?;
                        need_range = true;
                        self.pause(&mut backoff)?;
                        break;
                    }
                }
                if clock.now() >= next_tick {
                    let keys = self.all_keys();
                    self.reconcile(keys)?;
                    next_tick = clock.now() + REJUDGE_EVERY;
                    COMPACTED.flush(clock.now());
                }
            }
            if !need_range && clock.now() >= next_tick {
                let keys = self.all_keys();
                self.reconcile(keys)?;
                next_tick = clock.now() + REJUDGE_EVERY;
            }
        }
    }

    fn check_stop(&self) -> Step {
        match self.stop.try_recv() {
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(()),
            _ => Err(Stopped),
        }
    }

    /// Waits out the backoff (or a stop), and doubles it.
    fn pause(&self, backoff: &mut Duration) -> Step {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        select! {
            recv(self.stop) -> _ => Err(Stopped),
            default(wait) => Ok(()),
        }
    }

    /// Sends an event, waiting while the channel is full, unless stopped.
    fn send(&self, event: EtcdEvent) -> Step {
        select! {
            send(self.tx, event) -> sent => sent.map_err(|_| Stopped),
            recv(self.stop) -> _ => Err(Stopped),
        }
    }

    fn down(&mut self, e: &Error) -> Step {
        let message = e.to_string();
        let was = {
            let mut s = self.status.lock();
            let was = s.state;
            s.state = EtcdWatchState::Down;
            s.last_error = Some(message.clone());
            was
        };
        if was != EtcdWatchState::Down {
            log::warn!("etcd watch down, retrying with backoff: {message}");
            self.send(EtcdEvent::Down(message))?;
        }
        Ok(())
    }

    fn up(&mut self, revision: i64) -> Step {
        let was = {
            let mut s = self.status.lock();
            let was = s.state;
            s.state = EtcdWatchState::Up;
            s.last_error = None;
            s.range_reads += 1;
            s.revision = revision;
            s.keys = self.picture.records.len() + self.picture.ignored.len();
            was
        };
        if was == EtcdWatchState::Down {
            log::info!("etcd watch up again at {}", self.scanner.client.endpoints().join(","));
            self.send(EtcdEvent::Up)?;
        }
        Ok(())
    }

    fn all_keys(&self) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = self.picture.records.keys().cloned().collect();
        keys.extend(self.picture.ignored.keys().cloned());
        keys.extend(self.known.keys().cloned());
        keys.extend(self.known_ignored.keys().cloned());
        keys
    }

    /// Applies a batch of changes and tells what they changed.
    fn apply(&mut self, events: &[WatchEvent]) -> Step {
        if events.is_empty() {
            return Ok(());
        }
        let mut touched = BTreeSet::new();
        for event in events {
            let key = match event {
                WatchEvent::Put(kv) => self.picture.put(kv),
                WatchEvent::Delete(kv) => {
                    let key = kv.key_str().into_owned();
                    self.picture.remove(&key);
                    key
                }
            };
            touched.extend(self.picture.members_of(&key));
            touched.insert(key);
        }
        self.status.lock().keys = self.picture.records.len() + self.picture.ignored.len();
        self.reconcile(touched)
    }

    /// Judges `keys` now and sends how each differs from what the reader
    /// was told: appearances and changes first, then what is gone, each in
    /// key order.
    fn reconcile(&mut self, keys: BTreeSet<String>) -> Step {
        let now = self.scanner.clock.wall();
        let mut gone = Vec::new();
        for key in keys {
            match self.picture.ignored.get(&key) {
                Some(why) if self.known_ignored.get(&key) != Some(why) => {
                    self.known_ignored.insert(key.clone(), why.clone());
                    self.send(EtcdEvent::Ignored(IgnoredKey { key: key.clone(), why: why.clone() }))?;
                }
                Some(_) => {}
                None => {
                    self.known_ignored.remove(&key);
                }
            }
            let entry = self.picture.judge(&key, now);
            let event = match (self.known.remove(&key), entry) {
                (None, None) => None,
                (None, Some(entry)) => {
                    self.known.insert(key, entry.clone());
                    Some(EtcdEvent::Appeared(entry))
                }
                (Some(old), None) => {
                    gone.push(old);
                    None
                }
                (Some(old), Some(entry)) => {
                    let event = (old.status != entry.status || old.state != entry.state)
                        .then(|| EtcdEvent::Changed { from: old.status, entry: entry.clone() });
                    self.known.insert(key, entry);
                    event
                }
            };
            if let Some(event) = event {
                self.send(event)?;
            }
        }
        for entry in gone {
            self.send(EtcdEvent::Gone(entry))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), mod_revision: 1, lease: 7 }
    }

    fn beat(at: SystemTime, interval: Option<f64>) -> String {
        let mut v = serde_json::json!({
            "pid": 42,
            "uuid": "u-1",
            "last_refresh": crate::state::format_timestamp(at),
        });
        if let Some(i) = interval {
            v["interval_sec"] = i.into();
        }
        v.to_string()
    }

    fn member(kind: &str, owner: &str, state: &str) -> String {
        serde_json::json!({
            "kind": kind, "id": "x", "owner": owner, "state": state,
            "since": "2026-11-30T10:00:00+00:00",
        })
        .to_string()
    }

    fn judged(kvs: &[KeyValue], now: SystemTime) -> (Vec<EtcdEntry>, BTreeMap<String, String>) {
        let mut p = Picture::new("hb/", Duration::from_secs(90));
        p.reset(kvs);
        (p.records.keys().filter_map(|k| p.judge(k, now)).collect(), p.ignored.clone())
    }

    #[test]
    fn process_verdicts_use_three_intervals_or_the_threshold() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let s = Duration::from_secs;
        let kvs = [
            kv("hb/hosts/a/1-u", &beat(now - s(29), Some(10.0))),
            kv("hb/hosts/a/2-u", &beat(now - s(31), Some(10.0))),
            kv("hb/hosts/a/3-u", &beat(now - s(89), None)),
            kv("hb/hosts/a/4-u", &beat(now - s(91), None)),
            kv("hb/hosts/a/5-u-v", &beat(now + s(1), None)),
            kv("hb/hosts/a/6-u", &beat(now + s(3), None)),
        ];
        let (entries, ignored) = judged(&kvs, now);
        assert!(ignored.is_empty(), "{ignored:?}");
        let statuses: Vec<_> = entries.iter().map(|e| e.status).collect();
        use ScanStatus::*;
        assert_eq!(statuses, [Fresh, Stale, Fresh, Stale, Fresh, Skewed]);
        assert_eq!(entries[4].uuid, "u-v");
        assert_eq!(entries[4].owner, "a/5-u-v");
        assert_eq!(entries[4].age, Some(Duration::ZERO));
        assert_eq!(entries[5].age, None);
        assert!(entries[1].why.contains("over 30.0s (3 of its intervals)"), "{}", entries[1].why);
        assert!(entries[3].why.contains("over 90.0s (the stale threshold)"), "{}", entries[3].why);
        assert!(entries[5].why.contains("in the future"), "{}", entries[5].why);
    }

    #[test]
    fn members_follow_their_state_and_their_owner() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let s = Duration::from_secs;
        let kvs = [
            kv("hb/hosts/a/1-u", &beat(now - s(1), None)),
            kv("hb/hosts/a/2-u", &beat(now - s(100), None)),
            kv("hb/hosts/a/3-u", &beat(now + s(100), None)),
            kv("hb/sessions/a/1-u/ok", &member("session", "a/1-u", "alive")),
            kv("hb/sessions/a/1-u/warned", &member("session", "a/1-u", "warning")),
            kv("hb/peers/a/1-u/J5nick", &member("peer", "a/1-u", "alive")),
            kv("hb/sessions/a/2-u/old", &member("session", "a/2-u", "alive")),
            kv("hb/sessions/a/3-u/ahead", &member("session", "a/3-u", "alive")),
            kv("hb/sessions/a/9-u/orphan", &member("session", "a/9-u", "alive")),
        ];
        let (entries, ignored) = judged(&kvs, now);
        assert!(ignored.is_empty(), "{ignored:?}");
        let by_key: HashMap<_, _> = entries.iter().map(|e| (e.key.as_str(), e)).collect();
        let verdict = |k: &str| by_key[k].status;
        use ScanStatus::*;
        assert_eq!(verdict("hb/sessions/a/1-u/ok"), Fresh);
        assert_eq!(verdict("hb/peers/a/1-u/J5nick"), Fresh);
        assert_eq!(by_key["hb/peers/a/1-u/J5nick"].kind, EntryKind::Peer);
        assert_eq!(by_key["hb/peers/a/1-u/J5nick"].id.as_deref(), Some("J5nick"));
        assert_eq!(verdict("hb/sessions/a/1-u/warned"), Stale);
        assert!(by_key["hb/sessions/a/1-u/warned"].why.contains("\"warning\""));
        assert_eq!(verdict("hb/sessions/a/2-u/old"), Stale);
        assert_eq!(verdict("hb/sessions/a/3-u/ahead"), Skewed);
        assert_eq!(verdict("hb/sessions/a/9-u/orphan"), Stale);
        assert!(by_key["hb/sessions/a/9-u/orphan"].why.contains("no key"));
        assert_eq!(by_key["hb/sessions/a/9-u/orphan"].last_beat, None);
    }

    #[test]
    fn what_cannot_be_judged_is_ignored_with_why() {
        let now = SystemTime::now();
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_MEMBER_BYTES));
        let kvs = [
            kv("hb/hosts/a/1-u", "not json"),
            kv("hb/hosts/a/x-u", &beat(now, None)),
            kv("hb/hosts/a/1-u/extra", &beat(now, None)),
            kv("hb/hosts/a/1-", &beat(now, None)),
            kv("hb/other/thing", "1"),
            kv("hb/sessions/a/1-u", &member("session", "a/1-u", "alive")),
            kv("hb/sessions/a/1-u/", &member("session", "a/1-u", "alive")),
            kv("hb/sessions/a/1-u/s1", &member("peer", "a/1-u", "alive")),
            kv("hb/sessions/a/1-u/s2", &member("session", "b/1-u", "alive")),
            kv("hb/sessions/a/1-u/s3", "[1]"),
            kv("hb/sessions/a/1-u/s4", &big),
            kv(
                "hb/sessions/a/1-u/s5",
                &member("session", "a/1-u", "alive").replace("2026-11-30T10:00:00+00:00", "soon"),
            ),
        ];
        let (entries, ignored) = judged(&kvs, now);
        assert!(entries.is_empty(), "{entries:?}");
        assert_eq!(ignored.len(), kvs.len(), "{ignored:#?}");
        let why = |k: &str| ignored[k].as_str();
        assert!(why("hb/hosts/a/1-u").starts_with("not heartbeat JSON"), "{}", why("hb/hosts/a/1-u"));
        for k in [
            "hb/hosts/a/x-u",
            "hb/hosts/a/1-u/extra",
            "hb/hosts/a/1-",
            "hb/other/thing",
            "hb/sessions/a/1-u",
            "hb/sessions/a/1-u/",
        ] {
            assert!(why(k).starts_with("not a key of the layout"), "{k}: {}", why(k));
        }
        assert!(why("hb/sessions/a/1-u/s1").contains("a peer record under a session key"));
        assert!(why("hb/sessions/a/1-u/s2").contains("names owner \"b/1-u\""));
        assert!(why("hb/sessions/a/1-u/s3").contains("not an object"));
        assert!(why("hb/sessions/a/1-u/s4").contains("over the 65536-byte limit"));
        assert!(why("hb/sessions/a/1-u/s5").contains("not an RFC 3339 time"));
    }

    #[test]
    fn a_process_key_names_its_members() {
        let now = SystemTime::now();
        let mut p = Picture::new("hb/", Duration::from_secs(90));
        p.reset(&[
            kv("hb/hosts/a/1-u", &beat(now, None)),
            kv("hb/sessions/a/1-u/s", &member("session", "a/1-u", "alive")),
            kv("hb/sessions/a/1-uu/s", &member("session", "a/1-uu", "alive")),
            kv("hb/peers/a/1-u/n", &member("peer", "a/1-u", "alive")),
        ]);
        assert_eq!(p.members_of("hb/hosts/a/1-u"), ["hb/sessions/a/1-u/s", "hb/peers/a/1-u/n"]);
        assert!(p.members_of("hb/sessions/a/1-u/s").is_empty());
    }
}
