//! The session monitor at 1,000,000 registered sessions (fixed detector,
//! unless said).
//!
//! - `monitor_beat/hot`: `beat()` on one existing session, again and again:
//!   the lock, hash and lookup with everything in cache.
//! - `monitor_beat/hot_phi`: the same with 1,000,000 phi sessions
//!   (constant-memory estimator): the beat also updates the session's
//!   mean and variance and checks whether its deadline came earlier.
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
//! - `monitor_sweep/steady_100ms`: 100 ms of a steady state on a manual
//!   clock: a hundredth of the million beats (each session every 10 s,
//!   timeout 30 s), then one `maintain()`, as the sweeper thread runs it
//!   between sweeps. Most of an iteration is the 10,000 beats.
//!
//! Registering a million sessions takes a second or two before each group
//! runs. Memory per session, allocations per beat, the distribution of
//! sweep and `maintain` times in a steady state, and thread scaling over
//! fixed-duration runs are measured by `examples/monitor_load.rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use heartbeat::{Detector, ManualClock, Monitor, PhiConfig};

const SESSIONS: usize = 1_000_000;

fn ids() -> Vec<String> {
    (0..SESSIONS).map(|i| format!("session-{i:07}")).collect()
}

fn monitor_with(ids: &[String], clock: Option<Arc<ManualClock>>) -> Monitor {
    build(Monitor::builder(), ids, clock)
}

fn build(mut builder: heartbeat::MonitorBuilder, ids: &[String], clock: Option<Arc<ManualClock>>) -> Monitor {
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
    {
        let phi = build(Monitor::builder().detector(Detector::Phi(PhiConfig::default())), &ids, None);
        group.bench_function("hot_phi", |b| b.iter(|| assert!(phi.beat(black_box("session-0500000")))));
    }
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
    let mut group = c.benchmark_group("monitor_sweep");
    group.bench_function("none_due", |b| b.iter(|| monitor.sweep()));
    drop(monitor);

    let ids = ids();
    let monitor = monitor_with(&[], Some(clock.clone()));
    let phase = |step: usize| ids.iter().skip(step % 100).step_by(100);
    for step in 0..100 {
        clock.advance(Duration::from_millis(100));
        phase(step).for_each(|id| monitor.register(id, "agent"));
    }
    let mut step = 100;
    group.bench_function("steady_100ms", |b| {
        b.iter(|| {
            clock.advance(Duration::from_millis(100));
            phase(step).for_each(|id| assert!(monitor.beat(id)));
            monitor.maintain();
            step += 1;
        })
    });
    group.finish();
}

criterion_group!(benches, beat, sweep);
criterion_main!(benches);
