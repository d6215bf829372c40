//! `authzd` subcommands, one file each, and the process exit codes.
//!
//! Output never panics. Rust ignores SIGPIPE, so `println!` and `eprintln!` panic (exit
//! 101) when the reader of stdout or stderr has gone (`authzd diff ... | head -1`,
//! `authzd test ... 2>&1 | head -1`). Here stdout is written through [`out`] (and
//! [`say!`]): a reader that went away ends the output quietly and the command exits with
//! its own code, as if the rest had been read; any other write failure (a full disk) is
//! reported and makes the command exit [`Exit::IoErr`] ([`finish`]). And `eprintln!`
//! in these modules is the one below, which ignores a stderr that cannot be written.

use std::sync::atomic::{AtomicBool, Ordering};

/// `eprintln!` for the subcommands (it shadows the standard macro in this module and the
/// ones declared after it): a line to stderr, ignoring failures. There is nowhere to
/// report that stderr cannot be written, and a closed stderr must not turn an answer into
/// a panic.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Prints a line to stdout through [`out`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::out(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// Set once stdout's reader has gone (EPIPE): later output is dropped.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// Set once writing to stdout failed otherwise: [`finish`] turns the exit into
/// [`Exit::IoErr`].
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout and flushes it. A reader that went away (a broken pipe) is not
/// an error: the rest of the output is dropped. Any other failure is printed to stderr
/// once, the rest of the output dropped, and [`finish`] makes the exit code
/// [`Exit::IoErr`].
pub fn out(text: &str) {
    use std::io::Write as _;
    if STDOUT_GONE.load(Ordering::Relaxed) || STDOUT_FAILED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_GONE.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            STDOUT_FAILED.store(true, Ordering::Relaxed);
            eprintln!("error: cannot write the output: {e}");
        }
    }
}

/// The exit code of a subcommand that returned `exit`: [`Exit::IoErr`] instead of a
/// result (0, 1 or 3) when its output could not be written; an error code stays.
pub fn finish(exit: Exit) -> Exit {
    match exit {
        Exit::Ok | Exit::Unhealthy | Exit::Denied if STDOUT_FAILED.load(Ordering::Relaxed) => {
            Exit::IoErr
        }
        _ => exit,
    }
}

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
    /// The output could not be written to stdout (a full disk, an I/O error; not a reader
    /// that went away, which is no error).
    IoErr,
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
            Exit::IoErr => 74,
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
