//! Heartbeat files from C: judge, read and write one.

use std::ffi::c_char;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::{
    Failure, c_str, catch, hb_result, millis, opt_c_str, out_ptr, owned_c_string, run, set_last_error,
    to_millis, write_out,
};
use crate::beater::{MAX_INTERVAL, MIN_INTERVAL};
use crate::error::Error;
use crate::state::{HeartbeatState, WriteOptions, age, read_state, write_state};

/// The largest max_age_ms accepted (ten years): anything larger is most
/// likely a negative number cast to unsigned.
const MAX_AGE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Whether the heartbeat file at `path` was beaten at most `max_age_ms` ago.
///
/// False when the file is missing, unreadable, corrupt, stale or dated in the
/// future (clock skew), and on a bad argument; hb_last_error_message then
/// says why (a stale file leaves a message too). Any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_is_alive(path: *const c_char, max_age_ms: u64) -> bool {
    catch(|| {
        // SAFETY: the caller passes a C string or NULL.
        let path = unsafe { c_str(path, "path") }?;
        let max_age = millis(max_age_ms, "max_age_ms", Duration::ZERO, MAX_AGE)?;
        let age = age(path, SystemTime::now())?;
        if age > max_age {
            set_last_error(&format!(
                "heartbeat file {path} is {} ms old, more than {max_age_ms} ms",
                to_millis(age)
            ));
            return Ok(false);
        }
        Ok(true)
    })
    .unwrap_or(false)
}

/// The age in milliseconds of the heartbeat file at `path`: its last beat's
/// distance from now, written to `*out_ms` on success.
///
/// Errors: HB_ERR_NOT_FOUND, HB_ERR_IO, HB_ERR_BAD_FILE, HB_ERR_CLOCK_SKEW,
/// HB_ERR_INVALID_ARGUMENT. Any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out_ms` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_age_ms(path: *const c_char, out_ms: *mut u64) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a C string or NULL.
        let path = unsafe { c_str(path, "path") }?;
        let out = out_ptr(out_ms, "out_ms")?;
        let age = age(path, SystemTime::now())?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, to_millis(age)) };
        Ok(())
    })
}

/// Reads the heartbeat file at `path` and gives it back as the library's
/// JSON (all fields it knows, normalized), in `*out_json`, to be released
/// with hb_string_free.
///
/// Errors: HB_ERR_NOT_FOUND, HB_ERR_IO, HB_ERR_BAD_FILE, HB_ERR_INVALID_ARGUMENT.
/// Any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_read_state_json(path: *const c_char, out_json: *mut *mut c_char) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a C string or NULL.
        let path = unsafe { c_str(path, "path") }?;
        let out = out_ptr(out_json, "out_json")?;
        let json = read_state(path)?.to_json();
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, owned_c_string(json)) };
        Ok(())
    })
}

/// Writes one beat of the calling process to `path`, atomically: a one-shot
/// beat (a cron job, a script's last step). Each call is a new process run
/// to readers: a new uuid, `started_at` now; a process that beats from its
/// own loop should use a Beater (hb_beater_beat for beats on its own
/// schedule), whose uuid and start time stay. `metadata_json` is NULL or a JSON object; `interval_ms`
/// (1000 to 300000) is the interval readers are told to expect.
///
/// Errors: HB_ERR_INVALID_ARGUMENT (also for metadata that is not a JSON
/// object), HB_ERR_IO. Any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; so is `metadata_json`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_write_state(
    path: *const c_char,
    metadata_json: *const c_char,
    interval_ms: u64,
) -> hb_result {
    run(|| {
        // SAFETY: the caller passes C strings or NULL.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: as above.
        let metadata = match unsafe { opt_c_str(metadata_json, "metadata_json") }? {
            None => Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(Failure::invalid("metadata_json is not a JSON object")),
                Err(e) => return Err(Failure::invalid(format!("metadata_json is not JSON: {e}"))),
            },
        };
        let interval = millis(interval_ms, "interval_ms", MIN_INTERVAL, MAX_INTERVAL)?;
        let path = Path::new(path);
        if path.is_dir() {
            return Err(Error::InvalidConfig(format!("state file {} is a directory", path.display())).into());
        }
        let state = HeartbeatState::for_current_process(SystemTime::now(), interval, metadata);
        write_state(path, &state, WriteOptions::default())?;
        Ok(())
    })
}
