//! The session monitor, driven by a manual clock: every sweep happens at an
//! instant the test chooses, by calling `sweep()` itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use heartbeat::{
    Detector, Event, HeartbeatClient, ManualClock, Monitor, MonitorBuilder, PhiConfig, RegisterOptions,
    RemovalReason,
};
use parking_lot::Mutex;

const BOUND: Duration = Duration::from_secs(10);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The seed's defaults (timeout 30 s, check 5 s, 3 misses) on a manual clock.
fn seed_monitor(clock: &Arc<ManualClock>) -> MonitorBuilder {
    Monitor::builder().clock(clock.clone())
}

/// Advances the clock in check-interval steps, sweeping after each.
fn sweep_until(monitor: &Monitor, clock: &ManualClock, steps: u32) {
    for _ in 0..steps {
        clock.advance(secs(5));
        monitor.sweep();
    }
}

fn drain(rx: &Receiver<Event>) -> Vec<Event> {
    rx.try_iter().collect()
}

fn warning(id: &str) -> Event {
    Event::Warning { session_id: id.into(), missed_beats: 1, phi: None }
}

#[test]
fn the_seed_sequence_warning_then_timeout_then_removal_at_exact_instants() {
    let clock = ManualClock::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (c1, c2) = (calls.clone(), calls.clone());
    let monitor = seed_monitor(&clock)
        .on_warning(move |id, missed| c1.lock().push(format!("warning {id} {missed}")))
        .on_timeout(move |id, agent| c2.lock().push(format!("timeout {id} {agent}")))
        .build()
        .unwrap();
    let events = monitor.events();
    monitor.register("s1", "worker");

    sweep_until(&monitor, &clock, 6); // t = 30 s: silent for exactly the timeout, not longer
    assert!(drain(&events).is_empty());
    assert_eq!(monitor.status("s1").unwrap().missed_beats, 0);

    sweep_until(&monitor, &clock, 1); // t = 35: the first miss warns
    assert_eq!(drain(&events), vec![warning("s1")]);
    let st = monitor.status("s1").unwrap();
    assert_eq!((st.missed_beats, st.is_healthy), (1, false));
    assert_eq!(monitor.healthy_count(), 0);

    sweep_until(&monitor, &clock, 1); // t = 40: second miss, no new warning
    assert!(drain(&events).is_empty());
    assert_eq!(monitor.status("s1").unwrap().missed_beats, 2);

    sweep_until(&monitor, &clock, 1); // t = 45: third miss times out and removes
    assert_eq!(
        drain(&events),
        vec![
            Event::TimedOut { session_id: "s1".into(), agent_type: "worker".into() },
            Event::Removed { session_id: "s1".into(), reason: RemovalReason::TimedOut },
        ]
    );
    assert!(monitor.status("s1").is_none());
    assert_eq!(monitor.registered_count(), 0);
    assert_eq!(*calls.lock(), vec!["warning s1 1", "timeout s1 worker"]);
}

#[test]
fn a_beat_resets_misses_and_a_beat_after_a_warning_is_a_recovery() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.events();
    monitor.register("s1", "worker");
    sweep_until(&monitor, &clock, 8); // t = 40: two misses
    assert_eq!(monitor.status("s1").unwrap().missed_beats, 2);
    assert!(monitor.beat("s1"));
    assert_eq!(drain(&events), vec![warning("s1"), Event::Recovered { session_id: "s1".into() }]);
    let st = monitor.status("s1").unwrap();
    assert_eq!((st.missed_beats, st.is_healthy, st.seconds_since_beat), (0, true, 0.0));
    sweep_until(&monitor, &clock, 6); // t = 70: silent 30 s again, no miss yet
    assert!(drain(&events).is_empty());
    assert_eq!(monitor.registered_count(), 1);
    assert!(monitor.beat("s1"));
    assert!(drain(&events).is_empty(), "a beat without a warning is no recovery");
}

#[test]
fn paused_sessions_are_skipped_and_resume_resets_the_timer() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.events();
    monitor.register("s1", "worker");
    assert!(monitor.pause("s1"));
    sweep_until(&monitor, &clock, 20); // t = 100: silent, but paused
    assert!(drain(&events).is_empty());
    let st = monitor.status("s1").unwrap();
    assert!(st.is_paused && st.is_healthy && st.time_to_death.is_none());
    assert!(monitor.resume("s1"));
    assert!(!monitor.resume("s1"), "not paused any more");
    assert_eq!(monitor.status("s1").unwrap().seconds_since_beat, 0.0);
    sweep_until(&monitor, &clock, 6); // t = 130: 30 s since the resume
    assert!(drain(&events).is_empty());
    sweep_until(&monitor, &clock, 1);
    assert_eq!(drain(&events), vec![warning("s1")]);
}

#[test]
fn unknown_ids_answer_false_or_none() {
    let monitor = Monitor::builder().build().unwrap();
    assert!(!monitor.beat("ghost"));
    assert!(!monitor.unregister("ghost"));
    assert!(!monitor.pause("ghost"));
    assert!(!monitor.resume("ghost"));
    assert!(monitor.status("ghost").is_none());
    monitor.register("real", "worker");
    assert!(monitor.unregister("real"));
    assert!(!monitor.beat("real"));
}

#[test]
fn unregister_is_a_removal_event_and_registering_again_starts_afresh() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.events();
    monitor.register("s1", "worker");
    monitor.register("s2", "crawler");
    assert_eq!(monitor.registered_count(), 2);
    sweep_until(&monitor, &clock, 7); // both warned at t = 35
    assert_eq!(drain(&events).len(), 2);
    assert_eq!(monitor.healthy_count(), 0);
    assert!(monitor.unregister("s1"));
    assert_eq!(
        drain(&events),
        vec![Event::Removed { session_id: "s1".into(), reason: RemovalReason::Unregistered }]
    );
    monitor.register("s2", "crawler-v2"); // replaces: healthy, timer reset
    assert_eq!(drain(&events), vec![Event::Recovered { session_id: "s2".into() }]);
    assert_eq!(monitor.registered_count(), 1);
    assert_eq!(monitor.healthy_count(), 1);
    let st = monitor.status("s2").unwrap();
    assert_eq!((st.agent_type.as_str(), st.missed_beats), ("crawler-v2", 0));
    sweep_until(&monitor, &clock, 6); // no stale deadline from before the re-register fires
    assert!(drain(&events).is_empty());
    let all = monitor.all_status();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].session_id, "s2");
}

#[test]
fn a_panicking_callback_does_not_stop_later_events() {
    let clock = ManualClock::new();
    let timeouts = Arc::new(Mutex::new(Vec::new()));
    let t = timeouts.clone();
    let monitor = seed_monitor(&clock)
        .on_warning(|id, _| panic!("on_warning fails for {id}"))
        .on_timeout(move |id, _| t.lock().push(id.to_owned()))
        .build()
        .unwrap();
    let events = monitor.events();
    monitor.register("a", "worker");
    monitor.register("b", "worker");
    sweep_until(&monitor, &clock, 9);
    let mut timed_out = timeouts.lock().clone();
    timed_out.sort();
    assert_eq!(timed_out, vec!["a", "b"]);
    assert_eq!(drain(&events).len(), 6, "two warnings, two timeouts, two removals");
}

#[test]
fn grace_counts_no_misses_until_it_ends() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.events();
    monitor.register_with(
        "slow-start",
        "worker",
        RegisterOptions { grace: Some(secs(60)), ..Default::default() },
    );
    sweep_until(&monitor, &clock, 12); // t = 60: silent 60 s, in grace
    assert!(drain(&events).is_empty());
    // The end of grace counts as a beat: a full timeout (30 s) from t = 60.
    sweep_until(&monitor, &clock, 6); // t = 90
    assert!(drain(&events).is_empty());
    sweep_until(&monitor, &clock, 1); // t = 95
    assert_eq!(drain(&events), vec![warning("slow-start")]);

    assert!(monitor.pause("slow-start"));
    assert!(monitor.resume_with_grace("slow-start", secs(100)));
    assert_eq!(drain(&events), vec![Event::Recovered { session_id: "slow-start".into() }]);
    sweep_until(&monitor, &clock, 26); // 100 s of grace, then 30 s
    assert!(drain(&events).is_empty());
    sweep_until(&monitor, &clock, 1);
    assert_eq!(drain(&events), vec![warning("slow-start")]);
}

#[test]
fn the_local_pause_guard_suppresses_a_late_round() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.events();
    monitor.register("s1", "worker");
    sweep_until(&monitor, &clock, 2); // t = 10
    clock.advance(secs(60)); // this process was stopped for a minute
    monitor.sweep(); // t = 70: silent 70 s, but the round is ours to blame
    assert!(drain(&events).is_empty());
    assert_eq!(monitor.status("s1").unwrap().missed_beats, 0);
    sweep_until(&monitor, &clock, 1); // t = 75: an on-time round counts again
    assert_eq!(drain(&events), vec![warning("s1")]);

    // Turned off, the same late round counts.
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).pause_guard(None).build().unwrap();
    let events = monitor.events();
    monitor.register("s1", "worker");
    clock.advance(secs(70));
    monitor.sweep();
    assert_eq!(drain(&events), vec![warning("s1")]);
}

#[test]
fn a_wall_clock_jump_changes_nothing() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.events();
    monitor.register("s1", "worker");
    sweep_until(&monitor, &clock, 2);
    clock.step_wall(secs(3600), true);
    monitor.sweep();
    clock.step_wall(secs(7200), false);
    monitor.sweep();
    sweep_until(&monitor, &clock, 3); // t = 25
    assert!(drain(&events).is_empty());
    assert_eq!(monitor.status("s1").unwrap().seconds_since_beat, 25.0);
}

fn phi_config() -> PhiConfig {
    PhiConfig {
        threshold: 8.0,
        warn_threshold: 4.0,
        max_samples: 4,
        min_std_deviation: Duration::from_millis(100),
        acceptable_pause: Duration::ZERO,
        expected_interval: secs(1),
    }
}

#[test]
fn phi_rises_with_silence_falls_after_beats_and_matches_known_values() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).detector(Detector::Phi(phi_config())).build().unwrap();
    monitor.register("p", "worker");
    // The first beat only sets the time (as in Akka); four more 1 s intervals
    // push out the two seeds: mean 1000 ms, std 0 (100 ms floor).
    for _ in 0..5 {
        clock.advance(secs(1));
        assert!(monitor.beat("p"));
    }
    let phi_after = |ms: u64| {
        clock.advance(Duration::from_millis(ms));
        monitor.status("p").unwrap().phi.unwrap()
    };
    let at_mean = phi_after(1000);
    assert!((at_mean - std::f64::consts::LOG10_2).abs() < 1e-12, "{at_mean}");
    let later = phi_after(200); // 1200 ms of silence: y = 2
    assert!((later - heartbeat::phi(1200.0, 1000.0, 100.0)).abs() < 1e-12);
    assert!((later - 1.642_827_885_487_112_3).abs() < 1e-9, "{later}");
    let much_later = phi_after(300);
    assert!(much_later > later && later > at_mean);
    assert!(monitor.beat("p"));
    let fresh = monitor.status("p").unwrap().phi.unwrap();
    assert!(fresh < 1e-6, "phi right after a beat: {fresh}");
}

#[test]
fn phi_warns_then_times_out_and_reports_time_to_death() {
    let clock = ManualClock::new();
    let monitor = Monitor::builder()
        .clock(clock.clone())
        .check_interval(Duration::from_millis(100))
        .detector(Detector::Phi(phi_config()))
        .build()
        .unwrap();
    let events = monitor.events();
    monitor.register("p", "worker");
    for _ in 0..5 {
        clock.advance(secs(1));
        monitor.beat("p");
        monitor.sweep();
    }
    let ttd = monitor.status("p").unwrap().time_to_death.unwrap();
    // Dead when phi reaches 8: 1000 ms + y(8) * 100 ms = about 1.52 s of silence.
    assert!(ttd > Duration::from_millis(1500) && ttd < Duration::from_millis(1550), "{ttd:?}");
    let mut warned_at = None;
    let mut dead_at = None;
    for step in 1..=40 {
        clock.advance(Duration::from_millis(100));
        monitor.sweep();
        for ev in drain(&events) {
            match ev {
                Event::Warning { phi: Some(phi), .. } => {
                    assert!(phi >= 4.0);
                    warned_at = Some(step);
                }
                Event::TimedOut { .. } => dead_at = Some(step),
                _ => {}
            }
        }
        if dead_at.is_some() {
            break;
        }
    }
    // phi 4 at 1000 + 3.64 * 100 ms = 1.36 s; phi 8 at 1.52 s: the sweeps at 1.4 and 1.6 s.
    assert_eq!((warned_at, dead_at), (Some(14), Some(16)));
}

#[test]
fn a_session_can_use_phi_in_a_fixed_monitor() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    monitor.register_with(
        "p",
        "worker",
        RegisterOptions { detector: Some(Detector::Phi(phi_config())), ..Default::default() },
    );
    monitor.register("f", "worker");
    assert!(monitor.status("p").unwrap().phi.is_some());
    assert!(monitor.status("f").unwrap().phi.is_none());
}

#[test]
fn bad_configuration_is_refused() {
    assert!(Monitor::builder().check_interval(Duration::ZERO).build().is_err());
    assert!(Monitor::builder().max_missed_beats(0).build().is_err());
    let bad = PhiConfig { warn_threshold: 9.0, ..PhiConfig::default() };
    let err = Monitor::builder().detector(Detector::Phi(bad)).build().unwrap_err();
    assert!(err.to_string().contains("warn_threshold"), "{err}");
}

#[test]
fn time_to_death_counts_down_for_the_fixed_detector() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    monitor.register("s1", "worker");
    // Dead at the third miss: timeout 30 s, then two more sweeps 5 s apart.
    assert_eq!(monitor.status("s1").unwrap().time_to_death, Some(secs(40)));
    sweep_until(&monitor, &clock, 7); // t = 35, one miss
    assert_eq!(monitor.status("s1").unwrap().time_to_death, Some(secs(10)));
}

/// Polls `f` until it holds, failing after BOUND.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_sweeper_and_a_client_run_on_their_threads_and_stop_promptly() {
    let clock = ManualClock::new();
    let (tx, timeouts) = unbounded();
    let monitor = seed_monitor(&clock)
        .pause_guard(None) // the test cannot keep its steps in step with the thread
        .on_warning(|id, _| panic!("a careless on_warning for {id}")) // the sweeper survives it
        .on_timeout(move |id, _| tx.send(id.to_owned()).unwrap())
        .build()
        .unwrap();
    monitor.register("kept-alive", "agent");
    monitor.register("silent", "agent");
    let sweeper = monitor.start().unwrap();
    assert!(matches!(monitor.start(), Err(heartbeat::Error::AlreadyRunning)));
    let mut client = HeartbeatClient::start(&monitor, "kept-alive", secs(10)).unwrap();
    let mut timed_out = None;
    for _ in 0..200 {
        clock.advance(secs(5));
        // The client beats on its own thread when the clock moves past its tick.
        eventually("a client beat", || monitor.status("kept-alive").unwrap().seconds_since_beat < 10.0);
        if let Ok(id) = timeouts.recv_timeout(Duration::from_millis(20)) {
            timed_out = Some(id);
            break;
        }
    }
    assert_eq!(timed_out.as_deref(), Some("silent"));
    assert!(monitor.status("kept-alive").unwrap().is_healthy);

    let t = Instant::now();
    client.stop();
    client.stop();
    drop(sweeper);
    assert!(!monitor.is_running());
    assert!(t.elapsed() < BOUND, "stopping took {:?}", t.elapsed());
}

#[test]
fn phi_always_warns_before_death_with_the_default_sweeps() {
    // A session beating every 10 s (the client default), then silent; the
    // sweep grid (5 s) at ten different offsets from the beats.
    for offset_ms in (0..5000).step_by(500) {
        let clock = ManualClock::new();
        let monitor = seed_monitor(&clock).detector(Detector::Phi(PhiConfig::default())).build().unwrap();
        let events = monitor.events();
        clock.advance(Duration::from_millis(offset_ms));
        monitor.register("p", "worker");
        let mut next_sweep = Duration::from_secs(5);
        let mut now = Duration::from_millis(offset_ms);
        let mut seen = Vec::new();
        // 100 ms steps: a beat every 10 s for 1000 s, then silence; 1100 s in all.
        for step in 0..11_000u64 {
            clock.advance(Duration::from_millis(100));
            now += Duration::from_millis(100);
            if step % 100 == 99 && now < Duration::from_secs(1000) {
                monitor.beat("p");
            }
            if now >= next_sweep {
                next_sweep += Duration::from_secs(5);
                monitor.sweep();
            }
            seen.extend(drain(&events).into_iter().map(|e| match e {
                Event::Warning { .. } => "warning",
                Event::TimedOut { .. } => "timed out",
                Event::Recovered { .. } => "recovered",
                Event::Removed { .. } => "removed",
            }));
            if seen.contains(&"removed") {
                break;
            }
        }
        assert_eq!(seen, ["warning", "timed out", "removed"], "grid offset {offset_ms} ms");
    }
}

#[test]
fn phi_follows_a_window_that_tightens_after_register() {
    let clock = ManualClock::new();
    let monitor = Monitor::builder()
        .clock(clock.clone())
        .check_interval(Duration::from_millis(100))
        .detector(Detector::Phi(PhiConfig { max_samples: 4, ..PhiConfig::default() }))
        .build()
        .unwrap();
    let events = monitor.events();
    monitor.register("p", "worker");
    for _ in 0..20 {
        clock.advance(Duration::from_millis(100));
        monitor.beat("p");
        monitor.sweep();
    }
    // Beats 100 ms apart (+3 s acceptable pause): dead within a few seconds
    // of silence, not at the deadline the seeded window (10 s) suggested.
    let mut died_after = None;
    for step in 1..=200 {
        clock.advance(Duration::from_millis(100));
        monitor.sweep();
        if drain(&events).iter().any(|e| matches!(e, Event::TimedOut { .. })) {
            died_after = Some(step);
            break;
        }
    }
    let died_after = died_after.expect("timed out");
    assert!((30..=45).contains(&died_after), "died after {died_after} sweeps of 100 ms");
}

#[test]
fn phi_with_grace_starts_counting_when_grace_ends() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).detector(Detector::Phi(PhiConfig::default())).build().unwrap();
    let events = monitor.events();
    monitor.register_with("p", "worker", RegisterOptions { grace: Some(secs(60)), ..Default::default() });
    sweep_until(&monitor, &clock, 13); // t = 65: 5 s after grace, phi is small
    assert!(drain(&events).is_empty());
    let st = monitor.status("p").unwrap();
    assert!(st.phi.unwrap() < 1.0, "{st:?}");
    assert!(st.time_to_death.unwrap() > secs(15), "{st:?}");
}

#[test]
fn one_allowed_miss_still_warns_first_as_the_seed_does() {
    let clock = ManualClock::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (c1, c2) = (calls.clone(), calls.clone());
    let monitor = seed_monitor(&clock)
        .max_missed_beats(1)
        .on_warning(move |id, n| c1.lock().push(format!("warning {id} {n}")))
        .on_timeout(move |id, _| c2.lock().push(format!("timeout {id}")))
        .build()
        .unwrap();
    let events = monitor.events();
    monitor.register("s", "w");
    sweep_until(&monitor, &clock, 7);
    assert_eq!(
        drain(&events),
        vec![
            warning("s"),
            Event::TimedOut { session_id: "s".into(), agent_type: "w".into() },
            Event::Removed { session_id: "s".into(), reason: RemovalReason::TimedOut },
        ]
    );
    assert_eq!(*calls.lock(), vec!["warning s 1", "timeout s"]);
    assert_eq!((monitor.registered_count(), monitor.healthy_count()), (0, 0));
}

#[test]
fn registering_a_paused_session_again_leaves_it_paused() {
    let monitor = Monitor::builder().build().unwrap();
    monitor.register("s", "w");
    monitor.pause("s");
    monitor.register("s", "w2");
    assert!(monitor.status("s").unwrap().is_paused);
    assert!(monitor.resume("s"));
}

#[test]
fn the_first_sweep_long_after_build_is_not_late() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.events();
    clock.advance(secs(600));
    monitor.register("s", "w");
    clock.advance(secs(35));
    monitor.sweep();
    assert_eq!(drain(&events), vec![warning("s")]);
}

#[test]
fn a_dropped_event_receiver_unsubscribes_and_others_still_get_everything() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let (kept, dropped) = (monitor.events(), monitor.events());
    drop(dropped);
    monitor.register("s", "w");
    monitor.unregister("s");
    assert_eq!(
        drain(&kept),
        vec![Event::Removed { session_id: "s".into(), reason: RemovalReason::Unregistered }]
    );
}

#[test]
fn a_client_needs_a_positive_interval() {
    let monitor = Monitor::builder().build().unwrap();
    assert!(matches!(
        HeartbeatClient::start(&monitor, "s", Duration::ZERO),
        Err(heartbeat::Error::InvalidConfig(_))
    ));
}

/// Runs `f` on a thread and fails if it does not finish within BOUND.
fn finishes(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        f();
        tx.send(()).unwrap();
    });
    assert!(rx.recv_timeout(BOUND).is_ok(), "{what} did not finish within {BOUND:?}: deadlock?");
}

#[test]
fn callbacks_may_call_back_into_the_monitor_and_even_stop_it() {
    let clock = ManualClock::new();
    let slot: Arc<Mutex<Option<Monitor>>> = Arc::default();
    let (tx, rx) = unbounded();
    let s = slot.clone();
    let monitor = seed_monitor(&clock)
        .pause_guard(None)
        .on_timeout(move |id, _| {
            let m = s.lock().clone().unwrap();
            let line = format!("{id} {:?} {} {:?}", m.status(id), m.is_running(), m);
            m.register("replacement", "w");
            m.stop(); // from the sweeper itself: ends after this sweep
            tx.send(line).unwrap();
        })
        .build()
        .unwrap();
    *slot.lock() = Some(monitor.clone());
    monitor.register("s", "w");
    let guard = monitor.start().unwrap();
    let mut line = None;
    for _ in 0..100 {
        clock.advance(secs(5));
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            line = Some(l);
            break;
        }
    }
    assert!(line.expect("a timeout").starts_with("s None true"));
    eventually("the sweeper to end", || !monitor.is_running());
    assert!(monitor.status("replacement").is_some());
    finishes("dropping the guard", move || drop(guard));
    let again = monitor.start().unwrap(); // restartable after stopping itself
    assert!(monitor.is_running());
    drop(again);
    slot.lock().take();
}

#[test]
fn a_guard_stops_only_the_sweeper_it_started() {
    let monitor = Monitor::builder().build().unwrap();
    let first = monitor.start().unwrap();
    monitor.stop();
    let second = monitor.start().unwrap();
    drop(first);
    assert!(monitor.is_running(), "the old guard stopped the new sweeper");
    drop(second);
    assert!(!monitor.is_running());
}

#[test]
fn concurrent_stops_and_starts_wait_for_the_sweeper_to_end() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let clock = ManualClock::new();
    let (entered_tx, entered_rx) = unbounded();
    let (release_tx, release_rx) = unbounded::<()>();
    let released = Arc::new(AtomicBool::new(false));
    let monitor = seed_monitor(&clock)
        .pause_guard(None)
        .on_warning(move |_, _| {
            entered_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(BOUND); // a slow callback
        })
        .build()
        .unwrap();
    monitor.register("s", "w");
    let guard = monitor.start().unwrap();
    let mut entered = false;
    for _ in 0..200 {
        clock.advance(secs(5));
        if entered_rx.recv_timeout(Duration::from_millis(20)).is_ok() {
            entered = true;
            break;
        }
    }
    assert!(entered, "the sweeper never warned");
    // The sweeper is inside its callback. One thread stops it; another starts anew.
    let stopper = {
        let m = monitor.clone();
        std::thread::spawn(move || m.stop())
    };
    let starter = {
        let (m, released) = (monitor.clone(), released.clone());
        std::thread::spawn(move || {
            // AlreadyRunning is a fine answer while the old sweeper lives;
            // succeeding before it has ended is not.
            let deadline = Instant::now() + BOUND;
            loop {
                if let Ok(guard) = m.start() {
                    return (released.load(Ordering::SeqCst), Some(guard));
                }
                if Instant::now() > deadline {
                    return (false, None);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        assert!(monitor.is_running(), "reported stopped while its thread was still in a callback");
        std::thread::sleep(Duration::from_millis(5));
    }
    released.store(true, Ordering::SeqCst);
    release_tx.send(()).unwrap();
    stopper.join().unwrap();
    let (started_after_release, new_guard) = starter.join().unwrap();
    assert!(new_guard.is_some(), "never restarted");
    assert!(started_after_release, "start() overlapped the old sweeper");
    drop(guard); // its sweeper is gone; the new one keeps running
    assert!(monitor.is_running());
    drop(new_guard);
    assert!(!monitor.is_running());
}
