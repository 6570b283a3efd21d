//! Writing the Prometheus text exposition format (0.0.4): the helpers every
//! `/metrics` page in the crate uses (the hub's status endpoint, and any
//! service built on [`HttpServer`](super::HttpServer)).
//!
//! ```
//! use heartbeat::http::metrics::{family, sample};
//!
//! let mut out = String::new();
//! family(&mut out, "jobs_total", "counter", "Jobs run.");
//! sample(&mut out, "jobs_total", Some(("kind", "nightly")), 3);
//! assert_eq!(out, "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{kind=\"nightly\"} 3\n");
//! ```

use std::fmt::Write as _;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's `# HELP` and `# TYPE` lines; `kind` is `counter` or
/// `gauge`. Write it once, before the family's samples.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line, `name{label="value"} n` or `name n`; the label's value
/// is escaped as the format wants.
pub fn sample(out: &mut String, name: &str, label: Option<(&str, &str)>, value: u64) {
    match label {
        Some((key, value_of_label)) => {
            let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {value}", escape_label(value_of_label));
        }
        None => {
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
pub fn escape_label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), r"x\ny");
        let mut out = String::new();
        sample(&mut out, "m", Some(("k", "say \"hi\"")), 1);
        assert_eq!(out, "m{k=\"say \\\"hi\\\"\"} 1\n");
    }
}
