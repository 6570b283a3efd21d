//! The peer registry the I/O thread and the sweep thread share, and the
//! hub's counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::sweep::{EvictReason, PeerView};
use super::wire::Location;

/// One handshaked peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The server's id for the connection (never reused).
    pub id: u64,
    /// The nick it handshaked with.
    pub nick: String,
    /// Where it serves: a maker's onion address, or taker.
    pub location: Location,
    /// Whether it advertised `features.ping`.
    pub ping: bool,
    /// The network it handshaked for.
    pub network: String,
    /// When it connected (wall clock, for display).
    pub connected_at: SystemTime,
    /// When it last sent a line (monotonic).
    pub last_seen: Instant,
    /// When the oldest PING that no PONG has answered yet was written, if any.
    pub ping_sent: Option<Instant>,
}

impl PeerInfo {
    /// Whether a PING went out that no PONG has answered yet.
    pub fn pong_pending(&self) -> bool {
        self.ping_sent.is_some()
    }

    /// Maker (serves an onion address) or taker.
    pub fn is_maker(&self) -> bool {
        self.location.is_maker()
    }

    fn view(&self) -> PeerView {
        PeerView {
            id: self.id,
            last_seen: self.last_seen,
            ping: self.ping,
            maker: self.is_maker(),
            pong_pending: self.pong_pending(),
        }
    }
}

/// Handshaked peers by id, with an index by nick (nicks are unique).
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Peers>,
}

#[derive(Default)]
struct Peers {
    by_id: HashMap<u64, PeerInfo>,
    by_nick: HashMap<String, u64>,
}

impl Registry {
    /// Adds a peer, unless its nick is taken (then `false`).
    pub(crate) fn insert(&self, peer: PeerInfo) -> bool {
        let mut peers = self.inner.lock();
        if peers.by_nick.contains_key(&peer.nick) {
            return false;
        }
        peers.by_nick.insert(peer.nick.clone(), peer.id);
        peers.by_id.insert(peer.id, peer);
        true
    }

    pub(crate) fn remove(&self, id: u64) -> Option<PeerInfo> {
        let mut peers = self.inner.lock();
        let peer = peers.by_id.remove(&id)?;
        peers.by_nick.remove(&peer.nick);
        Some(peer)
    }

    /// Refreshes a peer's last-seen time; `false` if it is not registered.
    pub(crate) fn seen(&self, id: u64, now: Instant) -> bool {
        match self.inner.lock().by_id.get_mut(&id) {
            Some(peer) => {
                peer.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// A PONG arrived: every PING so far is answered.
    pub(crate) fn pong(&self, id: u64) {
        if let Some(peer) = self.inner.lock().by_id.get_mut(&id) {
            peer.ping_sent = None;
        }
    }

    /// PINGs are being written to these peers at `at`. An older unanswered
    /// one keeps its time: the wait runs from the first PING not answered.
    pub(crate) fn pings_sent(&self, ids: &[u64], at: Instant) {
        let mut peers = self.inner.lock();
        for id in ids {
            if let Some(peer) = peers.by_id.get_mut(id) {
                peer.ping_sent.get_or_insert(at);
            }
        }
    }

    /// What the sweep decides on, in a stable order (by id: connection order).
    pub(crate) fn views(&self) -> Vec<PeerView> {
        self.views_by(PeerInfo::view)
    }

    fn views_by(&self, view: impl Fn(&PeerInfo) -> PeerView) -> Vec<PeerView> {
        let mut views: Vec<PeerView> = self.inner.lock().by_id.values().map(view).collect();
        views.sort_unstable_by_key(|v| v.id);
        views
    }

    /// The views a pong check decides on at `now`: a peer counts as pending
    /// only if a PING it has not answered was written at least `wait` ago.
    /// A peer that answered and was pinged again since is not evicted for
    /// the newer PING by the older PING's check, and a PING the I/O thread
    /// wrote late gets its whole wait.
    pub(crate) fn views_for_pong_check(&self, now: Instant, wait: Duration) -> Vec<PeerView> {
        self.views_by(|p| PeerView {
            pong_pending: p.ping_sent.is_some_and(|sent| now.saturating_duration_since(sent) >= wait),
            ..p.view()
        })
    }

    /// Every peer, by id.
    pub(crate) fn snapshot(&self) -> Vec<PeerInfo> {
        let mut all: Vec<PeerInfo> = self.inner.lock().by_id.values().cloned().collect();
        all.sort_unstable_by_key(|p| p.id);
        all
    }

    /// The handshaked makers' PEERLIST entries.
    pub(crate) fn makers(&self) -> Vec<(String, Location)> {
        let peers = self.inner.lock();
        let mut makers: Vec<(u64, String, Location)> = peers
            .by_id
            .values()
            .filter(|p| p.is_maker())
            .map(|p| (p.id, p.nick.clone(), p.location.clone()))
            .collect();
        makers.sort_unstable_by_key(|m| m.0);
        makers.into_iter().map(|(_, nick, location)| (nick, location)).collect()
    }

    pub(crate) fn has_nick(&self, nick: &str) -> bool {
        self.inner.lock().by_nick.contains_key(nick)
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }
}

/// What kind of message a line was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Privmsg,
    Pubmsg,
    Ping,
    Pong,
    GetPeerlist,
    Other,
}

const KINDS: [(Kind, &str); 6] = [
    (Kind::Privmsg, "privmsg"),
    (Kind::Pubmsg, "pubmsg"),
    (Kind::Ping, "ping"),
    (Kind::Pong, "pong"),
    (Kind::GetPeerlist, "getpeerlist"),
    (Kind::Other, "other"),
];

const REASONS: [&str; 6] =
    ["idle_timeout", "pong_timeout", "send_failed", "slow_consumer", "protocol", "handshake_timeout"];

/// The hub's counters since it started; lock-free.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) joins: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) left: AtomicU64,
    pub(crate) sweeps: AtomicU64,
    pub(crate) pings_sent: AtomicU64,
    pub(crate) probes_sent: AtomicU64,
    pub(crate) pongs_sent: AtomicU64,
    pub(crate) pings_unanswered: AtomicU64,
    evictions: [AtomicU64; REASONS.len()],
    messages: [AtomicU64; KINDS.len()],
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn evicted(&self, reason: &EvictReason) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason.label()) {
            Counters::add(&self.evictions[i]);
        }
    }

    pub(crate) fn message(&self, kind: Kind) {
        let i = KINDS.iter().position(|(k, _)| *k == kind).expect("every kind is listed");
        Counters::add(&self.messages[i]);
    }

    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            accepted: get(&self.accepted),
            refused: get(&self.refused),
            joins: get(&self.joins),
            rejected: get(&self.rejected),
            left: get(&self.left),
            sweeps: get(&self.sweeps),
            pings_sent: get(&self.pings_sent),
            probes_sent: get(&self.probes_sent),
            pongs_sent: get(&self.pongs_sent),
            pings_unanswered: get(&self.pings_unanswered),
            evictions: REASONS.iter().zip(&self.evictions).map(|(r, c)| (*r, get(c))).collect(),
            messages: KINDS.iter().zip(&self.messages).map(|((_, k), c)| (*k, get(c))).collect(),
        }
    }
}

/// The hub's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections refused at the peer limit.
    pub refused: u64,
    /// Handshakes accepted.
    pub joins: u64,
    /// Handshakes refused (`accepted: false`) or malformed.
    pub rejected: u64,
    /// Handshaked peers that closed or were closed for another reason than eviction.
    pub left: u64,
    /// Heartbeat sweeps run.
    pub sweeps: u64,
    /// PINGs sent by sweeps.
    pub pings_sent: u64,
    /// Orderbook probes sent to non-ping makers.
    pub probes_sent: u64,
    /// PONGs sent in answer to peers' PINGs.
    pub pongs_sent: u64,
    /// Peers' PINGs left unanswered by the rate limit.
    pub pings_unanswered: u64,
    /// Evictions by reason label (`idle_timeout`, `pong_timeout`, `send_failed`,
    /// `slow_consumer`, `protocol`, `handshake_timeout`).
    pub evictions: Vec<(&'static str, u64)>,
    /// Messages received from handshaked peers, by kind (`privmsg`, `pubmsg`,
    /// `ping`, `pong`, `getpeerlist`, `other`).
    pub messages: Vec<(&'static str, u64)>,
}

/// One peer as the status endpoint shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// Its nick.
    pub nick: String,
    /// `maker` or `taker`.
    pub role: &'static str,
    /// Its location string.
    pub location: String,
    /// Whether it advertised ping.
    pub ping: bool,
    /// How long since it last sent a line.
    pub idle: Duration,
    /// Whether a PING awaits its PONG.
    pub pong_pending: bool,
}

impl PeerStatus {
    pub(crate) fn of(peer: &PeerInfo, now: Instant) -> PeerStatus {
        PeerStatus {
            nick: peer.nick.clone(),
            role: if peer.is_maker() { "maker" } else { "taker" },
            location: peer.location.to_string(),
            ping: peer.ping,
            idle: now.saturating_duration_since(peer.last_seen),
            pong_pending: peer.pong_pending(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, now: Instant) -> PeerInfo {
        PeerInfo {
            id,
            nick: format!("J5peer{id}OOOOOOOOO"),
            location: Location::Taker,
            ping: true,
            network: "regtest".into(),
            connected_at: SystemTime::UNIX_EPOCH,
            last_seen: now,
            ping_sent: None,
        }
    }

    #[test]
    fn a_pong_check_sees_exactly_its_own_unanswered_pings() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(30);
        let registry = Registry::default();
        assert!(registry.insert(peer(1, t0)) && registry.insert(peer(2, t0)));
        registry.pings_sent(&[1, 2], t0);
        registry.pong(2);
        let pending =
            |at| registry.views_for_pong_check(at, wait).iter().map(|v| v.pong_pending).collect::<Vec<_>>();
        // The check of the sweep at t0 runs at t0 + wait, however late the PING was written.
        assert_eq!(pending(t0 + wait), [true, false]);
        // Peer 2 answered, then a later sweep pinged it again: the old check spares it...
        registry.pings_sent(&[2], t0 + Duration::from_secs(10));
        assert_eq!(pending(t0 + wait), [true, false]);
        // ...its own check does not.
        assert_eq!(pending(t0 + Duration::from_secs(40)), [true, true]);
        // An unanswered PING keeps its first date when pinged again.
        registry.pings_sent(&[1], t0 + Duration::from_secs(20));
        assert_eq!(pending(t0 + wait), [true, false]);
    }
}
