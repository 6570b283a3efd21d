#![no_main]
//! `cargo +nightly fuzz run wire`: see `heartbeat::fuzzing` and the README's Fuzzing section.
libfuzzer_sys::fuzz_target!(|data: &[u8]| heartbeat::fuzzing::check("wire")(data));
