#![no_main]
//! `cargo +nightly fuzz run time_and_names`: see `heartbeat::fuzzing` and the README's Fuzzing section.
libfuzzer_sys::fuzz_target!(|data: &[u8]| heartbeat::fuzzing::check("time_and_names")(data));
