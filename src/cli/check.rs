//! `heartbeat check`: judge a heartbeat file, for Docker, Kubernetes and Nagios.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use heartbeat::{Error, HeartbeatState, HumanDuration, process, read_state};
use serde_json::json;

/// Judge a heartbeat file: exit 0 if alive, 1 if not.
///
/// Not alive: the file is missing, unreadable, corrupt, older than --max-age,
/// or dated in the future (clock skew); with --pid, also when its writer's
/// process is gone. With --format nagios the exit code follows the Nagios
/// plugin convention instead.
///
/// --max-age auto (the default) allows --missed intervals of the file's own
/// `interval_sec` (3 by default: 30 s for the default 10 s beat), or 30 s
/// when the file does not say its interval.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat check /run/myapp/heartbeat.json
  heartbeat check /run/myapp/heartbeat.json --max-age 30 --pid
  HEALTHCHECK CMD [\"heartbeat\", \"check\", \"/run/app.json\", \"--max-age\", \"30\"]
  heartbeat check /run/app.json --format nagios   # 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN

Exit codes (text, json): 0 alive, 1 not alive. A health outcome is never 2;
2 means the command line itself was wrong.")]
pub struct CheckArgs {
    /// The heartbeat file to judge.
    file: PathBuf,
    /// The oldest beat still counted as alive: seconds, or `auto` for
    /// --missed times the file's own interval (30 s if it has none).
    #[arg(long, value_name = "S|auto", allow_negative_numbers = true, default_value = "auto", value_parser = parse_max_age)]
    max_age: MaxAge,
    /// With --max-age auto: how many intervals may pass without a beat.
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value = "3", value_parser = clap::value_parser!(u32).range(1..=1000))]
    missed: u32,
    /// Also require the writer's process to be alive: its PID exists on this
    /// host and, where the file records them, has the same start time and
    /// boot (so a recycled PID does not count). A file written on another
    /// host is then not alive.
    #[arg(long)]
    pid: bool,
    /// What to print: one line of text, a JSON object, or a Nagios plugin line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// `--max-age`: a number of seconds, or read from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MaxAge {
    Auto,
    Fixed(Duration),
}

/// The max age when the file does not say its interval.
const FALLBACK_MAX_AGE: Duration = Duration::from_secs(30);

fn parse_max_age(s: &str) -> Result<MaxAge, String> {
    if s == "auto" {
        return Ok(MaxAge::Auto);
    }
    super::parse_seconds(s).map(MaxAge::Fixed).map_err(|e| format!("{e} (or `auto`)"))
}

impl MaxAge {
    /// The max age for this file, and how it was chosen.
    fn resolve(self, state: Option<&HeartbeatState>, missed: u32) -> (Duration, &'static str) {
        match (self, state.and_then(|s| s.interval)) {
            (MaxAge::Fixed(d), _) => (d, "given"),
            (MaxAge::Auto, Some(interval)) if !interval.is_zero() => {
                (interval.saturating_mul(missed), "auto: the file's interval times --missed")
            }
            (MaxAge::Auto, _) => (FALLBACK_MAX_AGE, "auto: the file has no interval"),
        }
    }
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
    /// Fresh enough, but its writer's process is gone (`--pid`).
    Gone {
        state: HeartbeatState,
        age: Duration,
        why: String,
    },
    Missing(Error),
    /// Present but unreadable, not JSON, or lacking usable fields.
    Broken(Error),
}

impl Verdict {
    fn judge(
        path: &Path,
        state: Result<HeartbeatState, Error>,
        max_age: Duration,
        now: SystemTime,
    ) -> Verdict {
        let state = match state {
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

    /// `--pid`: an alive verdict stands only if its writer's process does.
    fn require_process(self) -> Verdict {
        let Verdict::Alive { state, age } = self else { return self };
        match writer_gone(&state) {
            Some(why) => Verdict::Gone { state, age, why },
            None => Verdict::Alive { state, age },
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Verdict::Alive { .. } => "alive",
            Verdict::Stale { .. } => "stale",
            Verdict::Skewed { .. } => "skewed",
            Verdict::Gone { .. } => "gone",
            Verdict::Missing(_) => "missing",
            Verdict::Broken(Error::Unreadable { .. }) => "unreadable",
            Verdict::Broken(_) => "corrupt",
        }
    }

    fn state(&self) -> Option<&HeartbeatState> {
        match self {
            Verdict::Alive { state, .. }
            | Verdict::Stale { state, .. }
            | Verdict::Skewed { state, .. }
            | Verdict::Gone { state, .. } => Some(state),
            Verdict::Missing(_) | Verdict::Broken(_) => None,
        }
    }

    fn age(&self) -> Option<Duration> {
        match self {
            Verdict::Alive { age, .. } | Verdict::Stale { age, .. } | Verdict::Gone { age, .. } => Some(*age),
            _ => None,
        }
    }

    /// Why, in a sentence.
    fn reason(&self, path: &Path, max_age: Duration, how: &str) -> String {
        match self {
            Verdict::Alive { state, age }
            | Verdict::Stale { state, age }
            | Verdict::Gone { state, age, .. } => {
                let who = match &state.hostname {
                    Some(host) => format!("pid {} on {host}", state.pid),
                    None => format!("pid {}", state.pid),
                };
                let limit = if matches!(self, Verdict::Stale { .. }) { "over" } else { "within" };
                let gone = match self {
                    Verdict::Gone { why, .. } => format!("; but {why}"),
                    _ => String::new(),
                };
                format!(
                    "{} beat {} ago ({who}), {limit} the max age of {} ({how}){gone}",
                    path.display(),
                    HumanDuration(*age),
                    HumanDuration(max_age),
                )
            }
            Verdict::Skewed { error, .. } | Verdict::Missing(error) | Verdict::Broken(error) => {
                error.to_string()
            }
        }
    }
}

/// Why the writer of `state` is not running here any more, if it is not.
fn writer_gone(state: &HeartbeatState) -> Option<String> {
    let pid = state.pid;
    if let Some(host) = &state.hostname
        && *host != process::hostname()
    {
        return Some(format!("it was written on host `{host}`, so its pid {pid} cannot be checked here"));
    }
    if let (Some(theirs), Some(ours)) = (&state.boot_id, process::boot_id())
        && *theirs != ours
    {
        return Some(format!("pid {pid} ran before this host last booted"));
    }
    if !process::pid_alive(pid) {
        return Some(format!("pid {pid} is not running"));
    }
    if let Some(theirs) = state.process_start_ticks
        && let Ok(pid) = u32::try_from(pid)
        && let Some(now) = process::start_ticks(pid)
        && now != theirs
    {
        return Some(format!("pid {pid} is now another process (it started at another time)"));
    }
    None
}

pub fn run(args: &CheckArgs) -> ExitCode {
    let state = read_state(&args.file);
    let (max_age, how) = args.max_age.resolve(state.as_ref().ok(), args.missed);
    let mut verdict = Verdict::judge(&args.file, state, max_age, SystemTime::now());
    if args.pid {
        verdict = verdict.require_process();
    }
    let alive = matches!(verdict, Verdict::Alive { .. });
    let reason = super::one_line(&verdict.reason(&args.file, max_age, how));
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
                "max_age_sec": max_age.as_secs_f64(),
                "max_age_from": if args.max_age == MaxAge::Auto { "auto" } else { "given" },
                "reason": reason,
                "state": verdict.state(),
            });
            (out.to_string(), u8::from(!alive))
        }
        Format::Nagios => {
            let warn_after = max_age.mul_f64(2.0 / 3.0);
            let (code, label) = match &verdict {
                Verdict::Alive { age, .. } if *age > warn_after => (1, "WARNING"),
                Verdict::Alive { .. } => (0, "OK"),
                Verdict::Stale { .. } | Verdict::Missing(_) | Verdict::Gone { .. } => (2, "CRITICAL"),
                Verdict::Skewed { .. } | Verdict::Broken(_) => (3, "UNKNOWN"),
            };
            let perf = verdict
                .age()
                .map(|a| {
                    format!(
                        " | age={:.3}s;{:.3};{:.3};0",
                        a.as_secs_f64(),
                        warn_after.as_secs_f64(),
                        max_age.as_secs_f64()
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
