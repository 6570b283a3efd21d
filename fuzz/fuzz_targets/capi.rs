#![no_main]
//! `cargo +nightly fuzz run capi`: see `heartbeat::fuzzing` and the README's Fuzzing section.
libfuzzer_sys::fuzz_target!(|data: &[u8]| heartbeat::fuzzing::check("capi")(data));
