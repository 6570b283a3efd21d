//! The etcd client and one-lease-per-process presence against a real etcd
//! started by the test (127.0.0.1, free ports, a temporary data directory).

#[path = "support/etcd.rs"]
mod etcd_support;

use std::time::Duration;

use etcd_support::{Etcd, eventually};
use heartbeat::etcd::{Client, Op, Presence, PresenceState, WatchBatch, WatchEvent};

const BOUND: Duration = Duration::from_secs(10);

#[test]
fn the_client_speaks_the_gateway() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let lease = c.grant(Duration::from_secs(30)).unwrap();
    assert_eq!(lease.ttl, Duration::from_secs(30));
    c.put("t/a", b"1", lease.id).unwrap();
    let rev = c
        .txn(&[
            Op::Put { key: "t/b".into(), value: b"2".to_vec(), lease: lease.id },
            Op::Put { key: "t/c".into(), value: b"3".to_vec(), lease: 0 },
        ])
        .unwrap();
    let range = c.range_prefix("t/").unwrap();
    let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key_str().into_owned()).collect();
    assert_eq!(keys, ["t/a", "t/b", "t/c"]);
    assert_eq!(range.revision, rev);
    assert_eq!(range.kvs[0].lease, lease.id);
    assert_eq!(c.get("t/b").unwrap().unwrap().value, b"2");
    assert!(c.get("t/zz").unwrap().is_none());
    assert_eq!(c.keepalive(lease.id).unwrap(), Some(Duration::from_secs(30)));
    assert_eq!(c.lease_count().unwrap(), 1);

    // A watch from the next revision sees a put and the revoke's deletes.
    let mut watch = c.watch_prefix("t/", rev + 1, Duration::from_secs(2)).unwrap();
    c.put("t/d", b"4", 0).unwrap();
    c.revoke(lease.id).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match watch.next_batch().unwrap() {
            Some(WatchBatch::Events(events)) => seen.extend(events),
            Some(other) => panic!("{other:?}"),
            None => panic!("the watch ended with {seen:?}"),
        }
    }
    assert!(matches!(&seen[0], WatchEvent::Put(kv) if kv.key == b"t/d"), "{seen:?}");
    let deleted: Vec<_> = seen[1..]
        .iter()
        .map(|e| match e {
            WatchEvent::Delete(kv) => kv.key_str().into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(deleted, ["t/a", "t/b"]);
    assert!(c.keepalive(lease.id).unwrap().is_none(), "a revoked lease is gone");
    c.revoke(lease.id).unwrap();
    assert_eq!(c.delete_prefix("t/").unwrap(), 2);
}

#[test]
fn an_error_names_the_endpoint_and_what_etcd_said() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let err = c.put("k", b"v", 12345).unwrap_err().to_string();
    assert!(err.contains(&etcd.url()) && err.contains("lease not found"), "{err}");
}

#[test]
fn a_dead_endpoint_fails_over_to_the_next() {
    let Some(etcd) = Etcd::start() else { return };
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let c = Client::with_timeout(&[dead.clone(), etcd.url()], Duration::from_secs(2)).unwrap();
    c.put("k", b"v", 0).unwrap();
    assert_eq!(c.get("k").unwrap().unwrap().value, b"v");
}

#[test]
fn presence_keeps_one_lease_writes_changes_and_revokes_on_stop() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let presence = Presence::start(etcd.client(), Duration::from_secs(3)).unwrap();
    for i in 0..300 {
        presence.set(format!("p/{i}"), format!("v{i}"));
    }
    assert!(presence.wait_published(BOUND), "{:?}", presence.status());
    assert_eq!(c.range_prefix("p/").unwrap().kvs.len(), 300);
    assert_eq!(c.lease_count().unwrap(), 1);
    let writes = presence.status().writes;
    assert_eq!(writes, 300);
    // The same value again writes nothing; a change writes one key.
    presence.set("p/7", "v7");
    presence.set("p/8", "changed");
    presence.remove("p/9");
    assert!(presence.wait_published(BOUND));
    assert_eq!(presence.status().writes, writes + 2);
    assert_eq!(c.get("p/8").unwrap().unwrap().value, b"changed");
    assert!(c.get("p/9").unwrap().is_none());
    // Kept alive past its TTL.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.range_prefix("p/").unwrap().kvs.len(), 299);
    presence.stop();
    assert_eq!(presence.status().state, PresenceState::Stopped);
    assert!(c.range_prefix("p/").unwrap().kvs.is_empty(), "revoked: gone at once");
    assert_eq!(c.lease_count().unwrap(), 0);
}

#[test]
fn presence_survives_an_etcd_restart_past_its_ttl() {
    let Some(mut etcd) = Etcd::start() else { return };
    let presence = Presence::start(etcd.client(), Duration::from_secs(2)).unwrap();
    presence.set("r/a", "1");
    assert!(presence.wait_published(BOUND));
    etcd.stop();
    eventually("down", BOUND, || presence.status().state == PresenceState::Down);
    presence.set("r/b", "2");
    std::thread::sleep(Duration::from_secs(3));
    etcd.restart();
    assert!(presence.wait_published(Duration::from_secs(15)), "{:?}", presence.status());
    let c = etcd.client();
    let keys: Vec<_> = c.range_prefix("r/").unwrap().kvs.iter().map(|kv| kv.key_str().into_owned()).collect();
    assert_eq!(keys, ["r/a", "r/b"]);
    // etcd keeps leases across a restart (and renews them as it elects
    // itself leader): the same lease still holds both keys, nothing doubled.
    eventually("one lease", BOUND, || c.lease_count().unwrap() == 1);
    assert!(c.range_prefix("r/").unwrap().kvs.iter().all(|kv| Some(kv.lease) == presence.status().lease));
}

#[test]
fn a_lost_lease_is_granted_again_and_everything_republished() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let presence = Presence::start(etcd.client(), Duration::from_secs(3)).unwrap();
    for i in 0..200 {
        presence.set(format!("l/{i}"), "x");
    }
    assert!(presence.wait_published(BOUND));
    let old = presence.status().lease.unwrap();
    c.revoke(old).unwrap();
    assert!(c.range_prefix("l/").unwrap().kvs.is_empty());
    // Noticed at the next keep-alive (TTL/3), then granted and rewritten.
    eventually("republished", BOUND, || c.range_prefix("l/").unwrap().kvs.len() == 200);
    let status = presence.status();
    assert_eq!(status.grants, 2, "{status:?}");
    assert_ne!(status.lease, Some(old));
    assert_eq!(status.writes, 400, "{status:?}");
    assert_eq!(c.lease_count().unwrap(), 1);
}

/// A port nothing listens on: connections are refused at once.
fn dead_endpoint() -> String {
    format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    )
}

#[test]
fn changes_while_etcd_is_down_do_not_cut_the_backoff_short() {
    // A busy publisher (a monitor under churn) changes a key every 5 ms
    // while etcd refuses connections. The retries must keep to the backoff
    // (250 ms doubling, capped at TTL/3 = 2 s): at most 4 attempts in 2 s
    // (at 0, 0.25, 0.75, 1.75 s), not one per change.
    let presence = Presence::start(
        Client::with_timeout(&[dead_endpoint()], Duration::from_secs(1)).unwrap(),
        Duration::from_secs(6),
    )
    .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(2);
    let mut i = 0u64;
    while std::time::Instant::now() < end {
        presence.set("busy/key", i.to_string());
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = presence.status();
    assert_eq!(status.state, PresenceState::Down, "{status:?}");
    assert!(status.failures <= 6, "{} attempts against a dead etcd in 2 s, for {i} changes", status.failures);
    presence.stop();
}

#[test]
fn dropping_a_clone_keeps_the_lease_and_the_last_handle_revokes_it() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let presence = Presence::start(etcd.client(), Duration::from_secs(30)).unwrap();
    presence.set("d/a", "1");
    assert!(presence.wait_published(BOUND));
    let lease = presence.status().lease.unwrap();
    drop(presence.clone());
    assert_eq!(c.keepalive(lease).unwrap(), Some(Duration::from_secs(30)), "a clone's drop revokes nothing");
    assert!(c.get("d/a").unwrap().is_some());
    // The last two handles, dropped at the same moment on two threads: one
    // of the drops revokes and joins, whichever is last.
    let other = presence.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let b = barrier.clone();
    let t = std::thread::spawn(move || {
        b.wait();
        drop(other);
    });
    barrier.wait();
    drop(presence);
    t.join().unwrap();
    assert!(c.get("d/a").unwrap().is_none(), "revoked before the last drop returned");
    assert_eq!(c.keepalive(lease).unwrap(), None);
}

#[test]
fn a_first_publish_longer_than_the_ttl_keeps_its_lease() {
    // Many keys under a short lease: writing them all takes longer than the
    // TTL, so the lease must be kept alive between the transactions, or it
    // expires half-way, is granted again, and the publish starts over.
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let presence = Presence::start(etcd.client(), Duration::from_secs(2)).unwrap();
    let value = "x".repeat(200);
    for i in 0..80_000 {
        presence.set(format!("many/{i:06}"), value.as_str());
    }
    let started = std::time::Instant::now();
    assert!(presence.wait_published(Duration::from_secs(60)), "{:?}", presence.status());
    let took = started.elapsed();
    let status = presence.status();
    assert_eq!(status.grants, 1, "the lease was lost while publishing ({took:?}): {status:?}");
    assert_eq!(status.writes, 80_000, "{status:?}");
    assert_eq!(c.range_prefix("many/").unwrap().kvs.len(), 80_000);
    eprintln!("80,000 keys published in {took:?}");
}

#[test]
fn a_stop_during_a_long_publish_ends_it_between_two_transactions() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let presence = Presence::start(etcd.client(), Duration::from_secs(5)).unwrap();
    const KEYS: usize = 40_000;
    for i in 0..KEYS {
        presence.set(format!("s/{i:05}"), "x");
    }
    eventually("the publish under way", BOUND, || presence.status().writes > 0);
    presence.stop();
    let status = presence.status();
    assert_eq!(status.state, PresenceState::Stopped);
    // One transaction (128 keys) finishes after the stop, not the 300 left.
    assert!(status.writes < KEYS as u64 / 2, "{status:?}");
    assert!(c.range_prefix("s/").unwrap().kvs.is_empty(), "revoked");
}
