//! systemd's notify protocol, the part a heartbeat needs: `READY=1` once,
//! `WATCHDOG=1` per beat, and `STOPPING=1` for a process that is exiting
//! (see `sd_notify(3)`).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends notifications to the socket systemd named in `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: bool,
    ready_sent: bool,
}

impl Notifier {
    /// A notifier for the environment systemd gave this process, or `None`
    /// when `$NOTIFY_SOCKET` is unset or empty (not run by systemd, or the
    /// unit is not `Type=notify`): then nothing is ever sent.
    ///
    /// `WATCHDOG_PID` is honoured: when it is set and names another process,
    /// the watchdog is that process's business and `WATCHDOG=1` is not sent.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let socket = socket.into_string().map_err(|s| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("NOTIFY_SOCKET {s:?} is not UTF-8"))
        })?;
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(&socket, watchdog_pid.as_deref(), std::process::id()).map(Some)
    }

    /// A notifier for socket `socket` (a path, or `@name` for the abstract
    /// namespace), with `watchdog_pid` as `$WATCHDOG_PID` would give it and
    /// `my_pid` the calling process.
    pub fn new(socket: &str, watchdog_pid: Option<&str>, my_pid: u32) -> io::Result<Notifier> {
        let addr = parse_addr(socket)?;
        let watchdog = match watchdog_pid.map(str::trim) {
            None | Some("") => true,
            Some(p) => p.parse::<u32>().is_ok_and(|p| p == my_pid),
        };
        Ok(Notifier { socket: UnixDatagram::unbound()?, addr, watchdog, ready_sent: false })
    }

    /// Whether beats are sent to systemd's watchdog.
    pub fn watchdog(&self) -> bool {
        self.watchdog
    }

    /// Reports a successful beat: `READY=1` the first time, and `WATCHDOG=1`
    /// each time when the watchdog is ours.
    pub fn beat(&mut self) -> io::Result<()> {
        let msg = match (self.ready_sent, self.watchdog) {
            (false, true) => "READY=1\nWATCHDOG=1",
            (false, false) => "READY=1",
            (true, true) => "WATCHDOG=1",
            (true, false) => return Ok(()),
        };
        self.send(msg)?;
        self.ready_sent = true;
        Ok(())
    }

    /// Tells systemd the service is stopping. Only for a process on its way
    /// out: systemd starts its stop timeout on receiving it.
    pub fn stopping(&mut self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    fn send(&self, msg: &str) -> io::Result<()> {
        self.socket.send_to_addr(msg.as_bytes(), &self.addr).map(drop)
    }
}

fn parse_addr(socket: &str) -> io::Result<SocketAddr> {
    if let Some(name) = socket.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets exist only on Linux"));
        }
    }
    if !socket.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {socket:?} is neither an absolute path nor @abstract"),
        ));
    }
    SocketAddr::from_pathname(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn ready_once_then_watchdog_each_beat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = Notifier::new(path.to_str().unwrap(), None, 42).unwrap();
        n.beat().unwrap();
        n.beat().unwrap();
        n.stopping().unwrap();
        assert_eq!(recv(&server), "READY=1\nWATCHDOG=1");
        assert_eq!(recv(&server), "WATCHDOG=1");
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn watchdog_pid_of_another_process_disables_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let sock = path.to_str().unwrap();
        assert!(Notifier::new(sock, Some("42"), 42).unwrap().watchdog());
        let mut other = Notifier::new(sock, Some("43"), 42).unwrap();
        assert!(!other.watchdog());
        other.beat().unwrap();
        other.beat().unwrap();
        assert_eq!(recv(&server), "READY=1");
        assert_eq!(server.recv(&mut [0u8; 16]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn relative_socket_paths_are_refused() {
        assert_eq!(Notifier::new("run/notify", None, 1).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
