//! What one heartbeat costs the process that beats, and the process that checks.
//!
//! - `beat/no_fsync`: one synchronous [`Beater::beat`] with the default
//!   options: serialize the state to pretty JSON, create an exclusive temporary
//!   file, fchmod, write, and swap it into place (`RENAME_EXCHANGE`, then
//!   unlink the old file). The default state with empty metadata is about
//!   400 bytes; criterion's throughput line gives the exact size as bytes per
//!   iteration (it varies with the pid and host name).
//! - `beat/fsync`: the same with `.fsync(true)`: fsync of the file, a plain
//!   rename, fsync of the directory. Dominated by the storage device, so the
//!   group takes fewer samples.
//! - `is_alive/fresh`: [`heartbeat::is_alive`] on a file just written: read,
//!   parse, compare its timestamp with the wall clock.
//!
//! Files go to a fresh directory under `$TMPDIR` (else `/tmp`), so the file
//! system there is what is measured: its kind (ext4, tmpfs, overlay...), its
//! mount options and the device beneath decide the `beat` figures, fsync's
//! above all. The heartbeat file stays in the page cache, as in real use. On a
//! shared or virtual machine expect run-to-run spread.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use heartbeat::Beater;

/// A checker's usual tolerance: three times the default 10 s interval.
const MAX_AGE: Duration = Duration::from_secs(30);

/// A beater writing `path`, after one beat so the file exists; with the
/// file's size in bytes.
fn beater_at(path: &Path, fsync: bool) -> (Beater, u64) {
    let beater = Beater::builder().state_file(path).fsync(fsync).build().expect("build beater");
    beater.beat().expect("first beat");
    let size = std::fs::metadata(path).expect("stat heartbeat file").len();
    (beater, size)
}

fn beat(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut group = c.benchmark_group("beat");

    let (beater, size) = beater_at(&dir.path().join("no_fsync.json"), false);
    group.throughput(Throughput::Bytes(size));
    group.bench_function("no_fsync", |b| b.iter(|| beater.beat().expect("beat")));

    let (beater, size) = beater_at(&dir.path().join("fsync.json"), true);
    group.throughput(Throughput::Bytes(size));
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.bench_function("fsync", |b| b.iter(|| beater.beat().expect("beat")));

    group.finish();
}

fn is_alive(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("fresh.json");
    let (_, size) = beater_at(&path, false);
    let mut group = c.benchmark_group("is_alive");
    group.throughput(Throughput::Bytes(size));
    group.bench_function("fresh", |b| b.iter(|| assert!(heartbeat::is_alive(&path, MAX_AGE))));
    group.finish();
}

criterion_group!(benches, beat, is_alive);
criterion_main!(benches);
