//! Opening the files a user names (a monitor state file, a token, a key, a
//! heartbeat file to read): regular files only, and never a hang or a side
//! effect on the way.
//!
//! A plain `open(2)` of a FIFO waits for a writer, forever if none comes;
//! opening a device does whatever that device does when opened (a tape
//! rewinds, a watchdog arms). So [`open_regular`] `stat`s the path first
//! and opens only a regular file, with `O_NONBLOCK | O_NOCTTY` (and, as std
//! always does, `O_CLOEXEC`) in case it was swapped for something else in
//! between; checks the open descriptor again with `fstat`; and only then
//! switches it back to blocking reads. Whatever is not a regular file is
//! refused with an error saying what it is: "it is a FIFO, not a regular
//! file".

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a file of type `t` is, for a message: "a directory", "a FIFO", ...
pub(crate) fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// The error for a path of type `t` where a regular file was wanted:
/// `IsADirectory` for a directory, `InvalidInput` for anything else.
pub(crate) fn not_regular(t: FileType) -> io::Error {
    let kind_of_error = if t.is_dir() { io::ErrorKind::IsADirectory } else { io::ErrorKind::InvalidInput };
    io::Error::new(kind_of_error, format!("it is {}, not a regular file", kind(t)))
}

/// Opens the regular file at `path` (a symlink to one is followed) for
/// reading, with its metadata from the open descriptor. Never blocks on a
/// FIFO, never opens a device; the errors are those of `stat` and `open`
/// (`NotFound` for a missing file) and [`not_regular`].
pub(crate) fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let before = std::fs::metadata(path)?;
    if !before.is_file() {
        return Err(not_regular(before.file_type()));
    }
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    // Swapped since the stat: the open did not wait, and nothing is read.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    crate::sys::set_nonblocking(file.as_fd(), false)?;
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo").arg(path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    }

    #[test]
    fn only_regular_files_are_opened_and_the_rest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let (opened, meta) = open_regular(&file).unwrap();
        assert_eq!(meta.len(), 1);
        // Blocking again: O_NONBLOCK is off on the open description.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&opened);
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        let flags = i32::from_str_radix(flags, 8).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0, "{info}");
        assert_ne!(flags & libc::O_CLOEXEC, 0, "{info}");

        // A FIFO with no writer: a blocking open would wait forever.
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (io::ErrorKind::InvalidInput, "it is a FIFO, not a regular file")
        );
        // Through a symlink too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(open_regular(&link).unwrap_err().to_string().contains("a FIFO"));

        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (io::ErrorKind::IsADirectory, "it is a directory, not a regular file")
        );
        let e = open_regular(Path::new("/dev/null")).unwrap_err();
        assert_eq!(e.to_string(), "it is a character device, not a regular file");
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(open_regular(&socket).unwrap_err().to_string(), "it is a socket, not a regular file");
        assert_eq!(open_regular(&dir.path().join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
