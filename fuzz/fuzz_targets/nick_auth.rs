#![no_main]
//! `cargo +nightly fuzz run nick_auth`: see `heartbeat::fuzzing` and the README's Fuzzing section.
libfuzzer_sys::fuzz_target!(|data: &[u8]| heartbeat::fuzzing::check("nick_auth")(data));
