//! `authzd` subcommands, one file each, and the process exit codes.

/// Prints a line to stdout, ignoring a closed pipe (`authzd list ... | head` must not
/// panic the way `println!` does).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use say;

pub mod admin_token;
pub mod check;
pub mod dataset;
pub mod diff;
pub mod health;
pub mod migrate;
pub mod policy;
pub mod serve;
pub mod test;
pub mod validate;

use std::process::{ExitCode, Termination};

/// Exit codes (sysexits-style where one fits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success; for `check`, allowed.
    Ok,
    /// `health`: the server is not SERVING, or did not answer; `test`: an expectation
    /// failed; `diff --exit-code`: someone's access changes.
    Unhealthy,
    /// `check`: the request is denied (not an error).
    Denied,
    /// Bad command line or request value.
    Usage,
    /// The policy is invalid.
    DataErr,
    /// A file could not be read.
    NoInput,
    /// The address could not be bound or the server failed.
    Unavailable,
    /// An internal failure.
    Software,
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Unhealthy => 1,
            Exit::Denied => 3,
            Exit::Usage => 64,
            Exit::DataErr => 65,
            Exit::NoInput => 66,
            Exit::Unavailable => 69,
            Exit::Software => 70,
        }
    }
}

impl Termination for Exit {
    fn report(self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

/// The exit code for a policy that failed to load.
pub fn load_exit(e: &crate::store::file::LoadError) -> Exit {
    use crate::{policy::source::SourceError, store::file::LoadError};
    match e {
        LoadError::Source(SourceError::Io { .. }) => Exit::NoInput,
        _ => Exit::DataErr,
    }
}
