//! The session monitor at 1,000,000 registered sessions (fixed detector).
//!
//! - `monitor_beat/hot`: `beat()` on one existing session, again and again:
//!   the lock, hash and lookup with everything in cache.
//! - `monitor_beat/round_robin`: `beat()` on each of the million in turn, so
//!   almost every lookup misses the CPU caches: the cost when beats come from
//!   many sessions.
//! - `monitor_beat_threads/hot/N`: N threads, each beating one session of its
//!   own again and again: what the locks and shared state allow.
//! - `monitor_beat_threads/all/N`: N threads, each round-robin over its own
//!   half of the million: bound by memory latency. Throughput is beats per
//!   second summed over the threads, for comparing 1 and 2.
//! - `monitor_sweep/none_due`: one `sweep()` over the million when no
//!   session is due: the cost of the sweeper's idle rounds.
//!
//! Registering a million sessions takes a second or two before the first
//! group runs. Memory per session, allocations per beat and thread scaling
//! over fixed-duration runs are measured by `examples/monitor_load.rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use heartbeat::{ManualClock, Monitor};

const SESSIONS: usize = 1_000_000;

fn ids() -> Vec<String> {
    (0..SESSIONS).map(|i| format!("session-{i:07}")).collect()
}

fn monitor_with(ids: &[String], clock: Option<Arc<ManualClock>>) -> Monitor {
    let mut builder = Monitor::builder();
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    let monitor = builder.build().expect("monitor");
    for id in ids {
        monitor.register(id, "agent");
    }
    monitor
}

fn beat(c: &mut Criterion) {
    let ids = ids();
    let monitor = monitor_with(&ids, None);
    let mut group = c.benchmark_group("monitor_beat");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hot", |b| b.iter(|| assert!(monitor.beat(black_box("session-0500000")))));
    let mut i = 0;
    group.bench_function("round_robin", |b| {
        b.iter(|| {
            i = (i + 1) % SESSIONS;
            assert!(monitor.beat(black_box(&ids[i])));
        })
    });
    group.finish();

    let mut group = c.benchmark_group("monitor_beat_threads");
    for (name, per_thread) in [("hot", 1), ("all", SESSIONS / 2)] {
        for threads in [1usize, 2] {
            group.throughput(Throughput::Elements(threads as u64));
            group.bench_function(format!("{name}/{threads}"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            // Each thread beats its own sessions: distinct ids, as the issue asks.
                            let mine = &ids[t * SESSIONS / 2..t * SESSIONS / 2 + per_thread];
                            let monitor = &monitor;
                            s.spawn(move || {
                                for n in 0..iters as usize {
                                    assert!(monitor.beat(&mine[n % mine.len()]));
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

fn sweep(c: &mut Criterion) {
    let clock = ManualClock::new();
    let monitor = monitor_with(&ids(), Some(clock.clone()));
    clock.advance(Duration::from_secs(5)); // every deadline is 30 s out
    c.benchmark_group("monitor_sweep").bench_function("none_due", |b| b.iter(|| monitor.sweep()));
}

criterion_group!(benches, beat, sweep);
criterion_main!(benches);
