//! Property checks for the fuzz targets in `fuzz/` and for
//! `tests/fuzz_corpus.rs`, which replays their corpus on stable Rust.
//!
//! Not part of the public API (hidden from the docs, no stability promise):
//! it is public only so that the fuzz crate and the integration test can
//! call the same check per input. Each check takes arbitrary bytes and
//! panics (through `assert!`) when a property fails: round trips, agreement
//! between readers of one format, work and memory bounded by the input.
//! A check that merely returns has found nothing.
//!
//! Adding a target: one function `fn(&[u8])` here (usually a module of its
//! own), one line in [`TARGETS`], one file `fuzz/fuzz_targets/<name>.rs`
//! and its `[[bin]]` in `fuzz/Cargo.toml`.

#[cfg(feature = "capi")]
mod capi;
mod files;
mod http;
mod input;
mod lines;
mod nick_auth;
mod roundtrip;
mod service;
mod wire;

/// A fuzz target: its name (the directory of its corpus, the fuzz binary)
/// and its check.
pub struct Target {
    /// `fuzz/corpus/<name>/`, `fuzz/regressions/<name>/`, `cargo fuzz run <name>`.
    pub name: &'static str,
    /// Runs every property on one input; panics on a violation.
    pub check: fn(&[u8]),
}

/// Every target, in the order the README lists them.
pub const TARGETS: &[Target] = &[
    Target { name: "wire", check: wire::check },
    Target { name: "roundtrip", check: roundtrip::check },
    Target { name: "lines", check: lines::check },
    Target { name: "state_file", check: files::state_file },
    Target { name: "time_and_names", check: files::time_and_names },
    Target { name: "http", check: http::check },
    Target { name: "service", check: service::check },
    Target { name: "nick_auth", check: nick_auth::check },
    #[cfg(feature = "capi")]
    Target { name: "capi", check: capi::check },
];

/// The check of the target `name`; panics if there is none (or it needs a
/// feature that is off).
pub fn check(name: &str) -> fn(&[u8]) {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name:?} (capi needs --features capi)"))
        .check
}
