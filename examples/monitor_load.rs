//! The session monitor at scale: memory per session, allocations per beat,
//! and how beats scale from one thread to two.
//!
//! `cargo run --release --example monitor_load [SESSIONS] [own]` (default
//! 1,000,000) registers that many sessions with ids like `session-0000042`
//! (with `own`: each with a timeout of its own, 60 s, through
//! `register_with`, to measure what per-session settings cost) and reports:
//! - the growth of the resident set (RSS, Linux `/proc/self/statm`) per session;
//! - how many heap allocations beating every session once made (a counting
//!   global allocator);
//! - beats per second from 1 and from 2 threads beating distinct sessions,
//!   over 2-second runs repeated three times: "hot" (each thread beats one
//!   session of its own) and "spread" (each thread goes round its own half of
//!   all sessions, so nearly every beat misses the CPU caches);
//! - the wall time of sweeps in a steady state, on a manual clock: every
//!   session beats every 10 s (phases spread evenly), a sweep every 5 s,
//!   timeout 30 s, nobody misses. Each sweep then re-arms the deadlines that
//!   came up since the last one (about a sixth of all sessions).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heartbeat::{ManualClock, Monitor, RegisterOptions};

#[path = "../benches/support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 =
        statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm resident field");
    pages * 4096
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(1_000_000, |a| a.parse().expect("SESSIONS: a number"));
    let own = std::env::args().nth(2).is_some_and(|a| a == "own");
    let options = RegisterOptions { timeout: Some(Duration::from_secs(60)), ..Default::default() };
    // The ids exist before the measurement: they are the caller's, not the monitor's.
    let ids: Vec<String> = (0..n).map(|i| format!("session-{i:07}")).collect();
    let monitor = Monitor::builder().build().expect("monitor");
    let before = rss_bytes();
    for id in &ids {
        if own {
            monitor.register_with(id, "agent", options).expect("valid options");
        } else {
            monitor.register(id, "agent");
        }
    }
    let after = rss_bytes();
    let per_session = (after - before) as f64 / n as f64;
    println!("sessions: {n}{}", if own { ", each with a timeout of its own" } else { "" });
    println!(
        "rss growth: {:.1} MiB, {per_session:.1} bytes per session",
        (after - before) as f64 / 1048576.0
    );

    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    for id in &ids {
        assert!(monitor.beat(id));
    }
    let during_beats = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    println!("heap allocations during {n} beats: {during_beats}");

    drop(monitor);
    let mut sweeps = steady_state_sweeps(&ids);
    sweeps.sort();
    println!(
        "steady-state sweeps of {n} sessions ({} sweeps): median {:.1} ms, max {:.1} ms",
        sweeps.len(),
        sweeps[sweeps.len() / 2].as_secs_f64() * 1e3,
        sweeps[sweeps.len() - 1].as_secs_f64() * 1e3
    );
    let monitor = Monitor::builder().build().expect("monitor");
    for id in &ids {
        monitor.register(id, "agent");
    }

    let half = n / 2;
    for (name, per_thread) in [("hot", 1), ("spread", half)] {
        for _ in 0..3 {
            let one = beats_per_second(&monitor, &[&ids[..per_thread]]);
            let two = beats_per_second(&monitor, &[&ids[..per_thread], &ids[half..half + per_thread]]);
            println!(
                "{name:>6}: 1 thread {:.2} M beats/s ({:.0} ns each), 2 threads {:.2} M beats/s, x{:.2}",
                one / 1e6,
                1e9 / one,
                two / 1e6,
                two / one
            );
        }
    }
}

/// Sweep wall times in a simulated steady state (see the module docs).
fn steady_state_sweeps(ids: &[String]) -> Vec<Duration> {
    let clock = ManualClock::new();
    let monitor = Monitor::builder().clock(clock.clone()).build().expect("monitor");
    let tenth =
        |second: usize| ids.iter().enumerate().filter(move |(i, _)| i % 10 == second % 10).map(|(_, id)| id);
    for second in 0..10 {
        clock.advance(Duration::from_secs(1));
        tenth(second).for_each(|id| monitor.register(id, "agent"));
    }
    let mut sweeps = Vec::new();
    for second in 10..130 {
        clock.advance(Duration::from_secs(1));
        tenth(second).for_each(|id| assert!(monitor.beat(id)));
        if second % 5 == 0 {
            let t = Instant::now();
            monitor.sweep();
            if second >= 40 {
                sweeps.push(t.elapsed()); // past the first timeout: steady
            }
        }
    }
    assert_eq!(monitor.healthy_count(), ids.len(), "nobody should have missed a beat");
    sweeps
}

/// Beats per second, summed over one thread per slice of ids, over 2 s.
fn beats_per_second(monitor: &Monitor, slices: &[&[String]]) -> f64 {
    const RUN: Duration = Duration::from_secs(2);
    let stop = AtomicBool::new(false);
    let total: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = slices
            .iter()
            .map(|&mine| {
                let stop = &stop;
                s.spawn(move || {
                    let (mut beats, mut i) = (0u64, 0usize);
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..1000 {
                            i = if i + 1 == mine.len() { 0 } else { i + 1 };
                            assert!(monitor.beat(&mine[i]));
                        }
                        beats += 1000;
                    }
                    beats
                })
            })
            .collect();
        std::thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
        threads.into_iter().map(|t| t.join().expect("beat thread")).sum()
    });
    total as f64 / RUN.as_secs_f64()
}
