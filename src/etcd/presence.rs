//! One lease per process, and the keys published under it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde::Serialize;

use super::client::{Client, Lease, MAX_TXN_OPS, Op};
use crate::error::{Error, Result};

/// The shortest lease asked for: etcd raises shorter ones to its own
/// minimum (about 2 s with its default election timeout) anyway.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// The longest pause between two attempts while etcd cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Where a [`Presence`] stands with etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// No lease: the first grant has not succeeded yet, or the lease was
    /// lost and a new one is being granted.
    Connecting,
    /// A lease is held and kept alive, and every key is written.
    Up,
    /// etcd cannot be reached or refuses: retrying with backoff. Local
    /// liveness goes on; the keys may expire in etcd meanwhile.
    Down,
    /// Stopped: the lease was revoked (or left to expire).
    Stopped,
}

impl PresenceState {
    /// `connecting`, `up`, `down` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceState::Connecting => "connecting",
            PresenceState::Up => "up",
            PresenceState::Down => "down",
            PresenceState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for PresenceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A snapshot of a [`Presence`], for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceStatus {
    /// Where it stands.
    pub state: PresenceState,
    /// The endpoints.
    pub endpoints: Vec<String>,
    /// The lease held now, if any.
    pub lease: Option<i64>,
    /// The lease's TTL, in seconds.
    pub ttl_secs: u64,
    /// Keys this process publishes.
    pub keys: usize,
    /// Keys whose latest value etcd does not have yet (the transaction in
    /// flight included).
    pub pending: usize,
    /// The last error, while down.
    pub last_error: Option<String>,
    /// Since when (Unix seconds) it is in this state.
    pub since_unix: u64,
    /// Leases granted, the first included: more than one means the lease
    /// was lost (etcd restarted, or the process paused past the TTL) and
    /// everything was published again.
    pub grants: u64,
    /// Keep-alives that etcd answered.
    pub keepalives: u64,
    /// Key writes and deletes etcd took (each one counts, batched or not;
    /// a transaction that failed counts none).
    pub writes: u64,
    /// Requests that failed.
    pub failures: u64,
}

/// Publishes keys under one etcd lease, kept alive by a thread of its own.
///
/// One lease per process: everything a process publishes (its own
/// heartbeat, its sessions or peers) hangs off it, so etcd keeps one lease
/// per process however many keys there are, and a crash or a pause longer
/// than the TTL removes them all together.
///
/// [`set`](Self::set) and [`remove`](Self::remove) never wait for etcd:
/// they record what should be there and wake the thread, which writes only
/// what changed (in transactions of up to 128 operations), keeps the lease
/// alive every TTL/3, retries with backoff while etcd is unreachable, and,
/// when the lease was lost, grants a new one and writes every key again.
/// [`stop`](Self::stop) (or dropping the last handle) revokes the lease, so
/// the keys go at once.
///
/// Cloning gives another handle on the same lease.
#[derive(Clone)]
pub struct Presence {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
}

/// The thread's owner, shared by every handle: its `Drop` runs exactly once,
/// when the last handle goes, and revokes and joins. (Counting handles in
/// `Presence::drop` instead let two handles dropped at the same moment
/// each see the other and leave the thread unjoined.)
struct Owner {
    shared: Arc<Shared>,
    worker: Mutex<Option<Worker>>,
}

struct Worker {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

struct Shared {
    client: Client,
    ttl: Duration,
    /// What should be in etcd, and which keys changed since written.
    desired: Mutex<Desired>,
    status: Mutex<Snapshot>,
    wake: Sender<()>,
    stopping: AtomicBool,
    /// Set by a stop: a flush in progress ends between two transactions
    /// instead of writing everything first.
    quit: AtomicBool,
    grants: AtomicU64,
    keepalives: AtomicU64,
    writes: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct Desired {
    values: HashMap<String, Vec<u8>>,
    dirty: HashSet<String>,
    /// Keys taken out of `dirty` for the transaction in flight: still
    /// pending until etcd answers.
    in_flight: usize,
}

struct Snapshot {
    state: PresenceState,
    lease: Option<i64>,
    last_error: Option<String>,
    since: SystemTime,
}

impl Presence {
    /// Starts publishing through `client` under a lease of `ttl` (at least
    /// [`MIN_TTL`]; whole seconds). Returns at once: the lease is granted on
    /// the thread, and an etcd that is down is retried, never waited for.
    pub fn start(client: Client, ttl: Duration) -> Result<Presence> {
        if ttl < MIN_TTL {
            return Err(Error::InvalidConfig(format!(
                "etcd lease TTL must be at least {}s, got {ttl:?}",
                MIN_TTL.as_secs()
            )));
        }
        let ttl = Duration::from_secs(ttl.as_secs());
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            client,
            ttl,
            desired: Mutex::new(Desired::default()),
            status: Mutex::new(Snapshot {
                state: PresenceState::Connecting,
                lease: None,
                last_error: None,
                since: SystemTime::now(),
            }),
            wake: wake_tx,
            stopping: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            grants: AtomicU64::new(0),
            keepalives: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let handle = thread::Builder::new()
            .name("heartbeat-etcd".into())
            .spawn(move || Keeper::new(thread_shared).run(&wake_rx, &stop_rx))?;
        let owner =
            Owner { shared: shared.clone(), worker: Mutex::new(Some(Worker { stop: stop_tx, handle })) };
        Ok(Presence { shared, owner: Arc::new(owner) })
    }

    /// Publishes `key` = `value`. Writes nothing when the value is the one
    /// already published.
    pub fn set(&self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        {
            let mut d = self.shared.desired.lock();
            if d.values.get(&key) == Some(&value) {
                return;
            }
            d.values.insert(key.clone(), value);
            d.dirty.insert(key);
        }
        let _ = self.shared.wake.try_send(());
    }

    /// Stops publishing `key` (deletes it from etcd).
    pub fn remove(&self, key: &str) {
        {
            let mut d = self.shared.desired.lock();
            if d.values.remove(key).is_none() {
                return;
            }
            d.dirty.insert(key.to_owned());
        }
        let _ = self.shared.wake.try_send(());
    }

    /// The keys published (or to be), in no order.
    pub fn keys(&self) -> Vec<String> {
        self.shared.desired.lock().values.keys().cloned().collect()
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The client this publishes through.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Where it stands, with its counters.
    pub fn status(&self) -> PresenceStatus {
        let (keys, pending) = {
            let d = self.shared.desired.lock();
            (d.values.len(), d.dirty.len() + d.in_flight)
        };
        let s = self.shared.status.lock();
        PresenceStatus {
            state: s.state,
            endpoints: self.shared.client.endpoints().to_vec(),
            lease: s.lease,
            ttl_secs: self.shared.ttl.as_secs(),
            keys,
            pending,
            last_error: s.last_error.clone(),
            since_unix: s.since.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            grants: self.shared.grants.load(Ordering::Relaxed),
            keepalives: self.shared.keepalives.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }

    /// Waits until every key is written under a live lease, at most
    /// `timeout`. Whether it got there.
    pub fn wait_published(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if status.state == PresenceState::Up && status.pending == 0 {
                return true;
            }
            if Instant::now() >= deadline || status.state == PresenceState::Stopped {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Revokes the lease (every key goes at once) and stops the thread.
    /// Takes at most about two request timeouts per endpoint: the request
    /// in flight, if any, then the revoke.
    pub fn stop(&self) {
        self.owner.finish(true);
    }

    /// Stops the thread without revoking: the keys stay until the lease
    /// expires, as after a crash. For tests and hand-overs.
    pub fn abandon(&self) {
        self.owner.finish(false);
    }
}

impl Owner {
    fn finish(&self, revoke: bool) {
        let Some(worker) = self.worker.lock().take() else { return };
        if !revoke {
            self.shared.stopping.store(true, Ordering::SeqCst);
        }
        self.shared.quit.store(true, Ordering::SeqCst);
        let _ = worker.stop.try_send(());
        if worker.handle.thread().id() != thread::current().id() {
            let _ = worker.handle.join();
        }
    }
}

impl Drop for Owner {
    /// The last handle is gone (the thread holds `shared`, never the owner).
    fn drop(&mut self) {
        self.finish(true);
    }
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.status();
        f.debug_struct("Presence")
            .field("state", &s.state)
            .field("lease", &s.lease)
            .field("keys", &s.keys)
            .finish_non_exhaustive()
    }
}

/// The thread's side.
struct Keeper {
    shared: Arc<Shared>,
    lease: Option<Lease>,
    /// The keys etcd has under the current lease. Their values are not
    /// kept twice: a key is written when it is dirty, that is when `set`
    /// changed it (a value changed and changed back before the write is
    /// written once more, which is harmless).
    published: HashSet<String>,
    next_keepalive: Instant,
    backoff: Duration,
}

/// What went wrong with one step.
enum Trouble {
    /// etcd does not have our lease any more.
    LeaseLost,
    /// Any other failure: retry after a backoff.
    Failed(Error),
}

impl Keeper {
    fn new(shared: Arc<Shared>) -> Keeper {
        Keeper {
            shared,
            lease: None,
            published: HashSet::new(),
            next_keepalive: Instant::now(),
            backoff: FIRST_BACKOFF,
        }
    }

    fn run(mut self, wake: &Receiver<()>, stop: &Receiver<()>) {
        loop {
            // After a failure the backoff is waited out whatever changes
            // meanwhile: a wake (a `set` or `remove`) only cuts short the
            // wait for the next keep-alive. Otherwise a busy publisher would
            // retry an etcd that is down once per change, not with backoff.
            let (wait, wakeable) = match self.step() {
                // Stopping: straight to the revoke, not `up` on the way.
                Ok(()) if self.shared.quit.load(Ordering::SeqCst) => break,
                Ok(()) => {
                    self.backoff = FIRST_BACKOFF;
                    self.set_state(PresenceState::Up, None);
                    (self.next_keepalive.saturating_duration_since(Instant::now()), true)
                }
                Err(Trouble::LeaseLost) => {
                    let id = self.lease.take().map_or(0, |l| l.id);
                    log::warn!(
                        "etcd lease {id:x} is gone (etcd restarted, or this process was paused past the {}s TTL): \
                         granting a new one and publishing every key again",
                        self.shared.ttl.as_secs()
                    );
                    self.published.clear();
                    // Not `up` with a lease that is gone, while the new one is granted.
                    self.set_state(PresenceState::Connecting, Some(format!("lease {id:x} was lost")));
                    (self.next_backoff(), false)
                }
                Err(Trouble::Failed(e)) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    self.set_state(PresenceState::Down, Some(e.to_string()));
                    (self.next_backoff(), false)
                }
            };
            if wakeable {
                crossbeam_channel::select! {
                    recv(stop) -> _ => break,
                    recv(wake) -> _ => {}
                    default(wait) => {}
                }
            } else {
                // A wake that comes meanwhile stays in its channel: the
                // next loop's step writes what it asked for anyway.
                crossbeam_channel::select! {
                    recv(stop) -> _ => break,
                    default(wait) => {}
                }
            }
        }
        let revoke = !self.shared.stopping.load(Ordering::SeqCst);
        if revoke
            && let Some(lease) = self.lease.take()
            && let Err(e) = self.shared.client.revoke(lease.id)
        {
            log::warn!(
                "could not revoke etcd lease {:x} (its keys expire within {}s): {e}",
                lease.id,
                lease.ttl.as_secs()
            );
        }
        self.set_state(PresenceState::Stopped, None);
    }

    /// The pause before the next attempt, doubling the one after it (at most
    /// [`MAX_BACKOFF`], and TTL/3 so that a lease that comes back is kept
    /// alive in time). A lease lost again and again backs off too.
    fn next_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF).min(self.shared.ttl / 3);
        wait
    }

    /// Grants a lease if there is none, writes what changed, keeps the
    /// lease alive when due.
    fn step(&mut self) -> std::result::Result<(), Trouble> {
        let shared = self.shared.clone();
        if shared.quit.load(Ordering::SeqCst) {
            return Ok(()); // stopping: no new request before the revoke
        }
        let lease = match self.lease {
            Some(lease) => lease,
            None => {
                let lease = shared.client.grant(shared.ttl).map_err(Trouble::Failed)?;
                shared.grants.fetch_add(1, Ordering::Relaxed);
                self.lease = Some(lease);
                self.published.clear();
                self.next_keepalive = Instant::now() + lease.ttl / 3;
                let mut d = shared.desired.lock();
                let keys: Vec<String> = d.values.keys().cloned().collect();
                d.dirty.extend(keys);
                log::debug!("etcd lease {:x} granted, TTL {}s", lease.id, lease.ttl.as_secs());
                lease
            }
        };
        self.flush(lease)?;
        if shared.quit.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.keepalive_if_due(lease)
    }

    /// Keeps the lease alive if TTL/3 has passed since it last was.
    fn keepalive_if_due(&mut self, lease: Lease) -> std::result::Result<(), Trouble> {
        if Instant::now() < self.next_keepalive {
            return Ok(());
        }
        match self.shared.client.keepalive(lease.id) {
            Ok(Some(_)) => {
                self.shared.keepalives.fetch_add(1, Ordering::Relaxed);
                self.next_keepalive = Instant::now() + lease.ttl / 3;
                Ok(())
            }
            Ok(None) => Err(Trouble::LeaseLost),
            Err(e) => Err(Trouble::Failed(e)),
        }
    }

    /// Writes every dirty key, a transaction of up to 128 at a time.
    fn flush(&mut self, lease: Lease) -> std::result::Result<(), Trouble> {
        let shared = self.shared.clone();
        loop {
            if shared.quit.load(Ordering::SeqCst) {
                return Ok(()); // stopping: the lease is revoked next, so what is left does not matter
            }
            let (ops, keys) = {
                let mut d = shared.desired.lock();
                let mut ops = Vec::new();
                let mut keys = Vec::new();
                let batch: Vec<String> = d.dirty.iter().take(MAX_TXN_OPS).cloned().collect();
                for key in batch {
                    d.dirty.remove(&key);
                    match (d.values.get(&key), self.published.contains(&key)) {
                        (Some(want), _) => {
                            ops.push(Op::Put { key: key.clone(), value: want.clone(), lease: lease.id });
                            keys.push((key, true));
                        }
                        (None, true) => {
                            ops.push(Op::Delete { key: key.clone() });
                            keys.push((key, false));
                        }
                        (None, false) => {}
                    }
                }
                d.in_flight = keys.len();
                (ops, keys)
            };
            if ops.is_empty() {
                if shared.desired.lock().dirty.is_empty() {
                    return Ok(());
                }
                continue;
            }
            // Between transactions too: writing many keys can take longer
            // than the TTL, and a lease that expired half-way would be
            // granted again and everything rewritten, over and over.
            if let Err(trouble) = self.keepalive_if_due(lease) {
                let mut d = shared.desired.lock();
                d.in_flight = 0;
                d.dirty.extend(keys.into_iter().map(|(k, _)| k));
                return Err(trouble);
            }
            match shared.client.txn(&ops) {
                Ok(_) => {
                    shared.writes.fetch_add(ops.len() as u64, Ordering::Relaxed);
                    for (key, put) in keys {
                        if put {
                            self.published.insert(key);
                        } else {
                            self.published.remove(&key);
                        }
                    }
                    shared.desired.lock().in_flight = 0;
                }
                Err(e) => {
                    // Maybe written: a request that timed out may still have
                    // been applied. Counted as published, so that a removal
                    // deletes it (deleting a key etcd lacks is harmless);
                    // otherwise it could stay in etcd for the lease's life.
                    for (key, put) in &keys {
                        if *put {
                            self.published.insert(key.clone());
                        }
                    }
                    // Dirty again, unless changed meanwhile (then it is already).
                    let mut d = shared.desired.lock();
                    d.in_flight = 0;
                    d.dirty.extend(keys.into_iter().map(|(k, _)| k));
                    drop(d);
                    if let Error::Etcd { what, .. } = &e
                        && what.contains("lease not found")
                    {
                        return Err(Trouble::LeaseLost);
                    }
                    return Err(Trouble::Failed(e));
                }
            }
        }
    }

    /// Records the state; logs once per change of state.
    fn set_state(&self, state: PresenceState, error: Option<String>) {
        let mut s = self.shared.status.lock();
        s.lease = self.lease.map(|l| l.id);
        if s.state == state {
            if error.is_some() {
                s.last_error = error;
            }
            return;
        }
        let endpoints = self.shared.client.endpoints().join(",");
        match (state, &error) {
            (PresenceState::Down, Some(e)) => log::warn!("etcd presence down, retrying with backoff: {e}"),
            (PresenceState::Up, _) if s.state == PresenceState::Down => {
                log::info!("etcd presence up again at {endpoints}")
            }
            (PresenceState::Up, _) => log::info!("etcd presence up at {endpoints}"),
            _ => log::debug!("etcd presence {state}"),
        }
        s.state = state;
        s.last_error = error;
        s.since = SystemTime::now();
    }
}
