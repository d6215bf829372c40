//! Where the policy comes from: a policy file ([`file`]), loaded at start and reloaded
//! when it changes, or PostgreSQL ([`postgres`]), loaded at start and followed through
//! its change log.

pub mod admin;
pub mod file;
pub mod follow;
pub mod pgtls;
pub mod postgres;
pub mod sync;

use tokio::sync::Semaphore;

/// Most policy documents parsed or compiled at once ([`off_runtime`]): the file
/// reloader's version, ApplyPolicy's document, the database follower's full loads
/// (per batch of tenants) and tenant rebuilds share these. A compile is CPU-bound for as
/// long as the document is large (a 10,000-role tenant takes a noticeable fraction of a
/// second); two at once leave the request runtime's workers their cores on a small
/// machine, while a third waits its turn rather than queueing more CPU work.
pub const MAX_CONCURRENT_COMPILES: usize = 2;

static COMPILES: Semaphore = Semaphore::const_new(MAX_CONCURRENT_COMPILES);

/// A parse or compile task that did not finish (it panicked or was cancelled).
#[derive(Debug, thiserror::Error)]
#[error("policy compile task failed: {0}")]
pub struct CompileTaskError(String);

/// Runs `f` (parsing or compiling a policy) on tokio's blocking threads, at most
/// [`MAX_CONCURRENT_COMPILES`] at a time, so the runtime that answers requests never
/// runs it: Checks keep being answered while a large document compiles. The permit is
/// held by the blocking task itself, so a caller that gives up (a client cancelling
/// ApplyPolicy) does not let another compile start while this one still runs.
pub async fn off_runtime<T, F>(f: F) -> Result<T, CompileTaskError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = COMPILES
        .acquire()
        .await
        .map_err(|e| CompileTaskError(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| CompileTaskError(e.to_string()))
}

/// Parses and compiles running (or holding a permit) right now.
pub fn compiles_running() -> usize {
    MAX_CONCURRENT_COMPILES.saturating_sub(COMPILES.available_permits())
}
