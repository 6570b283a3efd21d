//! The peer registry the I/O thread and the sweep thread share, and the
//! hub's counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::auth::Code;
use super::sweep::{EvictReason, PeerView, SweepConfig};
use super::wire::{self, Location};

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
    /// Its features whose value is JSON `true`, sorted, joined with `+`
    /// (`peerlist_features+ping`); empty when none.
    pub features: String,
    /// Whether it advertised `features.peerlist_features`: its peer lists
    /// and location hints carry the `;F:` suffix.
    pub peerlist_features: bool,
    /// The network it handshaked for.
    pub network: String,
    /// When it connected (wall clock, for display).
    pub connected_at: SystemTime,
    /// When it last sent a line (monotonic).
    pub last_seen: Instant,
    /// When the oldest PING that no PONG has answered yet was written, if any.
    pub ping_sent: Option<Instant>,
    /// When the last orderbook probe was sent, if any.
    pub probed_at: Option<Instant>,
    /// The public key (hex) it proved its nick with (JMP-0005 nick
    /// authentication); `None` for a peer that did not authenticate.
    pub pubkey: Option<String>,
}

impl PeerInfo {
    /// Whether a PING went out that no PONG has answered yet.
    pub fn pong_pending(&self) -> bool {
        self.ping_sent.is_some()
    }

    /// Whether it proved its nick (JMP-0005).
    pub fn is_verified(&self) -> bool {
        self.pubkey.is_some()
    }

    /// Maker (serves an onion address) or taker.
    pub fn is_maker(&self) -> bool {
        self.location.is_maker()
    }

    fn view(&self, now: Instant, pong_wait: Duration) -> PeerView {
        let probe_waiting = self.probed_at.is_some_and(|at| now.saturating_duration_since(at) < pong_wait);
        PeerView {
            id: self.id,
            last_seen: self.last_seen,
            ping: self.ping,
            maker: self.is_maker(),
            pong_pending: self.pong_pending(),
            probing: self.pong_pending() || probe_waiting,
        }
    }

    /// Its PEERLIST entry, `;F:` features included when `with_features`.
    pub(crate) fn entry(&self, with_features: bool) -> String {
        wire::peer_entry(&self.nick, &self.location, with_features.then_some(self.features.as_str()))
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

    /// An orderbook probe went to this peer at `at`.
    pub(crate) fn probed(&self, id: u64, at: Instant) {
        if let Some(peer) = self.inner.lock().by_id.get_mut(&id) {
            peer.probed_at = Some(at);
        }
    }

    /// The hub itself was stalled for `by`: nobody's idle time or pong wait
    /// counts the stall (moved on by it, never past `now`).
    pub(crate) fn stalled(&self, by: Duration, now: Instant) {
        let on = |t: &mut Instant| *t = t.checked_add(by).map_or(now, |t| t.min(now));
        for peer in self.inner.lock().by_id.values_mut() {
            on(&mut peer.last_seen);
            if let Some(sent) = peer.ping_sent.as_mut() {
                on(sent);
            }
            if let Some(probed) = peer.probed_at.as_mut() {
                on(probed);
            }
        }
    }

    /// Whether an eviction decided for idleness or a missing PONG still
    /// holds at `now`: the peer is still registered and, for idleness, still
    /// idle longer than `hard_evict`, or, for a pong timeout, a PING it has
    /// not answered is at least `pong_wait` old.
    pub(crate) fn still_due(
        &self,
        id: u64,
        reason: &EvictReason,
        now: Instant,
        config: &SweepConfig,
    ) -> bool {
        let peers = self.inner.lock();
        let Some(peer) = peers.by_id.get(&id) else { return false };
        match reason {
            EvictReason::IdleTimeout => now.saturating_duration_since(peer.last_seen) > config.hard_evict,
            EvictReason::PongTimeout => {
                peer.ping_sent.is_some_and(|sent| now.saturating_duration_since(sent) >= config.pong_wait)
            }
            _ => true,
        }
    }

    /// Who holds this nick: its connection id and, when it proved the
    /// nick, its public key.
    pub(crate) fn owner(&self, nick: &str) -> Option<(u64, Option<String>)> {
        let peers = self.inner.lock();
        let id = *peers.by_nick.get(nick)?;
        Some((id, peers.by_id.get(&id)?.pubkey.clone()))
    }

    /// How many peers proved their nick.
    pub(crate) fn verified(&self) -> usize {
        self.inner.lock().by_id.values().filter(|p| p.is_verified()).count()
    }

    /// The connection id of the peer with this nick.
    pub(crate) fn id_of(&self, nick: &str) -> Option<u64> {
        self.inner.lock().by_nick.get(nick).copied()
    }

    /// What the sweep decides on at `now`, in a stable order (by id: connection order).
    pub(crate) fn views(&self, now: Instant, pong_wait: Duration) -> Vec<PeerView> {
        self.views_by(|p| p.view(now, pong_wait))
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
            ..p.view(now, wait)
        })
    }

    /// Every peer, by id.
    pub(crate) fn snapshot(&self) -> Vec<PeerInfo> {
        let mut all: Vec<PeerInfo> = self.inner.lock().by_id.values().cloned().collect();
        all.sort_unstable_by_key(|p| p.id);
        all
    }

    /// Every handshaked maker's PEERLIST entry, in connection order, with
    /// `;F:` features when `with_features`. Takers are never listed.
    pub(crate) fn maker_entries(&self, with_features: bool) -> Vec<String> {
        let peers = self.inner.lock();
        let mut makers: Vec<&PeerInfo> = peers.by_id.values().filter(|p| p.is_maker()).collect();
        makers.sort_unstable_by_key(|p| p.id);
        makers.iter().map(|p| p.entry(with_features)).collect()
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

const REASONS: [&str; 10] = [
    "idle_timeout",
    "pong_timeout",
    "send_failed",
    "slow_consumer",
    "protocol",
    "handshake_timeout",
    "rate_limited",
    "spoofed",
    "displaced",
    "nick_auth_timeout",
];

/// The nick-authentication refusals counted, by their 807 code.
const AUTH_REFUSALS: [Code; 4] = [Code::Malformed, Code::Expired, Code::Invalid, Code::Policy];

/// Why a message was not delivered, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A PRIVMSG for a nick nobody holds.
    UnknownTarget,
    /// Over the sender's budget.
    RateLimited,
    /// The recipient's output queue is over its cap.
    SlowRecipient,
    /// A GETPEERLIST while the last answer is still queued.
    PeerlistBusy,
    /// A message that, re-encoded for relaying, would pass the max line.
    TooLong,
}

const DROPPED: [(Dropped, &str); 5] = [
    (Dropped::UnknownTarget, "unknown_target"),
    (Dropped::RateLimited, "rate_limited"),
    (Dropped::SlowRecipient, "slow_recipient"),
    (Dropped::PeerlistBusy, "peerlist_busy"),
    (Dropped::TooLong, "too_long"),
];

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
    pub(crate) relayed_pubmsg: AtomicU64,
    pub(crate) relayed_privmsg: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) notices: AtomicU64,
    pub(crate) proofs_accepted: AtomicU64,
    proofs_refused: [AtomicU64; AUTH_REFUSALS.len()],
    evictions: [AtomicU64; REASONS.len()],
    messages: [AtomicU64; KINDS.len()],
    dropped: [AtomicU64; DROPPED.len()],
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

    /// A nick-authentication proof was refused (or never came) with `code`.
    pub(crate) fn proof_refused(&self, code: Code) {
        if let Some(i) = AUTH_REFUSALS.iter().position(|c| *c == code) {
            Counters::add(&self.proofs_refused[i]);
        }
    }

    pub(crate) fn message(&self, kind: Kind) {
        let i = KINDS.iter().position(|(k, _)| *k == kind).expect("every kind is listed");
        Counters::add(&self.messages[i]);
    }

    pub(crate) fn dropped(&self, why: Dropped) {
        let i = DROPPED.iter().position(|(d, _)| *d == why).expect("every reason is listed");
        Counters::add(&self.dropped[i]);
    }

    pub(crate) fn add_n(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
            relayed_pubmsg: get(&self.relayed_pubmsg),
            relayed_privmsg: get(&self.relayed_privmsg),
            deliveries: get(&self.deliveries),
            notices: get(&self.notices),
            proofs_accepted: get(&self.proofs_accepted),
            proofs_refused: AUTH_REFUSALS
                .iter()
                .zip(&self.proofs_refused)
                .map(|(code, c)| (code.as_str(), get(c)))
                .collect(),
            dropped: DROPPED.iter().zip(&self.dropped).map(|((_, d), c)| (*d, get(c))).collect(),
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
    /// Connections closed before their handshake because of a limit (the
    /// pool of connections not yet handshaked was full, or the peer limit).
    pub refused: u64,
    /// Handshakes accepted.
    pub joins: u64,
    /// Connections closed before their handshake completed, for any
    /// reason: one for each [`HubEvent::Rejected`](super::HubEvent::Rejected).
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
    /// PUBMSGs relayed (once per message, whatever the number of recipients).
    pub relayed_pubmsg: u64,
    /// PRIVMSGs relayed.
    pub relayed_privmsg: u64,
    /// Relayed copies handed to recipients.
    pub deliveries: u64,
    /// `;D` notice lines sent, one per recipient per line.
    pub notices: u64,
    /// Nick-authentication proofs accepted (807 `ok`).
    pub proofs_accepted: u64,
    /// Nick-authentication attempts refused, by their 807 code (`malformed`,
    /// `expired`, `invalid`, `policy`).
    pub proofs_refused: Vec<(&'static str, u64)>,
    /// Messages not delivered, by reason (`unknown_target`, `rate_limited`,
    /// `slow_recipient`, `peerlist_busy`, `too_long`: a message that,
    /// re-encoded with the hub's spacing and `\r\n`, would pass the max line).
    pub dropped: Vec<(&'static str, u64)>,
    /// Evictions by reason label (`idle_timeout`, `pong_timeout`, `send_failed`,
    /// `slow_consumer`, `protocol`, `handshake_timeout`, `rate_limited`, `spoofed`,
    /// `displaced`, `nick_auth_timeout`).
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
    /// Whether it proved its nick (JMP-0005).
    pub verified: bool,
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
            verified: peer.is_verified(),
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
            features: "ping".into(),
            peerlist_features: false,
            network: "regtest".into(),
            connected_at: SystemTime::UNIX_EPOCH,
            last_seen: now,
            ping_sent: None,
            probed_at: None,
            pubkey: None,
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

    #[test]
    fn an_eviction_decided_by_a_sweep_is_dropped_once_the_peer_spoke() {
        let t0 = Instant::now();
        let config = SweepConfig::default();
        let registry = Registry::default();
        assert!(registry.insert(peer(1, t0)));
        let late = t0 + config.hard_evict + Duration::from_secs(1);
        assert!(registry.still_due(1, &EvictReason::IdleTimeout, late, &config));
        registry.seen(1, late);
        assert!(!registry.still_due(1, &EvictReason::IdleTimeout, late, &config), "it spoke since");

        registry.pings_sent(&[1], late);
        let checked = late + config.pong_wait;
        assert!(registry.still_due(1, &EvictReason::PongTimeout, checked, &config));
        assert!(!registry.still_due(
            1,
            &EvictReason::PongTimeout,
            checked - Duration::from_nanos(1),
            &config
        ));
        registry.pong(1);
        assert!(!registry.still_due(1, &EvictReason::PongTimeout, checked, &config), "it answered since");

        assert!(registry.still_due(1, &EvictReason::SlowConsumer, checked, &config), "other reasons stand");
        registry.remove(1);
        assert!(!registry.still_due(1, &EvictReason::SlowConsumer, checked, &config), "gone already");
    }

    #[test]
    fn a_stall_moves_every_clock_on_but_never_past_now() {
        let t0 = Instant::now();
        let registry = Registry::default();
        assert!(registry.insert(peer(1, t0)));
        registry.pings_sent(&[1], t0 + Duration::from_secs(5));
        let now = t0 + Duration::from_secs(20);
        registry.stalled(Duration::from_secs(10), now);
        let p = &registry.snapshot()[0];
        assert_eq!(
            (p.last_seen, p.ping_sent),
            (t0 + Duration::from_secs(10), Some(t0 + Duration::from_secs(15)))
        );
        registry.stalled(Duration::from_secs(100), now);
        let p = &registry.snapshot()[0];
        assert_eq!((p.last_seen, p.ping_sent), (now, Some(now)));
    }
}
