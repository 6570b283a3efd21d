//! Process facts and probes: host name, process identity, signals.
//!
//! The system calls behind these live in the crate's private `sys` module.

use std::io;

/// What identifies a running process beyond its PID, which the kernel recycles.
///
/// On Linux this is the process start time (field 22 of `/proc/<pid>/stat`, in
/// clock ticks since boot) and the boot id: a PID whose start time differs
/// from the one a heartbeat file records belongs to another process, even
/// when the PID number is alive. Elsewhere both are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id`: changes at every boot.
    pub boot_id: Option<String>,
}

impl ProcessIdentity {
    /// The identity of the calling process.
    pub fn current() -> Self {
        let pid = std::process::id();
        ProcessIdentity { pid, start_ticks: start_ticks(pid), boot_id: boot_id() }
    }
}

/// The start time of process `pid` in clock ticks since boot, where the
/// platform exposes it (Linux `/proc`); `None` if the process does not exist
/// or the value cannot be read.
pub fn start_ticks(pid: u32) -> Option<u64> {
    // Bytes, not a String: the command name may be any bytes.
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Parses field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command
/// name (field 2) is in parentheses and may itself hold spaces, `)` and
/// bytes that are not UTF-8, so fields are counted from the last `)`.
pub(crate) fn parse_start_ticks(stat: &[u8]) -> Option<u64> {
    let after_comm = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    // Fields after the name start at field 3 (state); starttime is field 22.
    let field = after_comm.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty()).nth(22 - 3)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), where available.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// This machine's host name (`gethostname(2)`); `"localhost"` if it cannot be had.
pub fn hostname() -> String {
    crate::sys::gethostname().filter(|name| !name.is_empty()).unwrap_or_else(|| "localhost".to_owned())
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to process `pid`.
///
/// PIDs that do not fit a `pid_t`, and 0 (which would mean "my process
/// group"), are refused with `InvalidInput` rather than sent.
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
    crate::sys::kill(pid, signal)
}

/// Whether a process with this PID exists, by `kill(pid, 0)`: `ESRCH` means
/// dead, `EPERM` means alive (it exists, we may not signal it). Zero, negative
/// and out-of-range PIDs are dead: `kill` would read them as process groups.
pub fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    match crate::sys::kill(pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_are_counted_from_the_last_paren() {
        // A command name with spaces and a ')' must not shift the fields.
        let stat = "4242 (we ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat.as_bytes()), Some(987654));
        assert_eq!(parse_start_ticks(b"garbage"), None);
        assert_eq!(
            parse_start_ticks(b"1 (\xff\xfe) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 42 0"),
            Some(42)
        );
        assert_eq!(parse_start_ticks(b"1 (x) S 1 2"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn current_identity_is_complete_on_linux() {
        let me = ProcessIdentity::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_ticks.is_some());
        assert_eq!(me.boot_id.as_deref().map(str::len), Some(36));
        // Stable across reads: the same process keeps its start time.
        assert_eq!(start_ticks(me.pid), me.start_ticks);
    }

    #[test]
    fn pid_liveness() {
        assert!(pid_alive(i64::from(std::process::id())));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
        assert!(!pid_alive(i64::from(i32::MAX) + 1));
        // PID 1 exists everywhere; we may or may not be allowed to signal it (EPERM is alive).
        assert!(pid_alive(1));
    }

    #[test]
    fn hostname_is_not_empty() {
        assert!(!hostname().is_empty());
    }

    #[test]
    fn signalling_pid_zero_is_refused() {
        assert_eq!(send_signal(0, 0).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        send_signal(std::process::id(), 0).unwrap();
    }
}
