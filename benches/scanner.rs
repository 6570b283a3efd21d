//! What a scan of 10,000 heartbeat files costs, beside the floor: a loop
//! that only opens and reads the same files.
//!
//! - `scan/fresh`: [`Scanner::scan`] over 10,000 files that all name this
//!   process, with its start time and boot id, as a [`Beater`] in directory
//!   mode writes them: each is read, parsed, `kill(pid, 0)`-probed and its
//!   start time compared with `/proc/<pid>/stat`. The dearest case: every
//!   file alive.
//! - `scan/orphan`: the same files naming PIDs above `pid_max`: each is read,
//!   parsed and `kill`-probed (ESRCH), no `/proc` read.
//! - `scan/orphan_1_thread`: `scan/orphan` on the calling thread only
//!   (`threads(1)`). The others split the 10,000 files between as many
//!   threads as there are cores (at most 4).
//! - `floor/open_read`: for each of the 10,000 paths (listed beforehand),
//!   open and read the file into one reused buffer. Nothing is parsed.
//! - `floor/list_open_read`: the same, listing the directory inside the loop
//!   as a scan must.
//!
//! Before timing, it prints the heap allocations per file of one scan of
//! each kind (a counting global allocator).
//!
//! "Warm": the files sit in the page cache, as they do for a scanner that
//! runs every 30 s. Files go under `$TMPDIR` (else `/tmp`); the file system
//! there decides much of the cost.

use std::fs::File;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::atomic::Ordering;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use heartbeat::{HeartbeatState, Scanner, WriteOptions, write_state};

#[path = "support/counting.rs"]
mod counting;

const FILES: usize = 10_000;

/// Heap allocations (and reallocations) per file in one scan.
fn allocations_per_file(scanner: &Scanner) -> f64 {
    let before = counting::ALLOCATIONS.load(Ordering::Relaxed);
    let scan = scanner.scan().expect("scan");
    let made = counting::ALLOCATIONS.load(Ordering::Relaxed) - before;
    drop(scan);
    made as f64 / FILES as f64
}

/// Writes `FILES` heartbeat files as the Beater does, each with a distinct
/// uuid; `pid` gives each file's PID from its index.
fn populate(dir: &Path, pid: impl Fn(usize) -> i64) {
    let wall = SystemTime::now();
    for i in 0..FILES {
        let mut state =
            HeartbeatState::for_current_process(wall, Duration::from_secs(10), Default::default());
        state.pid = pid(i);
        let uuid = state.uuid.clone().expect("uuid");
        let path = dir.join(format!("heartbeat-{}-{uuid}.json", state.pid));
        write_state(&path, &state, WriteOptions::default()).expect("write heartbeat file");
    }
}

fn listed(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").path()).collect()
}

fn open_read_all(paths: &[PathBuf], buf: &mut Vec<u8>) -> usize {
    let mut total = 0;
    for path in paths {
        buf.clear();
        let mut file = File::open(path).expect("open");
        total += file.read_to_end(buf).expect("read");
    }
    total
}

fn scanner(c: &mut Criterion) {
    let me = i64::from(std::process::id());
    let fresh = tempfile::tempdir().expect("temporary directory");
    populate(fresh.path(), |_| me);
    let orphan = tempfile::tempdir().expect("temporary directory");
    // Above any pid_max (2^22): kill(2) says ESRCH.
    populate(orphan.path(), |i| 5_000_000 + i as i64);

    let fresh_scanner = Scanner::new(fresh.path());
    let orphan_scanner = Scanner::new(orphan.path());
    let one_thread = Scanner::builder(orphan.path()).threads(1).build().expect("scanner");
    assert_eq!(fresh_scanner.scan().expect("scan").fresh_count(), FILES, "every file should be FRESH");
    let orphans = orphan_scanner.scan().expect("scan");
    assert_eq!(orphans.entries.len(), FILES);
    assert!(orphans.entries.iter().all(|e| e.status == heartbeat::ScanStatus::Orphan));

    // Printed before the timings: the allocation budget is part of the target.
    println!(
        "allocations per file: fresh {:.2}, orphan {:.2}, orphan on one thread {:.2}",
        allocations_per_file(&fresh_scanner),
        allocations_per_file(&orphan_scanner),
        allocations_per_file(&one_thread)
    );

    let paths = listed(fresh.path());
    let mut buf = Vec::with_capacity(4096);
    let bytes = open_read_all(&paths, &mut buf) as u64;

    let mut group = c.benchmark_group("10k_files");
    group.throughput(Throughput::Bytes(bytes)).sample_size(30).measurement_time(Duration::from_secs(8));
    group.bench_function("scan/fresh", |b| b.iter(|| black_box(fresh_scanner.scan().expect("scan"))));
    group.bench_function("scan/orphan", |b| b.iter(|| black_box(orphan_scanner.scan().expect("scan"))));
    group.bench_function("scan/orphan_1_thread", |b| b.iter(|| black_box(one_thread.scan().expect("scan"))));
    group.bench_function("floor/open_read", |b| b.iter(|| black_box(open_read_all(&paths, &mut buf))));
    group.bench_function("floor/list_open_read", |b| {
        b.iter(|| black_box(open_read_all(&listed(fresh.path()), &mut buf)))
    });
    group.finish();
}

criterion_group!(benches, scanner);
criterion_main!(benches);
