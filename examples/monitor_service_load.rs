//! Load for `heartbeat monitor`, from another process: registrations over
//! HTTP and beats over UDP. HTTP beat throughput is measured with `wrk`
//! (see `benches/monitor_service.py`, which drives all of it).
//!
//! ```text
//! cargo run --release --example monitor_service_load -- register HTTP_ADDR COUNT THREADS
//! cargo run --release --example monitor_service_load -- udp UDP_ADDR COUNT RATE SECONDS THREADS
//! ```
//!
//! `register` PUTs `/sessions/s0000000` .. `s{COUNT-1}` over keep-alive
//! connections (ureq), one per thread, and prints a JSON line: sessions,
//! seconds, failures.
//!
//! `udp` sends one datagram per beat (`s0000042\n`, ids taken in turn from
//! the COUNT registered), paced to RATE datagrams per second in total over
//! THREADS sockets, for SECONDS, and prints how many were sent. The kernel's
//! own drops are read from `/proc/net/snmp` by the caller, which compares
//! sent, dropped by the kernel, and counted by the monitor.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

fn id(i: u64) -> String {
    format!("s{i:07}")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, what: &str| -> String {
        args.get(i).cloned().unwrap_or_else(|| panic!("missing {what}; see the example's docs"))
    };
    let num =
        |i: usize, what: &str| -> u64 { arg(i, what).parse().unwrap_or_else(|_| panic!("{what}: a number")) };
    match arg(0, "mode").as_str() {
        "register" => register(&arg(1, "HTTP_ADDR"), num(2, "COUNT"), num(3, "THREADS")),
        "udp" => udp(
            &arg(1, "UDP_ADDR"),
            num(2, "COUNT"),
            num(3, "RATE"),
            Duration::from_secs(num(4, "SECONDS")),
            num(5, "THREADS"),
        ),
        other => panic!("unknown mode {other:?}: register or udp"),
    }
}

fn register(addr: &str, count: u64, threads: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failures, base) = (next.clone(), failures.clone(), format!("http://{addr}/sessions/"));
            thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(30)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut url = String::with_capacity(base.len() + 8);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    url.clear();
                    url.push_str(&base);
                    url.push_str(&id(i));
                    match agent.put(&url).send_empty() {
                        Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {}
                        Ok(r) => {
                            if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("PUT {url}: {}", r.status());
                            }
                        }
                        Err(e) => {
                            if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("PUT {url}: {e}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\": \"register\", \"sessions\": {count}, \"seconds\": {secs:.3}, \"per_second\": {:.0}, \"failures\": {}}}",
        count as f64 / secs,
        failures.load(Ordering::Relaxed)
    );
}

fn udp(addr: &str, count: u64, rate: u64, duration: Duration, threads: u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (sent, errors, addr) = (sent.clone(), errors.clone(), addr.to_owned());
            thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(&addr).unwrap();
                // Each thread paces its share in batches of 64, every
                // 64 / share seconds.
                let share = (rate / threads).max(1);
                let batch = 64u64;
                let gap = Duration::from_secs_f64(batch as f64 / share as f64);
                let mut next_id = t * (count / threads);
                let mut datagram = Vec::with_capacity(16);
                let mut due = Instant::now();
                let end = Instant::now() + duration;
                while Instant::now() < end {
                    for _ in 0..batch {
                        datagram.clear();
                        datagram.extend_from_slice(id(next_id % count).as_bytes());
                        datagram.push(b'\n');
                        next_id += 1;
                        match socket.send(&datagram) {
                            Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    due += gap;
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "{{\"mode\": \"udp\", \"sent\": {sent}, \"send_errors\": {}, \"seconds\": {secs:.3}, \"per_second\": {:.0}}}",
        errors.load(Ordering::Relaxed),
        sent as f64 / secs
    );
}
