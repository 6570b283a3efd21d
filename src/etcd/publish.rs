//! A monitor's sessions and a hub's peers, published under their process's
//! lease: one key each, written on change only.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Map, Value};

use super::{ALIVE, MemberRecord, Presence, PresenceState, Publisher, check_prefix};
use crate::clock::SharedClock;
use crate::error::Result;
use crate::monitor::{Event, Monitor};
use crate::peer::{Hub, HubEvent};
use crate::state::{HeartbeatState, format_timestamp};

/// Events a publisher holds before it drops them (and, having dropped some,
/// lists everything again instead).
const EVENT_QUEUE: usize = 4096;

/// How often a publisher compares what it published with the monitor's or
/// hub's count, and lists everything again when they differ (that is how a
/// monitor's new sessions are learned: it sends no event for them) or when
/// events were dropped; after a listing that took long (hundreds of
/// thousands of members), the next one waits nine times as long, so that
/// listing never takes more than a tenth of the publisher's time.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often a publisher lists everything again regardless, to catch what
/// no event and no count says (a session's agent type changed in place).
const FULL_RESYNC: Duration = Duration::from_secs(60);

/// A member's `detail` as published (agent type; a peer's role, location,
/// verification).
type Detail = Map<String, Value>;

/// What a monitor or hub is, seen by a publisher.
trait Source: Send + 'static {
    type Event: Send + 'static;
    /// What a member's detail is made of, held for every member: small
    /// (a `Map` costs a B-tree node, over 600 bytes, per member).
    type Detail: PartialEq + Send + 'static;
    /// `session` or `peer`.
    const KIND: &'static str;
    /// The process key's `metadata.role`.
    const ROLE: &'static str;
    fn key(publisher: &Publisher, prefix: &str, id: &str) -> String;
    fn clock(&self) -> SharedClock;
    fn dropped(&self) -> u64;
    fn count(&self) -> usize;
    /// Every member now, with its state and detail.
    fn list(&self, f: &mut dyn FnMut(&str, &'static str, Self::Detail));
    fn change(event: Self::Event) -> Change<Self::Detail>;
    /// The detail as published.
    fn render(detail: &Self::Detail) -> Detail;
}

/// What an event means for the published set.
enum Change<D> {
    /// A member, whole (a hub's join, with its connection id).
    Set {
        id: String,
        state: &'static str,
        detail: D,
        conn: Option<u64>,
    },
    /// A known member's new state (a member not known yet is learned by the
    /// next listing).
    State {
        id: String,
        state: &'static str,
    },
    /// A member gone: only if it is still the connection `conn` (when given).
    Remove {
        id: String,
        conn: Option<u64>,
    },
    Nothing,
}

struct Member<D> {
    state: &'static str,
    detail: D,
    since: SystemTime,
    /// The hub's connection id, when learned from a join.
    conn: Option<u64>,
    /// The listing that last saw it.
    seen: u64,
}

/// The members as published, and where they go.
struct Published<S: Source> {
    presence: Presence,
    prefix: String,
    publisher: Publisher,
    clock: SharedClock,
    members: HashMap<String, Member<S::Detail>>,
    /// The number of the current listing.
    listing: u64,
    source: PhantomData<fn() -> S>,
}

impl<S: Source> Published<S> {
    fn key(&self, id: &str) -> String {
        S::key(&self.publisher, &self.prefix, id)
    }

    fn publish(&self, id: &str, member: &Member<S::Detail>) {
        let record = MemberRecord {
            kind: S::KIND.into(),
            id: id.to_owned(),
            owner: self.publisher.id(),
            state: member.state.into(),
            since: format_timestamp(member.since),
            detail: S::render(&member.detail),
        };
        self.presence.set(self.key(id), serde_json::to_vec(&record).unwrap_or_default());
    }

    fn unpublish(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.presence.remove(&self.key(id));
        }
    }

    /// Puts `id` in `state` with `detail`; publishes when anything changed.
    fn upsert(&mut self, id: &str, state: &'static str, detail: S::Detail, conn: Option<u64>) {
        let listing = self.listing;
        let since = self.clock.wall();
        match self.members.get_mut(id) {
            Some(m) => {
                m.seen = listing;
                if conn.is_some() {
                    m.conn = conn;
                }
                if m.state == state && m.detail == detail {
                    return;
                }
                if m.state != state {
                    m.since = since;
                }
                m.state = state;
                m.detail = detail;
            }
            None => {
                self.members.insert(id.to_owned(), Member { state, detail, since, conn, seen: listing });
            }
        }
        self.publish(id, &self.members[id]);
    }

    /// Puts a known member in `state`; `false` if the member is not known.
    fn set_state(&mut self, id: &str, state: &'static str) -> bool {
        let since = self.clock.wall();
        let Some(m) = self.members.get_mut(id) else { return false };
        if m.state != state {
            m.state = state;
            m.since = since;
            self.publish(id, &self.members[id]);
        }
        true
    }
}

struct Core<S: Source> {
    source: S,
    out: Published<S>,
    process: HeartbeatState,
    dropped: u64,
    /// A listing is wanted at the next check (an event about a member not
    /// known yet, or a leave that cannot be matched to a join).
    stale: bool,
    /// How often the process key is rewritten, and when next.
    refresh_every: Duration,
    next_refresh: Instant,
}

impl<S: Source> Core<S> {
    fn new(source: S, presence: Presence, prefix: &str, metadata: Map<String, Value>) -> Core<S> {
        let clock = source.clock();
        let mut metadata = metadata;
        metadata.entry("role").or_insert_with(|| S::ROLE.into());
        let refresh = refresh_interval(&presence);
        let process = HeartbeatState::for_current_process(clock.wall(), refresh, metadata);
        let publisher = Publisher::this_process(process.uuid.clone().unwrap_or_default());
        let out = Published {
            presence,
            prefix: prefix.to_owned(),
            publisher,
            clock,
            members: HashMap::new(),
            listing: 0,
            source: PhantomData,
        };
        Core {
            source,
            out,
            process,
            dropped: 0,
            stale: false,
            refresh_every: refresh,
            next_refresh: Instant::now(),
        }
    }

    fn process_key(&self) -> String {
        self.out.publisher.process_key(&self.out.prefix)
    }

    /// Writes the process key with the time now.
    fn refresh(&mut self) {
        refresh(&mut self.process, &self.out);
        self.next_refresh = Instant::now() + self.refresh_every;
    }

    fn apply(&mut self, event: S::Event) {
        match S::change(event) {
            Change::Set { id, state, detail, conn } => self.out.upsert(&id, state, detail, conn),
            Change::State { id, state } => {
                if !self.out.set_state(&id, state) {
                    self.stale = true;
                }
            }
            Change::Remove { id, conn } => match (self.out.members.get(&id).map(|m| m.conn), conn) {
                (None, _) => {}
                // A join after this connection took the nick: the key is the newer one's.
                (Some(Some(have)), Some(gone)) if have != gone => {}
                // Learned from a listing: whether this was its connection is unknown.
                (Some(None), Some(_)) => self.stale = true,
                _ => self.out.unpublish(&id),
            },
            Change::Nothing => {}
        }
    }

    /// Lists every member and publishes the difference: new ones, changed
    /// ones, and those gone. Nothing is written for a member as it was.
    /// Members are taken as the listing goes (a monitor's a shard at a
    /// time), never all held at once.
    fn resync(&mut self) {
        self.out.listing += 1;
        self.stale = false;
        self.dropped = self.source.dropped();
        let Core { source, out, process, refresh_every, next_refresh, .. } = self;
        let mut seen = 0u32;
        source.list(&mut |id, state, detail| {
            out.upsert(id, state, detail, None);
            // A listing of a million members outlasts a refresh period:
            // the process key must not turn stale meanwhile.
            seen = seen.wrapping_add(1);
            if seen.is_multiple_of(1024) && Instant::now() >= *next_refresh {
                refresh(process, out);
                *next_refresh = Instant::now() + *refresh_every;
            }
        });
        let Published { members, presence, listing, publisher, prefix, .. } = &mut self.out;
        members.retain(|id, m| {
            let keep = m.seen == *listing;
            if !keep {
                presence.remove(&S::key(publisher, prefix, id));
            }
            keep
        });
    }

    /// [`resync`](Self::resync), and how long it took.
    fn timed_resync(&mut self) -> Duration {
        let started = Instant::now();
        self.resync();
        started.elapsed()
    }

    /// Whether a listing is due: events were dropped, or the counts differ.
    fn out_of_step(&self) -> bool {
        self.stale || self.source.dropped() != self.dropped || self.source.count() != self.out.members.len()
    }

    fn run(mut self, events: &Receiver<S::Event>, stop: &Receiver<()>) {
        let took = self.timed_resync();
        self.refresh();
        let mut next_check = Instant::now() + CHECK_INTERVAL;
        let mut next_full = Instant::now() + FULL_RESYNC.max(listing_pause(took));
        let mut next_listing = Instant::now() + listing_pause(took);
        loop {
            let deadline = self.next_refresh.min(next_check);
            crossbeam_channel::select! {
                recv(stop) -> _ => break,
                recv(events) -> event => match event {
                    Ok(event) => {
                        self.apply(event);
                        // Take what else is queued now, at most a queue's worth.
                        for event in events.try_iter().take(EVENT_QUEUE) {
                            self.apply(event);
                        }
                    }
                    // The monitor or hub is gone: nothing more to learn.
                    Err(_) => break,
                },
                default(deadline.saturating_duration_since(Instant::now())) => {}
            }
            let now = Instant::now();
            if now >= next_check {
                next_check = now + CHECK_INTERVAL;
                let full = now >= next_full;
                if full || (now >= next_listing && self.out_of_step()) {
                    // Events queued before the listing are older than it:
                    // take them first, so the listing has the last word.
                    for event in events.try_iter().take(EVENT_QUEUE) {
                        self.apply(event);
                    }
                    let took = self.timed_resync();
                    let now = Instant::now();
                    next_listing = now + listing_pause(took);
                    if full {
                        next_full = now + FULL_RESYNC.max(listing_pause(took));
                    }
                }
            }
            if Instant::now() >= self.next_refresh {
                self.refresh();
            }
        }
        // Keys this publisher put in the presence go with it, unless the
        // presence is stopped already: its revoked lease took them all.
        if self.out.presence.status().state == PresenceState::Stopped {
            return;
        }
        self.out.presence.remove(&self.process_key());
        for id in self.out.members.keys() {
            self.out.presence.remove(&self.out.key(id));
        }
    }
}

/// Writes `process`'s key with the time now.
fn refresh<S: Source>(process: &mut HeartbeatState, out: &Published<S>) {
    process.last_beat = out.clock.wall();
    out.presence.set(out.publisher.process_key(&out.prefix), process.to_json());
}

/// How many times its own length a listing waits before the next one: a
/// publisher lists at most a tenth of its time, however many members (a
/// monitor of a million sessions that keeps gaining some would otherwise
/// list them all every [`CHECK_INTERVAL`], a core's worth of work).
const LISTING_SPACING: u32 = 9;

/// The pause after a listing that took `took` before the next one for a
/// count that differs: [`CHECK_INTERVAL`] for small sets, longer for sets
/// whose listing is long.
fn listing_pause(took: Duration) -> Duration {
    took.saturating_mul(LISTING_SPACING).max(CHECK_INTERVAL)
}

/// How often the process key is rewritten: a third of the lease's TTL, so
/// that a reader allowing three intervals sees it fresh while it lives.
fn refresh_interval(presence: &Presence) -> Duration {
    presence.ttl() / 3
}

/// The thread of a publisher, joined by `stop` and drop.
struct Worker {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn<S: Source>(core: Core<S>, events: Receiver<S::Event>, name: &str) -> Result<Worker> {
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let handle = thread::Builder::new().name(name.into()).spawn(move || core.run(&events, &stop_rx))?;
        Ok(Worker { stop, handle: Some(handle) })
    }

    fn stop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            log::error!("etcd publisher thread panicked");
        }
    }

    fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

struct MonitorSource(Monitor);

impl Source for MonitorSource {
    type Event = Event;
    /// The agent type.
    type Detail = Box<str>;
    const KIND: &'static str = "session";
    const ROLE: &'static str = "monitor";

    fn key(publisher: &Publisher, prefix: &str, id: &str) -> String {
        publisher.session_key(prefix, id)
    }

    fn clock(&self) -> SharedClock {
        self.0.clock().clone()
    }

    fn dropped(&self) -> u64 {
        self.0.events_dropped()
    }

    fn count(&self) -> usize {
        self.0.registered_count()
    }

    fn list(&self, f: &mut dyn FnMut(&str, &'static str, Box<str>)) {
        // A shard at a time: memory holds one shard's snapshot.
        let _ = self.0.snapshot_shards(|sessions| {
            for s in sessions {
                let state = if s.failed {
                    FAILED
                } else if s.missed_beats > 0 {
                    WARNING
                } else {
                    ALIVE
                };
                f(&s.session_id, state, s.agent_type.as_str().into());
            }
            Ok::<(), std::convert::Infallible>(())
        });
    }

    fn change(event: Event) -> Change<Box<str>> {
        match event {
            Event::Warning { session_id, .. } => Change::State { id: session_id, state: WARNING },
            Event::Recovered { session_id } => Change::State { id: session_id, state: ALIVE },
            Event::Failed { session_id, .. } => Change::State { id: session_id, state: FAILED },
            Event::Removed { session_id, .. } => Change::Remove { id: session_id, conn: None },
            // A `Removed` follows.
            Event::TimedOut { .. } => Change::Nothing,
        }
    }

    fn render(agent_type: &Box<str>) -> Detail {
        agent_detail(agent_type)
    }
}

/// The state word of a session that missed a beat.
const WARNING: &str = "warning";
/// The state word of a session that reported a failure.
const FAILED: &str = "failed";

fn agent_detail(agent_type: &str) -> Detail {
    let mut detail = Map::new();
    if !agent_type.is_empty() {
        detail.insert("agent_type".into(), agent_type.into());
    }
    detail
}

/// What both publishers' handles share: who publishes, the process key,
/// whether the thread runs, and a stop that also runs on drop.
macro_rules! publisher_handle {
    ($name:ident) => {
        impl $name {
            /// Who publishes: the `<host>/<pid>-<uuid>` in every key.
            pub fn publisher(&self) -> &Publisher {
                &self.publisher
            }

            /// The process key.
            pub fn process_key(&self) -> String {
                self.publisher.process_key(&self.prefix)
            }

            /// Whether the thread runs.
            pub fn is_running(&self) -> bool {
                self.worker.lock().is_running()
            }

            /// Stops the thread and withdraws this publisher's keys from the
            /// presence. Idempotent.
            pub fn stop(&self) {
                self.worker.lock().stop();
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.stop();
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("publisher", &self.publisher.id())
                    .finish_non_exhaustive()
            }
        }
    };
}

/// Publishes a [`Monitor`]'s sessions to etcd under a [`Presence`]'s lease,
/// on a thread of its own.
///
/// - The process key, `<prefix>hosts/<host>/<pid>-<uuid>`
///   ([`Publisher::process_key`]): a heartbeat JSON (the heartbeat-file
///   schema, `metadata.role` = `monitor`, `interval_sec` = TTL/3),
///   rewritten every third of the lease's TTL, so that readers judge it
///   FRESH by its timestamp.
/// - One key per session, `<prefix>sessions/<host>/<pid>-<uuid>/<session>`
///   ([`Publisher::session_key`]), valued a JSON [`MemberRecord`] (`kind`
///   `session`, `state` `alive`, `warning` or `failed`, `detail.agent_type`),
///   written **on change only**: when the session registers, changes state
///   or goes. A beat writes nothing, so etcd sees writes in proportion to
///   churn, never to beats.
///
/// The monitor sends no event when a session registers: the publisher
/// follows the monitor's events for state changes and removals, and every
/// [`CHECK_INTERVAL`] compares the number of sessions it published with the
/// monitor's, listing every session again when they differ (new sessions are
/// learned that way, within a second; with hundreds of thousands of
/// sessions, within nine times a listing's length) or when its bounded
/// subscription had to drop events. A listing writes only what differs, so
/// nothing is written twice, and keeps the process key rewritten while it
/// runs.
///
/// [`stop`](Self::stop) (or drop) joins the thread and withdraws its keys
/// from the presence (a delete per key in etcd, in transactions of up to
/// 128, while the presence runs); stop the presence first to revoke them all
/// at once instead.
///
/// ```no_run
/// use std::time::Duration;
/// use heartbeat::Monitor;
/// use heartbeat::etcd::{Client, MonitorPublisher, Presence};
///
/// let monitor = Monitor::builder().build()?;
/// let presence = Presence::start(Client::new(&["http://127.0.0.1:2379"])?, Duration::from_secs(10))?;
/// let publisher = MonitorPublisher::start(&monitor, &presence, "heartbeat/", Default::default())?;
/// monitor.register("job-1", "cron"); // in etcd within about a second
/// presence.stop(); // revokes the lease: every key goes at once
/// publisher.stop();
/// # Ok::<(), heartbeat::Error>(())
/// ```
pub struct MonitorPublisher {
    worker: parking_lot::Mutex<Worker>,
    publisher: Publisher,
    prefix: String,
}

impl MonitorPublisher {
    /// Starts publishing `monitor`'s sessions through `presence` under
    /// `prefix` ([`check_prefix`]). `metadata` goes into the process key's
    /// heartbeat JSON, with `role` = `monitor` unless given.
    pub fn start(
        monitor: &Monitor,
        presence: &Presence,
        prefix: &str,
        metadata: Map<String, Value>,
    ) -> Result<MonitorPublisher> {
        check_prefix(prefix)?;
        // Subscribed before the first listing: nothing falls in between.
        let events = monitor.subscribe_bounded(EVENT_QUEUE);
        let core = Core::new(MonitorSource(monitor.clone()), presence.clone(), prefix, metadata);
        let publisher = core.out.publisher.clone();
        let worker = Worker::spawn(core, events, "heartbeat-etcd-monitor")?;
        Ok(MonitorPublisher { worker: parking_lot::Mutex::new(worker), publisher, prefix: prefix.to_owned() })
    }
}

publisher_handle!(MonitorPublisher);

struct HubSource(Arc<Hub>);

/// A peer's detail: its role (maker or taker), location, verification.
#[derive(Debug, PartialEq)]
struct PeerDetail {
    role: &'static str,
    location: Box<str>,
    verified: bool,
}

fn peer_detail(role: &'static str, location: String, verified: bool) -> PeerDetail {
    PeerDetail { role, location: location.into_boxed_str(), verified }
}

impl Source for HubSource {
    type Event = HubEvent;
    type Detail = PeerDetail;
    const KIND: &'static str = "peer";
    const ROLE: &'static str = "hub";

    fn key(publisher: &Publisher, prefix: &str, id: &str) -> String {
        publisher.peer_key(prefix, id)
    }

    fn clock(&self) -> SharedClock {
        Arc::new(crate::clock::SystemClock)
    }

    fn dropped(&self) -> u64 {
        self.0.events_dropped()
    }

    fn count(&self) -> usize {
        self.0.peer_count()
    }

    fn list(&self, f: &mut dyn FnMut(&str, &'static str, PeerDetail)) {
        for peer in self.0.peers() {
            f(&peer.nick, ALIVE, peer_detail(peer.role, peer.location, peer.verified));
        }
    }

    fn change(event: HubEvent) -> Change<PeerDetail> {
        match event {
            HubEvent::Joined { id, nick, location, verified, .. } => {
                let role = if location.is_maker() { "maker" } else { "taker" };
                Change::Set {
                    id: nick,
                    state: ALIVE,
                    detail: peer_detail(role, location.to_string(), verified),
                    conn: Some(id),
                }
            }
            HubEvent::Left { id, nick, .. } | HubEvent::Evicted { id, nick, .. } => {
                Change::Remove { id: nick, conn: Some(id) }
            }
            HubEvent::Rejected { .. } => Change::Nothing,
        }
    }

    fn render(peer: &PeerDetail) -> Detail {
        let mut detail = Map::new();
        detail.insert("role".into(), peer.role.into());
        detail.insert("location".into(), (*peer.location).into());
        detail.insert("verified".into(), peer.verified.into());
        detail
    }
}

/// Publishes a [`Hub`]'s peers to etcd under a [`Presence`]'s lease, on a
/// thread of its own: as [`MonitorPublisher`], with `metadata.role` = `hub`
/// in the process key and one key per handshaked peer,
/// `<prefix>peers/<host>/<pid>-<uuid>/<nick>` ([`Publisher::peer_key`]),
/// valued a JSON [`MemberRecord`] (`kind` `peer`, `state` `alive`,
/// `detail`: `role` maker or taker, `location`, `verified`), written when
/// the peer joins and deleted when it leaves or is evicted; never on a
/// message or a PING.
///
/// It follows the hub's join, leave and eviction events, and lists every
/// peer again when its bounded subscription dropped some or the counts
/// differ. [`stop`](Self::stop) (or drop) joins the thread and withdraws
/// its keys.
pub struct HubPublisher {
    worker: parking_lot::Mutex<Worker>,
    publisher: Publisher,
    prefix: String,
}

impl HubPublisher {
    /// Starts publishing `hub`'s peers through `presence` under `prefix`
    /// ([`check_prefix`]). `metadata` goes into the process key's heartbeat
    /// JSON, with `role` = `hub` unless given.
    pub fn start(
        hub: Arc<Hub>,
        presence: &Presence,
        prefix: &str,
        metadata: Map<String, Value>,
    ) -> Result<HubPublisher> {
        check_prefix(prefix)?;
        let events = hub.subscribe_bounded(EVENT_QUEUE);
        let core = Core::new(HubSource(hub), presence.clone(), prefix, metadata);
        let publisher = core.out.publisher.clone();
        let worker = Worker::spawn(core, events, "heartbeat-etcd-hub")?;
        Ok(HubPublisher { worker: parking_lot::Mutex::new(worker), publisher, prefix: prefix.to_owned() })
    }
}

publisher_handle!(HubPublisher);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::etcd::Client;
    use crate::peer::wire::Location;

    /// A presence whose etcd never answers: it records what should be
    /// published, which is all these tests look at.
    fn nowhere() -> Presence {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client =
            Client::with_timeout(&[format!("http://127.0.0.1:{port}")], Duration::from_millis(200)).unwrap();
        Presence::start(client, super::super::MIN_TTL).unwrap()
    }

    fn states<S: Source>(core: &Core<S>) -> Vec<(String, &'static str)> {
        let mut states: Vec<_> = core.out.members.iter().map(|(id, m)| (id.clone(), m.state)).collect();
        states.sort();
        states
    }

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Figures, not a check: `HB_N=1000000 cargo test --release --lib
    /// listing_figures -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn listing_figures() {
        let n: usize = std::env::var("HB_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
        let monitor = Monitor::builder().timeout(Duration::from_secs(600)).build().unwrap();
        let rss0 = rss_kib();
        for i in 0..n {
            monitor.register(&format!("session-{i}"), "worker");
        }
        let rss1 = rss_kib();
        let presence = nowhere();
        let mut core = Core::new(MonitorSource(monitor.clone()), presence.clone(), "heartbeat/", Map::new());
        let t = Instant::now();
        core.resync();
        let first = t.elapsed();
        let rss2 = rss_kib();
        let t = Instant::now();
        core.resync();
        let again = t.elapsed();
        eprintln!(
            "{n} sessions: monitor {} MiB; publisher + presence {} MiB; first listing {first:?}, unchanged listing {again:?}",
            (rss1 - rss0) / 1024,
            (rss2 - rss1) / 1024
        );
        presence.abandon();
    }

    #[test]
    fn dropped_events_and_unannounced_registrations_are_made_up_by_a_listing() {
        let clock = ManualClock::new();
        let monitor = Monitor::builder()
            .timeout(Duration::from_secs(10))
            .max_missed_beats(5)
            .clock(clock.clone())
            .build()
            .unwrap();
        for id in ["a", "b", "c"] {
            monitor.register(id, "job");
        }
        let presence = nowhere();
        let events = monitor.subscribe_bounded(1);
        let mut core = Core::new(MonitorSource(monitor.clone()), presence.clone(), "p/", Map::new());
        core.resync();
        assert_eq!(states(&core), [("a".into(), ALIVE), ("b".into(), ALIVE), ("c".into(), ALIVE)]);
        assert!(!core.out_of_step());
        let keys = presence.status().keys;
        assert_eq!(keys, 3, "one key per session (the process key is the thread's)");

        // Three warnings, room for one: two are dropped.
        clock.advance(Duration::from_secs(11));
        monitor.sweep();
        assert_eq!(monitor.events_dropped(), 2);
        for event in events.try_iter() {
            core.apply(event);
        }
        assert_eq!(states(&core).iter().filter(|(_, s)| *s == WARNING).count(), 1);
        assert!(core.out_of_step(), "a drop asks for a listing");
        core.resync();
        assert_eq!(states(&core), [("a".into(), WARNING), ("b".into(), WARNING), ("c".into(), WARNING)]);
        assert!(!core.out_of_step());

        // No event for a registration: the count tells.
        monitor.register("d", "job");
        assert!(core.out_of_step());
        core.resync();
        assert_eq!(states(&core).last().unwrap(), &("d".into(), ALIVE));
        // A removal is an event; the listing after it finds nothing to do.
        monitor.unregister("a");
        for event in events.try_iter() {
            core.apply(event);
        }
        assert!(!core.out.members.contains_key("a"));
        assert!(!core.out_of_step());
        assert_eq!(presence.status().keys, 3);
        presence.stop();
    }

    #[test]
    fn listings_take_at_most_a_tenth_of_the_time() {
        assert_eq!(listing_pause(Duration::from_millis(5)), CHECK_INTERVAL);
        assert_eq!(listing_pause(Duration::from_millis(500)), Duration::from_millis(4500));
        let took = Duration::from_secs(2);
        assert!(took * 10 <= took + listing_pause(took));
    }

    #[test]
    fn a_long_listing_keeps_the_process_key_fresh() {
        let monitor = Monitor::builder().timeout(Duration::from_secs(600)).build().unwrap();
        for i in 0..5000 {
            monitor.register(&format!("s{i}"), "job");
        }
        let presence = nowhere();
        let mut core = Core::new(MonitorSource(monitor.clone()), presence.clone(), "p/", Map::new());
        // The refresh is due as the listing starts: readers allow three
        // refresh periods, and a listing of a million sessions can take
        // longer than that; it must not hold the process key back.
        core.next_refresh = Instant::now();
        core.resync();
        assert_eq!(core.out.members.len(), 5000);
        assert!(presence.keys().contains(&core.process_key()), "the process key written during the listing");
        assert!(core.next_refresh > Instant::now(), "and the next refresh set");
        presence.stop();
    }

    #[test]
    fn a_leave_removes_a_peer_only_when_it_is_the_connection_that_joined() {
        let hub = Arc::new(Hub::builder().listen(([127, 0, 0, 1], 0)).start().unwrap());
        let presence = nowhere();
        let mut core = Core::new(HubSource(hub.clone()), presence.clone(), "p/", Map::new());
        let joined = |id| HubEvent::Joined {
            id,
            nick: "J5a".into(),
            location: Location::Taker,
            ping: true,
            verified: false,
        };
        let left = |id, nick: &str| HubEvent::Left { id, nick: nick.into(), reason: "closed".into() };
        // A second connection takes the nick; the first one's leave comes after.
        core.apply(joined(1));
        core.apply(joined(2));
        core.apply(left(1, "J5a"));
        assert!(core.out.members.contains_key("J5a"), "the newer connection holds the key");
        assert!(!core.stale);
        core.apply(left(2, "J5a"));
        assert!(!core.out.members.contains_key("J5a"));
        // A peer learned from a listing cannot be matched to a leave: ask for a listing.
        core.out.upsert("J5b", ALIVE, peer_detail("taker", "NOT-SERVING-ONION".into(), false), None);
        core.apply(left(9, "J5b"));
        assert!(core.stale && core.out.members.contains_key("J5b"));
        core.resync();
        assert!(core.out.members.is_empty(), "the hub has no such peer");
        presence.stop();
        hub.stop();
    }
}
