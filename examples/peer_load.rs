//! Load for a directory node: N ping-capable takers, at most `--window`
//! handshakes in flight, every PING answered at once. Loopback only.
//!
//! ```text
//! cargo run --release --example peer_load -- --addr 127.0.0.1:PORT --n 10000 [--window 100]
//!     [--hold SECS] [--network regtest] [--gap 1.0]
//! ```
//!
//! Prints `ALL_HANDSHAKED secs=S` once every peer is in, holds the
//! connections for `--hold` seconds answering PINGs, then prints `RESULT
//! {json}`: `handshake_all_s`, and each sweep (PINGs grouped wherever two
//! arrive more than `--gap` seconds apart) with its count and spread (first
//! to last PING received). The same contract as `jmload`, so
//! `benches/peer_load.py` drives either. One thread, one mio poll.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use heartbeat::peer::wire::{self, Location};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

struct Args {
    addr: SocketAddr,
    n: usize,
    window: usize,
    hold: Duration,
    network: String,
    gap: f64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:5222".parse().expect("literal"),
        n: 1000,
        window: 100,
        hold: Duration::from_secs(10),
        network: "regtest".into(),
        gap: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--addr" => a.addr = value.parse().map_err(|e| bad(&e))?,
            "--n" => a.n = value.parse().map_err(|e| bad(&e))?,
            "--window" => a.window = value.parse().map_err(|e| bad(&e))?,
            "--hold" => a.hold = Duration::from_secs_f64(value.parse().map_err(|e| bad(&e))?),
            "--network" => a.network = value,
            "--gap" => a.gap = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !a.addr.ip().is_loopback() {
        return Err(format!("{} is not a loopback address: this tool only loads the local machine", a.addr));
    }
    Ok(a)
}

#[derive(PartialEq)]
enum State {
    Handshaking,
    Ready,
    Closed,
}

struct Peer {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    state: State,
    started: Instant,
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("peer_load: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("peer_load: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut peers: HashMap<usize, Peer> = HashMap::with_capacity(a.n);
    let (mut started, mut in_flight, mut ready, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let mut handshake_secs = Vec::with_capacity(a.n);
    let mut pings: Vec<Instant> = Vec::new();
    let mut evicted = 0usize;
    let t0 = Instant::now();
    let mut all_in: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while in_flight < a.window && started < a.n {
            let mut stream = TcpStream::connect(a.addr)?;
            poll.registry().register(&mut stream, Token(started), Interest::READABLE | Interest::WRITABLE)?;
            let mut output = Vec::new();
            let nick = format!("J5Load{:1>8}", to_base58(started as u64));
            let nick = format!("{nick:O<16}");
            wire::encode(
                wire::HANDSHAKE,
                &wire::client_handshake(&nick, &a.network, &Location::Taker, true),
                &mut output,
            );
            peers.insert(
                started,
                Peer {
                    stream,
                    input: Vec::new(),
                    output,
                    state: State::Handshaking,
                    started: Instant::now(),
                },
            );
            started += 1;
            in_flight += 1;
        }
        if all_in.is_none() && ready + failed == a.n {
            let now = Instant::now();
            all_in = Some(now);
            println!("ALL_HANDSHAKED ok={ready} failed={failed} secs={:.3}", (now - t0).as_secs_f64());
        }
        if let Some(at) = all_in
            && at.elapsed() >= a.hold
        {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let id = event.token().0;
            let Some(peer) = peers.get_mut(&id) else { continue };
            if event.is_writable() {
                flush(peer);
            }
            if !event.is_readable() {
                continue;
            }
            let mut closed = false;
            loop {
                match peer.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => peer.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let received = Instant::now();
            let mut start = 0;
            while let Some(end) = peer.input[start..].iter().position(|&b| b == b'\n').map(|i| start + i) {
                let line = &peer.input[start..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Ok(envelope) = wire::parse_envelope(line) {
                    match envelope.kind {
                        wire::DN_HANDSHAKE if peer.state == State::Handshaking => {
                            in_flight -= 1;
                            match wire::parse_dn_handshake(&envelope.line) {
                                Ok(reply) if reply.accepted => {
                                    peer.state = State::Ready;
                                    ready += 1;
                                    handshake_secs.push((received - peer.started).as_secs_f64());
                                }
                                _ => {
                                    peer.state = State::Closed;
                                    failed += 1;
                                }
                            }
                        }
                        wire::PING => {
                            pings.push(received);
                            wire::encode(wire::PONG, "", &mut peer.output);
                        }
                        _ => {}
                    }
                }
                start = end + 1;
            }
            peer.input.drain(..start);
            flush(peer);
            if closed {
                match peer.state {
                    State::Handshaking => {
                        in_flight -= 1;
                        failed += 1;
                    }
                    State::Ready => evicted += 1,
                    State::Closed => {}
                }
                peer.state = State::Closed;
                let _ = poll.registry().deregister(&mut peer.stream);
            }
        }
    }
    print_result(a, t0, all_in, ready, failed, evicted, &mut handshake_secs, &pings);
    Ok(())
}

fn flush(peer: &mut Peer) {
    while !peer.output.is_empty() {
        match peer.stream.write(&peer.output) {
            Ok(n) => {
                peer.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: the writable event comes back; other errors show as a close on read.
            Err(_) => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn print_result(
    a: &Args,
    t0: Instant,
    all_in: Option<Instant>,
    ready: usize,
    failed: usize,
    evicted: usize,
    handshake_secs: &mut [f64],
    pings: &[Instant],
) {
    handshake_secs.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| {
        if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * p).round() as usize] }
    };
    let mut sweeps = Vec::new();
    let mut i = 0;
    while i < pings.len() {
        let mut j = i + 1;
        while j < pings.len() && (pings[j] - pings[j - 1]).as_secs_f64() <= a.gap {
            j += 1;
        }
        let group = &pings[i..j];
        let spread = (group[group.len() - 1] - group[0]).as_secs_f64();
        sweeps.push(serde_json::json!({
            "count": group.len(),
            "t_first_s": (group[0] - t0).as_secs_f64(),
            "spread_s": spread,
        }));
        i = j;
    }
    let result = serde_json::json!({
        "n": a.n,
        "window": a.window,
        "handshaked_ok": ready,
        "failed": failed,
        "handshake_all_s": all_in.map(|t| (t - t0).as_secs_f64()),
        "hs_latency_s": {"p50": pct(handshake_secs, 0.5), "p99": pct(handshake_secs, 0.99)},
        "pings_total": pings.len(),
        "sweeps": sweeps,
        "evictions": evicted,
    });
    println!("RESULT {result}");
}

/// Base58 digits of `v` (Bitcoin alphabet).
fn to_base58(mut v: u64) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(ALPHABET[(v % 58) as usize]);
        v /= 58;
        if v == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).expect("base58 is ASCII")
}
