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
    if let Err(exit) = check_url(url) {
        return exit;
    }
    block_on(async {
        // A schema a newer release migrated: nothing to do (an older binary serves it
        // during a rollout or a rollback), not a failure of the init container.
        if let Ok(client) = crate::store::postgres::connect(url).await
            && let Ok(crate::store::postgres::SchemaState::Ahead { applied }) =
                crate::store::postgres::schema_state(&client).await
        {
            super::say!(
                "the schema is at V{applied}, newer than this binary's V{}: nothing to migrate",
                crate::store::postgres::expected_schema_version()
            );
            return Exit::Ok;
        }
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
                // The database's own message (say, permission denied for schema public)
                // is in the error's sources.
                eprintln!("error: migration failed: {}", crate::store::sync::chain(&e));
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

/// Refuses a database URL that does not parse, or names TLS files that cannot be read,
/// before anything connects: exit 64 naming the problem (the password is never shown).
pub(crate) fn check_url(url: &str) -> Result<(), Exit> {
    match crate::store::pgtls::connect_config(url) {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("error: {e}");
            Err(Exit::Usage)
        }
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
