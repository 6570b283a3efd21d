//! The Scanner from C: `hb_scan`, `hb_scan_free`, `hb_scanner_is_active`.

use std::ffi::{CString, c_char};
use std::ptr;
use std::time::Duration;

use super::{Failure, c_str, catch, hb_result, millis, out_ptr, owned_c_string, run, write_out};
use crate::monitor::MAX_TIMEOUT;
use crate::scanner::{DEFAULT_STALE_AFTER, ScanEntry, ScanStatus, Scanner};

/// What a scan makes of one heartbeat file.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hb_scan_status {
    /// Beaten within stale_after_ms by a process that is still running.
    HB_SCAN_FRESH = 0,
    /// Not beaten within stale_after_ms, whether or not its pid lives.
    HB_SCAN_STALE = 1,
    /// Recent, but its writer is gone: the pid is dead, was given to another
    /// process, or belongs to an earlier boot.
    HB_SCAN_ORPHAN = 2,
    /// Recent, written on another host: judged by age alone.
    HB_SCAN_REMOTE = 3,
    /// Dated in the future beyond the tolerated clock skew: its age is unknown.
    HB_SCAN_SKEWED = 4,
}

impl From<ScanStatus> for hb_scan_status {
    fn from(s: ScanStatus) -> Self {
        match s {
            ScanStatus::Fresh => hb_scan_status::HB_SCAN_FRESH,
            ScanStatus::Stale => hb_scan_status::HB_SCAN_STALE,
            ScanStatus::Orphan => hb_scan_status::HB_SCAN_ORPHAN,
            ScanStatus::Remote => hb_scan_status::HB_SCAN_REMOTE,
            ScanStatus::Skewed => hb_scan_status::HB_SCAN_SKEWED,
        }
    }
}

/// One heartbeat file as hb_scan found it. Its strings belong to the array
/// and are released by hb_scan_free.
#[repr(C)]
#[derive(Debug)]
pub struct hb_scan_entry {
    /// The file's path.
    pub path: *const c_char,
    /// The writer's pid, from the file (or its name when the contents are
    /// unusable). Zero or negative means no process can have it (ORPHAN).
    pub pid: i64,
    /// The verdict.
    pub status: hb_scan_status,
    /// Seconds since the last beat; NaN when it lies in the future (SKEWED).
    pub age_sec: f64,
    /// The writer's run id, NULL if none.
    pub uuid: *const c_char,
    /// The writer's host, NULL if the file names none.
    pub hostname: *const c_char,
}

/// Arrays hb_scan returned and hb_scan_free has not released, with their
/// lengths: a mismatched length or a second free is refused.
static LIVE_SCANS: parking_lot::Mutex<Option<hashbrown::HashMap<usize, usize>>> =
    parking_lot::Mutex::new(None);

/// The stale threshold: 0 means the library's default.
fn stale_after(ms: u64) -> Result<Duration, Failure> {
    match ms {
        0 => Ok(DEFAULT_STALE_AFTER),
        ms => millis(ms, "stale_after_ms", Duration::from_millis(1), MAX_TIMEOUT),
    }
}

/// A scanner of `dir` with this threshold.
fn scanner(dir: &str, stale_after_ms: u64) -> Result<Scanner, Failure> {
    Ok(Scanner::builder(dir).stale_after(stale_after(stale_after_ms)?).build()?)
}

fn opt_owned(s: Option<String>) -> *const c_char {
    s.filter(|s| !s.is_empty()).map_or(ptr::null(), |s| owned_c_string(s).cast_const())
}

fn to_c_entry(e: ScanEntry) -> Result<hb_scan_entry, Failure> {
    // A path is bytes to C, as to the kernel: a name that is not UTF-8 (any
    // user who can write to a shared directory can make one) is passed as
    // it is, never a reason to fail the whole scan. It cannot hold a NUL.
    use std::os::unix::ffi::OsStringExt;
    let path = CString::new(e.path.into_os_string().into_vec())
        .map_err(|_| Failure::invalid("a heartbeat file's path holds a NUL byte"))?;
    Ok(hb_scan_entry {
        path: path.into_raw().cast_const(),
        pid: e.pid,
        status: e.status.into(),
        age_sec: e.age.map_or(f64::NAN, |a| a.as_secs_f64()),
        uuid: opt_owned(Some(e.uuid)),
        hostname: opt_owned(e.hostname),
    })
}

/// Releases the strings of one entry.
///
/// # Safety
/// Its pointers are NULL or from owned_c_string, not yet freed.
unsafe fn free_entry(e: &hb_scan_entry) {
    for s in [e.path, e.uuid, e.hostname] {
        if !s.is_null() {
            // SAFETY: made by CString::into_raw in owned_c_string.
            drop(unsafe { CString::from_raw(s.cast_mut()) });
        }
    }
}

/// Scans `dir` once: every heartbeat-*.json in it, judged FRESH, STALE
/// (older than `stale_after_ms`; 0 means the default, 90000), ORPHAN,
/// REMOTE or SKEWED. The entries are written to `*out_entries` (NULL when
/// there are none) and their number to `*out_len`; release them with
/// hb_scan_free(entries, len). A missing directory is an empty scan; files
/// that cannot be judged (symlinks, unreadable) are left out. Any thread.
///
/// Errors: HB_ERR_IO (the directory cannot be listed),
/// HB_ERR_INVALID_ARGUMENT (NULL, not UTF-8, stale_after_ms over 365 days).
/// A file's `path` is its bytes, as the file system has them: not always
/// UTF-8.
///
/// # Safety
/// `dir` is NULL or a C string; the out-pointers are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_scan(
    dir: *const c_char,
    stale_after_ms: u64,
    out_entries: *mut *mut hb_scan_entry,
    out_len: *mut usize,
) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a C string or NULL.
        let dir = unsafe { c_str(dir, "dir") }?;
        let out_entries = out_ptr(out_entries, "out_entries")?;
        let out_len = out_ptr(out_len, "out_len")?;
        let scan = scanner(dir, stale_after_ms)?.scan()?;
        let mut entries = Vec::with_capacity(scan.entries.len());
        for e in scan.entries {
            match to_c_entry(e) {
                Ok(c) => entries.push(c),
                Err(failure) => {
                    // SAFETY: each made just above, freed once.
                    entries.iter().for_each(|e| unsafe { free_entry(e) });
                    return Err(failure);
                }
            }
        }
        let len = entries.len();
        let array = if len == 0 {
            ptr::null_mut()
        } else {
            Box::into_raw(entries.into_boxed_slice()).cast::<hb_scan_entry>()
        };
        if !array.is_null() {
            LIVE_SCANS.lock().get_or_insert_with(hashbrown::HashMap::new).insert(array as usize, len);
        }
        // SAFETY: checked non-NULL; the caller promises they are writable.
        unsafe {
            write_out(out_entries, array);
            write_out(out_len, len);
        }
        Ok(())
    })
}

/// Releases what hb_scan returned: `entries` and its `len` entries'
/// strings. NULL is a no-op. An array hb_scan did not return, one already
/// released, or a `len` other than the one it returned is refused (nothing
/// freed; the message says why), never undefined behaviour.
///
/// # Safety
/// `entries` is NULL or an array from hb_scan, not yet freed, with the `len` it returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_scan_free(entries: *mut hb_scan_entry, len: usize) {
    if entries.is_null() {
        return;
    }
    let _ = catch(|| {
        // The length hb_scan returned, not the caller's: a wrong `len`, or
        // an array freed twice or not from hb_scan, is refused, never freed.
        let known = {
            let mut live = LIVE_SCANS.lock();
            let live = live.get_or_insert_with(hashbrown::HashMap::new);
            // Removed only when the length matches: a wrong one leaves the
            // array for the right call.
            match live.get(&(entries as usize)) {
                Some(&known) if known == len => live.remove(&(entries as usize)),
                _ => None,
            }
        };
        let Some(len) = known else {
            return Err(Failure::invalid(format!(
                "hb_scan_free: {entries:p} with len {len} is not an array hb_scan returned and not yet freed"
            )));
        };
        // SAFETY: made by Box::into_raw of a boxed slice of `len` entries in
        // hb_scan, and not freed before (it was still in LIVE_SCANS).
        let array = unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(entries, len)) };
        // SAFETY: each entry's strings are freed once, here.
        array.iter().for_each(|e| unsafe { free_entry(e) });
        Ok(())
    });
}

/// Whether at least one heartbeat file in `dir` is FRESH now (a new scan,
/// as hb_scan with the same `stale_after_ms`), in `*out`. Any thread.
/// Errors: as hb_scan.
///
/// # Safety
/// `dir` is NULL or a C string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hb_scanner_is_active(
    dir: *const c_char,
    stale_after_ms: u64,
    out: *mut bool,
) -> hb_result {
    run(|| {
        // SAFETY: the caller passes a C string or NULL.
        let dir = unsafe { c_str(dir, "dir") }?;
        let out = out_ptr(out, "out")?;
        let active = scanner(dir, stale_after_ms)?.is_active()?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, active) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_scans_to_null_and_is_not_active() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let (mut entries, mut len, mut active) = (ptr::dangling_mut(), 7usize, true);
        // SAFETY: valid arguments.
        unsafe {
            assert_eq!(hb_scan(path.as_ptr(), 0, &mut entries, &mut len), hb_result::HB_OK);
            assert!(entries.is_null());
            assert_eq!(len, 0);
            hb_scan_free(entries, len);
            assert_eq!(hb_scanner_is_active(path.as_ptr(), 1000, &mut active), hb_result::HB_OK);
            assert!(!active);
            assert_eq!(hb_scan(ptr::null(), 0, &mut entries, &mut len), hb_result::HB_ERR_INVALID_ARGUMENT);
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_passed_as_bytes_and_frees_are_checked() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let name = format!("heartbeat-{}-", std::process::id()).into_bytes();
        let name = [&name[..], b"\xff.json"].concat();
        let file = dir.path().join(std::ffi::OsStr::from_bytes(&name));
        let state = crate::HeartbeatState::for_current_process(
            std::time::SystemTime::now(),
            Duration::from_secs(10),
            serde_json::Map::new(),
        );
        crate::write_state(&file, &state, crate::WriteOptions::default()).unwrap();
        let path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let (mut entries, mut len) = (ptr::null_mut(), 0usize);
        // SAFETY: valid arguments; entries are read within the len returned
        // and freed once.
        unsafe {
            assert_eq!(hb_scan(path.as_ptr(), 0, &mut entries, &mut len), hb_result::HB_OK);
            assert_eq!(len, 1);
            let got = std::ffi::CStr::from_ptr((*entries).path).to_bytes();
            assert_eq!(got, file.as_os_str().as_bytes(), "the path's bytes, as they are");
            // A wrong length is refused and frees nothing; the right one frees.
            hb_scan_free(entries, len + 1);
            assert!(!std::ffi::CStr::from_ptr(crate::capi::hb_last_error_message()).is_empty());
            assert_eq!(std::ffi::CStr::from_ptr((*entries).path).to_bytes(), got, "still there");
            hb_scan_free(entries, len);
            assert!(std::ffi::CStr::from_ptr(crate::capi::hb_last_error_message()).is_empty());
            // A second free is refused, not undefined.
            hb_scan_free(entries, len);
            assert!(!std::ffi::CStr::from_ptr(crate::capi::hb_last_error_message()).is_empty());
        }
    }
}
