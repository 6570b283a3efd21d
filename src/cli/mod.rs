//! Command-line parsing and dispatch.

mod beat;
mod check;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Liveness for processes: keep a heartbeat file fresh, or judge one.
#[derive(Debug, Parser)]
#[command(name = "heartbeat", version, about, propagate_version = true)]
#[command(after_help = "Logging goes to stderr and is set with RUST_LOG (e.g. RUST_LOG=debug).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Beat(beat::BeatArgs),
    Check(check::CheckArgs),
}

/// Parses the command line (exit 2 on bad arguments, clap's convention) and runs the command.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().command {
        Command::Beat(args) => beat::run(args),
        Command::Check(args) => check::run(&args),
    }
}

/// Parses a non-negative, finite number of seconds such as `10` or `0.5`.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a non-negative, finite number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_or_say_why() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_seconds("-1").unwrap_err().contains("non-negative"));
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("ten").unwrap_err().contains("not a number"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
