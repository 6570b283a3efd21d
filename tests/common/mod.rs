//! What the hub's socket tests share: the hub's events as a test reads
//! them, an envelope's bytes, a counter by label.
// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use heartbeat::peer::wire;
use heartbeat::peer::{EvictReason, Hub, HubEvent};

/// The longest any single wait may take before the test fails.
pub const BOUND: Duration = Duration::from_secs(5);

/// The bytes of one envelope, `\r\n` included.
pub fn encoded(kind: u32, line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(kind, line, &mut out);
    out
}

/// The count under `name` in a labelled list of counters.
pub fn counter(list: &[(&'static str, u64)], name: &str) -> u64 {
    list.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no counter {name} in {list:?}")).1
}

/// The hub's events, with every one received so far kept.
pub struct Events {
    rx: crossbeam_channel::Receiver<HubEvent>,
    pub seen: Vec<(Instant, HubEvent)>,
}

pub fn nick_of(event: &HubEvent) -> Option<&str> {
    match event {
        HubEvent::Joined { nick, .. } | HubEvent::Left { nick, .. } | HubEvent::Evicted { nick, .. } => {
            Some(nick.as_str())
        }
        HubEvent::Rejected { .. } => None,
    }
}

impl Events {
    pub fn of(hub: &Hub) -> Events {
        Events { rx: hub.subscribe(), seen: Vec::new() }
    }

    pub fn drain(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.seen.push((Instant::now(), event));
        }
    }

    /// The first event ever received that matches, and when it was received; waits for it.
    pub fn wait(&mut self, what: &str, pred: impl Fn(&HubEvent) -> bool) -> (Instant, HubEvent) {
        if let Some(found) = self.seen.iter().find(|(_, e)| pred(e)) {
            return found.clone();
        }
        let deadline = Instant::now() + BOUND;
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(event) => {
                    let found = (Instant::now(), event);
                    self.seen.push(found.clone());
                    if pred(&found.1) {
                        return found;
                    }
                }
                Err(_) => panic!("no {what} within {BOUND:?}; events: {:#?}", self.seen),
            }
        }
    }

    pub fn evicted(&mut self, nick: &str) -> (Instant, EvictReason) {
        let what = format!("eviction of {nick}");
        match self.wait(&what, |e| matches!(e, HubEvent::Evicted { nick: n, .. } if n == nick)) {
            (at, HubEvent::Evicted { reason, .. }) => (at, reason),
            _ => unreachable!(),
        }
    }

    pub fn left(&mut self, nick: &str) -> String {
        let what = format!("{nick} leaving");
        match self.wait(&what, |e| matches!(e, HubEvent::Left { nick: n, .. } if n == nick)) {
            (_, HubEvent::Left { reason, .. }) => reason,
            _ => unreachable!(),
        }
    }

    pub fn rejected(&mut self, addr: SocketAddr) -> String {
        let what = format!("rejection of {addr}");
        match self.wait(&what, |e| matches!(e, HubEvent::Rejected { addr: a, .. } if *a == addr)) {
            (_, HubEvent::Rejected { reason, .. }) => reason,
            _ => unreachable!(),
        }
    }

    /// Takes in what arrives within `window`, without expecting anything.
    pub fn listen(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Ok(event) = self.rx.recv_deadline(deadline) {
            self.seen.push((Instant::now(), event));
        }
    }

    /// Every event about `nick` so far.
    pub fn about(&mut self, nick: &str) -> Vec<HubEvent> {
        self.drain();
        self.seen.iter().filter(|(_, e)| nick_of(e) == Some(nick)).map(|(_, e)| e.clone()).collect()
    }

    /// The nicks evicted so far, in order, with why.
    pub fn evictions(&mut self) -> Vec<(String, EvictReason)> {
        self.drain();
        self.seen
            .iter()
            .filter_map(|(_, e)| match e {
                HubEvent::Evicted { nick, reason, .. } => Some((nick.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// How many connections were rejected so far.
    pub fn rejections(&mut self) -> usize {
        self.drain();
        self.seen.iter().filter(|(_, e)| matches!(e, HubEvent::Rejected { .. })).count()
    }

    /// Asserts that `nick` joined and nothing else happened to it.
    pub fn assert_only_joined(&mut self, nick: &str) {
        let about = self.about(nick);
        assert!(
            about.len() == 1 && matches!(about[0], HubEvent::Joined { .. }),
            "{nick} should only have joined: {about:?}"
        );
    }
}
