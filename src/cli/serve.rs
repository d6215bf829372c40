//! `authzd serve`: load the policy (file or database), bind, serve until
//! SIGTERM/SIGINT.

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use super::{Exit, load_exit};
use crate::{
    cache::Cache,
    config::ServeArgs,
    grpc::{EnvoyConfig, PolicyAdmin, ServiceConfig, auth::AdminTokens},
    metrics::{self, Freshness, Metrics, PolicySource},
    server::{self, ServerConfig},
    shutdown,
    store::{
        admin::AdminStore,
        file::{AbortOnDrop, Reloader, load_settled, spawn_reloader},
        follow::{FollowConfig, Follower, spawn_follower},
        postgres,
    },
    tls::TlsConfig,
};

/// Connections the admin service may hold; admin writes are rare and short.
const ADMIN_POOL_SIZE: usize = 4;

/// The admin service, if `--admin-tokens-file` names a readable file of tokens, and
/// those tokens (a handle the file watch swaps new versions into).
fn admin_service(args: &ServeArgs) -> Result<Option<(PolicyAdmin, AdminTokens)>, Exit> {
    let Some(path) = &args.admin_tokens_file else {
        return Ok(None);
    };
    let tokens = match AdminTokens::load(path) {
        Ok(Some(tokens)) => tokens,
        Ok(None) if args.admin_tokens_optional => {
            // Kubernetes mounts an absent optional Secret as a missing file.
            warn!(file = %path.display(), "admin API off: the tokens file does not exist");
            return Ok(None);
        }
        Ok(None) => {
            // Configured but absent: a lost Secret must not turn the admin API off
            // silently.
            error!(file = %path.display(), "the admin tokens file does not exist (pass --admin-tokens-optional if it may be missing)");
            return Err(Exit::Usage);
        }
        Err(e) => {
            error!(cause = %e, "cannot read the admin tokens file");
            return Err(Exit::Usage);
        }
    };
    let Some(url) = &args.database_url else {
        error!("the admin API (`--admin-tokens-file`) needs `--database-url`");
        return Err(Exit::Usage);
    };
    let pool = postgres::pool(url, ADMIN_POOL_SIZE).map_err(|e| {
        error!(cause = %e, "cannot set up the admin API's database pool");
        Exit::Usage
    })?;
    info!(file = %path.display(), "admin API on");
    Ok(Some((
        PolicyAdmin::new(AdminStore::new(pool), tokens.clone()),
        tokens,
    )))
}

/// The listener's TLS settings, read and checked before anything binds.
fn tls_config(args: &ServeArgs) -> Result<Option<TlsConfig>, Exit> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        // clap requires both or neither.
        return Ok(None);
    };
    match TlsConfig::load(cert, key, args.tls_client_ca.as_deref()) {
        Ok(tls) => {
            info!(cert = %cert.display(), client_certificates = tls.verifies_clients(), "TLS on");
            Ok(Some(tls))
        }
        Err(e) => {
            error!(cause = %e, "cannot set up TLS");
            Err(Exit::Usage)
        }
    }
}

/// How often `--wait-for-schema` looks again.
const SCHEMA_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Before binding: is the database's schema this binary's? Missing or older: exit 69
/// with a message saying to run `authzd migrate`, or with `wait`, wait for it. Newer (a
/// newer release migrated during a rollout): served, with a warning; migrations only add.
/// An unreachable database is left to the follower, which retries (without `wait`).
async fn check_schema(url: &str, wait: bool) -> Result<(), Exit> {
    use postgres::SchemaState;
    let expected = postgres::expected_schema_version();
    let mut said = None;
    loop {
        let state = match tokio::time::timeout(SCHEMA_RETRY * 5, async {
            let client = postgres::connect(url).await?;
            postgres::schema_state(&client).await
        })
        .await
        {
            Ok(Ok(state)) => Some(state),
            Ok(Err(e)) if !wait => {
                warn!(cause = %e, "cannot check the database schema yet; the follower retries");
                return Ok(());
            }
            Err(_) if !wait => {
                warn!("cannot check the database schema yet (no answer); the follower retries");
                return Ok(());
            }
            Ok(Err(e)) => {
                if said != Some(None) {
                    warn!(cause = %e, "waiting for the database to check its schema (--wait-for-schema)");
                    said = Some(None);
                }
                None
            }
            Err(_) => None,
        };
        let applied = match state {
            Some(SchemaState::Current) => return Ok(()),
            Some(SchemaState::Ahead { applied }) => {
                warn!(
                    applied,
                    expected, "the database schema is newer than this binary's; serving it"
                );
                return Ok(());
            }
            Some(SchemaState::Missing) => 0,
            Some(SchemaState::Behind { applied }) => applied,
            None => {
                tokio::time::sleep(SCHEMA_RETRY).await;
                continue;
            }
        };
        if !wait {
            error!(
                applied,
                expected,
                "the database schema is {}; run `authzd migrate` first (or serve with --migrate, or --wait-for-schema to wait for it)",
                if applied == 0 {
                    "missing"
                } else {
                    "older than this binary's"
                }
            );
            return Err(Exit::Unavailable);
        }
        if said != Some(Some(applied)) {
            info!(
                applied,
                expected,
                "waiting for `authzd migrate` to bring the schema up to date (--wait-for-schema)"
            );
            said = Some(Some(applied));
        }
        tokio::time::sleep(SCHEMA_RETRY).await;
    }
}

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

/// The task keeping the cache current; dropped (and stopped) when serving ends.
#[allow(dead_code, reason = "held for its Drop")]
enum Source {
    File(Option<Reloader>),
    Database(Follower),
}

async fn serve(args: ServeArgs) -> Exit {
    let filter = args.tenant_filter();
    if !filter.is_all() {
        info!(serving = %filter, "serving only some tenants");
    }
    let cache = Cache::with_filter(filter);
    // Checked before anything binds: a bad tokens file is a bad configuration.
    let (admin, admin_tokens) = match admin_service(&args) {
        Ok(Some((admin, tokens))) => (Some(admin), Some(tokens)),
        Ok(None) => (None, None),
        Err(exit) => return exit,
    };
    // A missing query tokens file is an error, unlike the admin one: leaving the query
    // service open because a file went missing would fail open.
    let query_tokens = match &args.query_tokens_file {
        None => None,
        Some(path) => match AdminTokens::load(path) {
            Ok(Some(tokens)) => {
                info!(file = %path.display(), "the query service requires credentials");
                Some(tokens)
            }
            Ok(None) => {
                error!(file = %path.display(), "the query tokens file does not exist");
                return Exit::Usage;
            }
            Err(e) => {
                error!(cause = %e, "cannot read the query tokens file");
                return Exit::Usage;
            }
        },
    };
    // Rotation without a restart: the tokens files are read again when they change.
    let mut _watches = Vec::new();
    for (path, tokens, what) in [
        (&args.admin_tokens_file, &admin_tokens, "admin tokens"),
        (&args.query_tokens_file, &query_tokens, "query tokens"),
    ] {
        if let (Some(path), Some(tokens)) = (path, tokens) {
            _watches.push(crate::reload::watch_tokens(
                path.clone(),
                tokens.clone(),
                args.reload_interval,
                what,
            ));
        }
    }
    let tls = match tls_config(&args) {
        Ok(tls) => tls,
        Err(exit) => return exit,
    };
    if let (Some(tls), Some(cert), Some(key)) = (&tls, &args.tls_cert, &args.tls_key) {
        _watches.push(crate::reload::watch_tls(
            cert.clone(),
            key.clone(),
            args.tls_client_ca.clone(),
            tls.clone(),
            args.reload_interval,
        ));
    }
    let _source = match (&args.policy, &args.database_url) {
        (Some(path), None) => {
            // Load before binding: a bad policy never opens a port. Like every reload,
            // only a file that reads the same twice, SETTLE apart, is served.
            let (policy, text) = match load_settled(path, 1, args.limits.limits()).await {
                Ok(p) => p,
                Err(e) => {
                    error!(file = %path.display(), "cannot load the policy:\n{e}");
                    return load_exit(&e);
                }
            };
            let tenants = policy.tenants.len();
            cache.replace_all(policy, 1);
            info!(file = %path.display(), tenants, revision = 1, "policy loaded");
            // Always: with `--reload-interval 0s` it only answers SIGHUP.
            Source::File(Some(spawn_reloader(
                path.clone(),
                cache.clone(),
                args.reload_interval,
                text,
                args.limits.limits(),
            )))
        }
        (policy, Some(url)) => {
            // The database is the source of truth; a policy file given as well (say,
            // from a manifest whose database Secret is optional) is the fallback for
            // when there is no database, so it is ignored here, and said so.
            if let Some(path) = policy {
                warn!(file = %path.display(), "serving from the database; --policy is ignored when --database-url is set");
            }
            // A URL that cannot work is a configuration error, not an outage to retry.
            if let Err(e) = crate::store::pgtls::connect_config(url) {
                error!(cause = %e, "cannot use the database URL");
                return Exit::Usage;
            }
            info!(database = %postgres::redact_url(url), "policy source: database");
            if args.migrate {
                match postgres::migrate(url).await {
                    Ok(applied) => info!(?applied, "schema migrated"),
                    Err(e) => {
                        error!(cause = %e, "cannot migrate the schema");
                        return Exit::Unavailable;
                    }
                }
            } else if let Err(exit) = check_schema(url, args.wait_for_schema).await {
                return exit;
            }
            // The server binds at once and reports NOT_SERVING until the first full load;
            // the follower retries with backoff while the database is unreachable.
            let mut config = FollowConfig::new(url.clone());
            config.mode = args.follow;
            config.poll_interval = args.poll_interval;
            config.consistency_interval = args.consistency_interval;
            Source::Database(spawn_follower(config, cache.clone()))
        }
        (None, None) => {
            error!("give `--policy FILE` or `--database-url URL`");
            return Exit::Usage;
        }
    };

    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %args.listen, cause = %e, "cannot listen");
            return Exit::Unavailable;
        }
    };
    // Metrics are recorded only when they are served.
    let (metrics, _metrics_server) = match args.metrics_listen {
        Some(addr) => {
            let metrics_listener = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    error!(%addr, cause = %e, "cannot listen for metrics");
                    return Exit::Unavailable;
                }
            };
            let m = Metrics::new(cache.clone(), policy_source(&_source));
            let server = metrics::http::spawn(metrics_listener, m.clone());
            if let Source::Database(follower) = &_source {
                // `authz_db_connected` follows the follower's connection.
                let (m, mut status) = (m.clone(), follower.status.clone());
                tokio::spawn(async move {
                    loop {
                        let connected = status.borrow_and_update().connected;
                        m.set_db_connected(connected);
                        if status.changed().await.is_err() {
                            break;
                        }
                    }
                });
            }
            (Some(m), Some(server))
        }
        None => (None, None),
    };
    let config = ServerConfig {
        service: ServiceConfig {
            revision_wait: args.revision_wait,
            max_batch: args.max_batch as usize,
            max_message_bytes: args.max_message_bytes as usize,
            max_staleness: (!args.max_staleness.is_zero()).then_some(args.max_staleness),
        },
        shutdown_grace: args.shutdown_grace,
        max_connection_age: (!args.max_connection_age.is_zero()).then_some(args.max_connection_age),
        envoy: EnvoyConfig {
            tenant_header: args.envoy_tenant_header.clone(),
            subject_header: args.envoy_subject_header.clone(),
            jwt_payload_header: args.envoy_jwt_payload_header.clone(),
            tenant_claim: args.envoy_tenant_claim.clone(),
            subject_claim: args.envoy_subject_claim.clone(),
        },
        metrics,
        admin,
        query_tokens,
        tls,
    };
    // The AuthZEN HTTP front door: the same service (cache, limits, credentials,
    // metrics, TLS) on its own listener, draining at the same signal.
    let _http = match args.http_listen {
        Some(addr) => {
            if let Some(t) = &args.http_default_tenant
                && let Err(e) = crate::model::tenant_id(t)
            {
                error!(tenant = %t, cause = %e, "invalid --http-default-tenant");
                return Exit::Usage;
            }
            let http_listener = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    error!(%addr, cause = %e, "cannot listen for AuthZEN HTTP");
                    return Exit::Unavailable;
                }
            };
            let svc = crate::grpc::AuthzService::new(cache.clone(), config.service.clone())
                .with_metrics(config.metrics.clone())
                .with_tokens(config.query_tokens.clone());
            let http_config = crate::authzen::AuthzenConfig {
                default_tenant: args.http_default_tenant.clone(),
            };
            // TLS as on gRPC: the same certificate, key and client CA.
            let tls = config.tls.clone();
            // Installed now, before anything is served (see shutdown::signal).
            let stop = shutdown::signal();
            Some(AbortOnDrop(tokio::spawn(async move {
                let served = match &tls {
                    Some(tls) => {
                        crate::authzen::serve_tls(http_listener, svc, http_config, tls, stop).await
                    }
                    None => crate::authzen::serve(http_listener, svc, http_config, stop).await,
                };
                if let Err(e) = served {
                    error!(cause = %e, "the AuthZEN HTTP listener failed");
                }
            })))
        }
        None => None,
    };
    // The handlers are installed here, before `serving` is logged (see shutdown::signal).
    let stop = shutdown::signal();
    match server::run(listener, cache, config, stop).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            error!(cause = %e, "server failed");
            Exit::Unavailable
        }
    }
}

/// What the metrics report about the source's reloads: the file reloader's status, or
/// the start-up load when nothing reloads, or the database follower's status.
fn policy_source(source: &Source) -> Option<Box<dyn PolicySource>> {
    match source {
        Source::File(Some(reloader)) => Some(Box::new(reloader.status.clone())),
        Source::File(None) => Some(Box::new(Freshness {
            reloaded_at: Some(std::time::SystemTime::now()),
            reload_failures: 0,
        })),
        Source::Database(follower) => Some(Box::new(follower.status.clone())),
    }
}
