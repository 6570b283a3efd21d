#![no_main]
//! `cargo +nightly fuzz run lines`: see `heartbeat::fuzzing` and the README's Fuzzing section.
libfuzzer_sys::fuzz_target!(|data: &[u8]| heartbeat::fuzzing::check("lines")(data));
