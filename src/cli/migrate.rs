//! `authzd migrate`: brings the PostgreSQL schema up to date (the migrations embedded in
//! the binary, `migrations/`).

use std::future::Future;

use clap::Args;

use super::Exit;
use crate::store::{postgres::StoreError, sync::SyncError};

/// `authzd migrate`.
#[derive(Clone, Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL, e.g. `postgres://user@host:5432/authz`.
    #[arg(
        long,
        env = "AUTHZ_DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "if_configured"
    )]
    pub database_url: Option<String>,
    /// Without a database URL, do nothing and exit 0 (an init container in manifests
    /// whose database Secret is optional).
    #[arg(long)]
    pub if_configured: bool,
}

/// Runs the command. Migrators started at once take turns (an advisory lock).
pub fn run(args: &MigrateArgs) -> Exit {
    let Some(url) = &args.database_url else {
        super::say!("no database configured; nothing to migrate");
        return Exit::Ok;
    };
    block_on(async {
        match crate::store::postgres::migrate(url).await {
            Ok(applied) if applied.is_empty() => {
                super::say!("schema up to date");
                Exit::Ok
            }
            Ok(applied) => {
                for v in applied {
                    super::say!("applied {v}");
                }
                Exit::Ok
            }
            Err(StoreError::Migrate(e)) => {
                eprintln!("error: migration failed: {e}");
                Exit::Software
            }
            Err(e) => report(&SyncError::from(e)),
        }
    })
}

/// Prints a database error and returns its exit code: 65 for a document or change the
/// database refuses, 69 when the database cannot be reached (or has no schema), 70
/// otherwise.
pub(crate) fn report(e: &SyncError) -> Exit {
    eprintln!("error: {e}");
    exit_for(e)
}

/// The exit code for a database error (see [`report`]).
pub(crate) fn exit_for(e: &SyncError) -> Exit {
    match e {
        SyncError::Invalid(_) | SyncError::Rejected { .. } | SyncError::Protected { .. } => {
            Exit::DataErr
        }
        SyncError::Unavailable { .. } => Exit::Unavailable,
        SyncError::Db { .. } => Exit::Software,
    }
}

/// Runs a database command on a single-threaded runtime (one connection, nothing to
/// spread over threads).
pub(crate) fn block_on(f: impl Future<Output = Exit>) -> Exit {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            Exit::Software
        }
    }
}
