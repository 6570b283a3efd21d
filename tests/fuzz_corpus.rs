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
            panic!("{}", failure(target.name, file));
        }
    }
    files.len()
}

/// What a replay failure says: the target, the file, and the command that
/// replays it under the fuzzer.
fn failure(target: &str, file: &Path) -> String {
    let file = file.display();
    format!("{target} fails on {file} (replay: cd fuzz && cargo +nightly fuzz run {target} {file})")
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

#[test]
fn a_failure_names_the_file_to_replay() {
    let file = Path::new("/x/fuzz/regressions/lines/dribbled");
    assert_eq!(
        failure("lines", file),
        "lines fails on /x/fuzz/regressions/lines/dribbled \
         (replay: cd fuzz && cargo +nightly fuzz run lines /x/fuzz/regressions/lines/dribbled)"
    );
}

/// The names under `dir` (files or directories), sorted.
fn names(dir: &Path) -> Vec<String> {
    let listing = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> =
        listing.map(|e| e.expect("listing").file_name().into_string().expect("a UTF-8 name")).collect();
    names.sort();
    names
}

/// Every target's name, the `capi` one included when the feature is off
/// (its corpus and binary exist either way).
fn all_target_names() -> Vec<&'static str> {
    let mut all: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    if !all.contains(&"capi") {
        all.push("capi");
    }
    all.sort_unstable();
    all
}

/// A corpus or regression directory that names no target would never be
/// replayed (a typo, or a target renamed without its inputs), and a fuzz
/// binary outside `TARGETS` would fuzz a check `cargo test` never runs.
#[test]
fn every_input_directory_and_fuzz_binary_names_a_target() {
    let all = all_target_names();
    for dir in ["corpus", "regressions"] {
        for name in names(&root().join(dir)) {
            assert!(all.contains(&name.as_str()), "fuzz/{dir}/{name} names no target of heartbeat::fuzzing");
        }
    }
    let binaries: Vec<String> = names(&root().join("fuzz_targets"))
        .into_iter()
        .map(|f| {
            f.strip_suffix(".rs").unwrap_or_else(|| panic!("fuzz/fuzz_targets/{f}: not a .rs")).to_owned()
        })
        .collect();
    assert_eq!(binaries, all, "fuzz/fuzz_targets/*.rs and heartbeat::fuzzing::TARGETS differ");
    let manifest = fs::read_to_string(root().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .map(|bin| {
            let line =
                bin.lines().find(|l| l.trim_start().starts_with("name")).expect("a [[bin]] has a name");
            line.split('"').nth(1).expect("name = \"...\"")
        })
        .collect();
    bins.sort_unstable();
    assert_eq!(bins, all, "the [[bin]]s of fuzz/Cargo.toml and heartbeat::fuzzing::TARGETS differ");
}
