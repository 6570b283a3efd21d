//! What publishing presence to etcd costs, against one local etcd (started
//! by the bench on 127.0.0.1 with a temporary data directory, or the one
//! `HEARTBEAT_ETCD_URL` names):
//!
//! - `etcd/put`: one key written under a lease, in a one-operation
//!   transaction, as a beater does every beat (the beat JSON, 300 bytes).
//! - `etcd/keepalive`: one lease keep-alive, as every publisher does every
//!   TTL/3.
//! - `etcd/txn_128`: 128 session keys in one transaction, as a monitor
//!   writes a burst of changes.
//! - `etcd/range_10k`: reading 10,000 session keys back, as `scan --etcd`
//!   does.
//!
//! Every figure is a round trip over loopback HTTP to a real etcd: it
//! includes etcd's own work (raft, its WAL's fsync).

#[path = "../tests/support/etcd.rs"]
mod etcd_support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use heartbeat::etcd::{Client, Op};

fn bench(c: &mut Criterion) {
    let (_etcd, client) = match std::env::var("HEARTBEAT_ETCD_URL") {
        Ok(url) => (None, Client::from_list(&url).unwrap()),
        Err(_) => {
            let Some(etcd) = etcd_support::Etcd::start() else { return };
            let client = etcd.client();
            (Some(etcd), client)
        }
    };
    let lease = client.grant(Duration::from_secs(60)).unwrap();
    let beat = vec![b'x'; 300];
    let session = vec![b's'; 150];
    let batch: Vec<Op> = (0..128)
        .map(|i| Op::Put { key: format!("bench/batch/{i}"), value: session.clone(), lease: lease.id })
        .collect();
    for chunk in (0..10_000).collect::<Vec<_>>().chunks(128) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|i| Op::Put { key: format!("bench/range/{i:05}"), value: session.clone(), lease: lease.id })
            .collect();
        client.txn(&ops).unwrap();
    }

    let mut group = c.benchmark_group("etcd");
    group.bench_function("put", |b| {
        b.iter(|| {
            client.txn(&[Op::Put { key: "bench/beat".into(), value: beat.clone(), lease: lease.id }]).unwrap()
        })
    });
    group.bench_function("keepalive", |b| b.iter(|| client.keepalive(lease.id).unwrap().unwrap()));
    group.bench_function("txn_128", |b| b.iter(|| client.txn(&batch).unwrap()));
    group.sample_size(20);
    group.bench_function("range_10k", |b| {
        b.iter(|| assert_eq!(client.range_prefix("bench/range/").unwrap().kvs.len(), 10_000))
    });
    group.finish();
    client.revoke(lease.id).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
