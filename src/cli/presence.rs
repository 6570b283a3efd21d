//! The `--etcd` flags of `monitor` and `serve`: one [`Presence`] (one lease)
//! per process, shared by everything the process publishes.

use std::time::Duration;

use clap::Args;
use heartbeat::Error;
use heartbeat::etcd::{self, Client, MIN_TTL, Presence};

#[derive(Debug, Clone, Args)]
pub(super) struct EtcdArgs {
    /// Publish to etcd (comma-separated endpoints, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379):
    /// this process's heartbeat and one key per member, under one lease.
    #[arg(long, value_name = "URL[,URL...]", value_parser = parse_endpoints)]
    pub(super) etcd: Option<Client>,
    /// The prefix of every key published to etcd.
    #[arg(long, value_name = "PREFIX", default_value = etcd::DEFAULT_PREFIX, requires = "etcd", value_parser = parse_prefix)]
    pub(super) etcd_prefix: String,
    /// The etcd lease's TTL in seconds (at least 2): a crashed or frozen
    /// process's keys vanish within it. Kept alive every TTL/3.
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "10", requires = "etcd", value_parser = parse_ttl)]
    pub(super) etcd_ttl: Duration,
}

/// Checked by clap, so that a bad endpoint is a bad argument (exit 2), as
/// for `beat --etcd`.
fn parse_endpoints(s: &str) -> Result<Client, String> {
    Client::from_list(s).map_err(|e| e.to_string())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    etcd::check_prefix(s).map(|()| s.to_owned()).map_err(|e| e.to_string())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = super::parse_positive_seconds(s)?;
    if ttl < MIN_TTL {
        return Err(format!("at least {} seconds", MIN_TTL.as_secs()));
    }
    Ok(Duration::from_secs(ttl.as_secs()))
}

impl EtcdArgs {
    /// The presence, when --etcd is given: started at once, its lease
    /// granted on its own thread (an etcd that is down is retried, never
    /// waited for).
    pub(super) fn start(&self) -> Result<Option<Presence>, Error> {
        let Some(client) = &self.etcd else { return Ok(None) };
        Presence::start(client.clone(), self.etcd_ttl).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let args = Cli::try_parse_from(["x"]).unwrap().etcd;
        assert!(args.etcd.is_none() && args.start().unwrap().is_none());
        assert_eq!(
            (args.etcd_prefix.as_str(), args.etcd_ttl),
            (etcd::DEFAULT_PREFIX, Duration::from_secs(10))
        );
        let args =
            Cli::try_parse_from(["x", "--etcd", "http://127.0.0.1:1,http://127.0.0.1:2", "--etcd-ttl", "3"])
                .unwrap()
                .etcd;
        assert_eq!(args.etcd_ttl, Duration::from_secs(3));
        for bad in [
            &["x", "--etcd-prefix", "p/"][..],
            &["x", "--etcd", "http://127.0.0.1:1", "--etcd-ttl", "1"],
            &["x", "--etcd", "http://127.0.0.1:1", "--etcd-prefix", "a b"],
            &["x", "--etcd", "http://127.0.0.1:1", "--etcd-prefix", ""],
            &["x", "--etcd", "https://127.0.0.1:1"],
            &["x", "--etcd", " , "],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
