//! The `Beater`: one owned thread that proves this process is alive by
//! rewriting its heartbeat file every interval, and, when asked, its key in
//! etcd.

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::etcd::{self, Client, Presence, Publisher};
use crate::state::{HeartbeatState, MAX_STATE_BYTES, WriteOptions, write_atomic};
use crate::systemd::Notifier;
use crate::ticker::{Ticker, contained};

/// The beat interval when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest interval accepted; shorter ones are raised to it.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval accepted; longer ones are lowered to it.
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// Something whose health the beat thread watches alongside its own beats,
/// such as a connection that may die. Closures `Fn() -> bool` are targets.
pub trait Target: Send + Sync {
    /// Whether the target is dead and needs recovering.
    fn is_dead(&self) -> bool;
}

impl<F: Fn() -> bool + Send + Sync> Target for F {
    fn is_dead(&self) -> bool {
        self()
    }
}

type Callback = Arc<dyn Fn() + Send + Sync>;
type MissedCallback = Arc<dyn Fn(&Error) + Send + Sync>;
type AlertCallback = Arc<dyn Fn(&str, &str, &Map<String, Value>) + Send + Sync>;

/// Where beats go.
#[derive(Debug, Clone)]
enum Location {
    /// Callbacks (and systemd) only.
    Nowhere,
    File(PathBuf),
    /// `heartbeat-<pid>-<uuid>.json` in this directory.
    Directory(PathBuf),
}

/// Configures a [`Beater`]. Get one from [`Beater::builder`].
#[must_use]
pub struct BeaterBuilder {
    location: Location,
    interval: Duration,
    metadata: Map<String, Value>,
    on_beat: Option<Callback>,
    on_missed_beat: Option<MissedCallback>,
    on_alert: Option<AlertCallback>,
    target: Option<(Arc<dyn Target>, &'static str)>,
    on_target_dead: Option<Callback>,
    remove_on_stop: Option<bool>,
    write: WriteOptions,
    systemd: bool,
    lock: FileLock,
    clock: SharedClock,
    etcd: Option<EtcdChoice>,
    etcd_prefix: String,
}

/// How a beater was asked to reach etcd.
enum EtcdChoice {
    /// A presence shared with other publishers of this process.
    Shared(Presence),
    /// A client: the beater keeps a presence (a lease) of its own.
    Own(Client),
}

/// Whether a beater locks its heartbeat file against other beaters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileLock {
    None,
    Exclusive,
    TakeOver,
}

impl BeaterBuilder {
    /// Beat into this file. Without a file or directory the beater writes
    /// nothing and only runs its callbacks (and systemd notifications).
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.location = Location::File(path.into());
        self
    }

    /// Beat into `heartbeat-<pid>-<uuid>.json` inside `dir`, the naming
    /// directory scanners expect. The file is removed on a clean stop unless
    /// [`remove_on_stop(false)`](Self::remove_on_stop) says otherwise.
    pub fn directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.location = Location::Directory(dir.into());
        self
    }

    /// Time between beats; default 10 s, clamped to [1 s, 300 s]
    /// ([`effective_interval`](Self::effective_interval) says what a given
    /// interval becomes, and a clamped one is logged as a warning).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The interval the beater will use: the one asked for, clamped into
    /// [[`MIN_INTERVAL`], [`MAX_INTERVAL`]]. Different from what was asked
    /// for exactly when it was clamped; [`Beater::interval`] says the same
    /// once built.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = heartbeat::Beater::builder().interval(Duration::from_millis(100));
    /// assert_eq!(builder.effective_interval(), Duration::from_secs(1));
    /// ```
    pub fn effective_interval(&self) -> Duration {
        clamp_interval(self.interval)
    }

    /// Hold an advisory lock (`flock` on `<file>.lock`, beside the state
    /// file) for the beater's lifetime, so that a second beater on the same
    /// file is refused at [`build`](BeaterBuilder::build) with
    /// [`Error::Locked`], which names the holder's pid. The kernel releases
    /// the lock when its holder exits, crash included, so there is never a
    /// stale lock; a clean drop also removes the lock file. Default off. Only
    /// for an explicit [`state_file`](Self::state_file): directory mode names
    /// its file after the process and needs none.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.lock = if exclusive { FileLock::Exclusive } else { FileLock::None };
        self
    }

    /// Like [`exclusive`](Self::exclusive), but take the file over from a
    /// beater that holds it: this one gets a new lock file, and the old
    /// beater notices at its next beat, stops writing the file (each beat
    /// then fails with [`Error::TakenOver`]) and leaves it in place when it
    /// stops.
    /// `take_over(false)` leaves a plain [`exclusive`](Self::exclusive) lock.
    pub fn take_over(mut self, take_over: bool) -> Self {
        self.lock = match (take_over, self.lock) {
            (true, _) => FileLock::TakeOver,
            (false, FileLock::TakeOver) => FileLock::Exclusive,
            (false, lock) => lock,
        };
        self
    }

    /// Adds one `metadata` entry to every beat.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Called on the beat thread after each successful beat.
    pub fn on_beat(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_beat = Some(Arc::new(f));
        self
    }

    /// Called on the beat thread with the error when a beat cannot be written.
    /// The thread goes on beating.
    pub fn on_missed_beat(mut self, f: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_missed_beat = Some(Arc::new(f));
        self
    }

    /// Called as `(channel, message, context)` when the beater has something
    /// to raise, e.g. `("heartbeat", "Target is dead, triggering recovery",
    /// {"target": "<type name>"})`.
    pub fn on_alert(mut self, f: impl Fn(&str, &str, &Map<String, Value>) + Send + Sync + 'static) -> Self {
        self.on_alert = Some(Arc::new(f));
        self
    }

    /// Checks `target` after every beat; while it is dead, each tick raises
    /// an alert and then calls [`on_target_dead`](Self::on_target_dead).
    pub fn target<T: Target + 'static>(mut self, target: T) -> Self {
        self.target = Some((Arc::new(target), std::any::type_name::<T>()));
        self
    }

    /// Called on the beat thread each tick the target is dead.
    pub fn on_target_dead(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_target_dead = Some(Arc::new(f));
        self
    }

    /// Remove the heartbeat file when the beater stops. Default: yes in
    /// directory mode, no for an explicit state file.
    pub fn remove_on_stop(mut self, remove: bool) -> Self {
        self.remove_on_stop = Some(remove);
        self
    }

    /// fsync the file and its directory on every beat. Default off.
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.write.fsync = fsync;
        self
    }

    /// The heartbeat file's permission bits. Default `0o644`.
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.write.mode = mode;
        self
    }

    /// Also notify systemd (`READY=1` once, `WATCHDOG=1` each beat) when
    /// `$NOTIFY_SOCKET` is set. Nothing happens when it is not.
    pub fn systemd(mut self, enable: bool) -> Self {
        self.systemd = enable;
        self
    }

    /// The clock beats are timed and stamped with. Default: the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Also publish each beat to etcd through `client`, under a lease of the
    /// beater's own: the key `<prefix>hosts/<host>/<pid>-<uuid>`
    /// ([`Publisher::process_key`], prefix from
    /// [`etcd_prefix`](Self::etcd_prefix)) holds the same heartbeat JSON as
    /// the file, rewritten every beat. Besides the file, or instead of it
    /// when no file or directory is given.
    ///
    /// The lease's TTL is 3 intervals (rounded up to whole seconds, at
    /// least [`etcd::MIN_TTL`]), so a crashed or frozen process drops out
    /// of etcd within about 3 intervals. The
    /// [`Presence`] is started with the first beat and stopped by a clean
    /// stop, which revokes the lease: the key goes at once. Publishing never
    /// holds a beat up: etcd down or slow makes no beat fail and calls no
    /// `on_missed_beat`; the presence retries on its own thread and logs
    /// its state changes. Replaces an earlier [`etcd`](Self::etcd).
    pub fn etcd_client(mut self, client: Client) -> Self {
        self.etcd = Some(EtcdChoice::Own(client));
        self
    }

    /// Also publish each beat to etcd through `presence`, a lease this
    /// process already holds (shared with a monitor or a hub in the same
    /// process: one lease per process). The key and value are those of
    /// [`etcd_client`](Self::etcd_client); a clean stop removes only this
    /// beater's key and leaves the lease and its other keys alone. Replaces
    /// an earlier [`etcd_client`](Self::etcd_client).
    pub fn etcd(mut self, presence: Presence) -> Self {
        self.etcd = Some(EtcdChoice::Shared(presence));
        self
    }

    /// The prefix of the etcd key; default [`etcd::DEFAULT_PREFIX`]
    /// (`heartbeat/`). Checked at [`build`](Self::build) with
    /// [`etcd::check_prefix`].
    pub fn etcd_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.etcd_prefix = prefix.into();
        self
    }

    /// Checks the configuration and builds the beater (not yet started).
    pub fn build(self) -> Result<Beater> {
        let interval = clamp_interval(self.interval);
        if interval != self.interval {
            log::warn!(
                "heartbeat interval {:?} is outside [{MIN_INTERVAL:?}, {MAX_INTERVAL:?}]; using {interval:?}",
                self.interval
            );
        }
        let state = HeartbeatState::for_current_process(self.clock.wall(), interval, self.metadata);
        let size = state.to_json().len();
        if size as u64 > MAX_STATE_BYTES - TIMESTAMP_ROOM {
            return Err(Error::InvalidConfig(format!(
                "the heartbeat file would be {size} bytes, more than readers accept ({MAX_STATE_BYTES}): \
                 the metadata is too large"
            )));
        }
        let (path, remove_default) = match &self.location {
            Location::Nowhere => (None, false),
            Location::File(p) => {
                // Whatever is there is replaced by a rename at each beat:
                // a FIFO, socket or device someone named is refused rather
                // than silently replaced.
                if let Ok(meta) = std::fs::metadata(p).map(|m| m.file_type())
                    && !meta.is_file()
                {
                    return Err(Error::InvalidConfig(format!(
                        "heartbeat file {} is {}, not a regular file",
                        p.display(),
                        crate::files::kind(meta)
                    )));
                }
                (Some(p.clone()), false)
            }
            Location::Directory(dir) => {
                if let Ok(meta) = std::fs::metadata(dir).map(|m| m.file_type())
                    && !meta.is_dir()
                {
                    return Err(Error::InvalidConfig(format!(
                        "heartbeat directory {} is {}, not a directory",
                        dir.display(),
                        crate::files::kind(meta)
                    )));
                }
                let uuid = state.uuid.as_deref().expect("for_current_process sets a uuid");
                (Some(dir.join(format!("heartbeat-{}-{uuid}.json", state.pid))), true)
            }
        };
        // Checked before the lock is taken: a bad prefix must not take a
        // file over from another beater.
        let etcd = match self.etcd {
            None => None,
            Some(choice) => {
                etcd::check_prefix(&self.etcd_prefix)?;
                let uuid = state.uuid.clone().expect("for_current_process sets a uuid");
                let key = Publisher::this_process(uuid).process_key(&self.etcd_prefix);
                let presence = match choice {
                    EtcdChoice::Shared(presence) => EtcdPresence::Shared(presence),
                    EtcdChoice::Own(client) => EtcdPresence::Own {
                        client,
                        // Whole seconds, rounded up: never shorter than 3 intervals.
                        ttl: Duration::from_secs((interval * 3).as_nanos().div_ceil(1_000_000_000) as u64)
                            .max(etcd::MIN_TTL),
                        running: Mutex::new(None),
                    },
                };
                Some(EtcdLink { key, presence })
            }
        };
        let lock = match (&path, &self.location, self.lock) {
            (Some(path), Location::File(_), FileLock::Exclusive | FileLock::TakeOver) => {
                Some(LockFile::acquire(path, self.lock == FileLock::TakeOver)?)
            }
            _ => None,
        };
        let notifier = if self.systemd {
            Notifier::from_env().map_err(|e| Error::InvalidConfig(format!("systemd notification: {e}")))?
        } else {
            None
        };
        Ok(Beater {
            inner: Arc::new(Inner {
                path,
                interval,
                write: self.write,
                remove_on_stop: self.remove_on_stop.unwrap_or(remove_default),
                on_beat: self.on_beat,
                on_missed_beat: self.on_missed_beat,
                on_alert: self.on_alert,
                target: self.target,
                on_target_dead: self.on_target_dead,
                clock: self.clock,
                etcd,
                writer: Mutex::new(Writer { state, buf: Vec::with_capacity(512), notifier, lock }),
                worker: Mutex::new(None),
                stop_requested: AtomicBool::new(false),
                shutdown: AtomicBool::new(false),
            }),
        })
    }
}

/// Clamps an interval into [`MIN_INTERVAL`, `MAX_INTERVAL`].
pub fn clamp_interval(interval: Duration) -> Duration {
    interval.clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Writes this process's heartbeat every interval on a thread of its own.
///
/// ```
/// use std::time::Duration;
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.heartbeat.json");
/// let beater = heartbeat::Beater::builder()
///     .state_file(&path)
///     .interval(Duration::from_secs(10))
///     .metadata("version", "1.2.3")
///     .build()?;
/// let guard = beater.start()?; // the first beat is on disk when this returns
/// assert!(heartbeat::is_alive(&path, Duration::from_secs(30)));
/// drop(guard); // stops the thread; so does `beater.stop()`
/// # Ok::<(), heartbeat::Error>(())
/// ```
///
/// Cloning a `Beater` gives another handle to the same beater.
#[derive(Clone)]
pub struct Beater {
    inner: Arc<Inner>,
}

struct Inner {
    path: Option<PathBuf>,
    interval: Duration,
    write: WriteOptions,
    remove_on_stop: bool,
    on_beat: Option<Callback>,
    on_missed_beat: Option<MissedCallback>,
    on_alert: Option<AlertCallback>,
    target: Option<(Arc<dyn Target>, &'static str)>,
    on_target_dead: Option<Callback>,
    clock: SharedClock,
    /// Where beats are published in etcd, if they are.
    etcd: Option<EtcdLink>,
    /// The state template, the serialization buffer and the systemd socket:
    /// one beat at a time, whether from the thread or from `beat()`.
    writer: Mutex<Writer>,
    /// The running thread. Held across `join` in `stop`, so start and stop
    /// never interleave; the beat thread itself never takes it.
    worker: Mutex<Option<Worker>>,
    /// Set by `stop()` called from a callback on the beat thread.
    stop_requested: AtomicBool,
    shutdown: AtomicBool,
}

/// A beater's key in etcd, and the presence that publishes it.
struct EtcdLink {
    key: String,
    presence: EtcdPresence,
}

enum EtcdPresence {
    /// Given by the user, shared: a stop removes only our key.
    Shared(Presence),
    /// Ours: started by the first beat, stopped (lease revoked) by a stop.
    Own { client: Client, ttl: Duration, running: Mutex<Option<Presence>> },
}

impl EtcdLink {
    /// Publishes `json` under our key. Never waits for etcd: `Presence::set`
    /// records the value and wakes the presence thread.
    fn publish(&self, json: &[u8]) -> Result<()> {
        match &self.presence {
            EtcdPresence::Shared(p) => p.set(self.key.as_str(), json),
            EtcdPresence::Own { client, ttl, running } => {
                let mut running = running.lock();
                if running.is_none() {
                    log::info!("publishing to etcd at {} as {}", client.endpoints().join(","), self.key);
                    *running = Some(Presence::start(client.clone(), *ttl)?);
                }
                if let Some(p) = running.as_ref() {
                    p.set(self.key.as_str(), json);
                }
            }
        }
        Ok(())
    }

    /// A clean stop: our own presence is stopped (its lease revoked, the key
    /// gone at once); from a shared one, only our key is removed.
    fn withdraw(&self) {
        match &self.presence {
            EtcdPresence::Shared(p) => p.remove(&self.key),
            EtcdPresence::Own { running, .. } => {
                // Taken out first: a stop waits for the revoke, never under the lock.
                let presence = running.lock().take();
                if let Some(p) = presence {
                    p.stop();
                }
            }
        }
    }

    fn presence(&self) -> Option<Presence> {
        match &self.presence {
            EtcdPresence::Shared(p) => Some(p.clone()),
            EtcdPresence::Own { running, .. } => running.lock().clone(),
        }
    }
}

struct Writer {
    state: HeartbeatState,
    buf: Vec<u8>,
    notifier: Option<Notifier>,
    /// The advisory lock, when the beater holds one; dropped with the beater.
    lock: Option<LockFile>,
}

/// Room kept below [`MAX_STATE_BYTES`] when metadata is checked at build:
/// the timestamps, pid and host name that change between beats.
const TIMESTAMP_ROOM: u64 = 1024;

/// An advisory lock on `<file>.lock`: `flock`, so it belongs to this open
/// file (two beaters in one process exclude each other too) and the kernel
/// drops it when the process dies.
struct LockFile {
    path: PathBuf,
    file: std::fs::File,
}

impl LockFile {
    fn path_for(state_file: &Path) -> PathBuf {
        let mut name = state_file.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    fn acquire(state_file: &Path, take_over: bool) -> Result<LockFile> {
        use std::fs::{self, OpenOptions};
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

        let path = Self::path_for(state_file);
        // Errors name the file the user gave, and the lock file as its part.
        let err = |source: std::io::Error| Error::Write {
            path: state_file.to_owned(),
            source: std::io::Error::new(source.kind(), format!("its lock file {}: {source}", path.display())),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(|source| Error::Write {
                path: state_file.to_owned(),
                source: std::io::Error::new(
                    source.kind(),
                    format!("cannot create its directory {}: {source}", dir.display()),
                ),
            })?;
        }
        // A few rounds: a lock file can be removed (by its holder's clean
        // exit, or a take-over) between our open and our lock.
        for _ in 0..16 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(err)?;
            // O_NOFOLLOW stops a symlink; a hard link to someone's file, or a
            // FIFO, planted in a shared directory must not be truncated or
            // written either.
            let meta = file.metadata().map_err(err)?;
            if !meta.file_type().is_file() || std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
                return Err(err(std::io::Error::other(
                    "not a regular file with a single link: refusing to use it as a lock file",
                )));
            }
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = Self::holder(&file);
                    if take_over {
                        log::warn!(
                            "taking {} over from another beater{}",
                            state_file.display(),
                            crate::error::PidSuffix(holder)
                        );
                        match fs::remove_file(&path) {
                            Ok(()) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(err(e)),
                        }
                    }
                    return Err(Error::Locked { path: state_file.to_owned(), holder });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
            }
            let lock = LockFile { path: path.clone(), file };
            if !lock.is_current() {
                continue; // removed or replaced since we opened it: try the new one
            }
            lock.file.set_len(0).map_err(err)?;
            writeln!(&lock.file, "{}", std::process::id()).map_err(err)?;
            return Ok(lock);
        }
        Err(err(std::io::Error::other("the lock file keeps changing under us")))
    }

    /// The pid the lock file we opened names, if it names one yet. Read
    /// from the open file, checked regular: the path may be a FIFO by now.
    fn holder(mut file: &std::fs::File) -> Option<u32> {
        use std::io::Read;
        let mut text = String::new();
        file.by_ref().take(64).read_to_string(&mut text).ok()?;
        text.trim().parse().ok()
    }

    /// Whether the lock file at `path` is still the one we hold: not
    /// removed, nor replaced by a take-over.
    fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(ours), Ok(there)) => ours.ino() == there.ino() && ours.dev() == there.dev(),
            _ => false,
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Removed while still locked, so nobody can lock the old inode in
        // between and believe it holds the file (acquire re-checks too).
        if self.is_current() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Worker {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

thread_local! {
    /// The `Inner` whose beat thread this is (as an address), so that `stop`
    /// and `start` called from a callback neither join nor lock themselves.
    static BEAT_THREAD_OF: Cell<usize> = const { Cell::new(0) };
}

impl Beater {
    /// A builder with the defaults: no file, 10 s interval, no callbacks.
    pub fn builder() -> BeaterBuilder {
        BeaterBuilder {
            location: Location::Nowhere,
            interval: DEFAULT_INTERVAL,
            metadata: Map::new(),
            on_beat: None,
            on_missed_beat: None,
            on_alert: None,
            target: None,
            on_target_dead: None,
            remove_on_stop: None,
            write: WriteOptions::default(),
            systemd: false,
            lock: FileLock::None,
            clock: Arc::new(SystemClock),
            etcd: None,
            etcd_prefix: etcd::DEFAULT_PREFIX.to_owned(),
        }
    }

    /// The heartbeat file, if the beater writes one (in directory mode, the
    /// `heartbeat-<pid>-<uuid>.json` inside the directory).
    pub fn state_file(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The interval in force, after clamping.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// The etcd key beats are published under
    /// (`<prefix>hosts/<host>/<pid>-<uuid>`), if they are.
    pub fn etcd_key(&self) -> Option<&str> {
        self.inner.etcd.as_ref().map(|e| e.key.as_str())
    }

    /// The [`Presence`] publishing this beater's key, for its
    /// [`status`](Presence::status): the one given to
    /// [`BeaterBuilder::etcd`], or the beater's own while it runs (from its
    /// first beat to its stop; `None` before and after). A handle on it:
    /// stopping it early ends the beater's publishing too (dropping it
    /// does not: the beater holds its own handle).
    pub fn presence(&self) -> Option<Presence> {
        self.inner.etcd.as_ref().and_then(EtcdLink::presence)
    }

    /// This process run's uuid, as written in the file.
    pub fn uuid(&self) -> String {
        self.inner.writer.lock().state.uuid.clone().unwrap_or_default()
    }

    /// Replaces one `metadata` entry; the next beat carries it.
    pub fn set_metadata(&self, key: impl Into<String>, value: impl Into<Value>) {
        self.inner.writer.lock().state.metadata.insert(key.into(), value.into());
    }

    /// Starts the beat thread. The first beat is made before this returns,
    /// so the process is visible at once; a failure of that beat goes to
    /// `on_missed_beat` like any other (call [`beat`](Self::beat) first to
    /// fail fast instead).
    ///
    /// The returned guard stops the thread when dropped, also while a panic
    /// unwinds. Errors with [`Error::AlreadyRunning`] if the thread runs, and
    /// [`Error::ShutDown`] after [`shutdown`](Self::shutdown).
    pub fn start(&self) -> Result<BeatGuard> {
        if self.on_beat_thread() {
            return Err(Error::AlreadyRunning);
        }
        let first_beat = {
            let mut worker = self.inner.worker.lock();
            if self.is_shutdown() {
                return Err(Error::ShutDown);
            }
            if let Some(w) = worker.take() {
                if !w.handle.is_finished() {
                    *worker = Some(w);
                    return Err(Error::AlreadyRunning);
                }
                // It stopped itself from a callback: reap it and start afresh.
                let _ = w.handle.join();
            }
            self.inner.stop_requested.store(false, Ordering::SeqCst);
            self.inner.writer.lock().state.started_at = Some(self.inner.clock.wall());
            let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
            let (first_tx, first_rx) = crossbeam_channel::bounded(1);
            let inner = Arc::clone(&self.inner);
            let handle = thread::Builder::new()
                .name("heartbeat-beater".into())
                .spawn(move || inner.run(&stop_rx, first_tx))?;
            *worker = Some(Worker { stop: stop_tx, handle });
            first_rx
        };
        // Once the first beat is written (callbacks may still be running), or
        // the thread was stopped before it: never under the lock, so `stop`
        // and `is_running` from other threads stay prompt.
        let _ = first_beat.recv();
        Ok(BeatGuard { beater: self.clone() })
    }

    /// Stops the beat thread and waits for it to finish its current beat;
    /// never waits out an interval. With `remove_on_stop`, the file is gone
    /// when this returns. The etcd key (if any) is withdrawn: the beater's
    /// own lease is revoked before this returns (bounded by about two of
    /// the client's timeouts per endpoint: a request in flight, then the
    /// revoke), so the key is gone at once; a
    /// shared [`Presence`] is told to delete the key. Safe to call any
    /// number of times, and when never started. Called from one of this
    /// beater's callbacks, it asks the thread to stop once the callback
    /// returns.
    pub fn stop(&self) {
        if self.on_beat_thread() {
            self.inner.stop_requested.store(true, Ordering::SeqCst);
            return;
        }
        let mut worker = self.inner.worker.lock();
        if let Some(w) = worker.take() {
            let _ = w.stop.try_send(());
            if w.handle.join().is_err() {
                log::error!("heartbeat beat thread panicked");
            }
        }
        // Also after a `beat()` without the thread, and after a panicked thread.
        if let Some(etcd) = &self.inner.etcd {
            etcd.withdraw();
        }
    }

    /// Sets the shutdown flag ([`is_shutdown`](Self::is_shutdown)) and stops.
    /// A beater that was shut down does not start again.
    pub fn shutdown(&self) {
        log::info!("heartbeat shutdown requested");
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.stop();
    }

    /// Whether [`shutdown`](Self::shutdown) was called: other code can tell
    /// an intentional stop from a failure.
    pub fn is_shutdown(&self) -> bool {
        self.inner.shutdown.load(Ordering::SeqCst)
    }

    /// Whether the beat thread is running.
    pub fn is_running(&self) -> bool {
        if self.on_beat_thread() {
            return !self.inner.stop_requested.load(Ordering::SeqCst);
        }
        self.inner.worker.lock().as_ref().is_some_and(|w| !w.handle.is_finished())
    }

    /// Writes a beat now, on the calling thread, whether or not the thread
    /// runs. Callbacks are not called; the error is returned instead.
    /// With etcd, the key is set too (without waiting for etcd: the first
    /// call starts the beater's own [`Presence`], which a [`stop`](Self::stop)
    /// or the drop of the beater revokes). Without a state file or etcd this
    /// only notifies systemd (when enabled).
    pub fn beat(&self) -> Result<()> {
        self.inner.write_beat()
    }

    pub(crate) fn on_beat_thread(&self) -> bool {
        BEAT_THREAD_OF.with(Cell::get) == Arc::as_ptr(&self.inner) as usize
    }
}

// A panic elsewhere cannot leave a Beater inconsistent: its locks do not
// poison, every field they guard is valid between statements, and user
// callbacks run under `catch_unwind`. So it may cross `catch_unwind`, as the
// guard-on-unwind pattern needs.
impl std::panic::UnwindSafe for Beater {}
impl std::panic::RefUnwindSafe for Beater {}

impl fmt::Debug for Beater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Beater")
            .field("state_file", &self.inner.path)
            .field("interval", &self.inner.interval)
            .field("etcd_key", &self.etcd_key())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn run(self: &Arc<Self>, stop: &Receiver<()>, first_beat: Sender<()>) {
        BEAT_THREAD_OF.with(|c| c.set(Arc::as_ptr(self) as usize));
        // A fixed grid, so beats do not drift; the first one at once.
        let mut ticker = Ticker::new(self.clock.clone(), self.interval, Duration::ZERO);
        let mut first_beat = Some(first_beat);
        loop {
            if ticker.due() {
                let written = self.write_beat();
                if let Some(tx) = first_beat.take() {
                    let _ = tx.send(());
                }
                self.after_beat(written);
            }
            if self.stop_requested.load(Ordering::SeqCst) || self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            if !ticker.wait(stop) {
                break;
            }
        }
        self.finish();
    }

    /// What follows a beat's write: its callbacks, then the target check.
    fn after_beat(&self, written: Result<()>) {
        match written {
            Ok(()) => {
                if let Some(f) = &self.on_beat {
                    contained("on_beat", || f());
                }
            }
            Err(e) => {
                log::warn!("missed heartbeat: {e}");
                if let Some(f) = &self.on_missed_beat {
                    contained("on_missed_beat", || f(&e));
                }
            }
        }
        let Some((target, name)) = &self.target else { return };
        if contained("target is_dead", || target.is_dead()) != Some(true) {
            return;
        }
        log::warn!("heartbeat target {name} is dead");
        if let Some(f) = &self.on_alert {
            let mut context = Map::new();
            context.insert("target".into(), Value::from(*name));
            contained("on_alert", || f("heartbeat", "Target is dead, triggering recovery", &context));
        }
        if let Some(f) = &self.on_target_dead {
            contained("on_target_dead", || f());
        }
    }

    fn write_beat(&self) -> Result<()> {
        let mut guard = self.writer.lock();
        let w = &mut *guard;
        if self.path.is_some() || self.etcd.is_some() {
            w.state.last_beat = self.clock.wall();
            w.buf.clear();
            w.state.write_json(&mut w.buf);
            if w.buf.len() as u64 > MAX_STATE_BYTES {
                // Metadata grown by `set_metadata`: readers would refuse the file.
                return Err(Error::InvalidConfig(format!(
                    "the heartbeat file would be {} bytes, more than readers accept ({MAX_STATE_BYTES}): \
                     the metadata is too large",
                    w.buf.len()
                )));
            }
        }
        // Before the file, and whatever becomes of it: etcd and the file are
        // two views of the same beat, and `publish` never waits for etcd.
        if let Some(etcd) = &self.etcd
            && let Err(e) = etcd.publish(&w.buf)
        {
            // Only when the presence thread cannot be spawned: local
            // liveness goes on, and the next beat tries again.
            log::warn!("cannot publish the heartbeat to etcd: {e}");
        }
        // Taken over, the file is another beater's; our etcd key is still ours.
        if let Some(lock) = &w.lock
            && !lock.is_current()
        {
            let by =
                crate::files::open_regular(&lock.path).ok().and_then(|(file, _)| LockFile::holder(&file));
            return Err(Error::TakenOver { path: self.path.clone().unwrap_or_default(), by });
        }
        if let Some(path) = &self.path {
            write_atomic(path, &w.buf, self.write)?;
        }
        if let Some(n) = &mut w.notifier
            && let Err(e) = n.beat()
        {
            log::warn!("systemd notification failed: {e}");
        }
        Ok(())
    }

    /// Runs on the beat thread as it ends. No `STOPPING=1` to systemd: a
    /// stopped beater says nothing about whether the service is stopping.
    fn finish(&self) {
        if let Some(etcd) = &self.etcd {
            etcd.withdraw();
        }
        let taken_over = self.writer.lock().lock.as_ref().is_some_and(|l| !l.is_current());
        if self.remove_on_stop
            && !taken_over
            && let Some(path) = &self.path
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("cannot remove heartbeat file {}: {e}", path.display());
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: a beat made by `beat()` alone (no thread,
    /// no stop) must not leave the key behind in a shared presence, nor our
    /// own lease alive while someone holds a handle on it.
    fn drop(&mut self) {
        if let Some(etcd) = &self.etcd {
            etcd.withdraw();
        }
    }
}

/// Stops the [`Beater`] when dropped, including during a panic's unwinding.
#[must_use = "dropping the guard stops the beat thread at once"]
#[derive(Debug)]
pub struct BeatGuard {
    beater: Beater,
}

impl BeatGuard {
    /// The beater this guard keeps running.
    pub fn beater(&self) -> &Beater {
        &self.beater
    }
}

impl Drop for BeatGuard {
    fn drop(&mut self) {
        self.beater.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_clamped_as_in_the_seed() {
        assert_eq!(clamp_interval(Duration::from_millis(100)), Duration::from_secs(1));
        assert_eq!(clamp_interval(Duration::from_secs(1000)), Duration::from_secs(300));
        assert_eq!(clamp_interval(Duration::from_secs(10)), Duration::from_secs(10));
        let b = Beater::builder().interval(Duration::from_millis(100)).build().unwrap();
        assert_eq!(b.interval(), Duration::from_secs(1));
        let b = Beater::builder().interval(Duration::from_secs(1000)).build().unwrap();
        assert_eq!(b.interval(), Duration::from_secs(300));
        assert_eq!(Beater::builder().build().unwrap().interval(), DEFAULT_INTERVAL);
    }

    #[test]
    fn a_lock_file_planted_as_a_hard_link_or_fifo_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("app.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::hard_link(&victim, LockFile::path_for(&state)).unwrap();
        let e = Beater::builder().state_file(&state).exclusive(true).build().unwrap_err();
        assert!(e.to_string().contains("single link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!state.exists());

        let state = dir.path().join("fifo.json");
        let made = std::process::Command::new("mkfifo").arg(LockFile::path_for(&state)).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let e = Beater::builder().state_file(&state).exclusive(true).build().unwrap_err();
        assert!(e.to_string().contains("regular file"), "{e}");
    }
}
