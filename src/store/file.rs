//! The policy file as the source of truth: loaded before the server binds, then polled
//! and reloaded when its content changes (or on SIGHUP).
//!
//! Polling rather than inotify: Kubernetes updates a mounted ConfigMap by swapping a
//! symlink, which file watches miss or see twice; comparing content every interval is
//! simple and always right. A new version that does not compile is never published: the
//! server keeps the last good policy and logs the error once per bad version. A changed
//! version is applied only once it reads the same again after [`SETTLE`], so a file
//! rewritten in place is never served half-written (a torn prefix may well compile).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, error, info, warn};

use crate::{
    cache::Cache,
    policy::{
        CompileError, Limits, Policy, PolicyDocument, compile_with, source::Format,
        source::SourceError,
    },
};

/// How long a changed file must read the same (content, size and modification time)
/// before it is applied. A writer that rewrites the file in place (truncate, then
/// several writes) exposes prefixes of the new version that may well parse and compile,
/// minus a subject's `disabled: true` line, say; a version is applied only if it is
/// still there, unchanged, this long after it was first read. Writers should still
/// replace the file atomically (write a new file, then rename it over the old one):
/// a writer pausing longer than this between writes cannot be told from two versions.
pub const SETTLE: Duration = Duration::from_millis(150);

/// Consecutive unsettled reads (each [`SETTLE`] apart) after which the reloader stops
/// retrying and waits for the next tick or SIGHUP: a file rewritten non-stop is not
/// re-read non-stop.
const MAX_UNSETTLED: u32 = 20;

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
    let doc = PolicyDocument::parse_limited(text, format, file, limits.document_bytes)?;
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
    let file = path.display().to_string();
    let io = |source| SourceError::Io {
        file: file.clone(),
        source,
    };
    // Refused before reading: a huge file costs nothing but this stat.
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    too_large(&file, bytes, limits.document_bytes)?;
    let text = read_bounded(path, limits.document_bytes).map_err(io)?;
    too_large(&file, text.len() as u64, limits.document_bytes)?;
    let policy = compile_text(
        &text,
        &path.display().to_string(),
        Format::from_path(path),
        revision,
        limits,
    )?;
    Ok((policy, text))
}

/// [`load_with`] for a server's first load: the file is read twice, [`SETTLE`] apart, and
/// compiled only when both reads agree (content, size and modification time), so a file
/// being rewritten in place while the server starts is not served half-written, exactly
/// as the reloader does for later versions. A file still changing after
/// [`MAX_UNSETTLED`] tries is refused ([`SourceError::Io`], "changed between two reads"). Costs one
/// [`SETTLE`] wait (150 ms) of start-up.
pub async fn load_settled(
    path: &std::path::Path,
    revision: u64,
    limits: Limits,
) -> Result<(Policy, String), LoadError> {
    let file = path.display().to_string();
    let mut tries = 0u32;
    loop {
        let first = read_version(path, limits.document_bytes)?;
        tokio::time::sleep(SETTLE).await;
        let second = read_version(path, limits.document_bytes)?;
        if first == second {
            let policy = compile_text(
                &first.text,
                &file,
                Format::from_path(path),
                revision,
                limits,
            )?;
            return Ok((policy, first.text));
        }
        tries += 1;
        if tries >= MAX_UNSETTLED {
            return Err(SourceError::Io {
                file,
                source: std::io::Error::other(format!(
                    "the file changed between two reads {} ms apart, {} times in a row; replace it atomically (write another file, then rename it over this one)",
                    SETTLE.as_millis(),
                    MAX_UNSETTLED
                )),
            }
            .into());
        }
        debug!(file = %file, "the policy file is changing; waiting for it to settle");
    }
}

/// One read of a policy file with its size and modification time, refused over `limit`
/// bytes before it is read.
fn read_version(path: &std::path::Path, limit: u64) -> Result<Version, SourceError> {
    let file = path.display().to_string();
    let io = |source| SourceError::Io {
        file: file.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    too_large(&file, meta.len(), limit)?;
    let text = read_bounded(path, limit).map_err(io)?;
    too_large(&file, text.len() as u64, limit)?;
    Ok(Version {
        len: meta.len(),
        modified: meta.modified().ok(),
        text,
    })
}

/// Reads at most `limit + 1` bytes of `path` as text: a file that is not a regular file
/// (`/dev/zero`, a FIFO) has no size to check first, and must not be read without end.
/// The caller refuses a result longer than `limit`.
pub(crate) fn read_bounded(path: &std::path::Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Refuses a policy file of `bytes` over `limit`.
fn too_large(file: &str, bytes: u64, limit: u64) -> Result<(), SourceError> {
    if bytes > limit {
        return Err(SourceError::TooLarge {
            file: file.to_owned(),
            bytes,
            limit,
        });
    }
    Ok(())
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
/// every SIGHUP the file is read, and a changed, valid version that stays unchanged for
/// [`SETTLE`] replaces the policy at the next revision. `current` is the text already
/// loaded, just now.
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
    let mut watcher = Watcher {
        path,
        cache,
        limits,
        status: status_tx,
        last: current,
        rejected: false,
        read_failing: false,
        settle: Settle::Sleep(SETTLE),
    };
    let task = tokio::spawn(async move {
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
        // Set while a changed version has not settled yet: look again after SETTLE, even
        // with polling off (a SIGHUP sent while the file was being written still lands).
        let mut unsettled = 0u32;
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
                _ = recv(&mut hangup) => info!(file = %watcher.path.display(), "SIGHUP: reloading the policy"),
                _ = async {
                    if unsettled > 0 {
                        tokio::time::sleep(SETTLE).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                } => {}
            }
            if watcher.poll().await == Outcome::Unsettled {
                unsettled += 1;
                if unsettled >= MAX_UNSETTLED {
                    warn!(file = %watcher.path.display(), "the policy file keeps changing; waiting for the next interval or SIGHUP (replace it atomically, with a rename)");
                    unsettled = 0;
                }
            } else {
                unsettled = 0;
            }
        }
    });
    Reloader {
        _task: AbortOnDrop(task),
        status,
    }
}

/// What one look at the file came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The content is what was last processed.
    Unchanged,
    /// The content changed, but not to something that stayed for [`SETTLE`].
    Unsettled,
    /// A new version was compiled and published.
    Applied,
    /// A new version did not compile; the last good one stays.
    Rejected,
    /// The file could not be read.
    Unreadable,
}

/// Waits between the two reads of a changed file.
enum Settle {
    /// The real wait: [`SETTLE`].
    Sleep(Duration),
    /// Tests: runs between the two reads (a writer's second write, deterministically).
    #[cfg(test)]
    Hook(Box<dyn FnMut() + Send + Sync>),
}

/// One read of the file: what a torn write would change between two reads.
#[derive(Debug, PartialEq, Eq)]
struct Version {
    len: u64,
    modified: Option<SystemTime>,
    text: String,
}

/// The reload loop's state: the file, the last version processed, and where it goes.
struct Watcher {
    path: PathBuf,
    cache: Cache,
    limits: Limits,
    status: watch::Sender<ReloadStatus>,
    /// The text last processed (published or rejected).
    last: String,
    /// Whether `last` was rejected (then the cache holds an older version and is not
    /// current).
    rejected: bool,
    /// Whether the file is unreadable since the last read that failed (logged once).
    read_failing: bool,
    settle: Settle,
}

impl Watcher {
    async fn read(&self) -> std::io::Result<Version> {
        let meta = tokio::fs::metadata(&self.path).await?;
        let limit = self.limits.document_bytes;
        if meta.len() > limit {
            return Err(std::io::Error::other(format!(
                "{} bytes is more than the limit max_policy_bytes = {limit}",
                meta.len()
            )));
        }
        let (path, limit) = (self.path.clone(), limit);
        let text = tokio::task::spawn_blocking(move || read_bounded(&path, limit))
            .await
            .map_err(std::io::Error::other)??;
        if text.len() as u64 > limit {
            return Err(std::io::Error::other(format!(
                "{} bytes or more is more than the limit max_policy_bytes = {limit}",
                text.len()
            )));
        }
        Ok(Version {
            len: meta.len(),
            modified: meta.modified().ok(),
            text,
        })
    }

    /// Reads the file, or logs (once per outage) why it cannot.
    async fn read_logged(&mut self) -> Option<Version> {
        match self.read().await {
            Ok(v) => {
                self.read_failing = false;
                Some(v)
            }
            Err(e) => {
                if !self.read_failing {
                    error!(file = %self.path.display(), cause = %e, "cannot read the policy file; keeping the last good policy");
                    let path = self.path.display().to_string();
                    self.status.send_modify(|s| {
                        s.last_error = Some(format!("{path}: {e}"));
                        s.failures += 1;
                    });
                    self.read_failing = true;
                }
                None
            }
        }
    }

    /// Looks at the file once: a changed version is read again after the settle wait,
    /// and compiled and published only if the two reads agree.
    async fn poll(&mut self) -> Outcome {
        let Some(first) = self.read_logged().await else {
            return Outcome::Unreadable;
        };
        if first.text == self.last {
            // The cache still holds the file's content, unless that content was
            // rejected (then the cache holds an older version and is not current).
            if !self.rejected {
                self.cache.confirm();
            }
            return Outcome::Unchanged;
        }
        match &mut self.settle {
            Settle::Sleep(d) => tokio::time::sleep(*d).await,
            #[cfg(test)]
            Settle::Hook(f) => f(),
        }
        let Some(second) = self.read_logged().await else {
            return Outcome::Unreadable;
        };
        if second != first {
            debug!(file = %self.path.display(), "the policy file is changing; waiting for it to settle");
            return Outcome::Unsettled;
        }
        self.apply(first.text).await
    }

    /// Compiles `text` off the runtime and publishes it at the next revision, or keeps
    /// the last good policy.
    async fn apply(&mut self, text: String) -> Outcome {
        let revision = self.cache.revision() + 1;
        let name = self.path.display().to_string();
        let format = Format::from_path(&self.path);
        let limits = self.limits;
        let compiled = {
            let text = text.clone();
            super::off_runtime(move || compile_text(&text, &name, format, revision, limits)).await
        };
        let error = match compiled {
            Ok(Ok(policy)) => {
                let tenants = policy.tenants.len();
                self.cache.replace_all(policy, revision);
                info!(file = %self.path.display(), revision, tenants, "policy reloaded");
                None
            }
            Ok(Err(e)) => {
                error!(file = %self.path.display(), cause = %e, "the changed policy is invalid; keeping the last good policy");
                Some(e.to_string())
            }
            Err(e) => {
                error!(cause = %e, "policy compile task failed; keeping the last good policy");
                Some(e.to_string())
            }
        };
        self.rejected = error.is_some();
        let rejected = self.rejected;
        self.status.send_modify(|s| {
            s.versions += 1;
            if rejected {
                s.failures += 1;
            } else {
                s.reloaded_at = Some(SystemTime::now());
            }
            s.last_error = error;
        });
        self.last = text;
        if rejected {
            Outcome::Rejected
        } else {
            Outcome::Applied
        }
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::policy::{Action, Query, Reason};

    /// A tenant whose last line disables `bob`: the prefix without it compiles, and
    /// would let `bob` in.
    const FULL: &str = "version: 1\nroles: [{id: r, permissions: [p]}]\ntenants:\n  - id: t\n    default_roles: [r]\n    subjects:\n      - id: alice\n      - id: bob\n        disabled: true\n";

    fn reason(cache: &Cache, subject: &str) -> Reason {
        let snapshot = cache.tenant("t").expect("tenant t is loaded");
        snapshot
            .check(&Query {
                subject,
                scope: "",
                action: Action::Permission("p"),
            })
            .reason
    }

    fn watcher(path: PathBuf, cache: Cache, current: String, settle: Settle) -> Watcher {
        Watcher {
            path,
            cache,
            limits: Limits::default(),
            status: watch::channel(ReloadStatus::default()).0,
            last: current,
            rejected: false,
            read_failing: false,
            settle,
        }
    }

    #[tokio::test]
    async fn a_file_rewritten_in_place_is_never_served_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        let v1 = "version: 1\nroles: [{id: r, permissions: [p]}]\ntenants:\n  - id: t\n    default_roles: [r]\n    subjects: [{id: alice}]\n";
        std::fs::write(&path, v1).unwrap();
        let cache = Cache::new();
        cache.replace_all(load(&path, 1).unwrap().0, 1);

        // The writer truncates and writes the first part; the prefix is a valid policy.
        let (prefix, rest) = FULL.split_at(FULL.rfind("        disabled").unwrap());
        assert!(compile_text(prefix, "p", Format::Yaml, 2, Limits::default()).is_ok());
        std::fs::write(&path, prefix).unwrap();
        // Its second write lands while the reloader waits for the file to settle.
        let writes = Arc::new(AtomicUsize::new(0));
        let hook = {
            let (path, rest, writes) = (path.clone(), rest.to_owned(), writes.clone());
            move || {
                if writes.fetch_add(1, Ordering::SeqCst) == 0 {
                    use std::io::Write as _;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    f.write_all(rest.as_bytes()).unwrap();
                }
            }
        };
        let mut w = watcher(
            path.clone(),
            cache.clone(),
            v1.to_owned(),
            Settle::Hook(Box::new(hook)),
        );

        assert_eq!(w.poll().await, Outcome::Unsettled);
        assert_eq!(cache.revision(), 1, "the prefix was not published");
        assert_eq!(reason(&cache, "bob"), Reason::UnknownSubject);

        // The next look finds the whole file, twice: it is applied.
        assert_eq!(w.poll().await, Outcome::Applied);
        assert_eq!(cache.revision(), 2, "one version published: the whole file");
        assert_eq!(reason(&cache, "bob"), Reason::SubjectDisabled);
        assert_eq!(reason(&cache, "alice"), Reason::Granted);
        assert_eq!(w.poll().await, Outcome::Unchanged);
        assert_eq!(
            writes.load(Ordering::SeqCst),
            2,
            "one settle wait per changed read"
        );
    }

    /// The first load, while a writer rewrites the file in place: the half-written
    /// prefix (which compiles, and lets `bob` in) is never what the server starts with.
    /// Paused time: the writer's second write lands during the first settle wait.
    #[tokio::test(start_paused = true)]
    async fn the_first_load_waits_for_a_file_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        let (prefix, rest) = FULL.split_at(FULL.rfind("        disabled").unwrap());
        assert!(compile_text(prefix, "p", Format::Yaml, 1, Limits::default()).is_ok());
        std::fs::write(&path, prefix).unwrap();
        let writer = {
            let (path, rest) = (path.clone(), rest.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE / 3).await;
                use std::io::Write as _;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(rest.as_bytes()).unwrap();
            })
        };
        let (policy, text) = load_settled(&path, 1, Limits::default()).await.unwrap();
        writer.await.unwrap();
        assert_eq!(text, FULL, "the whole file, not the prefix");
        let cache = Cache::new();
        cache.replace_all(policy, 1);
        assert_eq!(reason(&cache, "bob"), Reason::SubjectDisabled);
    }

    /// A file that never stops changing is refused, after a bounded number of reads.
    #[tokio::test(start_paused = true)]
    async fn the_first_load_refuses_a_file_that_keeps_changing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, FULL).unwrap();
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                for i in 0u64.. {
                    tokio::time::sleep(SETTLE / 2).await;
                    std::fs::write(&path, format!("{FULL}# {i}\n")).unwrap();
                }
            })
        };
        let e = load_settled(&path, 1, Limits::default())
            .await
            .unwrap_err()
            .to_string();
        writer.abort();
        assert!(e.contains("changed between two reads"), "{e}");
    }

    #[tokio::test]
    async fn a_stable_change_is_applied_and_a_bad_one_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, FULL).unwrap();
        let cache = Cache::new();
        cache.replace_all(load(&path, 1).unwrap().0, 1);
        let mut w = watcher(
            path.clone(),
            cache.clone(),
            FULL.to_owned(),
            Settle::Sleep(Duration::ZERO),
        );
        assert_eq!(w.poll().await, Outcome::Unchanged);
        std::fs::write(&path, FULL.replace("[p]", "[p, q]")).unwrap();
        assert_eq!(w.poll().await, Outcome::Applied);
        assert_eq!(cache.revision(), 2);
        std::fs::write(&path, "version: 1\nroles: [{id: r, includes: [r]}]\n").unwrap();
        assert_eq!(w.poll().await, Outcome::Rejected);
        assert_eq!(cache.revision(), 2, "the last good policy stays");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.poll().await, Outcome::Unreadable);
    }
}
