//! `authzd`: parses the command line, sets up logging, and dispatches. All logic lives in
//! the library.
#![forbid(unsafe_code)]

use authz::{
    cli::{self, Exit},
    config::{Cli, Command},
    telemetry,
};
use clap::Parser;

fn main() -> Exit {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
        }
    };
    // Dropped when main returns: the last spans are flushed then.
    let _telemetry = telemetry::init(
        cli.log_format,
        cli.otlp_endpoint.as_deref().filter(|e| !e.is_empty()),
        cli.otlp_sampling_ratio,
    );
    let exit = match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Validate(args) => cli::validate::run(&args),
        Command::Check(args) => cli::check::run(&args),
        Command::List(args) => cli::check::list(&args),
        Command::Migrate(args) => cli::migrate::run(&args),
        Command::Policy(command) => cli::policy::run(&command),
        Command::GenDataset(args) => cli::dataset::run(&args),
        Command::AdminToken(args) => cli::admin_token::run(&args),
        Command::Health(args) => cli::health::run(&args),
        Command::Test(args) => cli::test::run(&args),
        Command::Diff(args) => cli::diff::run(&args),
    };
    cli::finish(exit)
}
