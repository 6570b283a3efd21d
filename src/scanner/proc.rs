//! Start times of live PIDs, for telling a heartbeat's writer from a later
//! process that was given the same PID.
//!
//! Reading `/proc/<pid>/stat` costs the kernel several microseconds (more
//! than reading a heartbeat file), so a scanner remembers each PID's start
//! time together with the identity of its `/proc/<pid>` inode (inode number
//! and ctime), which a `stat` reads in well under a microsecond. The kernel
//! makes a new inode, with a new number, whenever `/proc/<pid>` is looked up
//! for a new process (and sometimes for the same one, after evicting it from
//! its caches), so a changed identity means "read again" and an unchanged one
//! means "the same process".

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::process::parse_start_ticks;

/// A `/proc/<pid>` inode's identity.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Inode {
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// A start time, and the inode it was read under.
#[derive(Clone, Copy)]
pub(super) struct Known {
    inode: Inode,
    ticks: u64,
}

/// Start times known from earlier scans, and those looked up in this one.
pub(super) struct StartTimes<'a> {
    earlier: &'a HashMap<i32, Known>,
    now: HashMap<i32, Known>,
    path: Vec<u8>,
    buf: Vec<u8>,
}

impl<'a> StartTimes<'a> {
    /// Starts from what earlier scans learned.
    pub(super) fn new(earlier: &'a HashMap<i32, Known>) -> Self {
        StartTimes { earlier, now: HashMap::new(), path: Vec::new(), buf: Vec::new() }
    }

    /// What the next scan should remember: the PIDs this scan looked up.
    pub(super) fn into_known(self) -> HashMap<i32, Known> {
        self.now
    }

    /// The start time, in clock ticks since boot, of the process that has
    /// `pid` now; `None` if `/proc` does not tell (no such process, hidepid,
    /// not Linux).
    pub(super) fn get(&mut self, pid: i32) -> Option<u64> {
        if let Some(known) = self.now.get(&pid) {
            return Some(known.ticks);
        }
        let inode = self.inode(pid)?;
        let ticks = match self.earlier.get(&pid) {
            Some(known) if known.inode == inode => known.ticks,
            _ => self.read_ticks(pid)?,
        };
        self.now.insert(pid, Known { inode, ticks });
        Some(ticks)
    }

    fn set_path(&mut self, pid: i32, file: &str) -> &Path {
        self.path.clear();
        write!(self.path, "/proc/{pid}{file}").expect("writing to a Vec cannot fail");
        Path::new(std::ffi::OsStr::from_bytes(&self.path))
    }

    fn inode(&mut self, pid: i32) -> Option<Inode> {
        let meta = std::fs::symlink_metadata(self.set_path(pid, "")).ok()?;
        Some(Inode { ino: meta.ino(), ctime: meta.ctime(), ctime_nsec: meta.ctime_nsec() })
    }

    fn read_ticks(&mut self, pid: i32) -> Option<u64> {
        let mut file = File::open(self.set_path(pid, "/stat")).ok()?;
        self.buf.clear();
        file.read_to_end(&mut self.buf).ok()?;
        parse_start_ticks(&self.buf)
    }
}
