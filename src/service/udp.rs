//! The UDP intake: fire-and-forget beats, one datagram per beat (or a few
//! ids, one per line), never a reply.
//!
//! ```text
//! backup\n                 one beat
//! a\nb\nc                  three beats
//! <token> backup\n         with --token-file
//! ```
//!
//! A datagram without the token, or with anything but valid session ids, is
//! dropped whole and counted; an id the monitor does not know is counted and
//! dropped. Nothing registers over UDP: a datagram's source is trivially
//! forged off loopback.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::Shared;
use crate::error::{Error, Result};
use crate::monitor::valid_session_id;

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// The largest datagram read whole; longer ones are cut by the kernel and
/// then fail the id check.
const MAX_DATAGRAM: usize = 65_536;

/// Datagrams taken between two looks at the stop flag.
pub(crate) const TURN_BUDGET: usize = 1024;

/// The intake thread's owner.
pub(crate) struct Intake {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Intake {
    /// Binds `addr` and starts the thread.
    pub(crate) fn start(addr: SocketAddr, receive_buffer: usize, shared: Arc<Shared>) -> Result<Intake> {
        let bind_err = |e: io::Error| {
            Error::Io(io::Error::new(e.kind(), format!("cannot take udp beats on {addr}: {e}")))
        };
        let mut socket = UdpSocket::bind(addr).map_err(bind_err)?;
        grow_receive_buffer(&socket, receive_buffer);
        let local_addr = socket.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut socket, SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            thread::Builder::new()
                .name("heartbeat-udp".into())
                .spawn(move || run(poll, &socket, &stopping, &shared))?
        };
        Ok(Intake { local_addr, stopping, waker, thread: Some(thread) })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the thread still runs.
    pub(crate) fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops and joins the thread. Idempotent.
    pub(crate) fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake the udp thread: {e}");
            }
            if thread.join().is_err() {
                log::error!("udp thread panicked");
            }
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks for a larger receive buffer, forcing it past `rmem_max` where the
/// process may (`SO_RCVBUFFORCE`, CAP_NET_ADMIN). A burst then waits in the
/// kernel instead of being dropped there.
pub(crate) fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) {
    let fd = socket.as_fd();
    if crate::sys::set_socket_int(fd, libc::SO_RCVBUFFORCE, bytes).is_err()
        && let Err(e) = crate::sys::set_socket_int(fd, libc::SO_RCVBUF, bytes)
    {
        log::warn!("cannot set the udp receive buffer to {bytes} bytes: {e}");
    }
}

fn run(mut poll: Poll, socket: &UdpSocket, stopping: &AtomicBool, shared: &Shared) {
    let mut events = Events::with_capacity(8);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Zero after a turn that used its whole budget: the socket is
    // edge-triggered, so what is left there signals nothing new.
    let mut timeout = None;
    loop {
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("udp intake: poll failed: {e}; stopping it");
            return;
        }
        timeout = match drain_turn(socket, &mut buf, shared) {
            Drained::All => None,
            Drained::Budget => Some(std::time::Duration::ZERO),
        };
        // Between two turns: a flood must not keep a stop waiting.
        if stopping.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// How a turn of reading ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The socket had nothing more.
    All,
    /// The budget ran out first: more may wait.
    Budget,
}

/// Takes at most [`TURN_BUDGET`] datagrams.
pub(crate) fn drain_turn(socket: &UdpSocket, buf: &mut [u8], shared: &Shared) -> Drained {
    for _ in 0..TURN_BUDGET {
        match socket.recv(buf) {
            Ok(n) => take(shared, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::All,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. ECONNREFUSED queued by an ICMP error: nothing of ours.
                log::debug!("udp intake: {e}");
            }
        }
    }
    Drained::Budget
}

/// Handles one datagram.
pub(crate) fn take(shared: &Shared, datagram: &[u8]) {
    let c = &shared.counters;
    c.datagrams.fetch_add(1, Ordering::Relaxed);
    let body = match &shared.token {
        None => datagram,
        Some(token) => match datagram.iter().position(|&b| b == b' ') {
            Some(space) if super::constant_time_eq(token, &datagram[..space]) => &datagram[space + 1..],
            _ => {
                c.datagrams_unauthorized.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let ids = || body.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    // All or nothing: a datagram with one bad line is not half taken.
    let mut valid = !body.is_empty();
    for id in ids() {
        valid &= std::str::from_utf8(id).is_ok_and(valid_session_id);
    }
    if !valid {
        c.datagrams_malformed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for id in ids() {
        // Checked above: every line is a valid (ASCII) id.
        let id = std::str::from_utf8(id).unwrap_or_default();
        if shared.monitor.beat(id) {
            c.beats_udp.fetch_add(1, Ordering::Relaxed);
        } else {
            c.unknown_udp.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::Monitor;

    #[test]
    fn a_turn_takes_its_budget_and_no_more() {
        let shared = Shared::for_tests(Monitor::builder().build().unwrap());
        let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        grow_receive_buffer(&socket, 8 << 20);
        let to = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let queued = TURN_BUDGET * 2 + 10;
        for _ in 0..queued {
            sender.send_to(b"nobody\n", to).unwrap();
        }
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let taken = || shared.counters.datagrams.load(Ordering::Relaxed) as usize;
        // Loopback delivers at once, into a buffer large enough for all.
        assert_eq!(drain_turn(&socket, &mut buf, &shared), Drained::Budget);
        assert_eq!(taken(), TURN_BUDGET);
        assert_eq!(drain_turn(&socket, &mut buf, &shared), Drained::Budget);
        assert_eq!(drain_turn(&socket, &mut buf, &shared), Drained::All);
        assert_eq!(taken(), queued, "every datagram the kernel held was taken");
        assert_eq!(shared.counters.unknown_udp.load(Ordering::Relaxed) as usize, queued);
    }
}
