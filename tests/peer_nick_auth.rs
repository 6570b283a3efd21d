//! JMP-0005 nick authentication over real sockets on `127.0.0.1:0`: our
//! client against our hub, raw clients that squat, forge or stall, a fake
//! directory that challenges for another id, and both `require` modes.
//!
//! Every wait is bounded ([`BOUND`]); the one deadline test uses a 300 ms
//! nick-auth timeout.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use heartbeat::Error;
use heartbeat::peer::auth::{self, Code, Identity, Mode};
use heartbeat::peer::wire::{self, Location};
use heartbeat::peer::{ClientEvent, EvictReason, Hub, HubConfig, HubEvent, PeerClient, PeerClientConfig};

mod common;
use common::{BOUND, Events, counter, encoded};

const NETWORK: &str = "regtest";
const DIRECTORY_ID: &str = "hub.example:5222";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn hub(tweak: impl FnOnce(&mut HubConfig)) -> Hub {
    let mut config = HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        network: NETWORK.into(),
        nick_auth_id: Some(DIRECTORY_ID.into()),
        notice_interval: ms(1),
        ..HubConfig::default()
    };
    tweak(&mut config);
    Hub::start(config).expect("the hub starts")
}

fn maker(c: char) -> Location {
    Location::parse(&format!("{}.onion:5222", c.to_string().repeat(56))).unwrap()
}

fn client_config(hub: &Hub, identity: Option<Identity>) -> PeerClientConfig {
    PeerClientConfig {
        addr: hub.local_addr(),
        network: NETWORK.into(),
        identity,
        nick_auth_id: Some(DIRECTORY_ID.into()),
        reconnect_min: Duration::from_secs(30),
        reconnect_max: Duration::from_secs(30),
        connect_timeout: BOUND,
        ..PeerClientConfig::default()
    }
}

/// A client's first event.
fn first_event(client: &PeerClient) -> ClientEvent {
    client.events().recv_timeout(BOUND).expect("an event")
}

/// A raw client: one blocking socket, every read bounded.
struct Raw {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream.set_write_timeout(Some(BOUND)).unwrap();
        Raw { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    fn send(&mut self, kind: u32, line: &str) {
        self.writer.write_all(&encoded(kind, line)).expect("send");
    }

    /// The next message, `None` at EOF (or a reset); panics after [`BOUND`].
    fn recv(&mut self) -> Option<(u32, String)> {
        let mut raw = String::new();
        match self.reader.read_line(&mut raw) {
            Ok(0) => None,
            Ok(_) => {
                let envelope = wire::parse_envelope(raw.trim_end().as_bytes()).expect("an envelope");
                Some((envelope.kind, envelope.line.into_owned()))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("nothing within {BOUND:?}")
            }
            Err(_) => None,
        }
    }

    fn expect(&mut self, kind: u32) -> String {
        match self.recv() {
            Some((k, line)) if k == kind => line,
            other => panic!("expected type {kind}, got {other:?}"),
        }
    }

    /// Every message until the hub closes the connection.
    fn until_closed(&mut self) -> Vec<(u32, String)> {
        let mut lines = Vec::new();
        while let Some(message) = self.recv() {
            lines.push(message);
        }
        lines
    }

    /// Sends a 793 for `nick`; returns its line.
    fn hello(&mut self, nick: &str, location: &Location, nick_auth: bool) -> String {
        let line = wire::client_handshake_with(nick, NETWORK, location, true, nick_auth);
        self.send(wire::HANDSHAKE, &line);
        line
    }

    /// Handshakes (advertising nick_auth when `identity` is given) and, if
    /// challenged, proves the nick: the 807 code.
    fn join(&mut self, nick: &str, location: &Location, identity: Option<&Identity>) -> Option<Code> {
        let hello = self.hello(nick, location, identity.is_some());
        let reply = wire::parse_dn_handshake(&self.expect(wire::DN_HANDSHAKE)).unwrap();
        assert!(reply.accepted, "{reply:?}");
        let identity = identity?;
        assert!(reply.nick_auth, "a hub with an id advertises nick_auth");
        let challenge = auth::parse_challenge(&self.expect(auth::CHALLENGE)).unwrap();
        let proof = identity.sign(&challenge.challenge, &challenge.directory_id, &hello);
        self.send(auth::PROOF, &auth::encode_proof(&proof));
        Some(auth::parse_result(&self.expect(auth::RESULT)).unwrap())
    }

    /// A GETPEERLIST round trip: the entries listed.
    fn peerlist(&mut self) -> Vec<(String, String, bool)> {
        self.send(wire::GETPEERLIST, "");
        wire::parse_peerlist(&self.expect(wire::PEERLIST))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

#[test]
fn our_client_is_verified_by_our_hub_and_routed_only_then() {
    let hub = hub(|_| {});
    let mut events = Events::of(&hub);
    let mut taker = Raw::connect(hub.local_addr());
    assert_eq!(
        taker.join(&wire::random_nick(), &Location::Taker, None),
        None,
        "prefer admits the unverified"
    );

    let identity = Identity::generate().unwrap();
    let client = PeerClient::start(PeerClientConfig {
        location: maker('m'),
        ..client_config(&hub, Some(identity.clone()))
    })
    .unwrap();
    assert_eq!(client.nick(), identity.nick(), "the nick is the key's");
    match first_event(&client) {
        ClientEvent::Connected { nick, verified, .. } => {
            assert_eq!(nick, hub.nick());
            assert!(verified, "the hub verified our nick");
        }
        other => panic!("{other:?}"),
    }
    let (_, joined) =
        events.wait("the verified join", |e| matches!(e, HubEvent::Joined { verified: true, .. }));
    assert!(matches!(joined, HubEvent::Joined { nick, .. } if nick == identity.nick()));
    assert_eq!((hub.peer_count(), hub.verified_peer_count()), (2, 1));
    assert!(hub.peers().iter().any(|p| p.nick == identity.nick() && p.verified));
    let counters = hub.counters();
    assert_eq!(counters.proofs_accepted, 1);
    assert!(counters.proofs_refused.iter().all(|(_, n)| *n == 0), "{counters:?}");

    // Routable: listed, and its PUBMSG reaches the other peer.
    let listed = taker.peerlist();
    assert!(listed.iter().any(|(nick, _, _)| nick == identity.nick()), "{listed:?}");
    client.send(wire::PUBMSG, &format!("{}!PUBLIC!orderbook", identity.nick())).unwrap();
    assert_eq!(taker.expect(wire::PUBMSG), format!("{}!PUBLIC!orderbook", identity.nick()));
}

#[test]
fn a_squatter_is_displaced_by_the_verified_owner_with_its_disconnect_notice() {
    let hub = hub(|_| {});
    let mut events = Events::of(&hub);
    let owner = Identity::generate().unwrap();
    let mut observer = Raw::connect(hub.local_addr());
    observer.join(&wire::random_nick(), &Location::Taker, None);
    // The squatter takes the maker's nick first, without a key.
    let mut squatter = Raw::connect(hub.local_addr());
    assert_eq!(squatter.join(owner.nick(), &maker('s'), None), None);
    assert!(
        observer
            .peerlist()
            .iter()
            .any(|(nick, location, _)| nick == owner.nick() && location.starts_with("sss"))
    );

    let mut real = Raw::connect(hub.local_addr());
    assert_eq!(real.join(owner.nick(), &maker('r'), Some(&owner)), Some(Code::Ok));
    assert!(squatter.until_closed().is_empty(), "the squatter is closed");
    let (_, reason) = events.evicted(owner.nick());
    assert_eq!(reason, EvictReason::Displaced);
    // The observer hears the squatter's departure (its offers go), then sees the real maker.
    let notice = observer.expect(wire::PEERLIST);
    let squatted = wire::peerlist_entry(owner.nick(), &maker('s'), true);
    assert_eq!(notice, squatted);
    let listed = observer.peerlist();
    assert!(listed.iter().any(|(nick, location, _)| nick == owner.nick() && location.starts_with("rrr")));
    assert_eq!(counter(&hub.counters().evictions, "displaced"), 1);

    // Another connection of the same key takes over from the verified one.
    let mut again = Raw::connect(hub.local_addr());
    assert_eq!(again.join(owner.nick(), &maker('r'), Some(&owner)), Some(Code::Ok));
    // Closed, and never told of its own nick's departure (the squatter's `;D`).
    assert_eq!(real.until_closed(), [], "the earlier connection of the key is closed");
    assert_eq!(counter(&hub.counters().evictions, "displaced"), 2);
    assert_eq!(hub.verified_peer_count(), 1);
}

#[test]
fn a_verified_nick_cannot_be_taken_without_its_key() {
    let hub = hub(|_| {});
    let owner = Identity::generate().unwrap();
    let mut real = Raw::connect(hub.local_addr());
    assert_eq!(real.join(owner.nick(), &Location::Taker, Some(&owner)), Some(Code::Ok));

    // Without nick_auth: refused as a nick already registered.
    let mut plain = Raw::connect(hub.local_addr());
    plain.hello(owner.nick(), &Location::Taker, false);
    let reply = wire::parse_dn_handshake(&plain.expect(wire::DN_HANDSHAKE)).unwrap();
    assert!(!reply.accepted);
    assert_eq!(reply.motd.unwrap(), format!("Rejected: Peer nick already registered: {}", owner.nick()));
    assert!(plain.until_closed().is_empty());

    // With nick_auth and another key: challenged, refused `invalid`, closed.
    let thief = Identity::generate().unwrap();
    let mut forger = Raw::connect(hub.local_addr());
    let hello = forger.hello(owner.nick(), &Location::Taker, true);
    assert!(wire::parse_dn_handshake(&forger.expect(wire::DN_HANDSHAKE)).unwrap().accepted);
    let challenge = auth::parse_challenge(&forger.expect(auth::CHALLENGE)).unwrap();
    assert_eq!(challenge.directory_id, DIRECTORY_ID);
    assert_eq!(challenge.challenge.len(), 64);
    let proof = thief.sign(&challenge.challenge, DIRECTORY_ID, &hello);
    forger.send(auth::PROOF, &auth::encode_proof(&proof));
    assert_eq!(auth::parse_result(&forger.expect(auth::RESULT)), Ok(Code::Invalid));
    assert!(forger.until_closed().is_empty());

    // A proof for another connection's 793 line (a replay) is invalid too.
    let mut replayer = Raw::connect(hub.local_addr());
    let _ = replayer.hello(owner.nick(), &maker('x'), true);
    replayer.expect(wire::DN_HANDSHAKE);
    let challenge = auth::parse_challenge(&replayer.expect(auth::CHALLENGE)).unwrap();
    let other_line = wire::client_handshake_with(owner.nick(), NETWORK, &Location::Taker, true, true);
    let proof = owner.sign(&challenge.challenge, DIRECTORY_ID, &other_line);
    replayer.send(auth::PROOF, &auth::encode_proof(&proof));
    assert_eq!(auth::parse_result(&replayer.expect(auth::RESULT)), Ok(Code::Invalid));

    // Garbage for a proof, and another message in its place: malformed.
    let mut garbage = Raw::connect(hub.local_addr());
    garbage.hello(owner.nick(), &Location::Taker, true);
    garbage.expect(wire::DN_HANDSHAKE);
    garbage.expect(auth::CHALLENGE);
    garbage.send(auth::PROOF, r#"{"pubkey":"02","signature":"x","pubkey":"03"}"#);
    assert_eq!(auth::parse_result(&garbage.expect(auth::RESULT)), Ok(Code::Malformed));
    let mut chatty = Raw::connect(hub.local_addr());
    chatty.hello(&wire::random_nick(), &Location::Taker, true);
    chatty.expect(wire::DN_HANDSHAKE);
    chatty.expect(auth::CHALLENGE);
    chatty.send(wire::GETPEERLIST, "");
    assert_eq!(auth::parse_result(&chatty.expect(auth::RESULT)), Ok(Code::Malformed));
    assert!(chatty.until_closed().is_empty());

    // The owner is untouched.
    assert_eq!(hub.peer_count(), 1);
    assert!(real.peerlist().is_empty(), "a taker is not listed, and nobody else is a peer");
    let refused = hub.counters().proofs_refused;
    assert_eq!((counter(&refused, "invalid"), counter(&refused, "malformed")), (2, 2), "{refused:?}");
}

#[test]
fn a_client_that_never_answers_is_closed_at_the_deadline_and_never_routed() {
    let hub = hub(|c| c.nick_auth_timeout = ms(300));
    let mut events = Events::of(&hub);
    let mut observer = Raw::connect(hub.local_addr());
    let observer_nick = wire::random_nick();
    observer.join(&observer_nick, &Location::Taker, None);
    let mut stalled = Raw::connect(hub.local_addr());
    let nick = wire::random_nick();
    stalled.hello(&nick, &maker('q'), true);
    stalled.expect(wire::DN_HANDSHAKE);
    stalled.expect(auth::CHALLENGE);
    // Meanwhile it is no peer: not listed, not sent the observer's PUBMSG.
    assert!(observer.peerlist().is_empty());
    observer.send(wire::PUBMSG, &format!("{observer_nick}!PUBLIC!hello"));
    let rest = stalled.until_closed();
    assert_eq!(rest.len(), 1, "only the 807: {rest:?}");
    assert_eq!(rest[0].0, auth::RESULT);
    assert_eq!(auth::parse_result(&rest[0].1), Ok(Code::Expired));
    events.wait(
        "the rejection",
        |e| matches!(e, HubEvent::Rejected { reason, .. } if reason.contains("nick-authentication")),
    );
    assert!(events.seen.iter().all(|(_, e)| !matches!(e, HubEvent::Joined { nick: n, .. } if *n == nick)));
    let counters = hub.counters();
    assert_eq!(counter(&counters.evictions, "nick_auth_timeout"), 1);
    assert_eq!(counter(&counters.proofs_refused, "expired"), 1);
    assert_eq!(hub.peer_count(), 1);
}

#[test]
fn challenged_connections_count_against_max_pending() {
    let hub = hub(|c| c.max_pending = 2);
    let mut waiting: Vec<Raw> = (0..2)
        .map(|_| {
            let mut raw = Raw::connect(hub.local_addr());
            raw.hello(&wire::random_nick(), &Location::Taker, true);
            raw.expect(wire::DN_HANDSHAKE);
            raw.expect(auth::CHALLENGE);
            raw
        })
        .collect();
    // A third connection pushes the oldest challenged one out.
    let _third = Raw::connect(hub.local_addr());
    assert!(waiting[0].until_closed().is_empty(), "the oldest is closed");
    assert_eq!(hub.counters().refused, 1);
    assert_eq!(hub.peer_count(), 0);
    drop(waiting.pop());
}

#[test]
fn require_mode_refuses_a_client_that_does_not_authenticate() {
    let hub = hub(|c| c.nick_auth = Mode::Require);
    let mut plain = Raw::connect(hub.local_addr());
    plain.hello(&wire::random_nick(), &Location::Taker, false);
    let reply = wire::parse_dn_handshake(&plain.expect(wire::DN_HANDSHAKE)).unwrap();
    assert!(!reply.accepted);
    assert_eq!(reply.motd.as_deref(), Some("Rejected: verified nick authentication required"));
    assert!(plain.until_closed().is_empty());

    // Our client without a key: refused, the reason in the event.
    let keyless = PeerClient::start(client_config(&hub, None)).unwrap();
    match first_event(&keyless) {
        ClientEvent::Refused { reason } => {
            assert!(reason.contains("verified nick authentication required"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // With a key: verified.
    let keyed = PeerClient::start(client_config(&hub, Some(Identity::generate().unwrap()))).unwrap();
    assert!(matches!(first_event(&keyed), ClientEvent::Connected { verified: true, .. }));
    assert_eq!(hub.verified_peer_count(), 1);
}

#[test]
fn a_requiring_client_refuses_a_directory_without_nick_auth() {
    let plain_hub = hub(|c| c.nick_auth_id = None);
    let identity = Identity::generate().unwrap();
    let config =
        PeerClientConfig { nick_auth: Mode::Require, ..client_config(&plain_hub, Some(identity.clone())) };
    let client = PeerClient::start(config.clone()).unwrap();
    match first_event(&client) {
        ClientEvent::Refused { reason } => {
            assert!(reason.contains("does not support required nick authentication"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // In prefer mode the same client carries on unverified.
    let prefer = PeerClient::start(PeerClientConfig { nick_auth: Mode::Prefer, ..config.clone() }).unwrap();
    assert!(matches!(first_event(&prefer), ClientEvent::Connected { verified: false, .. }));
    // Requiring it without a key or a directory id is a bad configuration.
    for bad in [
        PeerClientConfig { identity: None, ..config.clone() },
        PeerClientConfig { nick_auth_id: None, ..config.clone() },
        PeerClientConfig { nick: Some(wire::random_nick()), ..config },
    ] {
        assert!(matches!(PeerClient::start(bad), Err(Error::InvalidConfig(_))));
    }
}

#[test]
fn the_client_never_signs_a_challenge_for_another_directory() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let identity = Identity::generate().unwrap();
    let client = PeerClient::start(PeerClientConfig {
        addr: listener.local_addr().unwrap(),
        network: NETWORK.into(),
        identity: Some(identity),
        nick_auth_id: Some(DIRECTORY_ID.into()),
        reconnect_min: Duration::from_secs(30),
        reconnect_max: Duration::from_secs(30),
        connect_timeout: BOUND,
        ..PeerClientConfig::default()
    })
    .unwrap();
    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut fake = Raw { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) };
    let hello = wire::parse_handshake(&fake.expect(wire::HANDSHAKE), NETWORK).unwrap();
    assert!(hello.nick_auth, "a client with a key and an id advertises nick_auth");
    let reply = wire::dn_handshake_with("J5FakeDirOOOOOOO", NETWORK, None, true, true);
    fake.send(wire::DN_HANDSHAKE, &reply);
    let challenge = auth::Challenge { challenge: "ab".repeat(32), directory_id: "other.example:5222".into() };
    fake.send(auth::CHALLENGE, &auth::encode_challenge(&challenge));
    // The client hangs up without a proof.
    assert!(fake.until_closed().is_empty(), "no 805 (nor anything else) after a foreign challenge");
    match first_event(&client) {
        ClientEvent::Error(why) => {
            assert!(why.contains("other.example:5222") && why.contains("no proof sent"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_peers_holds_for_proofs_that_arrive_together() {
    let hub = hub(|c| c.max_peers = 1);
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    // Both are challenged while the hub is empty...
    let mut challenged: Vec<(Raw, String, auth::Challenge)> = [&a, &b]
        .iter()
        .map(|identity| {
            let mut raw = Raw::connect(hub.local_addr());
            let hello = raw.hello(identity.nick(), &Location::Taker, true);
            raw.expect(wire::DN_HANDSHAKE);
            let challenge = auth::parse_challenge(&raw.expect(auth::CHALLENGE)).unwrap();
            (raw, hello, challenge)
        })
        .collect();
    // ...and only the first proof makes a peer.
    for ((raw, hello, challenge), (identity, code)) in
        challenged.iter_mut().zip([(&a, Code::Ok), (&b, Code::Policy)])
    {
        let proof = identity.sign(&challenge.challenge, &challenge.directory_id, hello);
        raw.send(auth::PROOF, &auth::encode_proof(&proof));
        assert_eq!(auth::parse_result(&raw.expect(auth::RESULT)), Ok(code));
    }
    assert_eq!(hub.peer_count(), 1);
}

#[test]
fn a_nick_auth_message_after_authentication_closes_the_peer_with_its_notice() {
    // As joinmarket-ng: an 803, 805 or 807 from a registered peer closes it, with `;D`.
    let hub = hub(|_| {});
    let mut events = Events::of(&hub);
    let mut observer = Raw::connect(hub.local_addr());
    observer.join(&wire::random_nick(), &Location::Taker, None);
    for kind in [auth::CHALLENGE, auth::PROOF, auth::RESULT] {
        let owner = Identity::generate().unwrap();
        let mut real = Raw::connect(hub.local_addr());
        assert_eq!(real.join(owner.nick(), &maker('r'), Some(&owner)), Some(Code::Ok));
        real.send(kind, &auth::encode_result(Code::Ok));
        assert!(real.until_closed().is_empty(), "closed after a type {kind}");
        let (_, reason) = events.evicted(owner.nick());
        assert!(
            matches!(reason, EvictReason::Protocol(ref why) if why.contains(&kind.to_string())),
            "{reason}"
        );
        assert_eq!(observer.expect(wire::PEERLIST), wire::peerlist_entry(owner.nick(), &maker('r'), true));
    }
    assert_eq!(hub.peer_count(), 1);
}

#[test]
fn a_displaced_nicks_notice_precedes_the_new_owners_messages_and_never_reaches_it() {
    let hub = hub(|c| c.notice_interval = Duration::from_secs(1));
    let mut observer = Raw::connect(hub.local_addr());
    observer.join(&wire::random_nick(), &Location::Taker, None);

    // The first notice: sent as the proof is accepted, before the new owner's
    // PUBMSG (sent with the proof, in one write) is relayed.
    let owner = Identity::generate().unwrap();
    let mut squatter = Raw::connect(hub.local_addr());
    squatter.join(owner.nick(), &maker('s'), None);
    let mut real = Raw::connect(hub.local_addr());
    let hello = real.hello(owner.nick(), &maker('r'), true);
    real.expect(wire::DN_HANDSHAKE);
    let challenge = auth::parse_challenge(&real.expect(auth::CHALLENGE)).unwrap();
    let proof = owner.sign(&challenge.challenge, DIRECTORY_ID, &hello);
    let pubmsg = format!("{}!PUBLIC!hello", owner.nick());
    let mut both = encoded(auth::PROOF, &auth::encode_proof(&proof));
    both.extend_from_slice(&encoded(wire::PUBMSG, &pubmsg));
    real.writer.write_all(&both).unwrap();
    assert_eq!(auth::parse_result(&real.expect(auth::RESULT)), Ok(Code::Ok));
    assert_eq!(observer.expect(wire::PEERLIST), wire::peerlist_entry(owner.nick(), &maker('s'), true));
    assert_eq!(observer.expect(wire::PUBMSG), pubmsg, "the `;D` first, then the new owner's message");

    // A notice held back by the interval: when it goes out, the new owner is
    // not told of its own nick's departure, and the others are.
    let second = Identity::generate().unwrap();
    let mut squatter2 = Raw::connect(hub.local_addr());
    squatter2.join(second.nick(), &maker('t'), None);
    let mut real2 = Raw::connect(hub.local_addr());
    assert_eq!(real2.join(second.nick(), &maker('u'), Some(&second)), Some(Code::Ok));
    assert_eq!(observer.expect(wire::PEERLIST), wire::peerlist_entry(second.nick(), &maker('t'), true));
    // By now the notice went out: the new owner's next 789 is its GETPEERLIST answer.
    let listed = real2.peerlist();
    assert!(listed.iter().all(|(_, _, gone)| !gone), "no `;D` for the new owner: {listed:?}");
    assert!(listed.iter().any(|(nick, _, _)| nick == second.nick()), "{listed:?}");
    drop((squatter, squatter2));
}

#[test]
fn challenges_past_the_rate_are_refused_so_proofs_cannot_flood_the_hub() {
    // A frozen clock: the budget refills only when the test moves it.
    let clock = heartbeat::ManualClock::new();
    let hub = hub(|c| {
        c.max_challenges_per_sec = 2;
        c.clock = clock.clone();
    });
    let challenged = |hub: &Hub| {
        let mut raw = Raw::connect(hub.local_addr());
        raw.hello(&wire::random_nick(), &Location::Taker, true);
        let reply = wire::parse_dn_handshake(&raw.expect(wire::DN_HANDSHAKE)).unwrap();
        if reply.accepted {
            raw.expect(auth::CHALLENGE);
        } else {
            let motd = reply.motd.unwrap_or_default();
            assert_eq!(motd, "Rejected: too many nick authentications, try again later");
            assert!(raw.until_closed().is_empty());
        }
        (reply.accepted, raw)
    };
    let first: Vec<_> = (0..3).map(|_| challenged(&hub)).collect();
    assert_eq!(first.iter().map(|(ok, _)| *ok).collect::<Vec<_>>(), [true, true, false]);
    // Clients that do not offer nick authentication are not held back.
    let mut plain = Raw::connect(hub.local_addr());
    assert_eq!(plain.join(&wire::random_nick(), &Location::Taker, None), None);
    // Half a second refills one challenge.
    clock.advance(ms(500));
    assert!(challenged(&hub).0);
    assert!(!challenged(&hub).0);
    assert_eq!(hub.counters().refused, 2);
}
