//! The C ABI (`capi` feature): `include/heartbeat.h` is generated from this
//! module by cbindgen (`HEARTBEAT_BLESS=1 cargo test --test capi_header`).
//!
//! The libraries are built with
//! `cargo rustc --release --lib --features capi --crate-type staticlib`
//! (`libheartbeat.a`) and `--crate-type cdylib` (`libheartbeat.so`), or with
//! cargo-c (`cargo cinstall --release --features capi`).
//!
//! # Conventions (those of rustls-ffi and regex-capi)
//! - Every fallible function returns an [`hb_result`], writes its outputs
//!   only on success, and leaves a message for `hb_last_error_message`
//!   (thread-local; cleared at the start of every call).
//! - Handles are made by `hb_*_new` and released by `hb_*_free`; free of
//!   NULL is a no-op. Each handle records the pid that made it: a call from
//!   another process (a `fork` child) is `HB_ERR_FORKED`, and free there
//!   forgets the handle without touching it.
//! - No panic crosses the boundary: [`run`] and [`catch`] wrap every entry point.
//!
//! # Adding an entry point
//! ```text
//! #[unsafe(no_mangle)]
//! pub unsafe extern "C" fn hb_thing_do(thing: *const hb_thing, name: *const c_char) -> hb_result {
//!     run(|| {
//!         // SAFETY: the caller passes a handle from hb_thing_new and a C string or NULL.
//!         let thing = unsafe { handle(thing) }?;
//!         let name = unsafe { c_str(name, "name") }?;
//!         thing.inner.do_it(name)?; // crate::Error converts into a Failure
//!         Ok(())
//!     })
//! }
//! ```
//! A handle type implements [`Handle`] (its name and creating pid); make it
//! with [`new_handle`] and release it with [`free_handle`].
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

mod beater;
mod files;
mod monitor;
mod scanner;

pub use beater::*;
pub use files::*;
pub use monitor::*;
pub use scanner::*;

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::Error;

/// The result of every fallible call. The numeric values are fixed and never
/// reused; `hb_last_error_message` says more.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hb_result {
    /// Success.
    HB_OK = 0,
    /// A NULL pointer, a string that is not UTF-8, a duration out of range,
    /// or a configuration the library rejects.
    HB_ERR_INVALID_ARGUMENT = 1,
    /// The operating system refused a read, write, rename or thread.
    HB_ERR_IO = 2,
    /// The heartbeat file does not exist, or the Monitor has no session of
    /// that id.
    HB_ERR_NOT_FOUND = 3,
    /// Start was called on something that is already running.
    HB_ERR_ALREADY_RUNNING = 4,
    /// Start was called after a shutdown.
    HB_ERR_SHUT_DOWN = 5,
    /// A wait ended without a result (the Monitor's event poll: no event
    /// within the timeout).
    HB_ERR_TIMEOUT = 6,
    /// The handle was made by another process: handles do not survive fork().
    HB_ERR_FORKED = 7,
    /// The library panicked; the message says where. A bug: please report it.
    HB_ERR_PANIC = 8,
    /// A heartbeat file exists but is not a valid heartbeat (not JSON, a field
    /// missing or of the wrong type).
    HB_ERR_BAD_FILE = 9,
    /// A heartbeat file is dated in the future beyond the tolerated skew: its
    /// age is unknown.
    HB_ERR_CLOCK_SKEW = 10,
}

/// A failed call: its code and its message.
#[derive(Debug)]
pub struct Failure {
    /// The code returned to C.
    pub code: hb_result,
    /// The text `hb_last_error_message` gives.
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: hb_result, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }

    /// `HB_ERR_INVALID_ARGUMENT` with this message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(hb_result::HB_ERR_INVALID_ARGUMENT, message)
    }
}

/// The code for each of the crate's errors (a new variant must be mapped here).
pub fn code_of(e: &Error) -> hb_result {
    use hb_result::*;
    match e {
        Error::Io(_) | Error::Write { .. } | Error::Unreadable { .. } | Error::Directory { .. } => HB_ERR_IO,
        Error::NotFound { .. } => HB_ERR_NOT_FOUND,
        Error::NotJson { .. }
        | Error::DuplicateKey { .. }
        | Error::MissingField { .. }
        | Error::InvalidField { .. } => HB_ERR_BAD_FILE,
        Error::ClockSkew { .. } => HB_ERR_CLOCK_SKEW,
        Error::AlreadyRunning | Error::Locked { .. } => HB_ERR_ALREADY_RUNNING,
        Error::TakenOver { .. } => HB_ERR_IO,
        Error::Etcd { .. } => HB_ERR_IO,
        Error::ShutDown => HB_ERR_SHUT_DOWN,
        Error::InvalidConfig(_) => HB_ERR_INVALID_ARGUMENT,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(code_of(&e), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Sets this thread's last error message (interior NULs become spaces).
///
/// Thread-locals are reached with `try_with` everywhere: after this thread's
/// are destroyed (an `atexit` handler, a C++ static's destructor, a pthread
/// key destructor calling in), the message is lost, never a panic into C.
pub fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = c;
        }
    });
}

fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut()
            && !e.is_empty()
        {
            *e = CString::default();
        }
    });
}

/// Runs an entry point's body: clears the last error, catches a panic
/// (`HB_ERR_PANIC`, with the panic's message), and records the message of a
/// failure. `Ok` carries the body's value, `Err` the code to return.
pub fn catch<T>(body: impl FnOnce() -> Result<T, Failure>) -> Result<T, hb_result> {
    clear_last_error();
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(failure)) => failure,
        Err(payload) => {
            let what = crate::ticker::panic_message(&*payload);
            let failure = Failure::new(hb_result::HB_ERR_PANIC, format!("heartbeat panicked: {what}"));
            // A payload whose drop panics again must not unwind into C.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            failure
        }
    };
    set_last_error(&failure.message);
    Err(failure.code)
}

/// [`catch`] for the usual entry point that returns an [`hb_result`].
pub fn run(body: impl FnOnce() -> Result<(), Failure>) -> hb_result {
    match catch(body) {
        Ok(()) => hb_result::HB_OK,
        Err(code) => code,
    }
}

/// A NUL-terminated UTF-8 argument, borrowed; `param` names it in errors.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub unsafe fn c_str<'a>(ptr: *const c_char, param: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{param} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string valid for 'a.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|e| Failure::invalid(format!("{param} is not valid UTF-8: {e}")))
}

/// [`c_str`] where NULL means "none".
///
/// # Safety
/// As for [`c_str`].
pub unsafe fn opt_c_str<'a>(ptr: *const c_char, param: &str) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { c_str(ptr, param) }.map(Some)
}

/// Checks an out-pointer is not NULL. Write it with [`write_out`], and only
/// once the call has succeeded.
pub fn out_ptr<T>(ptr: *mut T, param: &str) -> Result<NonNull<T>, Failure> {
    NonNull::new(ptr).ok_or_else(|| Failure::invalid(format!("{param} is NULL")))
}

/// Writes a result through an out-pointer checked by [`out_ptr`].
///
/// # Safety
/// `out` is valid for a write of a `T` (the caller's promise for the argument).
pub unsafe fn write_out<T>(out: NonNull<T>, value: T) {
    // SAFETY: forwarded from the caller; `write` does not drop the old (possibly uninitialized) value.
    unsafe { out.as_ptr().write(value) }
}

/// Milliseconds as a `Duration`, refused (naming `param`) outside `[min, max]`.
pub fn millis(ms: u64, param: &str, min: Duration, max: Duration) -> Result<Duration, Failure> {
    let d = Duration::from_millis(ms);
    if d < min || d > max {
        return Err(Failure::invalid(format!(
            "{param} = {ms} ms is out of range [{}, {}] ms",
            min.as_millis(),
            max.as_millis()
        )));
    }
    Ok(d)
}

/// A duration in whole milliseconds, saturating.
pub fn to_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An owned C string for the caller, released with `hb_string_free`
/// (interior NULs become spaces).
pub fn owned_c_string(s: impl Into<String>) -> *mut c_char {
    let s: String = s.into();
    let c = CString::new(s).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.iter_mut().filter(|b| **b == 0).for_each(|b| *b = b' ');
        CString::new(bytes).expect("no NUL left")
    });
    c.into_raw()
}

/// The caller's user_data, carried to the thread that runs its callbacks.
#[derive(Clone, Copy)]
pub struct UserData(pub *mut c_void);

// SAFETY: the header documents on which thread each callback runs and that
// the caller promises user_data may be used there; the library never
// dereferences it.
unsafe impl Send for UserData {}
// SAFETY: as above; it is only copied and handed back to the caller's callbacks.
unsafe impl Sync for UserData {}

impl UserData {
    /// Through a method, so closures capture the whole `Send` wrapper, not the raw field.
    pub fn get(self) -> *mut c_void {
        self.0
    }
}

/// A string borrowed by a callback for the duration of the call (interior
/// NULs, impossible in strings that came from C, become spaces).
pub fn callback_c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// The process image that made a handle: its pid and how many forks it
/// came through (counted by a `pthread_atfork` child handler), so that a child whose pid
/// happens to be its exited parent's is still told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creator {
    pid: u32,
    forks: u64,
}

impl Creator {
    /// This process image.
    pub fn current() -> Creator {
        Creator { pid: std::process::id(), forks: crate::sys::fork_generation() }
    }
}

/// A handle given to C: it knows its name (for messages) and the process that made it.
pub trait Handle {
    /// The parameter name in messages, e.g. `beater`.
    const NAME: &'static str;
    /// The process image that made the handle.
    fn creator(&self) -> Creator;
}

/// Fails with `HB_ERR_FORKED` when `creator` is not this process image.
pub fn check_pid(creator: Creator, what: &str) -> Result<(), Failure> {
    let me = Creator::current();
    if creator == me {
        return Ok(());
    }
    let (creator, me) = (creator.pid, me.pid);
    Err(Failure::new(
        hb_result::HB_ERR_FORKED,
        format!(
            "this {what} was made by process {creator}, not by this one ({me}): handles do not survive \
             fork(); make and start Beaters and Monitors after forking (hb_*_free is still allowed)"
        ),
    ))
}

/// Boxes a handle for C.
pub fn new_handle<T: Handle>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Borrows a handle passed by C: not NULL, and made by this process.
///
/// # Safety
/// `ptr` is NULL or a pointer from [`new_handle`] not yet given to [`free_handle`].
pub unsafe fn handle<'a, T: Handle>(ptr: *const T) -> Result<&'a T, Failure> {
    // SAFETY: the caller promises a live handle or NULL.
    let h = unsafe { ptr.as_ref() }.ok_or_else(|| Failure::invalid(format!("{} is NULL", T::NAME)))?;
    check_pid(h.creator(), T::NAME)?;
    Ok(h)
}

/// Releases a handle: NULL is a no-op; a handle made by another process (a
/// `fork` child's copy) is forgotten, never dropped, since its threads and
/// locks belong to the parent.
///
/// # Safety
/// As for [`handle`]; the pointer is not used again.
pub unsafe fn free_handle<T: Handle>(ptr: *mut T) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: a live handle from new_handle (the caller's promise).
    let mine = unsafe { &*ptr }.creator() == Creator::current();
    if mine {
        // SAFETY: made by Box::into_raw in new_handle and released only here.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// The text of the last error on this thread: valid until the next `hb_`
/// call on this thread. An empty string (never NULL) when the last call
/// succeeded. Calls made while the thread or process exits (an `atexit`
/// handler, a C++ static destructor) work, but their messages are lost.
#[unsafe(no_mangle)]
pub extern "C" fn hb_last_error_message() -> *const c_char {
    LAST_ERROR
        .try_with(|e| match e.try_borrow() {
            Ok(e) => e.as_ptr(),
            Err(_) => c"".as_ptr(),
        })
        // This thread's storage is gone (the process or thread is exiting).
        .unwrap_or(c"error message unavailable: this thread is exiting".as_ptr())
}

/// The library's version, e.g. "0.1.0": a static string, never freed.
#[unsafe(no_mangle)]
pub extern "C" fn hb_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the version has no NUL"),
        };
    clear_last_error();
    VERSION.as_ptr()
}

/// Releases a string the library returned (e.g. from hb_read_state_json).
/// NULL is a no-op.
///
/// # Safety
/// `s` is NULL or a string from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_string_free(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    let _ = catch(|| {
        // SAFETY: made by CString::into_raw in owned_c_string (the caller's promise).
        drop(unsafe { CString::from_raw(s) });
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: hb_last_error_message never returns NULL and the string lives until the next call.
        unsafe { CStr::from_ptr(hb_last_error_message()) }.to_str().unwrap().to_owned()
    }

    #[test]
    fn a_panic_is_caught_with_its_message() {
        let code = run(|| panic!("boom {}", 42));
        assert_eq!(code, hb_result::HB_ERR_PANIC);
        assert_eq!(last(), "heartbeat panicked: boom 42");
        assert_eq!(run(|| Ok(())), hb_result::HB_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn errors_map_to_codes_and_messages() {
        let code = run(|| Err(Error::NotFound { path: "/x.json".into() }.into()));
        assert_eq!(code, hb_result::HB_ERR_NOT_FOUND);
        assert_eq!(last(), "heartbeat file /x.json does not exist");
        // SAFETY: NULL is allowed.
        let e = unsafe { c_str(std::ptr::null(), "path") }.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (hb_result::HB_ERR_INVALID_ARGUMENT, "path is NULL"));
        let bad = c"\xff";
        // SAFETY: a valid C string.
        let e = unsafe { c_str(bad.as_ptr(), "path") }.unwrap_err();
        assert!(e.message.starts_with("path is not valid UTF-8"), "{}", e.message);
        let e = millis(5, "interval_ms", Duration::from_secs(1), Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.message, "interval_ms = 5 ms is out of range [1000, 2000] ms");
        let e = check_pid(Creator { pid: std::process::id() + 1, forks: 0 }, "beater").unwrap_err();
        let same_pid_later_fork = Creator { forks: Creator::current().forks + 1, ..Creator::current() };
        assert!(check_pid(same_pid_later_fork, "beater").is_err(), "a later fork with the same pid");
        assert_eq!(e.code, hb_result::HB_ERR_FORKED);
    }

    #[test]
    fn owned_strings_round_trip() {
        let s = owned_c_string("a\0b");
        // SAFETY: just made, freed once below.
        assert_eq!(unsafe { CStr::from_ptr(s) }.to_str().unwrap(), "a b");
        // SAFETY: from owned_c_string.
        unsafe { hb_string_free(s) };
        // SAFETY: NULL is a no-op.
        unsafe { hb_string_free(std::ptr::null_mut()) };
        // SAFETY: static.
        let v = unsafe { CStr::from_ptr(hb_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
