//! `capi` (feature `capi`): the C ABI's struct and string inputs, called as
//! C would call them. An `hb_monitor_options` and `hb_register_options`
//! built from the input, then session calls with ids that may be NULL, not
//! UTF-8, or cut by a NUL. Every call returns a documented code, never
//! `HB_ERR_PANIC`; a failure writes no output and leaves a message; and
//! the monitor behind the handle agrees with a plain model of the calls.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::ffi::{CStr, CString, c_char};
use std::ptr;

use super::input::Input;
use crate::capi::{
    hb_last_error_message, hb_monitor, hb_monitor_beat, hb_monitor_fail, hb_monitor_free, hb_monitor_new,
    hb_monitor_options, hb_monitor_options_default, hb_monitor_register, hb_monitor_register_with,
    hb_monitor_registered_count, hb_monitor_status, hb_monitor_unregister, hb_register_options, hb_result,
    hb_session_status,
};
use crate::monitor::MAX_TIMEOUT;

/// The most slots an input may ask the event queue for (the library allows
/// 1,048,576; each fuzz run allocating that would be slow, not wrong).
const MAX_CAPACITY: usize = 4096;

/// A string argument: NULL, or bytes up to the first NUL.
enum Arg {
    Null,
    Text(CString),
}

impl Arg {
    fn from(input: &mut Input<'_>) -> Arg {
        let bytes = input.chunk(24);
        if bytes == [0xff] {
            return Arg::Null;
        }
        let cut = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Arg::Text(CString::new(&bytes[..cut]).expect("cut at the first NUL"))
    }

    fn ptr(&self) -> *const c_char {
        match self {
            Arg::Null => ptr::null(),
            Arg::Text(c) => c.as_ptr(),
        }
    }

    /// The id as the library should read it: `None` for NULL or not UTF-8.
    fn text(&self) -> Option<&str> {
        match self {
            Arg::Null => None,
            Arg::Text(c) => c.to_str().ok(),
        }
    }
}

/// A failed call left a message.
fn failed_with_message(code: hb_result) {
    assert_ne!(code, hb_result::HB_ERR_PANIC, "the library panicked: {}", last_error());
    assert!(!last_error().is_empty(), "{code:?} without a message");
}

fn last_error() -> String {
    // SAFETY: hb_last_error_message returns a valid C string of this thread's.
    unsafe { CStr::from_ptr(hb_last_error_message()) }.to_string_lossy().into_owned()
}

pub(crate) fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let mut options = std::mem::MaybeUninit::<hb_monitor_options>::uninit();
    // SAFETY: a writable struct.
    assert_eq!(unsafe { hb_monitor_options_default(options.as_mut_ptr()) }, hb_result::HB_OK);
    // SAFETY: written by the call above, which returned OK.
    let mut o = unsafe { options.assume_init() };
    let flags = input.u16();
    let take = |bit: u16| flags & (1 << bit) != 0;
    if take(0) {
        o.timeout_ms = input.u64();
    }
    if take(1) {
        o.check_interval_ms = input.u64();
    }
    if take(2) {
        o.max_missed_beats = input.u32();
    }
    if take(3) {
        o.detector = input.u32() % 4;
    }
    if take(4) {
        o.phi.threshold = f64::from_bits(input.u64());
        o.phi.warn_threshold = f64::from_bits(input.u64());
    }
    if take(5) {
        o.phi.max_samples = input.u32() as usize;
        o.phi.min_std_deviation_ms = input.u64();
        o.phi.acceptable_pause_ms = input.u64();
        o.phi.expected_interval_ms = input.u64();
    }
    if take(6) {
        let wanted = input.u64() as usize;
        // Past the library's bound (refused), or a small queue.
        o.event_capacity = if wanted > 1 << 20 { wanted } else { wanted % MAX_CAPACITY };
    }
    let options_ptr = if take(7) { ptr::null() } else { &raw const o };
    let sentinel = ptr::dangling_mut::<hb_monitor>();
    let mut monitor = sentinel;
    // SAFETY: options NULL or valid, no callbacks, out writable.
    let code = unsafe { hb_monitor_new(options_ptr, ptr::null(), &mut monitor) };
    if code != hb_result::HB_OK {
        failed_with_message(code);
        assert_eq!(monitor, sentinel, "a failed hb_monitor_new wrote its output");
        assert!(
            options_ptr.is_null() || !valid_options(&o),
            "valid options refused: {o:?}: {}",
            last_error()
        );
        return;
    }
    assert!(!monitor.is_null() && monitor != sentinel);
    assert!(!options_ptr.is_null() && valid_options(&o), "invalid options taken: {o:?}");

    let mut registered = HashSet::new();
    while !input.is_empty() {
        let op = input.u8() % 6;
        let id = Arg::from(&mut input);
        let known = id.text().is_some_and(|id| registered.contains(id));
        // SAFETY (every call below): a live handle, strings NULL or C strings, outputs writable.
        let code = match op {
            0 | 1 => {
                let agent = Arg::from(&mut input);
                let register = hb_register_options {
                    timeout_ms: input.u64() % (MAX_TIMEOUT.as_millis() as u64 * 2),
                    max_missed_beats: u32::from(input.u8()),
                    grace_ms: input.u64() % (MAX_TIMEOUT.as_millis() as u64 * 2),
                };
                let code = if op == 0 {
                    unsafe { hb_monitor_register(monitor, id.ptr(), agent.ptr()) }
                } else {
                    unsafe { hb_monitor_register_with(monitor, id.ptr(), agent.ptr(), &register) }
                };
                let in_range = |ms: u64| ms <= MAX_TIMEOUT.as_millis() as u64;
                let valid = id.text().is_some()
                    && agent.text().is_some()
                    && (op == 0 || (in_range(register.timeout_ms) && in_range(register.grace_ms)));
                assert_eq!(code == hb_result::HB_OK, valid, "register {code:?}: {}", last_error());
                if valid {
                    registered.insert(id.text().expect("valid").to_owned());
                }
                code
            }
            2 => unsafe { hb_monitor_beat(monitor, id.ptr()) },
            3 => unsafe { hb_monitor_fail(monitor, id.ptr()) },
            4 => {
                let code = unsafe { hb_monitor_unregister(monitor, id.ptr()) };
                if let Some(id) = id.text() {
                    registered.remove(id);
                }
                code
            }
            _ => {
                let mut status = std::mem::MaybeUninit::<hb_session_status>::uninit();
                let code = unsafe { hb_monitor_status(monitor, id.ptr(), status.as_mut_ptr()) };
                if code == hb_result::HB_OK {
                    // SAFETY: written on success.
                    let status = unsafe { status.assume_init() };
                    assert!(status.max_missed_beats >= 1 && status.timeout_ms >= 1, "{status:?}");
                }
                code
            }
        };
        if op >= 2 {
            let expected = match (id.text(), known) {
                (None, _) => hb_result::HB_ERR_INVALID_ARGUMENT,
                (Some(_), true) => hb_result::HB_OK,
                (Some(_), false) => hb_result::HB_ERR_NOT_FOUND,
            };
            assert_eq!(code, expected, "op {op}: {}", last_error());
        }
        if code != hb_result::HB_OK {
            failed_with_message(code);
        }
        let count = unsafe { hb_monitor_registered_count(monitor) };
        assert_eq!(count, registered.len(), "the handle and the model disagree");
    }
    // SAFETY: made by hb_monitor_new, no other call in flight.
    unsafe { hb_monitor_free(monitor) };
}

/// The options the C ABI documents as valid: durations in range, at
/// least one miss, a known detector, and phi settings the Rust builder takes.
fn valid_options(o: &hb_monitor_options) -> bool {
    use std::time::Duration;
    let max_ms = MAX_TIMEOUT.as_millis() as u64;
    let ms = |v: u64| (1..=max_ms).contains(&v);
    let base =
        ms(o.timeout_ms) && ms(o.check_interval_ms) && o.max_missed_beats >= 1 && o.event_capacity <= 1 << 20;
    match o.detector {
        0 => base,
        1 => {
            let p = &o.phi;
            let durations = [p.min_std_deviation_ms, p.acceptable_pause_ms, p.expected_interval_ms];
            base && durations.iter().all(|&v| v <= max_ms) && {
                let phi = crate::PhiConfig {
                    threshold: p.threshold,
                    warn_threshold: p.warn_threshold,
                    max_samples: p.max_samples,
                    min_std_deviation: Duration::from_millis(p.min_std_deviation_ms),
                    acceptable_pause: Duration::from_millis(p.acceptable_pause_ms),
                    expected_interval: Duration::from_millis(p.expected_interval_ms),
                    ..crate::PhiConfig::default()
                };
                crate::Monitor::builder()
                    .timeout(Duration::from_millis(o.timeout_ms))
                    .check_interval(Duration::from_millis(o.check_interval_ms))
                    .max_missed_beats(o.max_missed_beats)
                    .detector(crate::Detector::Phi(phi))
                    .build()
                    .is_ok()
            }
        }
        _ => false,
    }
}
