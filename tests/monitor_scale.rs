//! The monitor on its timing wheel: mixed timeouts, deadlines to the
//! nanosecond, a randomized comparison with a reference model of the seed's
//! rules, the constant-memory phi estimator against known values and
//! against Akka's window, and validation of every setting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use heartbeat::{
    Detector, Error, Event, ManualClock, Monitor, PhiConfig, PhiEstimator, RegisterOptions, RemovalReason,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn drain(rx: &Receiver<Event>) -> Vec<Event> {
    rx.try_iter().collect()
}

/// A small deterministic generator (xorshift64*), so that no crate is needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0), near enough.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[test]
fn mixed_timeouts_from_a_second_to_a_day_time_out_at_the_right_sweep() {
    let clock = ManualClock::new();
    let interval = secs(60);
    let monitor = Monitor::builder().clock(clock.clone()).check_interval(interval).build().unwrap();
    let events = monitor.subscribe();
    let timeouts = [1u64, 59, 60, 61, 3600, 5 * 3600 + 7, 86_400];
    for (i, &t) in timeouts.iter().enumerate() {
        let options = RegisterOptions {
            timeout: Some(secs(t)),
            max_missed_beats: Some(1 + i as u32 % 3),
            ..Default::default()
        };
        monitor.register_with(&format!("t{t}"), "job", options).unwrap();
    }
    // Sweeps every minute for a day and two hours; maintain in between.
    let mut timed_out_at = HashMap::new();
    let mut warned_at = HashMap::new();
    for sweep in 1..=(26 * 60u64) {
        clock.advance(secs(30));
        monitor.maintain();
        clock.advance(secs(30));
        monitor.sweep();
        for e in drain(&events) {
            match e {
                Event::Warning { session_id, .. } => {
                    warned_at.insert(session_id, sweep);
                }
                Event::TimedOut { session_id, .. } => {
                    timed_out_at.insert(session_id, sweep);
                }
                _ => {}
            }
        }
    }
    for (i, &t) in timeouts.iter().enumerate() {
        // The first sweep at which silence > t (sweeps at 60 s multiples),
        // then one more sweep per further miss.
        let first_miss = t / 60 + 1;
        let max = 1 + i as u64 % 3;
        let id = format!("t{t}");
        assert_eq!(warned_at.get(&id), Some(&first_miss), "{id}");
        assert_eq!(timed_out_at.get(&id), Some(&(first_miss + max - 1)), "{id}");
    }
    assert_eq!(monitor.registered_count(), 0);
}

#[test]
fn a_session_that_beats_just_before_its_deadline_is_never_warned() {
    let clock = ManualClock::new();
    let monitor = Monitor::builder().clock(clock.clone()).build().unwrap();
    let events = monitor.subscribe();
    monitor.register("edge", "worker");
    let timeout = secs(30);
    for round in 0..200u32 {
        // Silent for exactly the timeout (not longer), swept at that very
        // instant: no miss. Maintain runs in between at varying times.
        clock.advance(Duration::from_millis(u64::from(round) * 97 % 29_000));
        monitor.maintain();
        clock.advance(timeout - Duration::from_millis(u64::from(round) * 97 % 29_000));
        monitor.sweep();
        assert!(monitor.beat("edge"), "round {round}");
    }
    assert!(drain(&events).is_empty(), "a session beating in time was warned");
    // One nanosecond more silence than the timeout is a miss.
    clock.advance(timeout + Duration::from_nanos(1));
    monitor.sweep();
    assert!(
        drain(&events).iter().any(|e| matches!(e, Event::Warning { session_id, .. } if session_id == "edge"))
    );

    // The same a day out, with a sweep every minute up to the instant.
    let monitor = Monitor::builder().clock(clock.clone()).check_interval(secs(60)).build().unwrap();
    let events = monitor.subscribe();
    let day = RegisterOptions { timeout: Some(secs(86_400)), ..Default::default() };
    monitor.register_with("day", "cron", day).unwrap();
    for _ in 0..3 {
        for _ in 0..1440 {
            clock.advance(secs(60));
            monitor.sweep();
        }
        assert!(monitor.beat("day"));
    }
    assert!(drain(&events).is_empty(), "the daily session was warned");
}

/// The seed's rules, as simply as they can be written: what the monitor
/// must agree with at every sweep.
#[derive(Clone)]
struct ModelSession {
    last_beat: u64,
    missed: u32,
    paused: bool,
    /// Reported a failure (healthchecks.io's `/fail`), not yet cleared by a beat.
    failed: bool,
    timeout: u64,
    max_missed: u32,
}

#[derive(Default)]
struct Model {
    sessions: HashMap<String, ModelSession>,
}

impl Model {
    fn register(&mut self, id: &str, now: u64, timeout: u64, max_missed: u32, out: &mut Vec<String>) {
        let paused = self.sessions.get(id).is_some_and(|s| s.paused);
        if self.sessions.get(id).is_some_and(|s| s.missed > 0 || s.failed) {
            out.push(format!("recovered {id}"));
        }
        self.sessions.insert(
            id.into(),
            ModelSession { last_beat: now, missed: 0, paused, failed: false, timeout, max_missed },
        );
    }

    fn beat(&mut self, id: &str, now: u64, out: &mut Vec<String>) -> bool {
        let Some(s) = self.sessions.get_mut(id) else { return false };
        s.last_beat = now;
        if s.missed > 0 || s.failed {
            s.missed = 0;
            s.failed = false;
            out.push(format!("recovered {id}"));
        }
        true
    }

    /// A failure report: a sign of life that leaves the session unhealthy
    /// until its next beat.
    fn fail(&mut self, id: &str, now: u64, out: &mut Vec<String>) {
        let s = self.sessions.get_mut(id).unwrap();
        s.last_beat = now;
        s.missed = 0;
        s.failed = true;
        out.push(format!("failed {id}"));
    }

    /// A beat that leaves a failure standing.
    fn touch(&mut self, id: &str, now: u64, out: &mut Vec<String>) {
        let s = self.sessions.get_mut(id).unwrap();
        if s.failed {
            s.last_beat = now;
            s.missed = 0;
        } else {
            self.beat(id, now, out);
        }
    }

    fn sweep(&mut self, now: u64, out: &mut Vec<String>) {
        let mut dead = Vec::new();
        for (id, s) in &mut self.sessions {
            if s.paused || now - s.last_beat <= s.timeout {
                continue;
            }
            s.missed += 1;
            if s.missed == 1 {
                out.push(format!("warning {id}"));
            }
            if s.missed >= s.max_missed {
                out.push(format!("timed out {id} after {}", s.missed));
                dead.push(id.clone());
            }
        }
        for id in dead {
            self.sessions.remove(&id);
        }
    }
}

fn describe(e: &Event) -> Option<String> {
    match e {
        Event::Warning { session_id, .. } => Some(format!("warning {session_id}")),
        Event::Recovered { session_id } => Some(format!("recovered {session_id}")),
        Event::TimedOut { session_id, missed_beats, .. } => {
            Some(format!("timed out {session_id} after {missed_beats}"))
        }
        Event::Removed { reason: RemovalReason::TimedOut, .. } => None,
        Event::Failed { session_id, .. } => Some(format!("failed {session_id}")),
        other => Some(format!("{other:?}")),
    }
}

#[test]
fn ten_thousand_random_sessions_agree_with_the_seeds_rules_at_every_sweep() {
    const SESSIONS: usize = 10_000;
    const HOURS: u64 = 3;
    const S: u64 = 1_000_000_000;
    let clock = ManualClock::new();
    let monitor = Monitor::builder().clock(clock.clone()).build().unwrap(); // 30 s, every 5 s, 3 misses
    let events = monitor.subscribe();
    let mut model = Model::default();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let timeouts = [None, Some(1), Some(7), Some(30), Some(31), Some(90), Some(600), Some(86_400)];
    let maxes = [None, Some(1), Some(2), Some(3), Some(5)];
    let ids: Vec<String> = (0..SESSIONS).map(|i| format!("s{i}")).collect();
    // Each session's rhythm (seconds between its actions) and next action.
    let periods: Vec<u64> =
        (0..SESSIONS).map(|_| [1, 2, 3, 5, 9, 10, 15, 25, 29, 31, 45][rng.below(11) as usize]).collect();
    let mut agenda: Vec<Vec<u32>> = vec![Vec::new(); (HOURS * 3600 + 1) as usize];
    let mut expected = Vec::new();
    let settings = |i: usize| {
        let (t, m) = (timeouts[i % timeouts.len()], maxes[i / timeouts.len() % maxes.len()]);
        (
            RegisterOptions { timeout: t.map(secs), max_missed_beats: m, ..Default::default() },
            t.unwrap_or(30) * S,
            m.unwrap_or(3),
        )
    };
    for (i, id) in ids.iter().enumerate() {
        let (options, timeout, max) = settings(i);
        monitor.register_with(id, "agent", options).unwrap();
        model.register(id, 0, timeout, max, &mut expected);
        agenda[1 + rng.below(periods[i]) as usize].push(i as u32);
    }
    let (mut sweeps, mut checked_events, mut warnings, mut deaths) = (0, 0, 0, 0);
    // Every half hour the whole world stops for up to three days (a manual
    // clock moved at once): deadlines of every size come up together.
    let mut jumped = 0;
    for second in 1..=HOURS * 3600 {
        if second % 1800 == 0 {
            let jump = rng.below(3 * 86_400);
            clock.advance(secs(jump));
            jumped += jump;
        }
        clock.advance(secs(1));
        let now = (second + jumped) * S;
        for i in std::mem::take(&mut agenda[second as usize]) {
            let i = i as usize;
            let id = &ids[i];
            let mut next = periods[i];
            match model.sessions.get(id).map(|s| s.paused) {
                None => {
                    // Timed out or unregistered: comes back.
                    let (options, timeout, max) = settings(i);
                    monitor.register_with(id, "agent", options).unwrap();
                    model.register(id, now, timeout, max, &mut expected);
                }
                Some(true) => {
                    if rng.chance(50) {
                        assert!(monitor.resume(id));
                        let s = model.sessions.get_mut(id).unwrap();
                        s.paused = false;
                        model.beat(id, now, &mut expected);
                    }
                    next = 1 + rng.below(600);
                }
                Some(false) => match rng.below(100) {
                    0 => {
                        assert!(monitor.unregister(id));
                        model.sessions.remove(id);
                        expected.push(format!(
                            "{:?}",
                            Event::Removed { session_id: id.clone(), reason: RemovalReason::Unregistered }
                        ));
                        next = 1 + rng.below(300);
                    }
                    1..=2 => {
                        assert!(monitor.pause(id));
                        model.sessions.get_mut(id).unwrap().paused = true;
                        next = 1 + rng.below(300);
                    }
                    3..=8 => next = 1 + rng.below(3600), // goes silent, maybe for good
                    10 => {
                        assert!(monitor.fail(id));
                        model.fail(id, now, &mut expected);
                    }
                    11 => {
                        assert!(monitor.touch(id));
                        model.touch(id, now, &mut expected);
                    }
                    9 => {
                        // Registered again: replaced, pause kept.
                        let (options, timeout, max) = settings(i);
                        monitor.register_with(id, "agent", options).unwrap();
                        model.register(id, now, timeout, max, &mut expected);
                    }
                    _ => {
                        assert_eq!(monitor.beat(id), model.beat(id, now, &mut expected), "{id}");
                        // Some jitter around the rhythm.
                        next = (periods[i] + rng.below(3)).saturating_sub(1).max(1);
                    }
                },
            }
            if let Some(slot) = agenda.get_mut((second + next) as usize) {
                slot.push(i as u32);
            }
        }
        if rng.chance(60) {
            monitor.maintain();
        }
        if second % 5 == 0 {
            monitor.sweep();
            model.sweep(now, &mut expected);
            sweeps += 1;
        }
        let mut got: Vec<String> = drain(&events).iter().filter_map(describe).collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "at {second} s");
        checked_events += got.len();
        warnings += got.iter().filter(|e| e.starts_with("warning")).count();
        deaths += got.iter().filter(|e| e.starts_with("timed out")).count();
        expected.clear();
        assert_eq!(monitor.registered_count(), model.sessions.len(), "at {second} s");
        let unhealthy = model.sessions.values().filter(|s| s.missed > 0 || s.failed).count();
        assert_eq!(monitor.healthy_count(), model.sessions.len() - unhealthy, "at {second} s");
        if second % 600 == 0 {
            for status in monitor.all_status() {
                let s = &model.sessions[&status.session_id];
                assert_eq!(
                    (status.missed_beats, status.is_paused),
                    (s.missed, s.paused),
                    "{}",
                    status.session_id
                );
            }
        }
    }
    // The run must have exercised what it checks.
    assert_eq!(sweeps, HOURS * 720);
    assert!(
        warnings > 1000 && deaths > 1000 && checked_events > 10_000,
        "{warnings} {deaths} {checked_events}"
    );
}

/// A monitor of phi sessions with `config`, swept every 100 ms, on `clock`.
fn phi_monitor(clock: &Arc<ManualClock>, config: PhiConfig) -> Monitor {
    Monitor::builder()
        .clock(clock.clone())
        .check_interval(Duration::from_millis(100))
        .detector(Detector::Phi(config))
        .build()
        .unwrap()
}

fn phi_session(config: PhiConfig) -> (Arc<ManualClock>, Monitor) {
    let clock = ManualClock::new();
    let monitor = phi_monitor(&clock, config);
    monitor.register("p", "worker");
    assert!(monitor.beat("p")); // the first beat only sets the time
    (clock, monitor)
}

fn beats(clock: &ManualClock, monitor: &Monitor, intervals_ms: &[u64]) {
    for &ms in intervals_ms {
        clock.advance(Duration::from_millis(ms));
        assert!(monitor.beat("p"));
    }
}

/// Population mean and standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
    (mean, var.sqrt())
}

#[test]
fn constant_memory_phi_matches_known_values() {
    let config = PhiConfig {
        acceptable_pause: Duration::ZERO,
        expected_interval: secs(1),
        max_samples: 1000,
        ..PhiConfig::default()
    };
    // While the history is short, the exact mean and deviation of all the
    // intervals, the two seeds (750, 1250 ms) included: Akka's numbers.
    let (clock, monitor) = phi_session(config);
    let history = [900, 1100, 1000, 950, 1050];
    beats(&clock, &monitor, &history);
    let all: Vec<f64> = [750, 1250].iter().chain(&history).map(|&ms| ms as f64).collect();
    let (mean, std) = mean_std(&all);
    assert_eq!(mean, 1000.0);
    assert!((std - (150_000.0f64 / 7.0).sqrt()).abs() < 1e-9);
    clock.advance(Duration::from_millis(1200));
    let status = monitor.status("p").unwrap();
    let expected = heartbeat::phi(1200.0, mean, std);
    // Tolerance: 1e-9 on phi (floating-point rounding of the running update).
    assert!((status.phi.unwrap() - expected).abs() < 1e-9, "{:?} vs {expected}", status.phi);
    // Dead when phi reaches 8: mean + y(8) * std, y(8) = 5.2259866441.
    let dead_ms = mean + 5.225_986_644_1 * std;
    let ttd = status.time_to_death.unwrap().as_secs_f64() * 1e3;
    assert!((ttd - (dead_ms - 1200.0)).abs() < 0.01, "{ttd} ms vs {}", dead_ms - 1200.0);

    // Past (max_samples + 1) / 2 samples each new one has weight
    // 2 / (max_samples + 1): with max_samples 3, one half.
    let (clock, monitor) = phi_session(PhiConfig { max_samples: 3, ..config });
    // Seeds: mean 1000, variance 62500; then, weight 1/2 each:
    // 1000 → mean 1000, variance (62500 + 0) / 2 = 31250
    // 1000 → mean 1000, variance 15625
    // 1500 → mean 1250, variance (15625 + 500 * 250) / 2 = 70312.5
    // (1500 ms is below the 1653 ms where phi reached 8, so it is recorded.)
    beats(&clock, &monitor, &[1000, 1000, 1500]);
    let (mean, std) = (1250.0, 70_312.5f64.sqrt());
    clock.advance(Duration::from_millis(2000));
    let phi = monitor.status("p").unwrap().phi.unwrap();
    assert!((phi - heartbeat::phi(2000.0, mean, std)).abs() < 1e-9, "{phi}");
}

#[test]
fn constant_memory_phi_never_lets_a_silent_session_live_forever() {
    let mut rng = Rng(7);
    for round in 0..20 {
        let config = PhiConfig {
            max_samples: 2 + rng.below(2000) as usize,
            expected_interval: Duration::from_millis(1 + rng.below(100_000)),
            ..PhiConfig::default()
        };
        let clock = ManualClock::new();
        let monitor = Monitor::builder()
            .clock(clock.clone())
            .check_interval(secs(3600))
            .detector(Detector::Phi(config))
            .build()
            .unwrap();
        let events = monitor.subscribe();
        monitor.register("p", "worker");
        // Any history of intervals from 1 ms to a day, sweeping as it goes.
        for _ in 0..200 {
            let scale = rng.below(27);
            let ms = 1 + rng.below(1u64 << scale).min(86_400_000);
            clock.advance(Duration::from_millis(ms));
            monitor.beat("p");
        }
        monitor.sweep();
        drain(&events);
        let ttd = monitor.status("p").unwrap().time_to_death.unwrap();
        // Mean and deviation are at most a day each: dead within
        // 1 + y(8) = 6.23 days of silence (plus the acceptable pause).
        assert!(ttd < secs(7 * 86_400), "round {round}: {ttd:?}");
        let mut dead = false;
        for _ in 0..(7 * 24) {
            clock.advance(secs(3600));
            monitor.maintain();
            monitor.sweep();
            if drain(&events).iter().any(|e| matches!(e, Event::TimedOut { .. })) {
                dead = true;
                break;
            }
        }
        assert!(dead, "round {round}: a silent phi session lived for a week");
    }
}

/// When each estimator would declare a session dead (phi 8) after the last
/// beat of a trace: the silence, in seconds.
fn death_after(trace: &[u64], estimator: PhiEstimator, max_samples: usize) -> f64 {
    let config = PhiConfig { estimator, max_samples, expected_interval: secs(1), ..PhiConfig::default() };
    let (clock, monitor) = phi_session(config);
    beats(&clock, &monitor, trace);
    monitor.status("p").unwrap().time_to_death.unwrap().as_secs_f64()
}

#[test]
fn the_two_phi_estimators_side_by_side() {
    let mut rng = Rng(42);
    let n = 2000;
    let regular: Vec<u64> = vec![1000; n];
    let jittery: Vec<u64> = (0..n).map(|_| 700 + rng.below(600)).collect();
    // Bursts of ten beats 100 ms apart, then 5 s of quiet.
    let bursty: Vec<u64> = (0..n).map(|i| if i % 10 == 9 { 5000 } else { 100 }).collect();
    // From 1 s to 2 s between beats, slowly.
    let drifting: Vec<u64> = (0..n as u64).map(|i| 1000 + i * 1000 / n as u64).collect();
    // Steady, one 4.4 s pause (phi below 8: not a death, so it is kept in
    // the history), then steady again for 50 beats.
    let pause: Vec<u64> = (0..n).map(|i| if i == n - 50 { 4400 } else { 1000 }).collect();
    println!("silence (s) before phi 8, window of 100 intervals vs constant memory (max_samples 100):");
    println!("{:<14} {:>8} {:>8}", "trace", "window", "ewma");
    let mut rows = HashMap::new();
    for (name, trace) in [
        ("regular", &regular),
        ("jittery", &jittery),
        ("bursty", &bursty),
        ("drifting", &drifting),
        ("pause, resume", &pause),
    ] {
        let window = death_after(trace, PhiEstimator::Window, 100);
        let ewma = death_after(trace, PhiEstimator::Ewma, 100);
        println!("{name:<14} {window:>8.2} {ewma:>8.2}");
        assert!(window > 0.0 && ewma > 0.0 && window.is_finite() && ewma.is_finite());
        rows.insert(name, (window, ewma));
    }
    let close = |(a, b): (f64, f64), within: f64| (a - b).abs() <= within * a.max(b);
    // A steady rhythm: the same verdict.
    assert!(close(rows["regular"], 0.001), "{:?}", rows["regular"]);
    assert!(close(rows["jittery"], 0.15), "{:?}", rows["jittery"]);
    assert!(close(rows["bursty"], 0.25), "{:?}", rows["bursty"]);
    // A slow drift: both follow it; the weighted estimate lags a little less
    // than the window's average but keeps less of the old spread.
    assert!(close(rows["drifting"], 0.25), "{:?}", rows["drifting"]);
    // One long pause 50 beats ago: still fully in the window (wide spread,
    // late death); already faded to a fraction in the weighted estimate.
    let (window, ewma) = rows["pause, resume"];
    assert!(ewma < window, "{window} {ewma}");
    // And with fewer intervals than half the window, the very same numbers.
    let short = &jittery[..40];
    let (w, e) = (death_after(short, PhiEstimator::Window, 100), death_after(short, PhiEstimator::Ewma, 100));
    assert!((w - e).abs() < 1e-6, "{w} {e}");
}

#[test]
fn every_setting_is_checked_wherever_it_enters() {
    let invalid = |r: heartbeat::Result<Monitor>| matches!(r, Err(Error::InvalidConfig(_)));
    assert!(invalid(Monitor::builder().timeout(Duration::ZERO).build()));
    assert!(invalid(Monitor::builder().check_interval(Duration::ZERO).build()));
    assert!(invalid(Monitor::builder().timeout(Duration::MAX).build()));
    assert!(invalid(Monitor::builder().check_interval(secs(400 * 86_400)).build()));
    assert!(invalid(Monitor::builder().max_missed_beats(0).build()));
    let d = PhiConfig::default();
    for bad in [
        PhiConfig { threshold: PhiConfig::MAX_THRESHOLD * 2.0, ..d },
        PhiConfig { threshold: 1e300, ..d },
        PhiConfig { threshold: f64::NAN, ..d },
        PhiConfig { warn_threshold: f64::INFINITY, ..d },
        PhiConfig { min_std_deviation: Duration::ZERO, ..d },
        PhiConfig { expected_interval: Duration::ZERO, ..d },
        PhiConfig { acceptable_pause: secs(400 * 86_400), ..d },
        PhiConfig { max_samples: 1, estimator: PhiEstimator::Window, ..d },
    ] {
        assert!(invalid(Monitor::builder().detector(Detector::Phi(bad)).build()), "{bad:?}");
        let monitor = Monitor::builder().build().unwrap();
        let options = RegisterOptions { detector: Some(Detector::Phi(bad)), ..Default::default() };
        assert!(matches!(monitor.register_with("s", "w", options), Err(Error::InvalidConfig(_))), "{bad:?}");
        assert_eq!(monitor.registered_count(), 0);
    }
    assert!(!invalid(
        Monitor::builder()
            .detector(Detector::Phi(PhiConfig { threshold: PhiConfig::MAX_THRESHOLD, ..d }))
            .build()
    ));
    let monitor = Monitor::builder().build().unwrap();
    for options in [
        RegisterOptions { timeout: Some(Duration::ZERO), ..Default::default() },
        RegisterOptions { timeout: Some(Duration::MAX), ..Default::default() },
        RegisterOptions { grace: Some(Duration::MAX), ..Default::default() },
        RegisterOptions { max_missed_beats: Some(0), ..Default::default() },
    ] {
        assert!(
            matches!(monitor.register_with("s", "w", options), Err(Error::InvalidConfig(_))),
            "{options:?}"
        );
    }
    // The estimator's JSON form, and the default left out.
    let window = Detector::Phi(PhiConfig { estimator: PhiEstimator::Window, ..d });
    let json = serde_json::to_string(&window).unwrap();
    assert!(json.contains(r#""estimator":"window""#), "{json}");
    assert_eq!(serde_json::from_str::<Detector>(&json).unwrap(), window);
    assert!(!serde_json::to_string(&Detector::Phi(d)).unwrap().contains("estimator"));
}

/// A failure report (or a touch of a failed session) forgets a phi
/// session's misses, so its next warning is due at the warning threshold
/// again, not at the death threshold its entry was armed for: the next
/// warning must come as soon as a sweep every 100 ms would find phi past it.
#[test]
fn a_warned_phi_session_that_fails_or_is_touched_is_warned_again_in_time() {
    for touch in [false, true] {
        let clock = ManualClock::new();
        let config = PhiConfig {
            expected_interval: secs(1),
            min_std_deviation: secs(1),
            acceptable_pause: Duration::ZERO,
            warn_threshold: 1.0,
            threshold: 8.0,
            ..PhiConfig::default()
        };
        let monitor = phi_monitor(&clock, config);
        let events = monitor.subscribe();
        monitor.register("p", "agent");
        let step = Duration::from_millis(100);
        let warned = |monitor: &Monitor, clock: &ManualClock, limit: u32| -> Option<u32> {
            (1..=limit).find(|_| {
                clock.advance(step);
                monitor.sweep();
                drain(&events).iter().any(|e| matches!(e, Event::Warning { .. }))
            })
        };
        // From silence alone: the sweeps it takes to reach the warning threshold.
        let first = warned(&monitor, &clock, 200).expect("warned");
        if touch {
            assert!(monitor.fail("p"));
            clock.advance(step);
            monitor.sweep();
            assert!(monitor.touch("p"));
        } else {
            assert!(monitor.fail("p"));
        }
        // The same silence again (statistics unchanged): the same sweeps.
        let again = warned(&monitor, &clock, 200).expect("warned again");
        assert!(
            again <= first + 1,
            "touch {touch}: warned {first} sweeps after register, {again} after the report"
        );
    }
}
