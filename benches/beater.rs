//! What one heartbeat costs the process that beats, and the process that checks.
//!
//! - `beat/no_fsync/<N>B`: one synchronous [`Beater::beat`] with the default
//!   options: serialize the state to pretty JSON, create an exclusive temporary
//!   file, fchmod, write, rename over the heartbeat file. `<N>` is the size of
//!   the file written (default state, empty metadata).
//! - `beat/fsync/<N>B`: the same with `.fsync(true)`, which adds an fsync of
//!   the file and one of its directory. This is dominated by the storage
//!   device, not by this crate, so the group takes fewer samples.
//! - `is_alive/fresh/<N>B`: [`heartbeat::is_alive`] on a file just written:
//!   read, parse, compare its timestamp with the wall clock.
//!
//! Files go to a fresh directory under the system temporary directory
//! (`$TMPDIR`, else `/tmp`), so the file system there is what is measured:
//! its kind (ext4, tmpfs, overlay...), mount options and the device beneath
//! decide the `beat` numbers, fsync above all. On ext4, a rename that replaces
//! an existing file starts writeback of the new one (the `auto_da_alloc`
//! default), and that is most of a `no_fsync` beat there; on tmpfs the beat is
//! mostly this crate's own CPU time. Page-cache state matters too:
//! the heartbeat file stays cached, as it does in real use. Run on an idle
//! machine; on a shared or virtual one, expect run-to-run spread.

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
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
    group.bench_function(BenchmarkId::new("no_fsync", format!("{size}B")), |b| {
        b.iter(|| beater.beat().expect("beat"));
    });

    let (beater, size) = beater_at(&dir.path().join("fsync.json"), true);
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.bench_function(BenchmarkId::new("fsync", format!("{size}B")), |b| {
        b.iter(|| beater.beat().expect("beat"));
    });

    group.finish();
}

fn is_alive(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("fresh.json");
    let (_, size) = beater_at(&path, false);
    c.benchmark_group("is_alive").bench_function(BenchmarkId::new("fresh", format!("{size}B")), |b| {
        b.iter(|| assert!(heartbeat::is_alive(&path, MAX_AGE)));
    });
}

criterion_group!(benches, beat, is_alive);
criterion_main!(benches);
