//! `authzd serve`: load the policy, bind, serve until SIGTERM/SIGINT.

use tokio::net::TcpListener;
use tracing::{error, info};

use super::{Exit, load_exit};
use crate::{
    cache::Cache,
    config::ServeArgs,
    grpc::ServiceConfig,
    server::{self, ServerConfig},
    shutdown,
    store::file::{load, spawn_reloader},
};

/// Runs the server on a new multi-threaded runtime.
pub fn run(args: ServeArgs) -> Exit {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(cause = %e, "cannot start the async runtime");
            return Exit::Software;
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Exit {
    // Load before binding: a bad policy never opens a port.
    let (policy, text) = match load(&args.policy, 1) {
        Ok(p) => p,
        Err(e) => {
            error!(file = %args.policy.display(), "cannot load the policy:\n{e}");
            return load_exit(&e);
        }
    };
    let cache = Cache::new();
    let tenants = policy.tenants.len();
    cache.replace_all(policy, 1);
    info!(file = %args.policy.display(), tenants, revision = 1, "policy loaded");

    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %args.listen, cause = %e, "cannot listen");
            return Exit::Unavailable;
        }
    };
    let _reloader = (!args.reload_interval.is_zero()).then(|| {
        spawn_reloader(
            args.policy.clone(),
            cache.clone(),
            args.reload_interval,
            text,
        )
    });
    let config = ServerConfig {
        service: ServiceConfig {
            revision_wait: args.revision_wait,
            max_batch: args.max_batch as usize,
            max_message_bytes: args.max_message_bytes as usize,
        },
        shutdown_grace: args.shutdown_grace,
        max_connection_age: (!args.max_connection_age.is_zero()).then_some(args.max_connection_age),
    };
    match server::run(listener, cache, config, shutdown::signal()).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            error!(cause = %e, "server failed");
            Exit::Unavailable
        }
    }
}
