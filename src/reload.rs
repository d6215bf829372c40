//! Credentials that change without a restart: the admin and query tokens files, and the
//! TLS certificate, key and client CA, are read again when their content changes, every `--reload-interval` (the policy file's) and
//! on SIGHUP. A changed file that does not parse is not used: the previous credentials
//! stay, and the error is logged once per bad version (and once per read outage).
//!
//! Content polling rather than file watches, for the reason the policy file gives
//! ([`crate::store::file`]): Kubernetes swaps mounted Secrets through a symlink.

use std::{path::PathBuf, time::Duration};

use tracing::{error, info};

use crate::{
    grpc::auth::AdminTokens,
    store::file::{AbortOnDrop, hangup_signal, recv},
};

/// Watches `files`: when the content of any of them changes, calls `apply`, which reads
/// and checks them and swaps the new version in, or says why not (the old one stays).
/// `what` names them in the logs. `interval` zero: SIGHUP only.
pub fn spawn_file_watch<F>(
    files: Vec<PathBuf>,
    interval: Duration,
    what: &'static str,
    apply: F,
) -> AbortOnDrop
where
    F: Fn() -> Result<(), String> + Send + 'static,
{
    let read = |files: &[PathBuf]| -> Result<Vec<Vec<u8>>, String> {
        files
            .iter()
            .map(|f| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display())))
            .collect()
    };
    let mut last = read(&files).ok();
    AbortOnDrop(tokio::spawn(async move {
        let mut hangup = hangup_signal();
        let mut tick = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let mut read_failing = false;
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
                _ = recv(&mut hangup) => info!(what, "SIGHUP: reading the files again"),
            }
            let now = match read(&files) {
                Ok(now) => {
                    read_failing = false;
                    now
                }
                Err(cause) => {
                    if !read_failing {
                        error!(what, %cause, "cannot read the file; keeping the previous version");
                        read_failing = true;
                    }
                    continue;
                }
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            match apply() {
                Ok(()) => info!(what, "reloaded"),
                Err(cause) => {
                    error!(what, %cause, "the changed file is invalid; keeping the previous version");
                }
            }
            last = Some(now);
        }
    }))
}

/// Watches a tokens file and swaps its new version into `tokens` (and every clone).
pub fn watch_tokens(
    path: PathBuf,
    tokens: AdminTokens,
    interval: Duration,
    what: &'static str,
) -> AbortOnDrop {
    let file = path.clone();
    spawn_file_watch(
        vec![path],
        interval,
        what,
        move || match AdminTokens::load(&file) {
            Ok(Some(new)) => {
                tokens.replace(&new);
                Ok(())
            }
            Ok(None) => Err(format!("{}: does not exist", file.display())),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// Watches the TLS files (certificate chain, key, client CA) and swaps a new version
/// into `tls` for the connections accepted from then on. A certificate and a key that do
/// not match (say, one file updated before the other) are refused until both are.
pub fn watch_tls(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    tls: crate::tls::TlsConfig,
    interval: Duration,
) -> AbortOnDrop {
    let mut files = vec![cert.clone(), key.clone()];
    files.extend(client_ca.clone());
    spawn_file_watch(files, interval, "TLS files", move || {
        let new = crate::tls::TlsConfig::load(&cert, &key, client_ca.as_deref())
            .map_err(|e| e.to_string())?;
        tls.replace(&new);
        Ok(())
    })
}
