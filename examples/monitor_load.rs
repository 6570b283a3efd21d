//! The session monitor at scale: memory per session, allocations per beat,
//! steady-state sweeps, and how beats scale from one thread to two.
//!
//! `cargo run --release --example monitor_load [SESSIONS] [fixed|own|phi|window]`
//! (default 1,000,000, `fixed`) registers that many sessions with ids like
//! `session-0000042`: on the monitor's settings (`fixed`), each with a
//! timeout of its own, 60 s, through `register_with` (`own`, to measure
//! what per-session settings cost), or with the phi detector for all, its
//! constant-memory estimator (`phi`) or Akka's window (`window`). It reports:
//! - the growth of the resident set (RSS, Linux `/proc/self/statm`) per session;
//! - how many heap allocations beating every session once made (a counting
//!   global allocator);
//! - the sweeper's work in a steady state, on a manual clock, over a 60 s
//!   run after 40 s of warm-up: every session beats every 10 s (phases
//!   spread evenly, a hundredth of them every 100 ms), timeout 30 s, a
//!   sweep every 5 s and `maintain()` every 100 ms in between, as the
//!   sweeper thread does; nobody misses. Wall times of each sweep and each
//!   `maintain` call (median, p99, max), and the same in thread CPU time,
//!   which a busy shared host does not inflate with preemption;
//! - beats per second from 1 and from 2 threads beating distinct sessions,
//!   over 2-second runs repeated three times: "hot" (each thread beats one
//!   session of its own) and "spread" (each thread goes round its own half of
//!   all sessions, so nearly every beat misses the CPU caches).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heartbeat::{Detector, ManualClock, Monitor, PhiConfig, PhiEstimator, RegisterOptions};

#[path = "../benches/support/counting.rs"]
mod counting;
use counting::ALLOCATIONS;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 =
        statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm resident field");
    pages * 4096
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Fixed,
    Own,
    Phi,
    Window,
}

fn builder(mode: Mode) -> heartbeat::MonitorBuilder {
    let phi = |estimator| Detector::Phi(PhiConfig { estimator, ..PhiConfig::default() });
    match mode {
        Mode::Fixed | Mode::Own => Monitor::builder(),
        Mode::Phi => Monitor::builder().detector(phi(PhiEstimator::Ewma)),
        Mode::Window => Monitor::builder().detector(phi(PhiEstimator::Window)),
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(1_000_000, |a| a.parse().expect("SESSIONS: a number"));
    let mode = match std::env::args().nth(2).as_deref() {
        None | Some("fixed") => Mode::Fixed,
        Some("own") => Mode::Own,
        Some("phi") => Mode::Phi,
        Some("window") => Mode::Window,
        Some(other) => panic!("{other:?}: fixed, own, phi or window"),
    };
    let options = RegisterOptions { timeout: Some(Duration::from_secs(60)), ..Default::default() };
    // The ids exist before the measurement: they are the caller's, not the monitor's.
    let ids: Vec<String> = (0..n).map(|i| format!("session-{i:07}")).collect();
    let monitor = builder(mode).build().expect("monitor");
    let before = rss_bytes();
    for id in &ids {
        if mode == Mode::Own {
            monitor.register_with(id, "agent", options).expect("valid options");
        } else {
            monitor.register(id, "agent");
        }
    }
    let after = rss_bytes();
    let per_session = (after - before) as f64 / n as f64;
    let what = match mode {
        Mode::Fixed => "fixed detector",
        Mode::Own => "fixed detector, each with a timeout of its own",
        Mode::Phi => "phi detector, constant-memory estimator",
        Mode::Window => "phi detector, Akka's window of 1000",
    };
    println!("sessions: {n} ({what})");
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

    let steady = steady_state(&ids, mode);
    println!(
        "steady state, {n} sessions, 60 s ({} sweeps, {} maintain calls):",
        steady.sweeps.len(),
        steady.maintains.len()
    );
    println!("  sweep wall:    {}", summary(steady.sweeps.iter().map(|t| t.0).collect()));
    println!("  sweep cpu:     {}", summary(steady.sweeps.iter().map(|t| t.1).collect()));
    println!("  maintain wall: {}", summary(steady.maintains.iter().map(|t| t.0).collect()));
    println!("  maintain cpu:  {}", summary(steady.maintains.iter().map(|t| t.1).collect()));
    println!("  sweeper busy {:.2} ms per second (wall)", steady.total.as_secs_f64() * 1e3 / 60.0);
    if mode != Mode::Fixed {
        return;
    }
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

/// Median, p99 and max of some wall times, in ms.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!("median {:.3} ms, p99 {:.3} ms, max {:.3} ms", at(0.5), at(0.99), at(1.0))
}

/// This thread's CPU time (Linux `CLOCK_THREAD_CPUTIME_ID`).
fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (wall, cpu) of each call.
struct Steady {
    sweeps: Vec<(Duration, Duration)>,
    maintains: Vec<(Duration, Duration)>,
    total: Duration,
}

/// The sweeper's calls in a simulated steady state (see the module docs):
/// wall and CPU times of the sweeps, of the `maintain` calls, and the total.
fn steady_state(ids: &[String], mode: Mode) -> Steady {
    const STEP: Duration = Duration::from_millis(100);
    let clock = ManualClock::new();
    let monitor = builder(mode).clock(clock.clone()).build().expect("monitor");
    // A hundredth of the sessions beats in each 100 ms step of a 10 s period.
    let phase = |step: usize| ids.iter().skip(step % 100).step_by(100);
    for step in 0..100 {
        clock.advance(STEP);
        phase(step).for_each(|id| {
            if mode == Mode::Own {
                let options =
                    RegisterOptions { timeout: Some(Duration::from_secs(60)), ..Default::default() };
                monitor.register_with(id, "agent", options).expect("valid options");
            } else {
                monitor.register(id, "agent");
            }
        });
    }
    let (mut sweeps, mut maintains, mut total) = (Vec::new(), Vec::new(), Duration::ZERO);
    // 40 s of warm-up (past the first timeouts), then 60 s measured.
    for step in 100..1100 {
        clock.advance(STEP);
        phase(step).for_each(|id| assert!(monitor.beat(id)));
        let (t, cpu) = (Instant::now(), cpu_now());
        let sweep = step % 50 == 0;
        if sweep {
            monitor.sweep();
        } else {
            monitor.maintain();
        }
        let took = (t.elapsed(), cpu_now().saturating_sub(cpu));
        if step >= 500 {
            total += took.0;
            if sweep { sweeps.push(took) } else { maintains.push(took) }
        }
    }
    assert_eq!(monitor.healthy_count(), ids.len(), "nobody should have missed a beat");
    Steady { sweeps, maintains, total }
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
