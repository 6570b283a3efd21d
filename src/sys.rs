//! The crate's raw system calls, each a single documented `unsafe` block.
//! Everything else in the crate is safe code.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `gethostname(2)`, or `None` if it fails.
pub(crate) fn gethostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes into it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Forks this process has gone through, as its child: 0 in the first
/// process image, +1 in the child after each `fork()` (a `pthread_atfork`
/// child handler, registered by the first call here). A pid alone cannot
/// tell a forked child from its parent when the parent exited and the
/// child's child got the parent's pid back; the pid and this count together
/// can, for every fork after the first call.
pub(crate) fn fork_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        // Async-signal-safe: one atomic add.
        FORKS.fetch_add(1, Ordering::SeqCst);
    }
    REGISTER.call_once(|| {
        // SAFETY: pthread_atfork takes function pointers that live for the
        // whole program (`in_child` is a plain function); it has no other
        // memory effects.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            log::warn!("pthread_atfork failed ({rc}): forks are told apart by pid alone");
        }
    });
    FORKS.load(Ordering::SeqCst)
}

/// `kill(2)`: `Ok` if delivered (or, for signal 0, if the process exists and
/// may be signalled).
pub(crate) fn kill(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    if unsafe { libc::kill(pid, signal) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether the child `pid` has exited, without reaping it (`waitid` with
/// `WNOWAIT`): until it is waited for, its pid, and so its process group's
/// id, cannot be taken by another process, and the group can be signalled
/// safely.
pub(crate) fn exited_unreaped(pid: libc::pid_t) -> io::Result<bool> {
    let id = libc::id_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: siginfo_t is plain data, for which all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` outlives the call, which writes one siginfo_t into it.
    let rc = unsafe {
        libc::waitid(libc::P_PID, id, &raw mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info`; si_pid is 0 when no child had exited.
    Ok(unsafe { info.si_pid() } != 0)
}

/// `renameat2(a, b, RENAME_EXCHANGE)`: atomically swaps two existing paths.
/// Fails with `EINVAL` where the file system does not support it.
#[cfg(target_os = "linux")]
pub(crate) fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both pointers are NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `openat(dir, name, flags | O_CLOEXEC)`: opens `name` relative to the
/// directory `dir`. `name` must be a single path component.
pub(crate) fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<File> {
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is a
    // valid descriptor for the duration of the borrow.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// What `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` says about a directory entry.
pub(crate) struct EntryStat {
    /// A regular file (a symlink is not, whatever it points to).
    pub regular: bool,
    /// The device it is on.
    pub dev: u64,
    /// Its inode number.
    pub ino: u64,
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: a symlink is described, not followed.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<EntryStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`; `name` is NUL-terminated.
    let rc =
        unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(EntryStat { regular: st.st_mode & libc::S_IFMT == libc::S_IFREG, dev: st.st_dev, ino: st.st_ino })
}

/// `unlinkat(dir, name, 0)`: removes the directory entry `name` itself
/// (a symlink, not its target).
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt(fd, SOL_SOCKET, option, value)` for an `int` option such as
/// `SO_SNDBUF` or `SO_RCVBUF` (Linux doubles buffer sizes for its own
/// bookkeeping and clamps them to `net.core.{w,r}mem_max`).
pub(crate) fn set_socket_int(socket: BorrowedFd<'_>, option: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: the pointer and length describe `value`, an int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sets or clears `O_NONBLOCK` on the open file description of `fd`
/// (`fcntl(F_GETFL)`, then `fcntl(F_SETFL)`).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and has no memory effects.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if nonblocking { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    if wanted == flags {
        return Ok(());
    }
    // SAFETY: F_SETFL takes an int of flags and has no memory effects.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, wanted) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
