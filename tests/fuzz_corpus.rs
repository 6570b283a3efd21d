//! Replays the fuzz corpus (`fuzz/corpus/<target>/`, minimized by `cargo fuzz
//! cmin`) and every input a fuzzer ever failed on (`fuzz/regressions/<target>/`)
//! through the same checks the fuzz targets run (`heartbeat::fuzzing`), on
//! stable Rust, in `cargo test`. The `capi` target's inputs need
//! `--features capi` (CI runs `cargo test --features capi --test fuzz_corpus`).

use std::fs;
use std::path::{Path, PathBuf};

use heartbeat::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(listing) = fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        listing.map(|e| e.expect("listing the corpus").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs `target`'s check on every file of `dir`; how many.
fn replay(target: &heartbeat::fuzzing::Target, dir: &Path) -> usize {
    let files = inputs(dir);
    for file in &files {
        let data = fs::read(file).expect("reading a corpus file");
        let outcome = std::panic::catch_unwind(|| (target.check)(&data));
        if outcome.is_err() {
            panic!(
                "{} fails on {} (replay: cargo +nightly fuzz run {} {0})",
                target.name,
                file.display(),
                target.name
            );
        }
    }
    files.len()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn every_target_has_a_corpus_and_it_passes() {
    for target in TARGETS {
        let n = replay(target, &root().join("corpus").join(target.name));
        assert!(n > 0, "fuzz/corpus/{} is empty", target.name);
    }
}

#[test]
fn every_input_a_fuzzer_failed_on_passes() {
    for target in TARGETS {
        replay(target, &root().join("regressions").join(target.name));
    }
}

/// The three findings of the first fuzzing round, each a file in
/// `fuzz/regressions/`: they must stay there, and keep passing.
#[test]
fn the_first_rounds_findings_stay_fixed() {
    for (target, file) in [
        ("state_file", "duplicate-timestamp"),
        ("state_file", "array-record"),
        ("lines", "dribbled-40k-line"),
    ] {
        let path = root().join("regressions").join(target).join(file);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        heartbeat::fuzzing::check(target)(&data);
    }
}
