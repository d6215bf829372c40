//! The policy file as the source of truth: loaded before the server binds, then polled
//! and reloaded when its content changes (or on SIGHUP).
//!
//! Polling rather than inotify: Kubernetes updates a mounted ConfigMap by swapping a
//! symlink, which file watches miss or see twice; comparing content every interval is
//! simple and always right. A new version that does not compile is never published: the
//! server keeps the last good policy and logs the error once per bad version.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{error, info};

use crate::{
    cache::Cache,
    policy::{
        CompileError, Limits, Policy, PolicyDocument, compile_with, source::Format,
        source::SourceError,
    },
};

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Unreadable or unparsable.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Parsed but invalid.
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// Parses and compiles policy text with `limits`; `file` names it in errors.
pub fn compile_text(
    text: &str,
    file: &str,
    format: Format,
    revision: u64,
    limits: Limits,
) -> Result<Policy, LoadError> {
    let doc = PolicyDocument::parse(text, format, file)?;
    Ok(compile_with(&doc, file, revision, limits)?)
}

/// Reads and compiles a policy file with the default [`Limits`].
pub fn load(path: &std::path::Path, revision: u64) -> Result<(Policy, String), LoadError> {
    load_with(path, revision, Limits::default())
}

/// Reads and compiles a policy file held to `limits`.
pub fn load_with(
    path: &std::path::Path,
    revision: u64,
    limits: Limits,
) -> Result<(Policy, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Io {
        file: path.display().to_string(),
        source,
    })?;
    let policy = compile_text(
        &text,
        &path.display().to_string(),
        Format::from_path(path),
        revision,
        limits,
    )?;
    Ok((policy, text))
}

/// A task handle that aborts the task when dropped, so no background task outlives its
/// owner.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the reloader has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Changed versions of the file processed (published or rejected).
    pub versions: u64,
    /// Why the newest version was rejected or could not be read; `None` once a version
    /// is published.
    pub last_error: Option<String>,
    /// When a version was last applied (the one loaded at start until a change is).
    pub reloaded_at: Option<SystemTime>,
    /// Versions rejected, plus read outages (each counted once, as logged).
    pub failures: u64,
}

/// The running reload loop; dropping it stops the loop.
#[derive(Debug)]
pub struct Reloader {
    _task: AbortOnDrop,
    /// Status after each processed version.
    pub status: watch::Receiver<ReloadStatus>,
}

/// Starts the reload loop: every `interval` (`Duration::ZERO`: never by itself) and on
/// every SIGHUP the file is read, and a changed, valid version replaces the policy at the
/// next revision. `current` is the text already loaded, just now.
pub fn spawn_reloader(
    path: PathBuf,
    cache: Cache,
    interval: Duration,
    current: String,
    limits: Limits,
) -> Reloader {
    let (status_tx, status) = watch::channel(ReloadStatus {
        reloaded_at: Some(SystemTime::now()),
        ..ReloadStatus::default()
    });
    let task = tokio::spawn(async move {
        let mut last = current;
        let mut read_failing = false;
        // Whether `last` is a version that was rejected (the cache holds an older one).
        let mut rejected = false;
        let mut hangup = hangup_signal();
        // A zero interval turns polling off; SIGHUP still reloads.
        let mut tick = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        loop {
            tokio::select! {
                _ = async {
                    match tick.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                _ = recv(&mut hangup) => info!(file = %path.display(), "SIGHUP: reloading the policy"),
            }
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => {
                    read_failing = false;
                    t
                }
                Err(e) => {
                    // Log once per outage, not once per tick.
                    if !read_failing {
                        error!(file = %path.display(), cause = %e, "cannot read the policy file; keeping the last good policy");
                        status_tx.send_modify(|s| {
                            s.last_error = Some(format!("{}: {e}", path.display()));
                            s.failures += 1;
                        });
                        read_failing = true;
                    }
                    continue;
                }
            };
            if text == last {
                // The cache still holds the file's content, unless that content was
                // rejected (then the cache holds an older version and is not current).
                if !rejected {
                    cache.confirm();
                }
                continue;
            }
            let revision = cache.revision() + 1;
            let name = path.display().to_string();
            let format = Format::from_path(&path);
            let compiled = {
                let text = text.clone();
                tokio::task::spawn_blocking(move || {
                    compile_text(&text, &name, format, revision, limits)
                })
                .await
            };
            let error = match compiled {
                Ok(Ok(policy)) => {
                    let tenants = policy.tenants.len();
                    cache.replace_all(policy, revision);
                    info!(file = %path.display(), revision, tenants, "policy reloaded");
                    None
                }
                Ok(Err(e)) => {
                    error!(file = %path.display(), cause = %e, "the changed policy is invalid; keeping the last good policy");
                    Some(e.to_string())
                }
                Err(e) => {
                    error!(cause = %e, "policy compile task failed; keeping the last good policy");
                    Some(e.to_string())
                }
            };
            rejected = error.is_some();
            status_tx.send_modify(|s| {
                s.versions += 1;
                if rejected {
                    s.failures += 1;
                } else {
                    s.reloaded_at = Some(SystemTime::now());
                }
                s.last_error = error;
            });
            last = text;
        }
    });
    Reloader {
        _task: AbortOnDrop(task),
        status,
    }
}

#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(crate) type Hangup = Option<()>;

#[cfg(unix)]
pub(crate) fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
pub(crate) fn hangup_signal() -> Hangup {
    None
}

#[cfg(unix)]
pub(crate) async fn recv(h: &mut Hangup) {
    match h {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
pub(crate) async fn recv(_: &mut Hangup) {
    std::future::pending().await
}
