//! The `Scanner`: judges a directory of per-process heartbeat files
//! (`heartbeat-<pid>-<uuid>.json`, as a [`Beater`](crate::Beater) writes in
//! directory mode) as FRESH, STALE, ORPHAN, REMOTE or SKEWED, removes the
//! dead ones safely, and remembers when it last saw anyone alive.
//!
//! Files are opened relative to the directory (`openat`, never following a
//! symlink) and parsed straight into a borrowed record: no JSON tree, one
//! read buffer per scan.

mod proc;
mod watch;

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::de::{DeserializeSeed, MapAccess, Visitor};

use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::json::{JsonStr, KeySet, ObjectOrNull, UniqueKeys};
use crate::state::{MAX_STATE_BYTES, beat_age, parse_timestamp};
use proc::StartTimes;

pub use watch::{ScanEvent, Watch};

/// A heartbeat older than this is STALE whatever its process does: three
/// missed beats at the seed's 30 s refresh.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(90);
/// How often a [`Watch`] scans unless told otherwise.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(30);
/// The seed's idle window: no FRESH entry for 30 minutes.
pub const DEFAULT_IDLE_WINDOW: Duration = Duration::from_secs(30 * 60);

const PREFIX: &str = "heartbeat-";
const SUFFIX: &str = ".json";

/// Whether `name` is a heartbeat file name: `heartbeat-*.json`.
pub fn is_heartbeat_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.len() >= PREFIX.len() + SUFFIX.len()
        && b.starts_with(PREFIX.as_bytes())
        && b.ends_with(SUFFIX.as_bytes())
}

/// What a scan makes of one heartbeat file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanStatus {
    /// Beaten within the stale threshold by a process that is still running.
    Fresh,
    /// Not beaten within the stale threshold, whether or not its PID lives.
    Stale,
    /// Recent, but its writer is gone: the PID is dead, was given to another
    /// process, or belongs to an earlier boot.
    Orphan,
    /// Recent, written on another host: judged by age alone, since its PID
    /// cannot be probed from here.
    Remote,
    /// Dated in the future beyond [`SKEW_TOLERANCE`](crate::SKEW_TOLERANCE):
    /// the writer's clock and ours disagree, so its age is unknown.
    Skewed,
}

impl ScanStatus {
    /// The upper-case name: `FRESH`, `STALE`, `ORPHAN`, `REMOTE`, `SKEWED`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanStatus::Fresh => "FRESH",
            ScanStatus::Stale => "STALE",
            ScanStatus::Orphan => "ORPHAN",
            ScanStatus::Remote => "REMOTE",
            ScanStatus::Skewed => "SKEWED",
        }
    }

    /// Whether cleanup removes files with this status (STALE and ORPHAN).
    pub fn is_removable(self) -> bool {
        matches!(self, ScanStatus::Stale | ScanStatus::Orphan)
    }
}

impl fmt::Display for ScanStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why an entry got its [`ScanStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScanReason {
    /// FRESH: the PID is running, and where the file records the writer's
    /// start time, the running process is the writer.
    Running {
        /// Whether the start time was compared (Linux, and the file records it).
        identity_checked: bool,
    },
    /// STALE: the last beat is older than the threshold.
    TooOld {
        /// The last beat's age.
        age: Duration,
        /// The stale threshold.
        limit: Duration,
    },
    /// ORPHAN: no process has this PID.
    NotRunning,
    /// ORPHAN: the PID is zero, negative or out of range, so no process can have it.
    BadPid,
    /// ORPHAN: the PID is alive but belongs to a later process (PID reuse).
    PidReused {
        /// The writer's start time the file records, in clock ticks since boot.
        recorded: u64,
        /// The start time of the process that has the PID now.
        found: u64,
    },
    /// ORPHAN: the file was written during an earlier boot of this host.
    OtherBoot,
    /// REMOTE: written on another host.
    OtherHost,
    /// SKEWED: the last beat lies this far in the future.
    Future {
        /// How far ahead of our clock.
        ahead: Duration,
    },
}

impl fmt::Display for ScanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanReason::Running { identity_checked: true } => {
                f.write_str("pid running, same process start time")
            }
            ScanReason::Running { identity_checked: false } => f.write_str("pid running"),
            ScanReason::TooOld { age, limit } => {
                write!(f, "last beat {} ago, over {}", secs(*age), secs(*limit))
            }
            ScanReason::NotRunning => f.write_str("pid not running"),
            ScanReason::BadPid => f.write_str("pid cannot name a process"),
            ScanReason::PidReused { recorded, found } => {
                write!(f, "pid reused: writer started at tick {recorded}, running process at {found}")
            }
            ScanReason::OtherBoot => f.write_str("written before this host last booted"),
            ScanReason::OtherHost => f.write_str("written on another host; pid not probed"),
            ScanReason::Future { ahead } => {
                write!(f, "last beat {} in the future (clock skew)", secs(*ahead))
            }
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// One heartbeat file as a scan found it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanEntry {
    /// The file.
    pub path: PathBuf,
    /// The writer's PID.
    pub pid: i64,
    /// The writer's run id (from the file, else from its name; may be empty).
    pub uuid: String,
    /// The writer's host, when the file names one.
    pub hostname: Option<String>,
    /// The last beat: `last_refresh` (or `timestamp`), or the file's mtime
    /// when its contents are unusable.
    pub last_beat: SystemTime,
    /// The last beat's age; `None` when it lies in the future beyond the tolerance.
    pub age: Option<Duration>,
    /// The verdict.
    pub status: ScanStatus,
    /// Why.
    pub why: ScanReason,
    /// Why the contents were not used, when the PID and uuid came from the
    /// file name and the time from its mtime (a torn or foreign file).
    pub fallback: Option<String>,
}

/// A directory entry the scan looked at but could not judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredFile {
    /// The path.
    pub path: PathBuf,
    /// What was wrong with it.
    pub why: String,
}

/// The result of one scan. Entries are in directory order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    /// Every heartbeat file judged.
    pub entries: Vec<ScanEntry>,
    /// Names matching `heartbeat-*.json` that could not be judged: symlinks,
    /// directories and other non-files, unreadable files, and files whose
    /// contents and name are both unusable. Files that vanish mid-scan are
    /// not listed: they are simply gone.
    pub ignored: Vec<IgnoredFile>,
}

impl Scan {
    /// How many entries are FRESH.
    pub fn fresh_count(&self) -> usize {
        self.entries.iter().filter(|e| e.status == ScanStatus::Fresh).count()
    }
}

/// What [`Scanner::cleanup`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Cleanup {
    /// Files removed (or, in a dry run, that would be). A file that was
    /// already gone counts as removed.
    pub removed: Vec<ScanEntry>,
    /// Files left alone on purpose although the scan found them STALE or
    /// ORPHAN, with why: they turned out FRESH on a second look, were
    /// replaced by a writer, or stopped being regular files.
    pub kept: Vec<(ScanEntry, String)>,
    /// Files that should have gone but could not be removed, with the
    /// operating system's error (permission denied, a read-only file
    /// system, ...). Empty in a dry run.
    pub failed: Vec<(ScanEntry, String)>,
}

/// Configures a [`Scanner`]. Get one from [`Scanner::builder`].
#[must_use]
pub struct ScannerBuilder {
    dir: PathBuf,
    stale_after: Duration,
    interval: Duration,
    clock: SharedClock,
    hostname: Option<String>,
    boot_id: Option<Option<String>>,
    threads: usize,
}

impl ScannerBuilder {
    /// The most threads one scan reads files with. Large directories are
    /// split between scoped threads, each given at least 512 files; smaller
    /// ones are read on the calling thread. Default: the available
    /// parallelism, at most 4. `1` never starts a thread; `0` is taken as `1`.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Heartbeats older than this are STALE. Default [`DEFAULT_STALE_AFTER`].
    pub fn stale_after(mut self, limit: Duration) -> Self {
        self.stale_after = limit;
        self
    }

    /// How often a [`Watch`] scans. Default [`DEFAULT_SCAN_INTERVAL`]; must be positive.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The clock for ages (wall) and the idle window (monotonic). Default: the system's.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The name this host is known by in heartbeat files. Default: `gethostname`.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// This boot's id, or `None` to never judge by boot. Default: the kernel's.
    pub fn boot_id(mut self, id: Option<String>) -> Self {
        self.boot_id = Some(id);
        self
    }

    /// Builds the scanner. Fails on a zero interval.
    pub fn build(self) -> Result<Scanner> {
        if self.interval.is_zero() {
            return Err(Error::InvalidConfig("a scanner's interval must be positive".into()));
        }
        let created = self.clock.now();
        Ok(Scanner {
            inner: Arc::new(Inner {
                dir: self.dir,
                stale_after: self.stale_after,
                interval: self.interval,
                threads: self.threads,
                hostname: self.hostname.unwrap_or_else(crate::process::hostname),
                boot_id: self.boot_id.unwrap_or_else(crate::process::boot_id),
                clock: self.clock,
                created,
                last_fresh: Mutex::new(None),
                start_times: Mutex::default(),
            }),
        })
    }
}

/// Judges a directory of per-process heartbeat files.
///
/// Each file is classified, in this order:
/// 1. dated in the future beyond the skew tolerance: SKEWED, unless its PID
///    is provably gone (then ORPHAN);
/// 2. older than the stale threshold: STALE, even if the PID lives;
/// 3. written on another host: REMOTE (age alone; its PID means nothing here);
/// 4. written in an earlier boot, PID dead (`kill(pid, 0)` says ESRCH; EPERM
///    is alive), PID zero or negative, or PID alive with another start time
///    than the file records: ORPHAN;
/// 5. otherwise FRESH.
///
/// A file that is not JSON or lacks the fields is judged by the PID and uuid
/// in its name and its mtime, so a torn write is classified by age rather
/// than dropped. Cheap to clone: clones share the idle-window memory.
///
/// ```
/// use heartbeat::{Beater, Scanner, ScanStatus};
/// # let dir = tempfile::tempdir()?;
/// let _guard = Beater::builder().directory(dir.path()).build()?.start()?;
///
/// let scanner = Scanner::new(dir.path());
/// let scan = scanner.scan()?;
/// assert_eq!(scan.entries[0].status, ScanStatus::Fresh);
/// assert!(scanner.is_active()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Scanner {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    stale_after: Duration,
    interval: Duration,
    threads: usize,
    hostname: String,
    boot_id: Option<String>,
    clock: SharedClock,
    /// When this scanner started watching (monotonic).
    created: Instant,
    /// The latest instant some entry is known to have been FRESH.
    last_fresh: Mutex<Option<Instant>>,
    /// PIDs' start times as the last scan found them.
    start_times: Mutex<HashMap<i32, proc::Known>>,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("dir", &self.inner.dir)
            .field("stale_after", &self.inner.stale_after)
            .field("interval", &self.inner.interval)
            .field("hostname", &self.inner.hostname)
            .finish_non_exhaustive()
    }
}

impl Scanner {
    /// A scanner of `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Scanner {
        Scanner::builder(dir).build().expect("the default interval is positive")
    }

    /// Configures a scanner of `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> ScannerBuilder {
        ScannerBuilder {
            dir: dir.into(),
            stale_after: DEFAULT_STALE_AFTER,
            interval: DEFAULT_SCAN_INTERVAL,
            clock: Arc::new(SystemClock),
            hostname: None,
            boot_id: None,
            threads: thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }

    /// The directory scanned.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The stale threshold.
    pub fn stale_after(&self) -> Duration {
        self.inner.stale_after
    }

    /// How often a [`Watch`] scans.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// Reads and judges every `heartbeat-*.json` in the directory.
    ///
    /// A missing directory is an empty scan; one that cannot be listed is
    /// [`Error::Directory`]. Problems with single files never fail the scan:
    /// see [`Scan::ignored`].
    pub fn scan(&self) -> Result<Scan> {
        self.inner.scan()
    }

    /// How many entries are FRESH now (a new scan).
    pub fn fresh_count(&self) -> Result<usize> {
        Ok(self.scan()?.fresh_count())
    }

    /// Whether at least one entry is FRESH now (a new scan).
    pub fn is_active(&self) -> Result<bool> {
        Ok(self.fresh_count()? > 0)
    }

    /// Whether no entry has been FRESH for at least `window` (a new scan).
    ///
    /// Unlike the seed's "no FRESH now", this remembers across scans when
    /// an entry was last seen FRESH ([`last_fresh`](Self::last_fresh)). A
    /// writer that came and went between two scans still counts: its file's
    /// last beat is evidence that it was alive then, as long as the file is
    /// there. A scanner only answers for the time it has watched: a new one
    /// says `false` until `window` has passed since it was built.
    pub fn idle_for(&self, window: Duration) -> Result<bool> {
        let scan = self.scan()?;
        if scan.fresh_count() > 0 {
            return Ok(false);
        }
        let inner = &*self.inner;
        let since = inner.last_fresh.lock().map_or(inner.created, |t| t.max(inner.created));
        Ok(inner.clock.now().saturating_duration_since(since) >= window)
    }

    /// The latest monotonic instant (on the scanner's clock) at which some
    /// entry is known to have been FRESH: seen FRESH by a scan, or the last
    /// beat of a STALE or ORPHAN file written on this host by a process that
    /// has since gone (not one of another host, another boot, or an
    /// impossible PID). `None` if never.
    ///
    /// On Linux the monotonic clock stops while the machine is suspended:
    /// time asleep does not count towards an idle window.
    pub fn last_fresh(&self) -> Option<Instant> {
        *self.inner.last_fresh.lock()
    }

    /// Removes the STALE and ORPHAN files, as [`cleanup_plan`](Self::cleanup_plan) would list them.
    ///
    /// Safe against a busy directory: only regular files named
    /// `heartbeat-*.json` directly in the directory are removed (by
    /// `unlinkat` on the directory, so never a symlink's target nor anything
    /// outside). Each is read and judged again just before removal and
    /// removed only if the name still holds that file (device and inode), so
    /// a writer that resumed, or renamed a new file into place, keeps it; only
    /// a rename in the microseconds between that check and the unlink can
    /// still lose one beat's file. A file already gone counts as removed; any
    /// other failure keeps that file and goes on.
    pub fn cleanup(&self) -> Result<Cleanup> {
        self.inner.cleanup(true)
    }

    /// What [`cleanup`](Self::cleanup) would remove, removing nothing (a dry run).
    pub fn cleanup_plan(&self) -> Result<Cleanup> {
        self.inner.cleanup(false)
    }

    /// Starts a thread that scans every [`interval`](ScannerBuilder::interval)
    /// and reports entries that appear, change status or disappear.
    pub fn watch(&self) -> Result<Watch> {
        Watch::start(self.clone())
    }

    pub(crate) fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }
}

/// What judging one directory entry gave.
enum Judged {
    Entry(ScanEntry, FileId),
    Ignored(String),
    /// Vanished between listing and reading.
    Gone,
}

/// What a scan reuses from file to file: buffers, and PIDs' start times.
struct Reader<'a> {
    /// The first read of every file lands here; heartbeat files are ~400 bytes.
    head: Box<[u8]>,
    /// Files that do not fit `head` or do not parse are read whole into this.
    whole: Vec<u8>,
    name: Vec<u8>,
    starts: StartTimes<'a>,
}

impl<'a> Reader<'a> {
    fn new(starts: StartTimes<'a>) -> Self {
        Reader { head: vec![0; HEAD_BYTES].into(), whole: Vec::new(), name: Vec::new(), starts }
    }
}

/// A scan uses more threads only when each gets at least this many files.
const FILES_PER_THREAD: usize = 512;

/// The size of a scan's first read of each file.
const HEAD_BYTES: usize = 16 * 1024;

impl Reader<'_> {
    /// `name` as a C string, in a reused buffer.
    fn c_name(&mut self, name: &OsStr) -> &CStr {
        self.name.clear();
        self.name.extend_from_slice(name.as_bytes());
        self.name.push(0);
        CStr::from_bytes_with_nul(&self.name).expect("directory entry names hold no NUL")
    }

    /// Reads and parses a heartbeat file: `Ok(Err(why))` when its contents are unusable.
    ///
    /// One `read` usually suffices: a regular file reads short only at its
    /// end, so a short first read that parses is the whole file. Otherwise
    /// (a long file, or one that does not parse, perhaps because a file
    /// system read short) the file is read to its end, up to
    /// [`MAX_STATE_BYTES`], and parsed whole.
    fn read(
        &mut self,
        mut file: &File,
        name: &OsStr,
        boot: Option<&str>,
    ) -> io::Result<Result<Record, String>> {
        let n = file.read(&mut self.head)?;
        if n < self.head.len()
            && let Ok(record) = Record::parse(&self.head[..n], name, boot)
        {
            return Ok(Ok(record));
        }
        self.whole.clear();
        self.whole.extend_from_slice(&self.head[..n]);
        file.take(MAX_STATE_BYTES + 1 - n as u64).read_to_end(&mut self.whole)?;
        if self.whole.len() as u64 > MAX_STATE_BYTES {
            return Ok(Err(format!("larger than {MAX_STATE_BYTES} bytes")));
        }
        Ok(Record::parse(&self.whole, name, boot))
    }
}

/// The fields a scanner reads, borrowed from the file's bytes unless they
/// hold escapes; `metadata` and unknown keys are checked (unique keys at
/// every depth) without being built.
///
/// The scanner refuses exactly the files [`read_state`](crate::read_state)
/// refuses, by the same rules, so a file has one reading: the top level must
/// be an object (serde's derived structs would also take an array, reading
/// `[123, ...]` as pid 123), no object may repeat a key, and every field
/// `read_state` checks is checked here too, even those a verdict does not
/// use (`started_at`, `interval_sec`, `schema_version`, `metadata`, and
/// `timestamp` beside a `last_refresh`). `null` counts as absent.
#[derive(Default)]
struct Raw<'a> {
    pid: Option<i64>,
    uuid: Option<JsonStr<'a>>,
    hostname: Option<JsonStr<'a>>,
    last_refresh: Option<JsonStr<'a>>,
    timestamp: Option<JsonStr<'a>>,
    started_at: Option<JsonStr<'a>>,
    interval_sec: Option<f64>,
    process_start_ticks: Option<u64>,
    boot_id: Option<JsonStr<'a>>,
}

/// The keys [`RawSeed`] reads or checks the type of.
const FIELDS: [&str; 11] = [
    "pid",
    "uuid",
    "hostname",
    "last_refresh",
    "timestamp",
    "started_at",
    "interval_sec",
    "process_start_ticks",
    "boot_id",
    "schema_version",
    "metadata",
];

/// Reads a [`Raw`] from one JSON object, refusing repeated keys.
struct RawSeed<'s> {
    check: UniqueKeys<'s>,
}

impl<'de, 's> DeserializeSeed<'de> for RawSeed<'s> {
    type Value = Raw<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Raw<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, 's> Visitor<'de> for RawSeed<'s> {
    type Value = Raw<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        let mut raw = Raw::default();
        let mut keys = KeySet::default();
        while let Some(JsonStr(key)) = map.next_key::<JsonStr<'de>>()? {
            let field = FIELDS.iter().position(|&f| f == key);
            // Before the value, as `read_state`'s check does: both stop at the same key.
            self.check.insert(&mut keys, key)?;
            match field.map(|i| FIELDS[i]) {
                Some("pid") => raw.pid = map.next_value()?,
                Some("uuid") => raw.uuid = map.next_value()?,
                Some("hostname") => raw.hostname = map.next_value()?,
                Some("last_refresh") => raw.last_refresh = map.next_value()?,
                Some("timestamp") => raw.timestamp = map.next_value()?,
                Some("started_at") => raw.started_at = map.next_value()?,
                Some("interval_sec") => raw.interval_sec = map.next_value()?,
                Some("process_start_ticks") => raw.process_start_ticks = map.next_value()?,
                Some("boot_id") => raw.boot_id = map.next_value()?,
                Some("schema_version") => {
                    map.next_value::<Option<u64>>()?;
                }
                Some("metadata") => map.next_value_seed(ObjectOrNull(self.check))?,
                _ => map.next_value_seed(self.check)?,
            }
        }
        Ok(raw)
    }
}

/// The facts a verdict is made from.
pub(crate) struct Record {
    pub(crate) pid: i64,
    pub(crate) uuid: String,
    pub(crate) hostname: Option<String>,
    pub(crate) last_beat: SystemTime,
    pub(crate) start_ticks: Option<u64>,
    /// Whether the file names a boot, and it is not this one.
    pub(crate) other_boot: bool,
    pub(crate) fallback: Option<String>,
}

/// A parser's message cut to at most about 200 bytes: it may quote a value
/// of the file whole, and the file may be a megabyte of anything.
fn cut(message: &str) -> String {
    const MAX: usize = 200;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// The PID and uuid a heartbeat file's name carries: `heartbeat-<pid>-<uuid>.json`.
pub(crate) fn name_parts(name: &OsStr) -> Option<(i64, &str)> {
    let stem = name.as_bytes().strip_prefix(PREFIX.as_bytes())?.strip_suffix(SUFFIX.as_bytes())?;
    let dash = stem.iter().position(|&b| b == b'-')?;
    let pid = std::str::from_utf8(&stem[..dash]).ok()?.parse().ok()?;
    // A uuid that is not UTF-8 is shown as best it can be; the PID is what matters.
    let uuid = std::str::from_utf8(&stem[dash + 1..]).unwrap_or("");
    Some((pid, uuid))
}

impl Record {
    /// The record in a file's contents, or why they are unusable.
    pub(crate) fn parse(bytes: &[u8], name: &OsStr, our_boot: Option<&str>) -> Result<Record, String> {
        let duplicate = std::cell::RefCell::new(None);
        let seed = RawSeed { check: UniqueKeys { duplicate: &duplicate } };
        let mut de = serde_json::Deserializer::from_slice(bytes);
        // Checked here so that serde never quotes a whole top-level string back.
        if !bytes.trim_ascii_start().starts_with(b"{") {
            return Err("not a heartbeat object: not a JSON object".into());
        }
        let raw = seed.deserialize(&mut de).and_then(|raw| de.end().map(|()| raw)).map_err(|e| {
            // serde quotes a value of the wrong type whole: cut it short.
            let e = cut(&e.to_string());
            if duplicate.borrow().is_some() {
                format!("refused: {e} (readers differ on which value counts)")
            } else {
                format!("not a heartbeat object: {e}")
            }
        })?;
        // Checked as read_state checks them, though no verdict uses them.
        if let Some(secs) = raw.interval_sec {
            Duration::try_from_secs_f64(secs).map_err(|_| "interval_sec is not a number of seconds >= 0")?;
        }
        if raw.started_at.is_some_and(|t| parse_timestamp(&t.0).is_none()) {
            return Err("started_at is not an RFC 3339 timestamp".into());
        }
        let last_beat = match (raw.last_refresh, raw.timestamp) {
            (None, None) => return Err("no last_refresh or timestamp".into()),
            (None, Some(t)) => parse_timestamp(&t.0).ok_or("timestamp is not an RFC 3339 timestamp")?,
            (Some(r), t) => {
                let last_beat = parse_timestamp(&r.0).ok_or("last_refresh is not an RFC 3339 timestamp")?;
                // Writers put the same text in both: parsed once then.
                if t.is_some_and(|t| t.0 != r.0 && parse_timestamp(&t.0).is_none()) {
                    return Err("timestamp is not an RFC 3339 timestamp".into());
                }
                last_beat
            }
        };
        let pid = raw.pid.ok_or("no pid")?;
        let uuid = match raw.uuid {
            Some(uuid) => uuid.0.into_owned(),
            None => name_parts(name).map(|(_, uuid)| uuid.to_owned()).unwrap_or_default(),
        };
        let other_boot = matches!((raw.boot_id, our_boot), (Some(theirs), Some(ours)) if theirs.0 != ours);
        Ok(Record {
            pid,
            uuid,
            hostname: raw.hostname.map(|h| h.0.into_owned()),
            last_beat,
            start_ticks: raw.process_start_ticks,
            other_boot,
            fallback: None,
        })
    }

    /// The seed's fallback: PID and uuid from the file name, time from the
    /// file's mtime. `None` if the name does not carry a PID.
    fn from_name(name: &OsStr, mtime: SystemTime, why: String) -> Option<Record> {
        let (pid, uuid) = name_parts(name)?;
        Some(Record {
            pid,
            uuid: uuid.to_owned(),
            hostname: None,
            last_beat: mtime,
            start_ticks: None,
            other_boot: false,
            fallback: Some(why),
        })
    }
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl Inner {
    /// One pass over the directory; see [`Scanner::scan`].
    fn scan(&self) -> Result<Scan> {
        let Some(dir) = self.open_dir()? else {
            return Ok(Scan::default());
        };
        let mut names = Vec::new();
        let mut ignored = Vec::new();
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            // Removed since we opened it: as good as missing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
            Err(e) => return Err(self.dir_error(e)),
        };
        for item in listing {
            let item = item.map_err(|e| self.dir_error(e))?;
            let name = item.file_name();
            if !is_heartbeat_name(&name) {
                continue;
            }
            // The type comes from the directory entry (no system call on
            // most file systems): FIFOs and devices are never opened.
            match item.file_type() {
                Ok(t) if t.is_file() => names.push(name),
                Ok(t) => ignored.push(IgnoredFile { path: item.path(), why: not_a_file(t).into() }),
                Err(_) => {} // gone already
            }
        }
        let earlier = std::mem::take(&mut *self.start_times.lock());
        let threads = self.threads.min(names.len() / FILES_PER_THREAD).max(1);
        let mut parts = if threads == 1 {
            vec![self.judge_all(&dir, &names, &earlier)]
        } else {
            let chunk = names.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let (dir, earlier) = (&dir, &earlier);
                let spawned: Vec<_> = names
                    .chunks(chunk)
                    .map(|part| {
                        let job = move || self.judge_all(dir, part, earlier);
                        thread::Builder::new()
                            .name("heartbeat-scan".into())
                            .spawn_scoped(scope, job)
                            .map_err(|_| part)
                    })
                    .collect();
                spawned
                    .into_iter()
                    .map(|spawned| match spawned {
                        Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                        // No thread to be had: read that part here.
                        Err(part) => self.judge_all(dir, part, earlier),
                    })
                    .collect()
            })
        };
        let mut known = HashMap::new();
        let mut scan = Scan { entries: Vec::new(), ignored };
        for (part, part_known) in &mut parts {
            scan.entries.append(&mut part.entries);
            scan.ignored.append(&mut part.ignored);
            known.extend(part_known.drain());
        }
        *self.start_times.lock() = known;
        self.remember(&scan.entries);
        Ok(scan)
    }

    /// Judges the files `names`; with the PID start times it looked up.
    fn judge_all(
        &self,
        dir: &File,
        names: &[OsString],
        earlier: &HashMap<i32, proc::Known>,
    ) -> (Scan, HashMap<i32, proc::Known>) {
        let mut reader = Reader::new(StartTimes::new(earlier));
        let mut scan = Scan { entries: Vec::with_capacity(names.len()), ignored: Vec::new() };
        for name in names {
            match self.judge(dir, name, &mut reader) {
                Judged::Entry(entry, _) => scan.entries.push(entry),
                Judged::Ignored(why) => scan.ignored.push(IgnoredFile { path: self.dir.join(name), why }),
                Judged::Gone => {}
            }
        }
        (scan, reader.starts.into_known())
    }

    /// `dir/name`, allocated once at its final size.
    fn path_of(&self, name: &OsStr) -> PathBuf {
        let mut path = PathBuf::with_capacity(self.dir.as_os_str().len() + 1 + name.len());
        path.push(&self.dir);
        path.push(name);
        path
    }

    fn dir_error(&self, source: io::Error) -> Error {
        Error::Directory { path: self.dir.clone(), source }
    }

    /// The directory, opened for `*at` calls; `None` if it does not exist.
    fn open_dir(&self) -> Result<Option<File>> {
        match OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(&self.dir) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // O_DIRECTORY refuses anything else unopened (a FIFO does not
            // wait): say what it is.
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => match std::fs::metadata(&self.dir) {
                Ok(meta) => {
                    let what = crate::files::kind(meta.file_type());
                    Err(self.dir_error(io::Error::new(e.kind(), format!("it is {what}, not a directory"))))
                }
                Err(_) => Err(self.dir_error(e)),
            },
            Err(e) => Err(self.dir_error(e)),
        }
    }

    /// Reads and judges the file `name` in `dir`, at the wall-clock time
    /// just before it is opened.
    fn judge(&self, dir: &File, name: &OsStr, reader: &mut Reader<'_>) -> Judged {
        let now = self.clock.wall();
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        let file = match crate::sys::open_at(dir.as_fd(), reader.c_name(name), flags) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Judged::Gone,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Judged::Ignored("a symbolic link; not followed".into());
            }
            Err(e) => return Judged::Ignored(format!("cannot open: {e}")),
        };
        // Listed as a file, but it may have been swapped since: check before reading.
        let meta = match file.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(meta) => return Judged::Ignored(not_a_file(meta.file_type()).into()),
            Err(e) => return Judged::Ignored(format!("cannot stat: {e}")),
        };
        let id = FileId { dev: meta.dev(), ino: meta.ino() };
        let parsed = match reader.read(&file, name, self.boot_id.as_deref()) {
            Ok(parsed) => parsed,
            Err(e) => return Judged::Ignored(format!("cannot read: {e}")),
        };
        let record = match parsed {
            Ok(record) => record,
            Err(why) => match meta.modified() {
                Err(e) => return Judged::Ignored(format!("{why}; no mtime: {e}")),
                Ok(mtime) => match Record::from_name(name, mtime, why.clone()) {
                    Some(record) => record,
                    None => return Judged::Ignored(format!("{why}; no pid in the file name")),
                },
            },
        };
        Judged::Entry(self.classify(self.path_of(name), record, now, &mut reader.starts), id)
    }

    fn classify(&self, path: PathBuf, r: Record, now: SystemTime, starts: &mut StartTimes<'_>) -> ScanEntry {
        let age = beat_age(r.last_beat, now).ok();
        let remote = r.hostname.as_deref().is_some_and(|h| h != self.hostname);
        let (status, why) = match age {
            Some(age) if age > self.stale_after => {
                (ScanStatus::Stale, ScanReason::TooOld { age, limit: self.stale_after })
            }
            _ if remote => match age {
                Some(_) => (ScanStatus::Remote, ScanReason::OtherHost),
                None => (
                    ScanStatus::Skewed,
                    ScanReason::Future { ahead: r.last_beat.duration_since(now).unwrap_or_default() },
                ),
            },
            _ => match (self.probe(&r, starts), age) {
                (Err(why), _) => (ScanStatus::Orphan, why),
                (Ok(_), None) => (
                    ScanStatus::Skewed,
                    ScanReason::Future { ahead: r.last_beat.duration_since(now).unwrap_or_default() },
                ),
                (Ok(identity_checked), Some(_)) => {
                    (ScanStatus::Fresh, ScanReason::Running { identity_checked })
                }
            },
        };
        ScanEntry {
            path,
            pid: r.pid,
            uuid: r.uuid,
            hostname: r.hostname,
            last_beat: r.last_beat,
            age,
            status,
            why,
            fallback: r.fallback,
        }
    }

    /// Whether the writer of a local record still runs: `Ok(identity_checked)`
    /// or the reason it does not.
    fn probe(&self, r: &Record, starts: &mut StartTimes<'_>) -> Result<bool, ScanReason> {
        if r.other_boot {
            return Err(ScanReason::OtherBoot);
        }
        let pid = match libc::pid_t::try_from(r.pid) {
            Ok(pid) if pid > 0 => pid,
            _ => return Err(ScanReason::BadPid),
        };
        if !crate::process::pid_alive(r.pid) {
            return Err(ScanReason::NotRunning);
        }
        let Some(recorded) = r.start_ticks else { return Ok(false) };
        match starts.get(pid) {
            Some(found) if found != recorded => Err(ScanReason::PidReused { recorded, found }),
            Some(_) => Ok(true),
            // Not readable here (hidepid, no /proc, or it just exited): alive by kill.
            None => Ok(false),
        }
    }

    /// Records the evidence of liveness a scan's entries carry.
    fn remember(&self, entries: &[ScanEntry]) {
        let now = self.clock.now();
        let evidence = entries
            .iter()
            .filter_map(|e| {
                let local = e.hostname.as_deref().is_none_or(|h| h == self.hostname);
                match (e.status, &e.why) {
                    (ScanStatus::Fresh, _) => Some(now),
                    // A writer of this host that beat, then went: alive at its last beat.
                    (ScanStatus::Stale, _)
                    | (ScanStatus::Orphan, ScanReason::NotRunning | ScanReason::PidReused { .. })
                        if local =>
                    {
                        now.checked_sub(e.age?)
                    }
                    // Another host's, another boot's, a PID no process can have, or undated.
                    _ => None,
                }
            })
            .max();
        if let Some(t) = evidence {
            let mut last = self.last_fresh.lock();
            *last = Some(last.map_or(t, |l| l.max(t)));
        }
    }

    fn cleanup(&self, remove: bool) -> Result<Cleanup> {
        let scan = self.scan()?;
        let mut done = Cleanup::default();
        let Some(dir) = self.open_dir()? else { return Ok(done) };
        let no_earlier = HashMap::new();
        let mut reader = Reader::new(StartTimes::new(&no_earlier));
        for entry in scan.entries.into_iter().filter(|e| e.status.is_removable()) {
            let Some(name) = entry.path.file_name().map(OsStr::to_owned) else { continue };
            match self.removal_check(&dir, &name, &mut reader) {
                Err(why) => done.kept.push((entry, why)),
                Ok(None) => done.removed.push(entry),
                Ok(Some(_)) if !remove => done.removed.push(entry),
                Ok(Some(id)) => match self.remove(&dir, &name, id, &mut reader) {
                    Ok(()) => done.removed.push(entry),
                    Err(Removal::Kept(why)) => done.kept.push((entry, why)),
                    Err(Removal::Failed(why)) => done.failed.push((entry, why)),
                },
            }
        }
        Ok(done)
    }

    /// Checks, just before removal, that `name` is still a regular heartbeat
    /// file directly in the directory and still STALE or ORPHAN: `Some` with
    /// the file judged, `None` if it is gone already (which counts as removed).
    fn removal_check(
        &self,
        dir: &File,
        name: &OsStr,
        reader: &mut Reader<'_>,
    ) -> Result<Option<FileId>, String> {
        if !is_heartbeat_name(name) {
            return Err("not a heartbeat file name".into());
        }
        match self.judge(dir, name, reader) {
            Judged::Entry(again, id) if again.status.is_removable() => Ok(Some(id)),
            Judged::Entry(again, _) => Err(format!("now {}: {}", again.status, again.why)),
            Judged::Gone => Ok(None),
            Judged::Ignored(why) => Err(why),
        }
    }

    /// Unlinks `name` if it is still the file `id` that was judged: a writer
    /// that renamed a new file into place since keeps it.
    fn remove(&self, dir: &File, name: &OsStr, id: FileId, reader: &mut Reader<'_>) -> Result<(), Removal> {
        let name = reader.c_name(name);
        match crate::sys::stat_at(dir.as_fd(), name) {
            Ok(st) if st.regular && st.dev == id.dev && st.ino == id.ino => {}
            Ok(_) => return Err(Removal::Kept("replaced since it was judged".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Removal::Failed(format!("cannot stat: {e}"))),
        }
        match crate::sys::unlink_at(dir.as_fd(), name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Removal::Failed(format!("cannot remove: {e}"))),
        }
    }
}

/// Why a file was not removed: on purpose, or an error.
#[derive(Debug, PartialEq, Eq)]
enum Removal {
    Kept(String),
    Failed(String),
}

/// Why a directory entry of this type is not read.
fn not_a_file(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link; not followed"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO, not a regular file"
    } else if t.is_char_device() || t.is_block_device() {
        "a device, not a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn raw(json: &[u8]) -> Result<Raw<'_>, serde_json::Error> {
        let duplicate = std::cell::RefCell::new(None);
        let seed = RawSeed { check: UniqueKeys { duplicate: &duplicate } };
        seed.deserialize(&mut serde_json::Deserializer::from_slice(json))
    }

    #[test]
    fn strings_are_borrowed_unless_they_hold_escapes() {
        let raw = raw(br#"{"pid": 1, "uuid": "plain", "hostname": "a\u0041"}"#).unwrap();
        assert!(matches!(raw.uuid, Some(JsonStr(Cow::Borrowed("plain")))));
        assert!(matches!(raw.hostname, Some(JsonStr(Cow::Owned(ref h))) if h == "aA"));
    }

    #[test]
    fn errors_never_quote_a_whole_value() {
        // Found by the `state_file` fuzz target (fuzz/regressions/state_file/
        // long-string-quoted): serde's "invalid type" quotes the value whole.
        let name = OsStr::new("heartbeat-1-x.json");
        let long = "a".repeat(100_000);
        for json in [format!("{long:?}"), format!(r#"{{"pid": {long:?}}}"#), format!(r#" [{long:?}]"#)] {
            let why = Record::parse(json.as_bytes(), name, None).err().unwrap();
            assert!(why.len() <= 300, "{} bytes: {}", why.len(), &why[..300]);
        }
        let why = Record::parse(b"  \"x\"", name, None).err().unwrap();
        assert_eq!(why, "not a heartbeat object: not a JSON object");
    }

    #[test]
    fn an_array_is_not_a_record() {
        // Finding 2 of the fuzzing round (fuzz/regressions/state_file/array-record):
        // serde's derived structs take a sequence, so this read as pid 123.
        let array = br#"[123,"u","h","2026-05-02T15:14:30Z",null,null,null]"#;
        let why = Record::parse(array, OsStr::new("heartbeat-1-x.json"), None).err().unwrap();
        assert_eq!(why, "not a heartbeat object: not a JSON object");
        assert!(HeartbeatStateReader::refuses(array));
    }

    #[test]
    fn a_repeated_key_is_refused_as_read_state_refuses_it() {
        // Finding 1 (fuzz/regressions/state_file/duplicate-timestamp): the
        // scanner refused it, read_state took the last value.
        let name = OsStr::new("heartbeat-7-x.json");
        let finding = br#"{"pid":7,"timestamp":7,"timestamp":"1151-12-31T23:59:60Z"}"#;
        // The scanner stops at the first `timestamp` (not a string); read_state
        // at the second (repeated): both refuse.
        assert!(Record::parse(finding, name, None).is_err());
        assert!(HeartbeatStateReader::refuses(finding));
        for json in [
            br#"{"pid":7,"timestamp":"2026-05-02T15:14:30Z","timestamp":"2026-05-02T15:14:30Z"}"#,
            &br#"{"pid":7,"timestamp":"2026-05-02T15:14:30Z","pid":8}"#[..],
            br#"{"pid":7,"timestamp":"2026-05-02T15:14:30Z","x":1,"x":1}"#,
            br#"{"pid":7,"timestamp":"2026-05-02T15:14:30Z","metadata":{"a":1,"a":2}}"#,
        ] {
            let why = Record::parse(json, name, None).err().unwrap();
            assert!(why.starts_with("refused: duplicate key"), "{why}");
            assert!(HeartbeatStateReader::refuses(json));
        }
        // Once each: read by both.
        let ok = br#"{"pid":7,"timestamp":"2026-05-02T15:14:30Z","x":{"a":1},"y":{"a":1}}"#;
        assert_eq!(Record::parse(ok, name, None).unwrap().pid, 7);
        assert!(!HeartbeatStateReader::refuses(ok));
    }

    #[test]
    fn deep_nesting_is_refused_alike_and_never_overflows() {
        // serde_json's recursion limit (128) bounds both readers' descent;
        // they must draw the line at the same depth, and a megabyte of
        // brackets is an error, not a stack overflow.
        let name = OsStr::new("heartbeat-1-x.json");
        let beat = r#""pid": 1, "timestamp": "2026-05-02T15:14:30Z""#;
        for (key, open, close) in [("x", "[", "]"), ("x", r#"{"a":"#, "}"), ("metadata", r#"{"a":"#, "}")] {
            for depth in [1, 126, 127, 500_000] {
                let json = format!("{{{beat}, {key:?}: {}1{}}}", open.repeat(depth), close.repeat(depth));
                let scanner = Record::parse(json.as_bytes(), name, None);
                assert_eq!(scanner.is_ok(), depth <= 126, "{key} {open} x{depth}: {:?}", scanner.err());
                assert_eq!(
                    HeartbeatStateReader::refuses(json.as_bytes()),
                    depth > 126,
                    "{key} {open} x{depth}"
                );
            }
        }
    }

    #[test]
    fn fields_no_verdict_uses_are_still_checked() {
        let name = OsStr::new("heartbeat-7-x.json");
        let beat = r#""pid": 7, "last_refresh": "2026-05-02T15:14:30Z""#;
        for extra in [
            r#""timestamp": "soon""#,
            r#""started_at": "yesterday""#,
            r#""interval_sec": -1"#,
            r#""schema_version": "1""#,
            r#""metadata": [1]"#,
        ] {
            let json = format!("{{{beat}, {extra}}}");
            assert!(Record::parse(json.as_bytes(), name, None).is_err(), "{json}");
            assert!(HeartbeatStateReader::refuses(json.as_bytes()), "{json}");
        }
        let json = format!(
            r#"{{{beat}, "timestamp": null, "metadata": null, "started_at": "2026-05-02T15:00:00Z"}}"#
        );
        assert!(Record::parse(json.as_bytes(), name, None).is_ok());
        assert!(!HeartbeatStateReader::refuses(json.as_bytes()));
    }

    /// `read_state`'s parser, for comparison.
    struct HeartbeatStateReader;

    impl HeartbeatStateReader {
        fn refuses(bytes: &[u8]) -> bool {
            crate::HeartbeatState::from_json(bytes, Path::new("f.json")).is_err()
        }
    }

    #[test]
    fn names_carry_pid_and_uuid_in_bytes() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(name_parts(OsStr::new("heartbeat-42-a-b-c.json")), Some((42, "a-b-c")));
        assert_eq!(name_parts(OsStr::from_bytes(b"heartbeat-42-\xff.json")), Some((42, "")));
        assert_eq!(name_parts(OsStr::new("heartbeat-x-1.json")), None);
        assert_eq!(name_parts(OsStr::new("heartbeat-42.json")), None);
    }

    #[test]
    fn removal_spares_a_file_replaced_since_it_was_judged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heartbeat-1-x.json");
        std::fs::write(&path, "{}").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let judged = FileId { dev: meta.dev(), ino: meta.ino() };
        let scanner = Scanner::new(dir.path());
        let handle = scanner.inner.open_dir().unwrap().unwrap();
        let no_earlier = HashMap::new();
        let mut reader = Reader::new(StartTimes::new(&no_earlier));
        let name = path.file_name().unwrap();

        let other = FileId { ino: judged.ino + 1, ..judged };
        let kept = scanner.inner.remove(&handle, name, other, &mut reader);
        assert_eq!(kept, Err(Removal::Kept("replaced since it was judged".into())));
        assert!(path.exists());
        assert_eq!(scanner.inner.remove(&handle, name, judged, &mut reader), Ok(()));
        assert!(!path.exists());
        assert_eq!(
            scanner.inner.remove(&handle, name, judged, &mut reader),
            Ok(()),
            "gone counts as removed"
        );
    }
}
