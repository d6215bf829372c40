//! The `authzd` command line: every `serve` flag can also be set by an `AUTHZ_*`
//! environment variable. Values are typed (addresses, durations), so a bad value is
//! reported before anything binds.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::telemetry::LogFormat;

/// authzd: role-based authorization decisions with reasons, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "authzd", version, about, long_about = None)]
pub struct Cli {
    /// Log line format (logs go to stderr; `RUST_LOG` sets levels, default `info`).
    #[arg(long, global = true, env = "AUTHZ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (query service, health, reflection).
    Serve(ServeArgs),
    /// Check policy files and report every problem.
    Validate(ValidateArgs),
    /// Decide one request offline against a policy file, as the server would.
    Check(CheckArgs),
    /// List what a subject may do at a scope, offline, as ListPermissions would.
    List(ListArgs),
}

/// `authzd serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Policy file (YAML or JSON) to serve; reloaded when it changes.
    #[arg(long, env = "AUTHZ_POLICY")]
    pub policy: PathBuf,
    /// Address to listen on for gRPC.
    #[arg(long, env = "AUTHZ_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// How often to look for policy file changes (`0s` disables; SIGHUP always reloads).
    #[arg(long, env = "AUTHZ_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
    /// How long a request with `min_revision` waits for that revision.
    #[arg(long, env = "AUTHZ_REVISION_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub revision_wait: Duration,
    /// Most checks in one BatchCheck.
    #[arg(long, env = "AUTHZ_MAX_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "AUTHZ_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..=256 * 1024 * 1024))]
    pub max_message_bytes: u32,
    /// Close client connections older than this (`0s`: never), so clients balancing
    /// over a headless Service re-resolve and spread onto new replicas.
    #[arg(long, env = "AUTHZ_MAX_CONNECTION_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[arg(long, env = "AUTHZ_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// `authzd validate`.
#[derive(Clone, Debug, Args)]
pub struct ValidateArgs {
    /// Policy files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// What `check` and `list` print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line for people.
    #[default]
    Text,
    /// The full answer as JSON.
    Json,
}

/// `authzd check`.
#[derive(Clone, Debug, Args)]
pub struct CheckArgs {
    /// Policy file.
    #[arg(long, env = "AUTHZ_POLICY")]
    pub policy: PathBuf,
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Subject id (omit for an anonymous request).
    #[arg(long, default_value = "")]
    pub subject: String,
    /// Scope ("" is the tenant root).
    #[arg(long, default_value = "")]
    pub scope: String,
    /// A named permission to check.
    #[arg(long, conflicts_with_all = ["method", "path"], required_unless_present = "path")]
    pub permission: Option<String>,
    /// HTTP method of a route check.
    #[arg(long, requires = "path")]
    pub method: Option<String>,
    /// HTTP path of a route check.
    #[arg(long, requires = "method")]
    pub path: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `authzd list`.
#[derive(Clone, Debug, Args)]
pub struct ListArgs {
    /// Policy file.
    #[arg(long, env = "AUTHZ_POLICY")]
    pub policy: PathBuf,
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Subject id.
    #[arg(long, default_value = "")]
    pub subject: String,
    /// Scope ("" is the tenant root).
    #[arg(long, default_value = "")]
    pub scope: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_defaults_and_flags() {
        let cli = Cli::try_parse_from(["authzd", "serve", "--policy", "p.yaml"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(a.reload_interval, Duration::from_secs(2));
        assert_eq!(a.max_batch, 1000);
        let cli = Cli::try_parse_from([
            "authzd",
            "--log-format",
            "json",
            "serve",
            "--policy",
            "p.yaml",
            "--listen",
            "0.0.0.0:1",
            "--reload-interval",
            "250ms",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Serve(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.reload_interval, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_rejected_before_anything_runs() {
        for args in [
            &["authzd", "serve", "--policy", "p", "--listen", "nope"][..],
            &[
                "authzd",
                "serve",
                "--policy",
                "p",
                "--reload-interval",
                "soon",
            ],
            &["authzd", "serve", "--policy", "p", "--max-batch", "0"],
            &["authzd", "serve"],
            &[
                "authzd", "check", "--policy", "p", "--tenant", "t", "--method", "GET",
            ],
            &["authzd", "check", "--policy", "p", "--tenant", "t"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
