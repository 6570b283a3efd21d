//! The Beater from C: `hb_beater_*`.

use std::ffi::{c_char, c_void};
use std::ptr;

use parking_lot::Mutex;

use super::{
    Creator, Failure, Handle, UserData, c_str, check_pid, free_handle, handle, hb_result, millis, new_handle,
    opt_c_str, out_ptr, owned_c_string, run, write_out,
};
use crate::beater::{BeatGuard, Beater, DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL};

/// One metadata entry: both strings are copied by hb_beater_new.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hb_metadata_entry {
    /// The key, UTF-8.
    pub key: *const c_char,
    /// The value, UTF-8 (written as a JSON string).
    pub value: *const c_char,
}

/// How to build a Beater. Get the defaults from hb_beater_options_default,
/// then set exactly one of state_file and directory. hb_beater_new copies
/// everything it needs: the strings may be freed once it returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hb_beater_options {
    /// Beat into this file. Exactly one of state_file and directory is non-NULL.
    pub state_file: *const c_char,
    /// Beat into heartbeat-PID-UUID.json inside this directory, the naming
    /// directory scanners expect.
    pub directory: *const c_char,
    /// Time between beats in milliseconds, 1000 to 300000 (default 10000).
    pub interval_ms: u64,
    /// metadata_len entries for the file's "metadata" object (NULL when 0).
    pub metadata: *const hb_metadata_entry,
    /// The number of entries in metadata.
    pub metadata_len: usize,
    /// fsync the file and its directory on every beat (default false).
    pub fsync: bool,
    /// Remove the file when the beater stops: negative (the default) means
    /// yes in directory mode and no for a state file; 0 no; positive yes.
    pub remove_on_stop: i32,
    /// Also notify systemd (READY=1, then WATCHDOG=1 each beat) when
    /// NOTIFY_SOCKET is set (default false).
    pub systemd: bool,
}

/// Callbacks, each optional (NULL), all given the same user_data.
///
/// They run on the beater's own thread (named "heartbeat-beater"), never
/// two at once for one beater; hb_beater_beat calls none. user_data is
/// passed to that thread as is: the caller promises whatever it points to
/// may be used from there. A callback may call any hb_ function, including
/// hb_beater_stop on its own beater: the callbacks still due for that beat
/// (is_dead, on_target_dead) run, then the thread ends. It must not call
/// hb_beater_free on its own beater. hb_beater_stop and hb_beater_free
/// called from another thread wait for a running callback to return (do
/// not hold a lock a callback takes while calling them); once they return,
/// no callback runs or will run, and user_data may be released.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hb_beater_callbacks {
    /// After each beat written.
    pub on_beat: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
    /// When a beat could not be written, with the reason (valid during the
    /// call only). The beater goes on beating.
    pub on_missed_beat: Option<unsafe extern "C" fn(message: *const c_char, user_data: *mut c_void)>,
    /// Checked after every beat: whether the thing this process serves is
    /// dead. NULL: there is no target.
    pub is_dead: Option<unsafe extern "C" fn(user_data: *mut c_void) -> bool>,
    /// Called each beat while is_dead returns true.
    pub on_target_dead: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
    /// Given to every callback.
    pub user_data: *mut c_void,
}

/// A Beater: a thread that rewrites this process's heartbeat file every
/// interval. Made by hb_beater_new, released by hb_beater_free. Every
/// function taking it may be called from any thread, several at once,
/// except hb_beater_free: it must be the last call, made once every other
/// call on this beater has returned, in every thread.
pub struct hb_beater {
    creator: Creator,
    beater: Beater,
    /// The guard of the running thread: start stores it, stop and free drop it.
    guard: Mutex<Option<BeatGuard>>,
    /// Serializes start (check, reap, start, store).
    starting: Mutex<()>,
}

impl Handle for hb_beater {
    const NAME: &'static str = "beater";
    fn creator(&self) -> Creator {
        self.creator
    }
}

/// Fills `*out` with the defaults: no file yet, 10000 ms, no metadata, no
/// fsync, remove_on_stop by mode (-1), no systemd.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_options_default(out: *mut hb_beater_options) -> hb_result {
    run(|| {
        let out = out_ptr(out, "out")?;
        let defaults = hb_beater_options {
            state_file: ptr::null(),
            directory: ptr::null(),
            interval_ms: super::to_millis(DEFAULT_INTERVAL),
            metadata: ptr::null(),
            metadata_len: 0,
            fsync: false,
            remove_on_stop: -1,
            systemd: false,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, defaults) };
        Ok(())
    })
}

/// Makes a Beater (not started) from `options` and `callbacks` (NULL: none),
/// in `*out`. Nothing is written yet.
///
/// Errors: HB_ERR_INVALID_ARGUMENT (NULL, not UTF-8, both or neither of
/// state_file and directory, interval out of range, a state file that is a
/// directory, NOTIFY_SOCKET unusable).
///
/// # Safety
/// `options` is NULL or points to an hb_beater_options whose strings and
/// metadata array are valid for the call; `callbacks` likewise or NULL;
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_new(
    options: *const hb_beater_options,
    callbacks: *const hb_beater_callbacks,
    out: *mut *mut hb_beater,
) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a valid options struct or NULL.
        let o = unsafe { options.as_ref() }.ok_or_else(|| Failure::invalid("options is NULL"))?;
        // SAFETY: the caller passes a valid callbacks struct or NULL.
        let cb = unsafe { callbacks.as_ref() }.copied();
        let out = out_ptr(out, "out")?;

        let mut b = Beater::builder();
        // SAFETY: the caller promises the option strings are C strings or NULL.
        let (file, dir) = unsafe {
            (opt_c_str(o.state_file, "options.state_file")?, opt_c_str(o.directory, "options.directory")?)
        };
        b = match (file, dir) {
            (Some(f), None) => b.state_file(f),
            (None, Some(d)) => b.directory(d),
            _ => {
                return Err(Failure::invalid(
                    "exactly one of options.state_file and options.directory must be set",
                ));
            }
        };
        b = b.interval(millis(o.interval_ms, "options.interval_ms", MIN_INTERVAL, MAX_INTERVAL)?);
        if o.metadata_len > 0 {
            if o.metadata.is_null() {
                return Err(Failure::invalid("options.metadata is NULL but options.metadata_len is not 0"));
            }
            // A length no array can have (a -1 cast to size_t, say) is
            // refused before it reaches from_raw_parts.
            if o.metadata_len > isize::MAX as usize / std::mem::size_of::<hb_metadata_entry>() {
                return Err(Failure::invalid(format!(
                    "options.metadata_len {} is too large",
                    o.metadata_len
                )));
            }
            // SAFETY: the caller promises metadata points to metadata_len entries.
            let entries = unsafe { std::slice::from_raw_parts(o.metadata, o.metadata_len) };
            for (i, e) in entries.iter().enumerate() {
                // SAFETY: the caller promises C strings or NULL.
                let key = unsafe { c_str(e.key, &format!("options.metadata[{i}].key")) }?;
                // SAFETY: as above.
                let value = unsafe { c_str(e.value, &format!("options.metadata[{i}].value")) }?;
                b = b.metadata(key, value);
            }
        }
        b = b.fsync(o.fsync).systemd(o.systemd);
        if o.remove_on_stop >= 0 {
            b = b.remove_on_stop(o.remove_on_stop > 0);
        }
        if let Some(cb) = cb {
            let ud = UserData(cb.user_data);
            if let Some(f) = cb.on_beat {
                // SAFETY (of the call): a C function pointer and the user_data registered with it.
                b = b.on_beat(move || unsafe { f(ud.get()) });
            }
            if let Some(f) = cb.on_missed_beat {
                b = b.on_missed_beat(move |e| {
                    let msg = std::ffi::CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
                    // SAFETY: as above; the message lives for the call.
                    unsafe { f(msg.as_ptr(), ud.get()) }
                });
            }
            if let Some(f) = cb.is_dead {
                // SAFETY: as above.
                b = b.target(move || unsafe { f(ud.get()) });
            }
            if let Some(f) = cb.on_target_dead {
                // SAFETY: as above.
                b = b.on_target_dead(move || unsafe { f(ud.get()) });
            }
        }
        let beater = b.build()?;
        let h = new_handle(hb_beater {
            creator: Creator::current(),
            beater,
            guard: Mutex::new(None),
            starting: Mutex::new(()),
        });
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, h) };
        Ok(())
    })
}

/// Starts the beat thread; the first beat is on disk when this returns
/// (a failure of it goes to on_missed_beat; call hb_beater_beat first to
/// fail fast). Errors: HB_ERR_ALREADY_RUNNING, HB_ERR_IO (no thread),
/// HB_ERR_FORKED, HB_ERR_INVALID_ARGUMENT (NULL).
///
/// # Safety
/// `beater` is NULL or a live handle from hb_beater_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_start(beater: *const hb_beater) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(beater) }?;
        // From its own callback: it runs, and `starting` may be held by a
        // thread waiting for this callback to end.
        if h.beater.on_beat_thread() {
            return Err(crate::Error::AlreadyRunning.into());
        }
        let _one_at_a_time = h.starting.lock();
        if h.beater.is_running() {
            return Err(crate::Error::AlreadyRunning.into());
        }
        // A thread that stopped itself from a callback left its guard: drop
        // it (reaping the thread) before a new one starts.
        let old = h.guard.lock().take();
        drop(old);
        let guard = h.beater.start()?;
        *h.guard.lock() = Some(guard);
        Ok(())
    })
}

/// Writes one beat now, on the calling thread, whether or not the thread
/// runs; no callback is called, the error is returned instead.
/// Errors: HB_ERR_IO, HB_ERR_FORKED, HB_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `beater` is NULL or a live handle from hb_beater_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_beat(beater: *const hb_beater) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(beater) }?;
        h.beater.beat()?;
        Ok(())
    })
}

/// Stops the beat thread and waits for its current beat; never waits out an
/// interval. With remove_on_stop the file is gone when this returns. Safe
/// when not running; may be started again. From one of its own callbacks it
/// asks the thread to end after the callback.
/// Errors: HB_ERR_FORKED, HB_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `beater` is NULL or a live handle from hb_beater_new.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_stop(beater: *const hb_beater) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(beater) }?;
        // Stop (and join) without holding the guard's lock, which a callback
        // calling hb_beater_stop may need meanwhile.
        h.beater.stop();
        let guard = h.guard.lock().take();
        drop(guard);
        Ok(())
    })
}

/// The heartbeat file's path (in directory mode the heartbeat-PID-UUID.json
/// inside it), in `*out_path`, released with hb_string_free.
///
/// # Safety
/// `beater` is NULL or a live handle from hb_beater_new; `out_path` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_state_file(
    beater: *const hb_beater,
    out_path: *mut *mut c_char,
) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(beater) }?;
        let out = out_ptr(out_path, "out_path")?;
        let path = h.beater.state_file().ok_or_else(|| Failure::invalid("the beater writes no file"))?;
        let path = path.to_str().ok_or_else(|| Failure::invalid("the state file's path is not UTF-8"))?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, owned_c_string(path)) };
        Ok(())
    })
}

/// This process run's uuid as written in the file, in `*out_uuid`,
/// released with hb_string_free.
///
/// # Safety
/// `beater` is NULL or a live handle from hb_beater_new; `out_uuid` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_uuid(beater: *const hb_beater, out_uuid: *mut *mut c_char) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a live handle or NULL.
        let h = unsafe { handle(beater) }?;
        let out = out_ptr(out_uuid, "out_uuid")?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, owned_c_string(h.beater.uuid())) };
        Ok(())
    })
}

/// Stops the beater (as hb_beater_stop) and releases it. NULL is a no-op.
/// In a forked child, a beater made by the parent is only forgotten (its
/// thread does not exist there): no wait, no file removed. Must not be
/// called from the beater's own callbacks.
///
/// # Safety
/// `beater` is NULL or a live handle from hb_beater_new, not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_beater_free(beater: *mut hb_beater) {
    let _ = super::catch(|| {
        // SAFETY: forwarded from the caller.
        if let Some(h) = unsafe { beater.as_ref() }
            && check_pid(h.creator, "beater").is_ok()
        {
            h.beater.stop();
        }
        // SAFETY: forwarded from the caller; forgets a handle of another process.
        unsafe { free_handle(beater) };
        Ok(())
    });
}
