//! The session monitor, driven by a manual clock: every sweep happens at an
//! instant the test chooses, by calling `sweep()` itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use heartbeat::{
    Detector, Event, HeartbeatClient, MAX_TIMEOUT, ManualClock, Monitor, MonitorBuilder, PhiConfig,
    PhiEstimator, RegisterOptions, RemovalReason, SessionCounts, SessionSnapshot,
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
    let events = monitor.subscribe();
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
            Event::TimedOut { session_id: "s1".into(), agent_type: "worker".into(), missed_beats: 3 },
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
    let events = monitor.subscribe();
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
    let events = monitor.subscribe();
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
    let events = monitor.subscribe();
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
    let events = monitor.subscribe();
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
    let events = monitor.subscribe();
    monitor
        .register_with(
            "slow-start",
            "worker",
            RegisterOptions { grace: Some(secs(60)), ..Default::default() },
        )
        .unwrap();
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
fn a_sweep_called_by_hand_is_never_late() {
    // The local-pause guard belongs to the sweeper thread (its own unit test
    // covers it): sweeping by hand at any pace counts every round.
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.subscribe();
    monitor.register("s1", "worker");
    sweep_until(&monitor, &clock, 2); // t = 10
    clock.advance(secs(60));
    monitor.sweep(); // t = 70: silent 70 s
    assert_eq!(drain(&events), vec![warning("s1")]);

    // As a new user would try it: 31 s per sweep, warned then timed out.
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.subscribe();
    monitor.register("s2", "worker");
    for _ in 0..3 {
        clock.advance(secs(31));
        monitor.sweep();
    }
    assert_eq!(
        drain(&events),
        vec![
            warning("s2"),
            Event::TimedOut { session_id: "s2".into(), agent_type: "worker".into(), missed_beats: 3 },
            Event::Removed { session_id: "s2".into(), reason: RemovalReason::TimedOut },
        ]
    );
}

#[test]
fn a_wall_clock_jump_changes_nothing() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.subscribe();
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
        // These tests follow Akka's window exactly (seeds pushed out after
        // four intervals); the constant-memory estimator has tests of its own.
        estimator: PhiEstimator::Window,
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
    let events = monitor.subscribe();
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
    monitor
        .register_with(
            "p",
            "worker",
            RegisterOptions { detector: Some(Detector::Phi(phi_config())), ..Default::default() },
        )
        .unwrap();
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
    for (builder, field) in [
        (Monitor::builder().timeout(Duration::ZERO), "timeout"),
        (Monitor::builder().timeout(MAX_TIMEOUT + Duration::from_nanos(1)), "timeout"),
        (Monitor::builder().check_interval(Duration::MAX), "check_interval"),
        (
            Monitor::builder().detector(Detector::Phi(PhiConfig {
                max_samples: PhiConfig::MAX_SAMPLES + 1,
                ..PhiConfig::default()
            })),
            "max_samples",
        ),
    ] {
        let err = builder.build().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
    assert!(Monitor::builder().timeout(MAX_TIMEOUT).build().is_ok());
}

#[test]
fn bad_session_options_are_refused_and_register_nothing() {
    let monitor = Monitor::builder().build().unwrap();
    let phi = |c: PhiConfig| RegisterOptions { detector: Some(Detector::Phi(c)), ..Default::default() };
    let d = PhiConfig::default();
    let cases = [
        (phi(PhiConfig { threshold: f64::NAN, ..d }), "threshold", "NaN"),
        (phi(PhiConfig { threshold: f64::INFINITY, ..d }), "threshold", "inf"),
        (phi(PhiConfig { threshold: -1.0, ..d }), "threshold", "-1"),
        (phi(PhiConfig { threshold: 0.0, ..d }), "threshold", "0"),
        (phi(PhiConfig { warn_threshold: f64::NAN, ..d }), "warn_threshold", "NaN"),
        (phi(PhiConfig { warn_threshold: -0.5, ..d }), "warn_threshold", "-0.5"),
        (phi(PhiConfig { max_samples: 0, ..d }), "max_samples", "0"),
        (phi(PhiConfig { max_samples: 1, ..d }), "max_samples", "1"),
        (phi(PhiConfig { max_samples: usize::MAX, ..d }), "max_samples", &usize::MAX.to_string()),
        (phi(PhiConfig { expected_interval: Duration::MAX, ..d }), "expected_interval", ""),
        (RegisterOptions { timeout: Some(Duration::ZERO), ..Default::default() }, "timeout", "0ns"),
        (RegisterOptions { timeout: Some(Duration::MAX), ..Default::default() }, "timeout", ""),
        (RegisterOptions { max_missed_beats: Some(0), ..Default::default() }, "max_missed_beats", "0"),
        (RegisterOptions { grace: Some(MAX_TIMEOUT * 2), ..Default::default() }, "grace", ""),
    ];
    for (options, field, value) in cases {
        match monitor.register_with("s", "w", options) {
            Err(heartbeat::Error::InvalidConfig(msg)) => {
                assert!(msg.contains(field) && msg.contains(value), "{field} {value}: {msg}")
            }
            other => panic!("{options:?} gave {other:?}"),
        }
        assert_eq!(monitor.registered_count(), 0);
        assert!(monitor.status("s").is_none());
    }
    // At the edges, accepted.
    let fine = [
        phi(PhiConfig { max_samples: 2, ..d }),
        phi(PhiConfig { max_samples: PhiConfig::MAX_SAMPLES, ..d }),
        RegisterOptions {
            timeout: Some(MAX_TIMEOUT),
            max_missed_beats: Some(1),
            grace: Some(MAX_TIMEOUT),
            ..Default::default()
        },
    ];
    for options in fine {
        monitor.register_with("s", "w", options).unwrap();
    }
    assert_eq!(monitor.registered_count(), 1);
}

#[test]
fn each_session_keeps_its_own_timeout_and_misses() {
    let clock = ManualClock::new();
    let monitor =
        Monitor::builder().clock(clock.clone()).check_interval(secs(1)).pause_guard(None).build().unwrap();
    let events = monitor.subscribe();
    let own = |timeout, max| RegisterOptions {
        timeout: Some(timeout),
        max_missed_beats: max,
        ..Default::default()
    };
    monitor.register_with("agent", "10s-agent", own(secs(1), None)).unwrap();
    monitor.register_with("cron", "daily", own(secs(3600), Some(1))).unwrap();
    monitor.register("default", "w");
    // 1 s, then two more sweeps; one hour and no more misses.
    assert_eq!(monitor.status("agent").unwrap().time_to_death, Some(secs(3)));
    assert_eq!(monitor.status("cron").unwrap().time_to_death, Some(secs(3600)));
    assert_eq!(monitor.status("default").unwrap().time_to_death, Some(secs(32)));
    for _ in 0..4 {
        clock.advance(secs(1));
        monitor.sweep();
    }
    assert_eq!(
        drain(&events),
        vec![
            warning("agent"),
            Event::TimedOut { session_id: "agent".into(), agent_type: "10s-agent".into(), missed_beats: 3 },
            Event::Removed { session_id: "agent".into(), reason: RemovalReason::TimedOut },
        ]
    );
    clock.advance(secs(3596)); // t = 3600: silent exactly one hour
    monitor.beat("default");
    monitor.sweep();
    assert!(drain(&events).is_empty());
    assert!(monitor.status("cron").unwrap().is_healthy);
    clock.advance(secs(1));
    monitor.sweep(); // the first miss is the last
    assert_eq!(
        drain(&events),
        vec![
            warning("cron"),
            Event::TimedOut { session_id: "cron".into(), agent_type: "daily".into(), missed_beats: 1 },
            Event::Removed { session_id: "cron".into(), reason: RemovalReason::TimedOut },
        ]
    );
    assert_eq!(monitor.registered_count(), 1);
}

#[test]
fn a_failure_is_reported_at_once_and_cleared_by_the_next_beat() {
    let clock = ManualClock::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (c1, c2) = (calls.clone(), calls.clone());
    let monitor = seed_monitor(&clock)
        .on_failure(move |id, agent| c1.lock().push(format!("failure {id} {agent}")))
        .on_timeout(move |id, _| c2.lock().push(format!("timeout {id}")))
        .build()
        .unwrap();
    let events = monitor.subscribe();
    monitor.register("job", "backup");
    monitor.register("other", "backup");
    assert!(!monitor.fail("ghost"));
    assert!(monitor.fail("job"));
    assert_eq!(drain(&events), vec![Event::Failed { session_id: "job".into(), agent_type: "backup".into() }]);
    assert_eq!(*calls.lock(), vec!["failure job backup"]);
    let st = monitor.status("job").unwrap();
    assert!(st.failed && !st.is_healthy && st.missed_beats == 0, "{st:?}");
    assert_eq!(monitor.healthy_count(), 1);
    assert!(monitor.fail("job")); // reported again, counted once
    assert_eq!(drain(&events).len(), 1);
    assert_eq!(monitor.healthy_count(), 1);
    assert_eq!(
        monitor.counts(),
        SessionCounts { registered: 2, healthy: 1, warning: 0, failed: 1, paused: 0 }
    );

    // Failed and silent: warned and timed out as usual, counted once.
    sweep_until(&monitor, &clock, 7); // t = 35
    // Events are in order per session only: the two may come either way round.
    let warned = drain(&events);
    assert!(
        warned.len() == 2 && warned.contains(&warning("job")) && warned.contains(&warning("other")),
        "{warned:?}"
    );
    assert_eq!(monitor.healthy_count(), 0);
    assert_eq!(
        monitor.counts(),
        SessionCounts { registered: 2, healthy: 0, warning: 1, failed: 1, paused: 0 }
    );
    assert!(monitor.beat("job"));
    assert_eq!(drain(&events), vec![Event::Recovered { session_id: "job".into() }]);
    let st = monitor.status("job").unwrap();
    assert!(!st.failed && st.is_healthy, "{st:?}");
    assert_eq!(monitor.healthy_count(), 1);
    assert!(monitor.beat("job"));
    assert!(drain(&events).is_empty(), "one recovery per failure");

    // A failed session that is removed leaves the counts right.
    assert!(monitor.fail("job"));
    assert!(monitor.unregister("job"));
    sweep_until(&monitor, &clock, 2); // "other" times out
    assert_eq!((monitor.registered_count(), monitor.healthy_count()), (0, 0));
    assert_eq!(monitor.counts(), SessionCounts::default());
    assert_eq!(
        *calls.lock(),
        vec!["failure job backup", "failure job backup", "failure job backup", "timeout other"]
    );
}

#[test]
fn counts_by_state_add_up() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    for i in 0..10 {
        monitor.register(&format!("s{i}"), "w");
    }
    sweep_until(&monitor, &clock, 7); // all warned
    for i in 0..4 {
        monitor.beat(&format!("s{i}"));
    }
    monitor.fail("s0");
    monitor.fail("s9");
    monitor.pause("s1");
    monitor.pause("s8");
    let c = monitor.counts();
    assert_eq!(c, SessionCounts { registered: 10, healthy: 3, warning: 5, failed: 2, paused: 2 });
    assert_eq!(c.healthy + c.warning + c.failed, c.registered);
    assert_eq!(monitor.healthy_count(), c.healthy);
    assert_eq!(monitor.registered_count(), c.registered);
}

#[test]
fn pages_of_statuses_follow_the_sorted_ids() {
    let monitor = Monitor::builder().build().unwrap();
    // Ids of varied lengths and bytes, in no particular order.
    let mut ids: Vec<String> = (0..3000u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            format!("{}-{x:x}", ["a", "B", "zz", "a.b", "_", "0"][(i % 6) as usize])
        })
        .collect();
    for id in &ids {
        monitor.register(id, "w");
    }
    for id in ids.iter().step_by(7) {
        monitor.unregister(id);
    }
    ids = ids.into_iter().enumerate().filter(|(i, _)| i % 7 != 0).map(|(_, id)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), monitor.registered_count());

    for limit in [1, 37, 1000, 5000] {
        let mut walked = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = monitor.status_page(after.as_deref(), limit);
            assert!(page.len() <= limit);
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().session_id.clone());
            walked.extend(page.into_iter().map(|s| s.session_id));
        }
        assert_eq!(walked, ids, "limit {limit}");
    }
    assert_eq!(
        monitor.status_page(Some(&ids[10]), 3).iter().map(|s| &s.session_id).collect::<Vec<_>>(),
        vec![&ids[11], &ids[12], &ids[13]]
    );
    // `after` need not be a registered id.
    let between = format!("{}\0", ids[20]);
    assert_eq!(monitor.status_page(Some(&between), 1)[0].session_id, ids[21]);
    assert!(monitor.status_page(None, 0).is_empty());
    assert!(monitor.status_page(Some(ids.last().unwrap()), 10).is_empty());
    assert_eq!(monitor.status_page(None, usize::MAX).len(), ids.len());
}

#[test]
fn a_snapshot_round_trips_through_json_into_a_new_monitor() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let phi = PhiConfig { threshold: 9.5, ..PhiConfig::default() };
    monitor.register("plain", "worker");
    monitor
        .register_with(
            "tuned",
            "cron",
            RegisterOptions {
                timeout: Some(Duration::from_millis(86_400_500)),
                max_missed_beats: Some(2),
                detector: Some(Detector::Fixed), // the monitor's: not its own
                grace: Some(secs(5)),
            },
        )
        .unwrap();
    monitor
        .register_with(
            "phi",
            "agent",
            RegisterOptions { detector: Some(Detector::Phi(phi)), ..Default::default() },
        )
        .unwrap();
    monitor.register("idle", "worker");
    monitor.pause("idle");
    for _ in 0..7 {
        clock.advance(secs(5));
        assert!(monitor.beat("phi"));
        monitor.sweep();
    } // t = 35: "plain" warned
    assert!(monitor.fail("phi"));

    let mut saved = monitor.snapshot();
    saved.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let json = serde_json::to_string_pretty(&saved).unwrap();
    assert!(json.contains(r#""timeout_sec": 86400.5"#), "{json}");
    assert!(json.contains(r#""kind": "phi""#) && json.contains(r#""threshold": 9.5"#), "{json}");
    let by_id = |id: &str| saved.iter().find(|s| s.session_id == id).unwrap().clone();
    assert_eq!(by_id("plain").missed_beats, 1);
    assert_eq!((by_id("plain").timeout, by_id("plain").detector), (None, None));
    assert_eq!(by_id("tuned").timeout, Some(Duration::from_millis(86_400_500)));
    assert_eq!((by_id("tuned").max_missed_beats, by_id("tuned").detector), (Some(2), None));
    assert_eq!(by_id("phi").detector, Some(Detector::Phi(phi)));
    assert!(by_id("phi").failed && by_id("idle").paused);
    let wall = heartbeat::Clock::wall(&*clock);
    assert_eq!(by_id("plain").last_beat, wall - secs(35));
    assert_eq!(by_id("phi").last_beat, wall);

    let loaded: Vec<SessionSnapshot> = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded.len(), saved.len());
    for (l, s) in loaded.iter().zip(&saved) {
        // RFC 3339 text keeps microseconds.
        let drift = s.last_beat.duration_since(l.last_beat).unwrap();
        assert!(drift < Duration::from_micros(1), "{drift:?}");
        assert_eq!(&SessionSnapshot { last_beat: s.last_beat, ..l.clone() }, s);
    }

    // A new monitor, after a restart.
    clock.advance(secs(600));
    let restarted = seed_monitor(&clock).build().unwrap();
    let events = restarted.subscribe();
    assert_eq!(restarted.restore(&loaded).unwrap(), 4);
    assert!(drain(&events).is_empty(), "restoring sends no events");
    let plain = restarted.status("plain").unwrap();
    assert_eq!((plain.missed_beats, plain.is_healthy, plain.seconds_since_beat), (1, false, 0.0));
    let phi_status = restarted.status("phi").unwrap();
    assert!(phi_status.failed && phi_status.phi.is_some(), "{phi_status:?}");
    assert!(restarted.status("idle").unwrap().is_paused);
    assert_eq!(
        restarted.counts(),
        SessionCounts { registered: 4, healthy: 2, warning: 1, failed: 1, paused: 1 }
    );
    let mut again = restarted.snapshot();
    again.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    for (a, l) in again.iter().zip(&loaded) {
        assert_eq!(&SessionSnapshot { last_beat: l.last_beat, ..a.clone() }, l);
    }
    assert!(restarted.unregister("phi")); // a fresh phi window would not wait long
    drain(&events);

    // The ten minutes down are not held against them: nothing at the first
    // sweeps; "plain" (one miss of three) misses again a timeout after the
    // restart, and dies one sweep later.
    sweep_until(&restarted, &clock, 6); // 30 s: silent exactly one timeout
    assert!(drain(&events).is_empty());
    assert_eq!(restarted.status("plain").unwrap().time_to_death, Some(secs(5)));
    sweep_until(&restarted, &clock, 1); // 35 s: second miss
    assert!(drain(&events).is_empty());
    assert_eq!(restarted.status("plain").unwrap().missed_beats, 2);
    sweep_until(&restarted, &clock, 1); // 40 s: third miss, dead
    assert_eq!(
        drain(&events),
        vec![
            Event::TimedOut { session_id: "plain".into(), agent_type: "worker".into(), missed_beats: 3 },
            Event::Removed { session_id: "plain".into(), reason: RemovalReason::TimedOut },
        ]
    );
}

#[test]
fn a_restored_session_that_stays_silent_times_out() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    monitor.register("s", "w");
    let saved = monitor.snapshot();
    clock.advance(secs(3600)); // down for an hour
    let restarted = seed_monitor(&clock).build().unwrap();
    let events = restarted.subscribe();
    restarted.restore(&saved).unwrap();
    sweep_until(&restarted, &clock, 1);
    assert!(drain(&events).is_empty(), "not dead at the first sweep after the restart");
    sweep_until(&restarted, &clock, 6); // 35 s: a timeout of silence since the restart
    assert_eq!(drain(&events), vec![warning("s")]);
    sweep_until(&restarted, &clock, 2); // 45 s: max_missed_beats (3) misses
    assert_eq!(drain(&events).len(), 2, "timed out and removed");
    assert_eq!(restarted.registered_count(), 0);
}

#[test]
fn a_snapshot_with_one_bad_session_restores_none() {
    let monitor = Monitor::builder().build().unwrap();
    let good = SessionSnapshot {
        session_id: "good".into(),
        agent_type: "w".into(),
        timeout: None,
        max_missed_beats: None,
        detector: None,
        paused: false,
        failed: false,
        missed_beats: 0,
        last_beat: std::time::SystemTime::now(),
    };
    let bad = SessionSnapshot { session_id: "bad".into(), max_missed_beats: Some(0), ..good.clone() };
    let err = monitor.restore(&[good.clone(), bad]).unwrap_err().to_string();
    assert!(err.contains("\"bad\"") && err.contains("max_missed_beats"), "{err}");
    assert_eq!(monitor.registered_count(), 0);
    assert_eq!(monitor.restore(&[good]).unwrap(), 1);
}

#[test]
fn detectors_have_a_readable_json_form() {
    assert_eq!(serde_json::to_string(&Detector::Fixed).unwrap(), r#"{"kind":"fixed"}"#);
    let json = serde_json::to_value(Detector::Phi(PhiConfig::default())).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "kind": "phi", "threshold": 8.0, "warn_threshold": 4.0, "max_samples": 1000,
            "min_std_deviation_sec": 0.1, "acceptable_pause_sec": 3.0, "expected_interval_sec": 10.0,
        })
    );
    let partial: Detector = serde_json::from_str(r#"{"kind": "phi", "threshold": 12}"#).unwrap();
    assert_eq!(partial, Detector::Phi(PhiConfig { threshold: 12.0, ..PhiConfig::default() }));
    assert!(serde_json::from_str::<Detector>(r#"{"kind": "phi", "acceptable_pause_sec": -1}"#).is_err());
    assert!(serde_json::from_str::<Detector>(r#"{"kind": "psychic"}"#).is_err());
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
        let events = monitor.subscribe();
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
                Event::Failed { .. } => "failed",
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
    let events = monitor.subscribe();
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
    let events = monitor.subscribe();
    monitor
        .register_with("p", "worker", RegisterOptions { grace: Some(secs(60)), ..Default::default() })
        .unwrap();
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
    let events = monitor.subscribe();
    monitor.register("s", "w");
    sweep_until(&monitor, &clock, 7);
    assert_eq!(
        drain(&events),
        vec![
            warning("s"),
            Event::TimedOut { session_id: "s".into(), agent_type: "w".into(), missed_beats: 1 },
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
    let events = monitor.subscribe();
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
    let (kept, dropped) = (monitor.subscribe(), monitor.subscribe());
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

#[test]
fn touch_keeps_a_failure_and_reconfigure_changes_settings_only() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap();
    let events = monitor.subscribe();
    monitor.register("job", "cron");
    assert!(monitor.fail("job"));
    clock.advance(secs(20));
    assert!(monitor.touch("job")); // a sign of life, still failed
    clock.advance(secs(20));
    monitor.sweep(); // 20 s of silence since the touch: no miss
    let st = monitor.status("job").unwrap();
    assert!(st.failed && st.missed_beats == 0, "{st:?}");
    let options = RegisterOptions { timeout: Some(secs(3600)), ..Default::default() };
    assert!(monitor.reconfigure("job", "daily", options).unwrap());
    let st = monitor.status("job").unwrap();
    assert_eq!((st.agent_type.as_str(), st.timeout, st.failed), ("daily", secs(3600), true));
    assert!(!monitor.reconfigure("ghost", "x", options).unwrap());
    let bad = RegisterOptions { max_missed_beats: Some(0), ..Default::default() };
    assert!(monitor.reconfigure("job", "x", bad).is_err());
    // Only the failure was an event; a touch of a healthy session is a beat.
    assert_eq!(drain(&events), vec![Event::Failed { session_id: "job".into(), agent_type: "cron".into() }]);
    assert!(monitor.beat("job"));
    assert_eq!(drain(&events), vec![Event::Recovered { session_id: "job".into() }]);
    assert!(monitor.touch("job") && !monitor.touch("ghost"));
    assert_eq!((monitor.healthy_count(), monitor.counts().failed), (1, 0));
}

#[test]
fn a_snapshot_restores_into_a_monitor_allowing_fewer_misses() {
    let clock = ManualClock::new();
    let monitor = seed_monitor(&clock).build().unwrap(); // 3 misses
    monitor.register("a", "w");
    sweep_until(&monitor, &clock, 7); // t = 35: a miss or more
    let saved = monitor.snapshot();
    assert!(saved[0].missed_beats >= 1, "{saved:?}");
    let stricter = seed_monitor(&clock).max_missed_beats(1).build().unwrap();
    assert_eq!(stricter.restore(&saved).unwrap(), 1, "a state file we wrote is never refused");
    // Beating as of the restore; dead at its next miss.
    sweep_until(&stricter, &clock, 7);
    assert!(stricter.status("a").is_none());
}

#[test]
#[allow(deprecated)]
fn the_old_subscription_names_still_work() {
    let monitor = seed_monitor(&ManualClock::new()).build().unwrap();
    let events = monitor.events();
    let bounded = monitor.events_bounded(1);
    monitor.register("a", "t");
    assert!(monitor.fail("a"));
    assert!(matches!(events.try_recv(), Ok(Event::Failed { .. })));
    assert!(matches!(bounded.try_recv(), Ok(Event::Failed { .. })));
}
