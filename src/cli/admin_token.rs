//! `authzd admin-token`: a new random admin API token, and the line that admits it in
//! the tokens file (only its SHA-256 hash is stored there).

use tracing::error;

use super::Exit;
use crate::{config::AdminTokenArgs, grpc::auth};

/// Prints `token: <token>` and `line: <tokens-file line>`.
pub fn run(args: &AdminTokenArgs) -> Exit {
    // A field of the line may not contain spaces, or it would split into two fields.
    let spaced = |s: &str| s.is_empty() || s.chars().any(char::is_whitespace);
    if spaced(&args.tenants) || args.name.as_deref().is_some_and(spaced) {
        error!("--tenants and --name must be non-empty and without spaces");
        return Exit::Usage;
    }
    // The same rules the tokens file is read with, so the printed line always loads.
    let line = auth::file_line("x", &args.tenants, args.name.as_deref());
    if let Err(e) = auth::AdminTokens::parse(&line, "--tenants/--name") {
        error!(cause = %e, "invalid --tenants or --name");
        return Exit::Usage;
    }
    let token = match auth::generate() {
        Ok(t) => t,
        Err(e) => {
            error!(cause = %e, "cannot get random bytes from the operating system");
            return Exit::Software;
        }
    };
    say!("token: {token}");
    say!(
        "line: {}",
        auth::file_line(&token, &args.tenants, args.name.as_deref())
    );
    Exit::Ok
}
