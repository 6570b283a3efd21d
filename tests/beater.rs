//! The Beater as a user meets it: real files, real threads, a manual clock.
//! Every wait on the beat thread is bounded; time moves only when a test says so.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use heartbeat::{Beater, Clock, Error, ManualClock, read_state};
use serde_json::Value;

/// Generous bound for anything a live thread must do "at once".
const BOUND: Duration = Duration::from_secs(10);

fn expect(rx: &Receiver<&'static str>, what: &str) {
    assert_eq!(rx.recv_timeout(BOUND).unwrap_or_else(|_| panic!("no {what} within {BOUND:?}")), what);
}

/// A manual clock at a fixed, whole-second instant (files keep microseconds).
fn manual_clock() -> Arc<ManualClock> {
    ManualClock::starting_at(heartbeat::parse_timestamp("2026-11-23T10:00:00Z").unwrap())
}

/// A beater on a manual clock that reports each beat on a channel.
fn beating(path: &Path, clock: &Arc<ManualClock>) -> (Beater, Receiver<&'static str>) {
    let (tx, rx) = unbounded();
    let beater = Beater::builder()
        .state_file(path)
        .interval(Duration::from_secs(10))
        .clock(clock.clone())
        .on_beat(move || tx.send("beat").unwrap())
        .build()
        .unwrap();
    (beater, rx)
}

#[test]
fn first_beat_is_on_disk_when_start_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/app.json");
    let clock = manual_clock();
    let (beater, beats) = beating(&path, &clock);
    let _guard = beater.start().unwrap();
    let state = read_state(&path).unwrap();
    assert_eq!(state.pid, i64::from(std::process::id()));
    assert_eq!(state.last_beat, clock.wall());
    assert_eq!(state.interval, Some(Duration::from_secs(10)));
    assert_eq!(state.uuid.as_deref(), Some(beater.uuid().as_str()));
    expect(&beats, "beat");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
}

#[test]
fn beats_follow_the_clock_on_a_fixed_grid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.json");
    let clock = manual_clock();
    let (beater, beats) = beating(&path, &clock);
    let t0 = clock.wall();
    let guard = beater.start().unwrap();
    expect(&beats, "beat");

    clock.advance(Duration::from_secs(4)); // not due yet
    clock.advance(Duration::from_secs(6)); // due at exactly t0 + 10
    expect(&beats, "beat");
    assert_eq!(read_state(&path).unwrap().last_beat, t0 + Duration::from_secs(10));

    // A long stall (suspend): one beat on waking, not a burst of catch-up beats.
    clock.advance(Duration::from_secs(35));
    expect(&beats, "beat");
    assert_eq!(read_state(&path).unwrap().last_beat, t0 + Duration::from_secs(45));
    clock.advance(Duration::from_secs(10));
    expect(&beats, "beat");

    // A wall-clock step schedules nothing: only monotonic time counts.
    clock.step_wall(Duration::from_secs(3600), false);
    drop(guard); // joins: every beat that will happen has happened
    assert_eq!(beats.try_iter().count(), 0, "an undue beat happened");
}

#[test]
fn a_wall_clock_step_shows_in_the_next_timestamp_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wall.json");
    let clock = manual_clock();
    let (beater, beats) = beating(&path, &clock);
    let _guard = beater.start().unwrap();
    expect(&beats, "beat");
    clock.step_wall(Duration::from_secs(7200), true);
    clock.advance(Duration::from_secs(10));
    expect(&beats, "beat");
    assert_eq!(read_state(&path).unwrap().last_beat, clock.wall());
}

#[test]
fn metadata_is_written_and_can_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.json");
    let beater = Beater::builder()
        .state_file(&path)
        .metadata("version", "1.2.3")
        .metadata("shard", 7)
        .build()
        .unwrap();
    beater.beat().unwrap();
    let meta = read_state(&path).unwrap().metadata;
    assert_eq!(meta["version"], "1.2.3");
    assert_eq!(meta["shard"], 7);
    beater.set_metadata("shard", 8);
    beater.beat().unwrap();
    assert_eq!(read_state(&path).unwrap().metadata["shard"], 8);
}

#[test]
fn a_state_path_that_is_a_directory_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = Beater::builder().state_file(dir.path()).build().unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)));
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");

    // And if it becomes one after the build, the beat says so.
    let path = dir.path().join("later");
    let beater = Beater::builder().state_file(&path).build().unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = beater.beat().unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err:?}");
}

#[test]
fn start_and_stop_are_idempotent_and_a_second_start_errors() {
    let dir = tempfile::tempdir().unwrap();
    let beater = Beater::builder().state_file(dir.path().join("s.json")).build().unwrap();
    beater.stop(); // never started: fine
    let guard = beater.start().unwrap();
    assert!(beater.is_running());
    assert!(matches!(beater.start(), Err(Error::AlreadyRunning)));
    beater.stop();
    beater.stop();
    assert!(!beater.is_running());
    drop(guard); // a third stop, through the guard
    let _again = beater.start().unwrap(); // restartable after a stop
    assert!(beater.is_running());
}

#[test]
fn stop_is_prompt_even_with_the_longest_interval() {
    let dir = tempfile::tempdir().unwrap();
    let beater = Beater::builder()
        .state_file(dir.path().join("p.json"))
        .interval(Duration::from_secs(300))
        .build()
        .unwrap();
    let _guard = beater.start().unwrap();
    let t = Instant::now();
    beater.stop();
    // A behaviour bound, not a speed target: waiting out the interval would take 300 s.
    assert!(t.elapsed() < BOUND, "stop took {:?}", t.elapsed());
}

#[test]
fn the_guard_stops_the_thread_on_drop_and_on_unwind() {
    let dir = tempfile::tempdir().unwrap();
    let beater = Beater::builder().directory(dir.path()).build().unwrap();
    let file = beater.state_file().unwrap().to_owned();
    {
        let _guard = beater.start().unwrap();
        assert!(file.exists());
    }
    assert!(!beater.is_running());
    assert!(!file.exists(), "directory mode removes its file on a clean stop");

    let b = beater.clone();
    let unwound = std::panic::catch_unwind(move || {
        let _guard = b.start().unwrap();
        panic!("the application fails");
    });
    assert!(unwound.is_err());
    assert!(!beater.is_running());
    assert!(!file.exists());
}

#[test]
fn directory_mode_uses_the_scanner_naming() {
    let dir = tempfile::tempdir().unwrap();
    let beater = Beater::builder().directory(dir.path().join("wrappers")).build().unwrap();
    let name = beater.state_file().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(name, format!("heartbeat-{}-{}.json", std::process::id(), beater.uuid()));
    let guard = beater.start().unwrap();
    let state = read_state(beater.state_file().unwrap()).unwrap();
    assert_eq!(state.uuid, Some(beater.uuid()));
    drop(guard);
    assert_eq!(std::fs::read_dir(dir.path().join("wrappers")).unwrap().count(), 0);
}

#[test]
fn remove_on_stop_is_off_for_a_named_file_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept.json");
    drop(Beater::builder().state_file(&kept).build().unwrap().start().unwrap());
    assert!(kept.exists());
    let removed = dir.path().join("removed.json");
    drop(Beater::builder().state_file(&removed).remove_on_stop(true).build().unwrap().start().unwrap());
    assert!(!removed.exists());
}

#[test]
fn a_failed_write_calls_on_missed_beat_and_a_panicking_callback_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let clock = manual_clock();
    let (tx, rx) = unbounded();
    let beater = Beater::builder()
        .state_file(not_a_dir.join("hb.json"))
        .clock(clock.clone())
        .on_missed_beat(move |err| {
            tx.send(err.to_string()).unwrap();
            panic!("a careless callback");
        })
        .build()
        .unwrap();
    let _guard = beater.start().unwrap();
    let first = rx.recv_timeout(BOUND).unwrap();
    assert!(first.contains("cannot write heartbeat file") && first.contains("hb.json"), "{first}");
    // The panic did not kill the thread: the next tick misses again.
    clock.advance(Duration::from_secs(10));
    rx.recv_timeout(BOUND).unwrap();
    assert!(beater.is_running());
}

#[test]
fn a_panicking_on_beat_does_not_stop_the_beats() {
    let clock = manual_clock();
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = unbounded();
    let c = count.clone();
    let beater = Beater::builder()
        .clock(clock.clone())
        .on_beat(move || {
            tx.send(c.fetch_add(1, Ordering::SeqCst)).unwrap();
            panic!("on_beat fails");
        })
        .build()
        .unwrap();
    let _guard = beater.start().unwrap();
    for expected in 0..3 {
        assert_eq!(rx.recv_timeout(BOUND).unwrap(), expected);
        clock.advance(Duration::from_secs(10));
    }
}

#[test]
fn no_file_mode_runs_callbacks_only() {
    let clock = manual_clock();
    let (tx, rx) = unbounded();
    let beater =
        Beater::builder().clock(clock.clone()).on_beat(move || tx.send("beat").unwrap()).build().unwrap();
    assert!(beater.state_file().is_none());
    let _guard = beater.start().unwrap();
    expect(&rx, "beat");
    clock.advance(Duration::from_secs(10));
    expect(&rx, "beat");
    beater.beat().unwrap(); // nothing to write, nothing to fail
}

#[test]
fn a_dead_target_raises_an_alert_then_calls_on_target_dead() {
    let clock = manual_clock();
    let dead = Arc::new(AtomicBool::new(false));
    let (tx, rx) = unbounded();
    let (tx1, tx2, tx3) = (tx.clone(), tx.clone(), tx);
    let d = dead.clone();
    let beater = Beater::builder()
        .clock(clock.clone())
        .target(move || d.load(Ordering::SeqCst))
        .on_beat(move || tx1.send("beat".to_owned()).unwrap())
        .on_alert(move |channel, message, context| {
            let target = context["target"].as_str().unwrap_or_default();
            assert!(target.contains("closure"), "{target}");
            tx2.send(format!("alert {channel}: {message}")).unwrap();
        })
        .on_target_dead(move || tx3.send("dead".to_owned()).unwrap())
        .build()
        .unwrap();
    let _guard = beater.start().unwrap();
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), "beat");
    dead.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(10));
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), "beat");
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), "alert heartbeat: Target is dead, triggering recovery");
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), "dead");
}

#[test]
fn stop_from_a_callback_ends_the_thread_without_deadlock() {
    let clock = manual_clock();
    let slot: Arc<parking_lot::Mutex<Option<Beater>>> = Arc::default();
    let (tx, rx) = unbounded();
    let s = slot.clone();
    let beater = Beater::builder()
        .clock(clock.clone())
        .target(|| true)
        .on_target_dead(move || {
            let beater = s.lock().clone().expect("set before the second tick");
            beater.stop();
            tx.send(beater.is_running()).unwrap();
        })
        .build()
        .unwrap();
    *slot.lock() = Some(beater.clone());
    let guard = beater.start().unwrap();
    assert!(!rx.recv_timeout(BOUND).unwrap(), "is_running after stop() in a callback");
    let deadline = Instant::now() + BOUND;
    while beater.is_running() {
        assert!(Instant::now() < deadline, "the thread did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(guard);
    slot.lock().take();
}

#[test]
fn shutdown_sets_the_flag_and_stops() {
    let beater = Beater::builder().build().unwrap();
    let _guard = beater.start().unwrap();
    assert!(!beater.is_shutdown());
    beater.shutdown();
    assert!(beater.is_shutdown());
    assert!(!beater.is_running());
}

#[test]
fn a_reader_never_sees_a_partial_file() {
    const WRITES: usize = 3000;
    const MIN_READS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torn.json");
    // Large metadata so each write spans several pages: a torn write would show.
    let beater = Beater::builder().state_file(&path).metadata("blob", "x".repeat(9_000)).build().unwrap();
    beater.beat().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0usize, Vec::new());
            while !(done.load(Ordering::SeqCst) && reads >= MIN_READS) {
                match read_state(&path) {
                    Ok(s) if s.metadata["blob"].as_str().map(str::len) == Some(9_000) => {}
                    Ok(s) => failures
                        .push(format!("short metadata: {:?}", s.metadata.get("blob").map(Value::to_string))),
                    Err(e) => failures.push(e.to_string()),
                }
                reads += 1;
            }
            (reads, failures)
        })
    };
    for _ in 0..WRITES {
        beater.beat().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (reads, failures) = reader.join().unwrap();
    assert!(failures.is_empty(), "{} of {reads} reads failed, first: {}", failures.len(), failures[0]);
    // And no temporary file was left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_symlink_planted_at_the_naive_temp_path_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let path = dir.path().join("hb.json");
    // Where the seed would write (`hb.tmp`), and other guessable names.
    let traps = ["hb.tmp", "hb.json.tmp", ".hb.json.tmp"].map(|n| dir.path().join(n));
    for trap in &traps {
        std::os::unix::fs::symlink(&victim, trap).unwrap();
    }
    for fsync in [false, true] {
        let beater = Beater::builder().state_file(&path).fsync(fsync).build().unwrap();
        for _ in 0..10 {
            beater.beat().unwrap();
        }
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    for trap in &traps {
        assert!(trap.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_link(trap).unwrap(), victim);
    }
    assert!(read_state(&path).is_ok());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2 + traps.len());
}

#[test]
fn the_file_mode_is_set_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.json");
    Beater::builder().state_file(&path).file_mode(0o600).build().unwrap().beat().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
}

#[test]
fn start_returns_after_the_first_write_without_waiting_for_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.json");
    let (release_tx, release_rx) = unbounded::<()>();
    let (released_tx, released_rx) = unbounded();
    let beater = Beater::builder()
        .state_file(&path)
        .on_beat(move || {
            // A slow callback: it waits for the test, which can only release
            // it once start() has returned.
            released_tx.send(release_rx.recv_timeout(BOUND).is_ok()).unwrap();
        })
        .build()
        .unwrap();
    let guard = beater.start().unwrap();
    assert!(path.exists());
    assert!(beater.is_running(), "answers while the callback runs");
    release_tx.send(()).unwrap();
    assert!(released_rx.recv_timeout(BOUND).unwrap(), "start() waited for the callback");
    drop(guard);
}

#[test]
fn a_beater_that_was_shut_down_does_not_start_again() {
    let beater = Beater::builder().build().unwrap();
    drop(beater.start().unwrap());
    beater.shutdown();
    assert!(matches!(beater.start(), Err(Error::ShutDown)));
    assert!(!beater.is_running());
}

#[test]
fn started_at_is_when_beating_started() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("started.json");
    let clock = manual_clock();
    let (beater, _beats) = beating(&path, &clock);
    clock.advance(Duration::from_secs(60)); // between build and start
    let _guard = beater.start().unwrap();
    let state = read_state(&path).unwrap();
    assert_eq!(state.started_at, Some(clock.wall()));
    assert_eq!(state.started_at, Some(state.last_beat));
}
