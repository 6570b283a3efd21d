//! `include/heartbeat.h` is what cbindgen makes of `src/capi/` with
//! `cbindgen.toml`: the checked-in header never drifts from the code.
//! `HEARTBEAT_BLESS=1 cargo test --test capi_header` rewrites it.

use std::path::Path;

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    assert!(generated.contains("hb_beater_new"), "cbindgen did not see src/capi/:\n{generated}");

    let header = root.join("include/heartbeat.h");
    if std::env::var_os("HEARTBEAT_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&header, &generated).expect("write include/heartbeat.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&header).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the end".to_owned(), |n| format!("line {}", n + 1));
        panic!(
            "include/heartbeat.h differs from what cbindgen generates from src/capi/ (first at {line}).\n\
             Regenerate it with: HEARTBEAT_BLESS=1 cargo test --test capi_header\n\
             --- generated ---\n{generated}"
        );
    }
}
