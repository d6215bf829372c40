//! The process's shutdown signal.

use std::future::Future;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled:
/// a SIGTERM that arrives between start-up and the server's first poll (say, right after
/// it logged `serving`) must start a drain, not kill the process with the default action.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
