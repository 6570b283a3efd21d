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

/// Makes `cmd` start under a hook supervisor (see [`supervisor`]): the
/// process `cmd.spawn()` returns is the supervisor, and the program runs as
/// its child. Signal the supervisor with `SIGTERM` to end the program and
/// every process it started; it exits with the program's status once they
/// are all gone.
#[cfg(target_os = "linux")]
pub(crate) fn supervise(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the child std forked, before exec, where
    // only async-signal-safe calls are allowed: `supervisor::start` makes raw
    // system calls on its own stack data, and neither allocates nor locks.
    unsafe { cmd.pre_exec(move || supervisor::start(parent)) };
}

/// A hook's supervisor: a process between the monitor and the hook's shell
/// that outlives the shell until everything the shell started is dead.
///
/// It is made in `pre_exec`, in the child std forked for the command: that
/// child blocks the signals it waits for, asks for `SIGTERM` when the
/// thread that spawned it ends (`PR_SET_PDEATHSIG`, so even a monitor
/// killed with `SIGKILL` reaches it), becomes a child subreaper
/// (`PR_SET_CHILD_SUBREAPER`: every orphan among its descendants, a
/// double-forked or `setsid` daemon too, is reparented to it, not to init)
/// and forks again. The grandchild returns from `pre_exec` and std execs the
/// command in it as usual; its exec error, if any, still reaches `spawn()`
/// through std's close-on-exec pipe. The supervisor never returns: it closes
/// every descriptor above 2 (std's pipe among them, or `spawn()` would wait
/// for it), waits for the shell's exit or a `SIGTERM`/`SIGINT`/`SIGHUP`/
/// `SIGQUIT`, then `SIGKILL`s its children, reaps them and kills those
/// reparented to it in turn, until `waitpid` says it has no child left,
/// and exits as the shell did: its exit code, or killed by the same signal.
///
/// Everything here is async-signal-safe: raw system calls on stack data.
#[cfg(target_os = "linux")]
mod supervisor {
    use std::io;
    use std::mem::MaybeUninit;
    use std::ptr;

    /// Children are listed here (`CONFIG_PROC_CHILDREN`, in distribution
    /// kernels); the supervisor is single-threaded, so its one thread's
    /// children are all its children.
    const CHILDREN: &std::ffi::CStr = c"/proc/thread-self/children";

    fn last_error() -> io::Error {
        io::Error::last_os_error()
    }

    /// `prctl(option, arg, 0, 0, 0)`, every argument an `unsigned long` as
    /// the kernel reads them (prctl is variadic).
    fn prctl(option: libc::c_int, arg: libc::c_ulong) -> libc::c_int {
        // SAFETY: the options used here read only their integer argument
        // (PR_SET_NAME: a pointer to a static NUL-terminated string).
        unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) }
    }

    /// The signals the supervisor waits for, blocked, with `sigwaitinfo`.
    fn waited() -> libc::sigset_t {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set, sigaddset adds valid signals to it.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
                libc::sigaddset(set.as_mut_ptr(), sig);
            }
            set.assume_init()
        }
    }

    /// In std's forked child: returns `Ok` in the grandchild, which std then
    /// execs; the supervisor never returns. `parent` is the monitor's pid.
    pub(super) fn start(parent: libc::pid_t) -> io::Result<()> {
        let set = waited();
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: both pointers are valid sigsets on this stack.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) } != 0 {
            return Err(last_error());
        }
        // SAFETY: sigprocmask succeeded and filled `old`.
        let old = unsafe { old.assume_init() };
        // SAFETY: plain integer arguments. SIGCHLD left ignored by the
        // monitor would reap the shell before its status could be read.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
        if prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM.unsigned_abs().into()) != 0 {
            return Err(last_error());
        }
        // The monitor died before PDEATHSIG was set: nothing to run for.
        // SAFETY: getppid has no arguments.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        if prctl(libc::PR_SET_CHILD_SUBREAPER, 1) != 0 {
            return Err(last_error());
        }
        // SAFETY: this process is single-threaded (a fork's child), so
        // forking again is sound; the child only makes raw system calls
        // before std execs it.
        let shell = unsafe { libc::fork() };
        if shell < 0 {
            return Err(last_error());
        }
        if shell == 0 {
            // The shell-to-be: the signal mask std set, and a process group
            // of its own, killed whole if the children cannot be listed.
            // SAFETY: `old` is a valid sigset; setpgid takes integers.
            unsafe {
                libc::sigprocmask(libc::SIG_SETMASK, &old, ptr::null_mut());
                libc::setpgid(0, 0);
            }
            return Ok(());
        }
        supervise(shell, &set)
    }

    fn supervise(shell: libc::pid_t, set: &libc::sigset_t) -> ! {
        close_descriptors();
        // What `ps` calls it (PR_SET_NAME: 15 bytes at most).
        prctl(libc::PR_SET_NAME, c"heartbeat-hook".as_ptr() as libc::c_ulong);
        let mut status = None;
        loop {
            // SAFETY: `set` is a valid sigset; no siginfo is asked for.
            let sig = unsafe { libc::sigwaitinfo(set, ptr::null_mut()) };
            if sig == libc::SIGCHLD {
                reap(shell, &mut status, libc::WNOHANG);
                if status.is_some() {
                    break;
                }
            } else if sig > 0 {
                break; // SIGTERM and the like: end the hook now
            }
        }
        // Kill every child; those reparented to us as they die are
        // children in turn. `waitpid` fails (ECHILD) once none is left.
        loop {
            if !for_each_child(|pid| {
                // SAFETY: kill takes integers; `pid` is our child, not reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }) {
                // No /proc: the shell's process group, at least.
                // SAFETY: kill takes integers; the shell's pid stays ours
                // (so its group id too) until it is reaped.
                unsafe { libc::kill(-shell, libc::SIGKILL) };
            }
            if !reap(shell, &mut status, 0) {
                break;
            }
        }
        exit_as(status)
    }

    /// Reaps children (one, blocking, with `flags` 0; all that exited, with
    /// `WNOHANG`), keeping the shell's status. False once no child is left.
    fn reap(shell: libc::pid_t, status: &mut Option<libc::c_int>, flags: libc::c_int) -> bool {
        loop {
            let mut st = 0;
            // SAFETY: `st` is a valid int for waitpid to write.
            let pid = unsafe { libc::waitpid(-1, &mut st, flags) };
            if pid == shell {
                *status = Some(st);
            }
            if pid < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return false;
            }
            if pid == 0 || flags == 0 {
                return true;
            }
        }
    }

    /// Calls `f` with each child's pid; false if they cannot be listed.
    fn for_each_child(mut f: impl FnMut(libc::pid_t)) -> bool {
        // SAFETY: a NUL-terminated path; the descriptor is closed below.
        let fd = unsafe { libc::open(CHILDREN.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 512];
        let (mut pid, mut digits): (libc::pid_t, bool) = (0, false);
        loop {
            // SAFETY: the pointer and length describe `buf`.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            // A pid may straddle two reads: the digits carry over.
            for &b in &buf[..n] {
                if b.is_ascii_digit() {
                    pid = pid.saturating_mul(10).saturating_add(libc::pid_t::from(b - b'0'));
                    digits = true;
                } else if digits {
                    f(pid);
                    (pid, digits) = (0, false);
                }
            }
        }
        if digits {
            f(pid);
        }
        // SAFETY: `fd` is ours, opened above.
        unsafe { libc::close(fd) };
        true
    }

    /// Closes every descriptor above 2, and points 0, 1 and 2 at /dev/null:
    /// the supervisor holds none of the monitor's files open.
    fn close_descriptors() {
        // SAFETY: close_range takes integers (Linux 5.9; ENOSYS before).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        if rc != 0 {
            let mut limit = MaybeUninit::<libc::rlimit>::uninit();
            // SAFETY: getrlimit writes one rlimit into `limit`.
            let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) } == 0 {
                // SAFETY: getrlimit succeeded and filled `limit`.
                unsafe { limit.assume_init() }.rlim_cur.min(1 << 20)
            } else {
                1 << 16
            };
            let max = libc::c_int::try_from(max).unwrap_or(libc::c_int::MAX);
            for fd in 3..max {
                // SAFETY: closing a descriptor number; none is used after.
                unsafe { libc::close(fd) };
            }
        }
        // SAFETY: a NUL-terminated path, and descriptor numbers.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null > 2 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                libc::close(null);
            }
        }
    }

    /// Exits with the shell's exit code, or dies of the signal that killed
    /// it (without a core dump), so that the monitor sees what it would
    /// have seen of the shell itself.
    fn exit_as(status: Option<libc::c_int>) -> ! {
        let Some(st) = status else {
            // SAFETY: _exit ends the process and never returns.
            unsafe { libc::_exit(1) }
        };
        if libc::WIFSIGNALED(st) {
            let sig = libc::WTERMSIG(st);
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: integer arguments and valid sigsets/rlimits on this
            // stack; the signal, unblocked with its default action, ends
            // this process before kill returns.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(sig, libc::SIG_DFL);
                let mut set = MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(set.as_mut_ptr());
                libc::sigaddset(set.as_mut_ptr(), sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, set.as_ptr(), ptr::null_mut());
                libc::kill(libc::getpid(), sig);
            }
        }
        let code = if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { 128 + libc::WTERMSIG(st) };
        // SAFETY: _exit ends the process and never returns.
        unsafe { libc::_exit(code) }
    }
}
