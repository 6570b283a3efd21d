//! The Monitor from C: `hb_monitor_*`, its events as callbacks and as a poll.

use std::ffi::{c_char, c_void};
use std::ptr;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use parking_lot::Mutex;

use super::{
    Creator, Failure, Handle, UserData, c_str, callback_c_string, catch, check_pid, free_handle, handle,
    hb_result, millis, new_handle, out_ptr, owned_c_string, run, to_millis, write_out,
};
use crate::monitor::{
    Detector, Event, MAX_TIMEOUT, Monitor, MonitorGuard, PhiConfig, RegisterOptions, RemovalReason,
};

/// The default of hb_monitor_options.event_capacity: how many undrained
/// events the poll holds; beyond that, events are dropped and counted
/// (hb_monitor_events_dropped).
pub const EVENT_CAPACITY: usize = 1024;

/// The most events a poll may be asked to hold.
const MAX_EVENT_CAPACITY: usize = 1 << 20;

/// The detectors, as the values of hb_monitor_options.detector.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hb_detector {
    /// A session silent for longer than timeout_ms at a sweep misses a beat;
    /// the first miss warns; max_missed_beats misses time it out.
    HB_DETECTOR_FIXED = 0,
    /// Phi accrual (hb_monitor_options.phi): phi at or above warn_threshold
    /// at a sweep counts a miss (the first warns); at or above threshold the
    /// session times out.
    HB_DETECTOR_PHI = 1,
}

/// The phi accrual detector's settings (Akka's); hb_monitor_options_default
/// fills in the library's defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hb_phi_config {
    /// phi at or above which a session is declared dead (default 8.0), at
    /// most 100.
    pub threshold: f64,
    /// phi at or above which a session is warned about (default 4.0), at
    /// most threshold.
    pub warn_threshold: f64,
    /// How many inter-beat intervals the estimate remembers, 2 to 10000
    /// (default 1000): the span of the exponentially weighted mean and
    /// variance each session keeps (24 bytes whatever the span).
    pub max_samples: usize,
    /// Floor of the standard deviation, in ms (default 100).
    pub min_std_deviation_ms: u64,
    /// Silence tolerated on top of the mean interval, in ms (default 3000).
    pub acceptable_pause_ms: u64,
    /// The interval assumed before any is measured, in ms (default 10000).
    pub expected_interval_ms: u64,
}

/// How to build a Monitor. Get the defaults from hb_monitor_options_default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hb_monitor_options {
    /// Silence longer than this at a sweep is a missed beat (fixed
    /// detector), in ms: 1 to 31536000000 (365 days); default 30000.
    pub timeout_ms: u64,
    /// Time between the sweeper's sweeps, in ms: 1 to 365 days; default 5000.
    pub check_interval_ms: u64,
    /// Misses that time a session out, at least 1; default 3.
    pub max_missed_beats: u32,
    /// An hb_detector value: HB_DETECTOR_FIXED (the default) or
    /// HB_DETECTOR_PHI. Any other value is HB_ERR_INVALID_ARGUMENT.
    pub detector: u32,
    /// The phi detector's settings, used with HB_DETECTOR_PHI.
    pub phi: hb_phi_config,
    /// Undrained events hb_monitor_next_event can hold, at most 1048576
    /// (the queue's slots are allocated at hb_monitor_new); default 1024.
    /// 0: no poll (a monitor used with callbacks only keeps no events, and
    /// hb_monitor_next_event is HB_ERR_INVALID_ARGUMENT).
    pub event_capacity: usize,
}

/// Callbacks, each optional (NULL), all given the same user_data. The
/// strings they get are valid during the call only.
///
/// on_warning and on_timeout run on the thread that sweeps: the monitor's
/// own thread (named "heartbeat-monitor") once hb_monitor_start is called,
/// or the caller of hb_monitor_sweep. on_failure runs on the thread that
/// called hb_monitor_fail. So callbacks of one monitor may run on several
/// threads at once: user_data is passed to them all as is, and the caller
/// promises whatever it points to may be used from all of them at once. A callback
/// may call any hb_ function, including hb_monitor_stop on its own monitor
/// (the sweeper then ends after this sweep), but must not call
/// hb_monitor_free on its own monitor.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hb_monitor_callbacks {
    /// A session's first missed beat, with the misses so far.
    pub on_warning:
        Option<unsafe extern "C" fn(session_id: *const c_char, missed_beats: u32, user_data: *mut c_void)>,
    /// A session timed out: it is declared dead and removed.
    pub on_timeout: Option<
        unsafe extern "C" fn(session_id: *const c_char, agent_type: *const c_char, user_data: *mut c_void),
    >,
    /// A session reported a failure (hb_monitor_fail); it stays registered.
    pub on_failure: Option<
        unsafe extern "C" fn(session_id: *const c_char, agent_type: *const c_char, user_data: *mut c_void),
    >,
    /// Given to every callback.
    pub user_data: *mut c_void,
}

/// Per-session settings for hb_monitor_register_with: 0 in a field means
/// "the monitor's" (so a zeroed struct is plain hb_monitor_register).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct hb_register_options {
    /// This session's timeout in ms (1 to 365 days), or 0.
    pub timeout_ms: u64,
    /// This session's misses before it times out, or 0.
    pub max_missed_beats: u32,
    /// No misses are counted for this long after registering, in ms (at
    /// most 365 days), or 0 for none.
    pub grace_ms: u64,
}

/// One session's state, from hb_monitor_status.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hb_session_status {
    /// Misses counted since its last beat.
    pub missed_beats: u32,
    /// Whether it is paused.
    pub is_paused: bool,
    /// No missed beats, not failed.
    pub is_healthy: bool,
    /// It reported a failure and has not beaten since.
    pub failed: bool,
    /// Seconds since its last beat (or registration, resume, failure report).
    pub seconds_since_beat: f64,
    /// Its phi now with the phi detector; NaN with the fixed one.
    pub phi: f64,
    /// Estimated ms until it would be declared dead if it stayed silent; -1
    /// while paused.
    pub time_to_death_ms: i64,
    /// The silence that counts as a missed beat for it, in ms.
    pub timeout_ms: u64,
    /// The misses that time it out.
    pub max_missed_beats: u32,
}

/// The kinds of hb_event.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hb_event_kind {
    /// A session's first missed beat (missed_beats set).
    HB_EVENT_WARNING = 0,
    /// A warned or failed session beat again (or was resumed, or registered again).
    HB_EVENT_RECOVERED = 1,
    /// A session was declared dead (agent_type and missed_beats set); an
    /// HB_EVENT_REMOVED follows.
    HB_EVENT_TIMED_OUT = 2,
    /// A session reported a failure (agent_type set).
    HB_EVENT_FAILED = 3,
    /// A session is no longer monitored (reason set).
    HB_EVENT_REMOVED = 4,
}

/// Why a session was removed (hb_event.reason).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hb_removal_reason {
    /// The event is not an HB_EVENT_REMOVED.
    HB_REMOVED_NONE = 0,
    /// It timed out.
    HB_REMOVED_TIMED_OUT = 1,
    /// hb_monitor_unregister was called.
    HB_REMOVED_UNREGISTERED = 2,
}

/// An event from hb_monitor_next_event. Its strings belong to it: release
/// them with hb_event_free (not hb_string_free).
#[repr(C)]
#[derive(Debug)]
pub struct hb_event {
    /// What happened.
    pub kind: hb_event_kind,
    /// The session.
    pub session_id: *mut c_char,
    /// Its agent type for HB_EVENT_TIMED_OUT and HB_EVENT_FAILED, else NULL.
    pub agent_type: *mut c_char,
    /// Missed beats for HB_EVENT_WARNING and HB_EVENT_TIMED_OUT, else 0.
    pub missed_beats: u32,
    /// Why, for HB_EVENT_REMOVED; HB_REMOVED_NONE otherwise.
    pub reason: hb_removal_reason,
    /// The session's phi at the sweep for an HB_EVENT_WARNING with the phi
    /// detector; NaN otherwise.
    pub phi: f64,
}

/// A Monitor: sessions that must beat, a sweeper thread that warns about
/// and times out silent ones. Made by hb_monitor_new, released by
/// hb_monitor_free. Every function taking it may be called from any thread,
/// several at once, except hb_monitor_free: it must be the last call, made
/// once every other call on this monitor (a poll, a sweep, a fail) has
/// returned, in every thread.
pub struct hb_monitor {
    creator: Creator,
    monitor: Monitor,
    /// The poll subscription, bounded at the options' event_capacity; none
    /// when that was 0.
    events: Option<Receiver<Event>>,
    /// The guard of the running sweeper: start stores it, stop and free drop it.
    guard: Mutex<Option<MonitorGuard>>,
    /// Serializes start (check, reap, start, store).
    starting: Mutex<()>,
}

impl Handle for hb_monitor {
    const NAME: &'static str = "monitor";
    fn creator(&self) -> Creator {
        self.creator
    }
}

/// Fills `*out` with the defaults: timeout 30000 ms, a sweep every 5000 ms,
/// 3 missed beats, the fixed detector, and phi's defaults (8.0, 4.0, 1000
/// samples, 100 ms, 3000 ms, 10000 ms) should HB_DETECTOR_PHI be chosen.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_options_default(out: *mut hb_monitor_options) -> hb_result {
    run(|| {
        let out = out_ptr(out, "out")?;
        let phi = PhiConfig::default();
        let defaults = hb_monitor_options {
            timeout_ms: 30_000,
            check_interval_ms: 5_000,
            max_missed_beats: 3,
            detector: hb_detector::HB_DETECTOR_FIXED as u32,
            phi: hb_phi_config {
                threshold: phi.threshold,
                warn_threshold: phi.warn_threshold,
                max_samples: phi.max_samples,
                min_std_deviation_ms: to_millis(phi.min_std_deviation),
                acceptable_pause_ms: to_millis(phi.acceptable_pause),
                expected_interval_ms: to_millis(phi.expected_interval),
            },
            event_capacity: EVENT_CAPACITY,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, defaults) };
        Ok(())
    })
}

fn detector_of(o: &hb_monitor_options) -> Result<Detector, Failure> {
    const FIXED: u32 = hb_detector::HB_DETECTOR_FIXED as u32;
    const PHI: u32 = hb_detector::HB_DETECTOR_PHI as u32;
    match o.detector {
        FIXED => Ok(Detector::Fixed),
        PHI => {
            let p = &o.phi;
            let ms = |v: u64, name: &str| millis(v, name, Duration::ZERO, MAX_TIMEOUT);
            Ok(Detector::Phi(PhiConfig {
                threshold: p.threshold,
                warn_threshold: p.warn_threshold,
                max_samples: p.max_samples,
                min_std_deviation: ms(p.min_std_deviation_ms, "options.phi.min_std_deviation_ms")?,
                acceptable_pause: ms(p.acceptable_pause_ms, "options.phi.acceptable_pause_ms")?,
                expected_interval: ms(p.expected_interval_ms, "options.phi.expected_interval_ms")?,
                ..PhiConfig::default()
            }))
        }
        other => Err(Failure::invalid(format!(
            "options.detector = {other} is not an hb_detector (HB_DETECTOR_FIXED = {FIXED}, HB_DETECTOR_PHI = {PHI})"
        ))),
    }
}

/// Makes a Monitor (its sweeper not started) from `options` and `callbacks`
/// (NULL: none), in `*out`. Its event poll (hb_monitor_next_event) starts
/// now: up to 65536 undrained events are kept, later ones are dropped and
/// counted (hb_monitor_events_dropped).
///
/// Errors: HB_ERR_INVALID_ARGUMENT (NULL, a duration out of range, 0 missed
/// beats, an unknown detector, phi settings the library rejects).
///
/// # Safety
/// `options` is NULL or points to an hb_monitor_options; `callbacks` likewise
/// or NULL; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_new(
    options: *const hb_monitor_options,
    callbacks: *const hb_monitor_callbacks,
    out: *mut *mut hb_monitor,
) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a valid options struct or NULL.
        let o = unsafe { options.as_ref() }.ok_or_else(|| Failure::invalid("options is NULL"))?;
        // SAFETY: the caller passes a valid callbacks struct or NULL.
        let cb = unsafe { callbacks.as_ref() }.copied();
        let out = out_ptr(out, "out")?;

        let one_ms = Duration::from_millis(1);
        let mut b = Monitor::builder()
            .timeout(millis(o.timeout_ms, "options.timeout_ms", one_ms, MAX_TIMEOUT)?)
            .check_interval(millis(o.check_interval_ms, "options.check_interval_ms", one_ms, MAX_TIMEOUT)?)
            .max_missed_beats(o.max_missed_beats)
            .detector(detector_of(o)?);
        if let Some(cb) = cb {
            let ud = UserData(cb.user_data);
            if let Some(f) = cb.on_warning {
                b = b.on_warning(move |id, missed| {
                    let id = callback_c_string(id);
                    // SAFETY: a C function pointer and the user_data registered with it;
                    // the string lives for the call.
                    unsafe { f(id.as_ptr(), missed, ud.get()) }
                });
            }
            if let Some(f) = cb.on_timeout {
                b = b.on_timeout(move |id, agent| {
                    let (id, agent) = (callback_c_string(id), callback_c_string(agent));
                    // SAFETY: as above.
                    unsafe { f(id.as_ptr(), agent.as_ptr(), ud.get()) }
                });
            }
            if let Some(f) = cb.on_failure {
                b = b.on_failure(move |id, agent| {
                    let (id, agent) = (callback_c_string(id), callback_c_string(agent));
                    // SAFETY: as above.
                    unsafe { f(id.as_ptr(), agent.as_ptr(), ud.get()) }
                });
            }
        }
        if o.event_capacity > MAX_EVENT_CAPACITY {
            return Err(Failure::invalid(format!(
                "options.event_capacity {} is over {MAX_EVENT_CAPACITY}",
                o.event_capacity
            )));
        }
        let monitor = b.build()?;
        let events = (o.event_capacity > 0).then(|| monitor.subscribe_bounded(o.event_capacity));
        let h = new_handle(hb_monitor {
            creator: Creator::current(),
            monitor,
            events,
            guard: Mutex::new(None),
            starting: Mutex::new(()),
        });
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, h) };
        Ok(())
    })
}

/// Starts the sweeper thread: a sweep every check_interval_ms, the first
/// one check_interval_ms from now. Errors: HB_ERR_ALREADY_RUNNING, HB_ERR_IO
/// (no thread), HB_ERR_FORKED, HB_ERR_INVALID_ARGUMENT (NULL).
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_start(monitor: *const hb_monitor) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(monitor) }?;
        let _one_at_a_time = h.starting.lock();
        if h.monitor.is_running() {
            return Err(crate::Error::AlreadyRunning.into());
        }
        // A sweeper stopped from its own callback left its guard: drop it
        // (waiting for that thread) before a new one starts.
        let old = h.guard.lock().take();
        drop(old);
        let guard = h.monitor.start()?;
        *h.guard.lock() = Some(guard);
        Ok(())
    })
}

/// Stops the sweeper thread and waits for it; prompt, and safe when not
/// running; may be started again. From one of its own callbacks it asks
/// the sweeper to end after this sweep. Sessions stay registered.
/// Errors: HB_ERR_FORKED, HB_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_stop(monitor: *const hb_monitor) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(monitor) }?;
        // Stop (and join) without holding the guard's lock, which a callback
        // calling hb_monitor_stop may need meanwhile.
        h.monitor.stop();
        let guard = h.guard.lock().take();
        drop(guard);
        Ok(())
    })
}

/// Stops the monitor (as hb_monitor_stop) and releases it, with its
/// sessions and undrained events. NULL is a no-op. In a forked child, a
/// monitor made by the parent is only forgotten. Must not be called from
/// the monitor's own callbacks.
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new, not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_free(monitor: *mut hb_monitor) {
    let _ = catch(|| {
        // SAFETY: forwarded from the caller.
        if let Some(h) = unsafe { monitor.as_ref() }
            && check_pid(h.creator, "monitor").is_ok()
        {
            h.monitor.stop();
        }
        // SAFETY: forwarded from the caller; forgets a handle of another process.
        unsafe { free_handle(monitor) };
        Ok(())
    });
}

fn not_found(id: &str) -> Failure {
    Failure::new(hb_result::HB_ERR_NOT_FOUND, format!("no session {id:?} is registered"))
}

/// Starts monitoring `session_id` as beating now, with the monitor's
/// settings, replacing any session of that id. Any UTF-8 id.
/// Errors: HB_ERR_INVALID_ARGUMENT (NULL, not UTF-8), HB_ERR_FORKED.
///
/// # Safety
/// `monitor` is NULL or a live handle; the strings are NULL or C strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_register(
    monitor: *const hb_monitor,
    session_id: *const c_char,
    agent_type: *const c_char,
) -> hb_result {
    run(|| {
        // SAFETY: the caller's promises, as documented.
        let (h, id, agent) =
            unsafe { (handle(monitor)?, c_str(session_id, "session_id")?, c_str(agent_type, "agent_type")?) };
        h.monitor.register(id, agent);
        Ok(())
    })
}

/// hb_monitor_register with settings of the session's own (`options`; NULL
/// is all the monitor's). Errors: as hb_monitor_register, and
/// HB_ERR_INVALID_ARGUMENT for a duration out of range; nothing is
/// registered then.
///
/// # Safety
/// As hb_monitor_register; `options` is NULL or points to an hb_register_options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_register_with(
    monitor: *const hb_monitor,
    session_id: *const c_char,
    agent_type: *const c_char,
    options: *const hb_register_options,
) -> hb_result {
    run(|| {
        // SAFETY: the caller's promises, as documented.
        let (h, id, agent) =
            unsafe { (handle(monitor)?, c_str(session_id, "session_id")?, c_str(agent_type, "agent_type")?) };
        // SAFETY: a valid struct or NULL.
        let o = unsafe { options.as_ref() }.copied().unwrap_or_default();
        let one_ms = Duration::from_millis(1);
        let options = RegisterOptions {
            grace: match o.grace_ms {
                0 => None,
                ms => Some(millis(ms, "options.grace_ms", one_ms, MAX_TIMEOUT)?),
            },
            detector: None,
            timeout: match o.timeout_ms {
                0 => None,
                ms => Some(millis(ms, "options.timeout_ms", one_ms, MAX_TIMEOUT)?),
            },
            max_missed_beats: (o.max_missed_beats > 0).then_some(o.max_missed_beats),
        };
        h.monitor.register_with(id, agent, options)?;
        Ok(())
    })
}

/// Runs `f` on a session-taking entry point's handle and id.
///
/// # Safety
/// As hb_monitor_register.
unsafe fn with_session(
    monitor: *const hb_monitor,
    session_id: *const c_char,
    f: impl FnOnce(&hb_monitor, &str) -> Result<(), Failure>,
) -> hb_result {
    run(|| {
        // SAFETY: forwarded from the caller.
        let (h, id) = unsafe { (handle(monitor)?, c_str(session_id, "session_id")?) };
        f(h, id)
    })
}

/// Records a beat of `session_id`. Errors: HB_ERR_NOT_FOUND (not
/// registered), HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// `monitor` is NULL or a live handle; `session_id` NULL or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_beat(monitor: *const hb_monitor, session_id: *const c_char) -> hb_result {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_session(monitor, session_id, |h, id| {
            h.monitor.beat(id).then_some(()).ok_or_else(|| not_found(id))
        })
    }
}

/// Stops monitoring `session_id` (an HB_EVENT_REMOVED follows). Errors:
/// HB_ERR_NOT_FOUND, HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// As hb_monitor_beat.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_unregister(
    monitor: *const hb_monitor,
    session_id: *const c_char,
) -> hb_result {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_session(monitor, session_id, |h, id| {
            h.monitor.unregister(id).then_some(()).ok_or_else(|| not_found(id))
        })
    }
}

/// Stops counting misses for `session_id` until hb_monitor_resume. Errors:
/// HB_ERR_NOT_FOUND, HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// As hb_monitor_beat.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_pause(
    monitor: *const hb_monitor,
    session_id: *const c_char,
) -> hb_result {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_session(monitor, session_id, |h, id| {
            h.monitor.pause(id).then_some(()).ok_or_else(|| not_found(id))
        })
    }
}

/// Resumes a paused session as if it beat now; a registered session that
/// is not paused is left as it is (HB_OK). Errors: HB_ERR_NOT_FOUND,
/// HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// As hb_monitor_beat.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_resume(
    monitor: *const hb_monitor,
    session_id: *const c_char,
) -> hb_result {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_session(monitor, session_id, |h, id| {
            if h.monitor.resume(id) || h.monitor.status(id).is_some() {
                return Ok(());
            }
            Err(not_found(id))
        })
    }
}

/// Reports a failure of `session_id` at once: an HB_EVENT_FAILED and the
/// on_failure callback (on this thread, before this returns). The session
/// stays registered, unhealthy until its next beat. Errors:
/// HB_ERR_NOT_FOUND, HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// As hb_monitor_beat.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_fail(monitor: *const hb_monitor, session_id: *const c_char) -> hb_result {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_session(monitor, session_id, |h, id| {
            h.monitor.fail(id).then_some(()).ok_or_else(|| not_found(id))
        })
    }
}

/// The state of `session_id`, in `*out`. Errors: HB_ERR_NOT_FOUND,
/// HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// As hb_monitor_beat; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_status(
    monitor: *const hb_monitor,
    session_id: *const c_char,
    out: *mut hb_session_status,
) -> hb_result {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_session(monitor, session_id, |h, id| {
            let out = out_ptr(out, "out")?;
            let s = h.monitor.status(id).ok_or_else(|| not_found(id))?;
            let status = hb_session_status {
                missed_beats: s.missed_beats,
                is_paused: s.is_paused,
                is_healthy: s.is_healthy,
                failed: s.failed,
                seconds_since_beat: s.seconds_since_beat,
                phi: s.phi.unwrap_or(f64::NAN),
                time_to_death_ms: s
                    .time_to_death
                    .map_or(-1, |d| i64::try_from(to_millis(d)).unwrap_or(i64::MAX)),
                timeout_ms: to_millis(s.timeout),
                max_missed_beats: s.max_missed_beats,
            };
            // SAFETY: checked non-NULL; the caller promises it is writable.
            write_out(out, status);
            Ok(())
        })
    }
}

/// A count that cannot fail but for its handle: 0 (with a message) for NULL
/// or a handle of another process.
///
/// # Safety
/// `monitor` is NULL or a live handle.
unsafe fn count(monitor: *const hb_monitor, f: impl FnOnce(&Monitor) -> u64) -> u64 {
    catch(|| {
        // SAFETY: forwarded from the caller.
        let h = unsafe { handle(monitor) }?;
        Ok(f(&h.monitor))
    })
    .unwrap_or(0)
}

/// How many sessions are registered; 0 (and a message) for a NULL handle.
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_registered_count(monitor: *const hb_monitor) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { count(monitor, |m| m.registered_count() as u64) as usize }
}

/// How many sessions have no missed beats and no failure; 0 (and a
/// message) for a NULL handle.
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_healthy_count(monitor: *const hb_monitor) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { count(monitor, |m| m.healthy_count() as u64) as usize }
}

/// Events dropped so far because the poll subscription held 65536
/// undrained events; 0 (and a message) for a NULL handle.
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_events_dropped(monitor: *const hb_monitor) -> u64 {
    // SAFETY: forwarded from the caller.
    unsafe { count(monitor, Monitor::events_dropped) }
}

/// Runs one sweep now on the calling thread (counting misses, warning,
/// timing out; on_warning and on_timeout run here), whether or not the
/// sweeper runs. For tests and for services that sweep from their own loop.
/// Errors: HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_sweep(monitor: *const hb_monitor) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(monitor) }?;
        h.monitor.sweep();
        Ok(())
    })
}

fn to_c_event(e: Event) -> hb_event {
    let mut out = hb_event {
        kind: hb_event_kind::HB_EVENT_WARNING,
        session_id: ptr::null_mut(),
        agent_type: ptr::null_mut(),
        missed_beats: 0,
        reason: hb_removal_reason::HB_REMOVED_NONE,
        phi: f64::NAN,
    };
    match e {
        Event::Warning { session_id, missed_beats, phi } => {
            out.session_id = owned_c_string(session_id);
            out.missed_beats = missed_beats;
            out.phi = phi.unwrap_or(f64::NAN);
        }
        Event::Recovered { session_id } => {
            out.kind = hb_event_kind::HB_EVENT_RECOVERED;
            out.session_id = owned_c_string(session_id);
        }
        Event::TimedOut { session_id, agent_type, missed_beats } => {
            out.kind = hb_event_kind::HB_EVENT_TIMED_OUT;
            out.session_id = owned_c_string(session_id);
            out.agent_type = owned_c_string(agent_type);
            out.missed_beats = missed_beats;
        }
        Event::Failed { session_id, agent_type } => {
            out.kind = hb_event_kind::HB_EVENT_FAILED;
            out.session_id = owned_c_string(session_id);
            out.agent_type = owned_c_string(agent_type);
        }
        Event::Removed { session_id, reason } => {
            out.kind = hb_event_kind::HB_EVENT_REMOVED;
            out.session_id = owned_c_string(session_id);
            out.reason = match reason {
                RemovalReason::TimedOut => hb_removal_reason::HB_REMOVED_TIMED_OUT,
                RemovalReason::Unregistered => hb_removal_reason::HB_REMOVED_UNREGISTERED,
            };
        }
    }
    out
}

/// Waits up to `timeout_ms` (0: do not wait; at most 365 days) for the
/// monitor's next event and writes it to `*out`, to be released with
/// hb_event_free. Events are queued in order for each session; with several
/// pollers each event goes to one of them, so no one poller sees a
/// session's whole sequence. Any thread. When the queue is full
/// (`event_capacity`), the newest events are the ones dropped and counted
/// (hb_monitor_events_dropped): drain it.
///
/// Errors: HB_ERR_TIMEOUT (no event within timeout_ms; `*out` untouched),
/// HB_ERR_INVALID_ARGUMENT, HB_ERR_FORKED.
///
/// # Safety
/// `monitor` is NULL or a live handle from hb_monitor_new; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_monitor_next_event(
    monitor: *const hb_monitor,
    timeout_ms: u64,
    out: *mut hb_event,
) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(monitor) }?;
        let out = out_ptr(out, "out")?;
        let wait = millis(timeout_ms, "timeout_ms", Duration::ZERO, MAX_TIMEOUT)?;
        let none = || Failure::new(hb_result::HB_ERR_TIMEOUT, format!("no event within {timeout_ms} ms"));
        let events = h.events.as_ref().ok_or_else(|| {
            Failure::invalid("this monitor was made with event_capacity 0: it has no events to poll")
        })?;
        let event = if wait.is_zero() {
            events.try_recv().map_err(|e| match e {
                TryRecvError::Empty | TryRecvError::Disconnected => none(),
            })?
        } else {
            events.recv_timeout(wait).map_err(|e| match e {
                RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected => none(),
            })?
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, to_c_event(event)) };
        Ok(())
    })
}

/// Releases the strings inside an event from hb_monitor_next_event and sets
/// them to NULL (so a second call is harmless); the struct itself is the
/// caller's. NULL is a no-op.
///
/// # Safety
/// `event` is NULL or points to an hb_event filled by hb_monitor_next_event
/// (or whose string pointers are NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_event_free(event: *mut hb_event) {
    if event.is_null() {
        return;
    }
    let _ = catch(|| {
        // Only the two pointer fields are touched, through raw pointers.
        // SAFETY: the caller passes a valid event.
        let fields = unsafe { [&raw mut (*event).session_id, &raw mut (*event).agent_type] };
        for field in fields {
            // SAFETY: a valid, writable field of the caller's event.
            let s = unsafe { field.replace(ptr::null_mut()) };
            // SAFETY: NULL or a string made by owned_c_string for this event.
            unsafe { super::hb_string_free(s) };
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_times_out_through_the_poll() {
        let mut o = std::mem::MaybeUninit::uninit();
        // SAFETY: writable.
        assert_eq!(unsafe { hb_monitor_options_default(o.as_mut_ptr()) }, hb_result::HB_OK);
        // SAFETY: filled above.
        let mut o = unsafe { o.assume_init() };
        o.timeout_ms = 1;
        o.max_missed_beats = 1;
        let mut m = ptr::null_mut();
        // SAFETY: valid arguments.
        assert_eq!(unsafe { hb_monitor_new(&o, ptr::null(), &mut m) }, hb_result::HB_OK);
        // SAFETY: a live handle and C strings.
        unsafe {
            assert_eq!(hb_monitor_register(m, c"s1".as_ptr(), c"w".as_ptr()), hb_result::HB_OK);
            assert_eq!(hb_monitor_beat(m, c"nope".as_ptr()), hb_result::HB_ERR_NOT_FOUND);
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(hb_monitor_sweep(m), hb_result::HB_OK);
            let mut kinds = Vec::new();
            let mut e = std::mem::MaybeUninit::uninit();
            while hb_monitor_next_event(m, 0, e.as_mut_ptr()) == hb_result::HB_OK {
                kinds.push(e.assume_init_ref().kind);
                hb_event_free(e.as_mut_ptr());
            }
            use hb_event_kind::*;
            assert_eq!(kinds, [HB_EVENT_WARNING, HB_EVENT_TIMED_OUT, HB_EVENT_REMOVED]);
            assert_eq!(hb_monitor_registered_count(m), 0);
            assert_eq!(hb_monitor_registered_count(ptr::null()), 0);
            hb_monitor_free(m);
        }
    }
}
