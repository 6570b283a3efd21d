//! `heartbeat check`: judge a heartbeat file, for Docker, Kubernetes and Nagios.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use heartbeat::{Error, HeartbeatState, read_state};
use serde_json::json;

/// Judge a heartbeat file: exit 0 if alive, 1 if not.
///
/// Not alive: the file is missing, unreadable, corrupt, older than --max-age,
/// or dated in the future (clock skew). With --format nagios the exit code
/// follows the Nagios plugin convention instead.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat check /run/myapp/heartbeat.json --max-age 30
  HEALTHCHECK CMD [\"heartbeat\", \"check\", \"/run/app.json\", \"--max-age\", \"30\"]
  heartbeat check /run/app.json --format nagios   # 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN

Exit codes (text, json): 0 alive, 1 not alive. A health outcome is never 2;
2 means the command line itself was wrong.")]
pub struct CheckArgs {
    /// The heartbeat file to judge.
    file: PathBuf,
    /// The oldest beat still counted as alive, in seconds.
    #[arg(long, value_name = "S", default_value = "30", value_parser = super::parse_seconds)]
    max_age: Duration,
    /// What to print: one line of text, a JSON object, or a Nagios plugin line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    Nagios,
}

/// What the file says about its writer.
enum Verdict {
    Alive {
        state: HeartbeatState,
        age: Duration,
    },
    Stale {
        state: HeartbeatState,
        age: Duration,
    },
    Skewed {
        state: HeartbeatState,
        error: Error,
    },
    Missing(Error),
    /// Present but unreadable, not JSON, or lacking usable fields.
    Broken(Error),
}

impl Verdict {
    fn judge(path: &Path, max_age: Duration, now: SystemTime) -> Verdict {
        let state = match read_state(path) {
            Ok(s) => s,
            Err(e @ Error::NotFound { .. }) => return Verdict::Missing(e),
            Err(e) => return Verdict::Broken(e),
        };
        match state.age_at(now) {
            Ok(age) if age <= max_age => Verdict::Alive { state, age },
            Ok(age) => Verdict::Stale { state, age },
            Err(ahead) => Verdict::Skewed { state, error: Error::ClockSkew { path: path.to_owned(), ahead } },
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Verdict::Alive { .. } => "alive",
            Verdict::Stale { .. } => "stale",
            Verdict::Skewed { .. } => "skewed",
            Verdict::Missing(_) => "missing",
            Verdict::Broken(Error::Unreadable { .. }) => "unreadable",
            Verdict::Broken(_) => "corrupt",
        }
    }

    fn state(&self) -> Option<&HeartbeatState> {
        match self {
            Verdict::Alive { state, .. } | Verdict::Stale { state, .. } | Verdict::Skewed { state, .. } => {
                Some(state)
            }
            Verdict::Missing(_) | Verdict::Broken(_) => None,
        }
    }

    fn age(&self) -> Option<Duration> {
        match self {
            Verdict::Alive { age, .. } | Verdict::Stale { age, .. } => Some(*age),
            _ => None,
        }
    }

    /// Why, in a sentence.
    fn reason(&self, path: &Path, max_age: Duration) -> String {
        match self {
            Verdict::Alive { state, age } | Verdict::Stale { state, age } => {
                let who = match &state.hostname {
                    Some(host) => format!("pid {} on {host}", state.pid),
                    None => format!("pid {}", state.pid),
                };
                let limit = if matches!(self, Verdict::Alive { .. }) { "within" } else { "over" };
                format!(
                    "{} beat {:.3}s ago ({who}), {limit} the max age of {}s",
                    path.display(),
                    age.as_secs_f64(),
                    max_age.as_secs_f64()
                )
            }
            Verdict::Skewed { error, .. } | Verdict::Missing(error) | Verdict::Broken(error) => {
                error.to_string()
            }
        }
    }
}

pub fn run(args: &CheckArgs) -> ExitCode {
    let verdict = Verdict::judge(&args.file, args.max_age, SystemTime::now());
    let alive = matches!(verdict, Verdict::Alive { .. });
    let reason = super::one_line(&verdict.reason(&args.file, args.max_age));
    let (line, code) = match args.format {
        Format::Text => {
            (format!("{}: {reason}", if alive { "alive" } else { "not alive" }), u8::from(!alive))
        }
        Format::Json => {
            let out = json!({
                "path": args.file.to_string_lossy(),
                "alive": alive,
                "status": verdict.name(),
                "age_sec": verdict.age().map(|a| a.as_secs_f64()),
                "max_age_sec": args.max_age.as_secs_f64(),
                "reason": reason,
                "state": verdict.state(),
            });
            (out.to_string(), u8::from(!alive))
        }
        Format::Nagios => {
            let warn_after = args.max_age.mul_f64(2.0 / 3.0);
            let (code, label) = match &verdict {
                Verdict::Alive { age, .. } if *age > warn_after => (1, "WARNING"),
                Verdict::Alive { .. } => (0, "OK"),
                Verdict::Stale { .. } | Verdict::Missing(_) => (2, "CRITICAL"),
                Verdict::Skewed { .. } | Verdict::Broken(_) => (3, "UNKNOWN"),
            };
            let perf = verdict
                .age()
                .map(|a| {
                    format!(
                        " | age={:.3}s;{:.3};{:.3};0",
                        a.as_secs_f64(),
                        warn_after.as_secs_f64(),
                        args.max_age.as_secs_f64()
                    )
                })
                .unwrap_or_default();
            (format!("HEARTBEAT {label} - {reason}{perf}"), code)
        }
    };
    // A closed stdout (`check ... | head -c0`) must not turn the verdict into a panic.
    let _ = writeln!(std::io::stdout(), "{line}");
    ExitCode::from(code)
}
