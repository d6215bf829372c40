//! The gRPC server: query service, Envoy external authorization, health and reflection
//! on one listener, with graceful shutdown.
//!
//! The admin service (`authz.v1.PolicyAdminService`) is added only when configured.
//!
//! Health: `""`, `authz.v1.AuthorizationService` and
//! `envoy.service.auth.v3.Authorization` turn SERVING once the cache holds a policy, and
//! NOT_SERVING when shutdown begins; then in-flight requests get `shutdown_grace` to
//! finish. Reflection lists the services served: the query service, health, reflection
//! and the admin service when it is on; not the Envoy service (the `envoy-types` crate
//! exposes no descriptor set to register).

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{
    cache::Cache,
    grpc::{
        AuthzService, EnvoyAuthzService, EnvoyConfig, PolicyAdmin, ServiceConfig, auth::AdminTokens,
    },
    metrics::Metrics,
    pb::authorization_service_server::AuthorizationServiceServer,
    tls::TlsConfig,
};

/// The gRPC server's future, over plaintext or TLS connections.
type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

type EnvoyServer = envoy_types::ext_authz::v3::pb::AuthorizationServer<EnvoyAuthzService>;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The reflection service could not be built from the compiled descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

const SERVICE_NAME: &str = "authz.v1.AuthorizationService";

/// Server settings beyond the query service's own.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The query service's limits and waits.
    pub service: ServiceConfig,
    /// How long in-flight requests may finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Close connections older than this (after a grace), so clients that balance over
    /// a headless Service re-resolve and find new replicas. `None`: never.
    pub max_connection_age: Option<Duration>,
    /// Where the Envoy authorization service finds tenant and subject.
    pub envoy: EnvoyConfig,
    /// Where requests and decisions are recorded; `None`: nowhere.
    pub metrics: Option<Metrics>,
    /// The admin service; `None`: not served (its calls are UNIMPLEMENTED).
    pub admin: Option<PolicyAdmin>,
    /// Credentials the query service requires; `None`: anyone may ask.
    pub query_tokens: Option<AdminTokens>,
    /// TLS on the listener (every service); `None`: plaintext.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            service: ServiceConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            max_connection_age: None,
            envoy: EnvoyConfig::default(),
            metrics: None,
            admin: None,
            query_tokens: None,
            tls: None,
        }
    }
}

/// Serves on an already-bound listener until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    cache: Cache,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    health.set_not_serving::<EnvoyServer>().await;
    // Readiness: SERVING after the first full load, and it never goes back until
    // shutdown.
    let ready = {
        let health = health.clone();
        let mut rx = cache.subscribe();
        tokio::spawn(async move {
            if rx.wait_for(Option::is_some).await.is_ok() {
                health.set_service_status("", ServingStatus::Serving).await;
                health
                    .set_serving::<AuthorizationServiceServer<AuthzService>>()
                    .await;
                health.set_serving::<EnvoyServer>().await;
            }
        })
    };
    // Reflection lists the services served, not every service of the descriptor set:
    // without the admin API, `authz.v1.PolicyAdminService` is not listed.
    let served = served_services(config.admin.is_some());
    let reflection = || {
        served.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, name| b.with_service_name(*name),
        )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    if let Some(m) = &config.metrics {
        m.set_admin_api_enabled(config.admin.is_some());
    }

    let addr = listener.local_addr()?;
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    // Ends the admin service's Watch streams at shutdown; they never end by themselves.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let admin_off = config.admin.is_none();
    let admin = config.admin.map(|admin| {
        admin
            .with_signals(cache.subscribe(), stopping_rx)
            .with_filter(cache.filter().clone())
    });
    let mut builder = crate::transport::configure(tonic::transport::Server::builder());
    if let Some(age) = config.max_connection_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(config.shutdown_grace);
    }
    let router = builder
        // With OpenTelemetry on: a span per request, in the caller's trace.
        .layer(crate::grpc::trace::TraceLayer::new(
            crate::telemetry::tracing_on(),
        ))
        // Undecodable and oversized requests: INVALID_ARGUMENT and RESOURCE_EXHAUSTED,
        // not tonic's INTERNAL and OUT_OF_RANGE.
        .layer(crate::grpc::rescue::RescueLayer::new(
            config.metrics.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            EnvoyAuthzService::new(cache.clone(), config.envoy, config.metrics.clone())
                .fail_when_stale(config.service.max_staleness)
                .svc(config.service.max_message_bytes),
        )
        .add_optional_service(admin.map(|admin| admin.svc(config.service.max_message_bytes)))
        // Admin API off: its calls say so, instead of tonic's empty UNIMPLEMENTED.
        .add_optional_service(admin_off.then_some(AdminOff))
        .add_service(
            AuthzService::new(cache, config.service)
                .with_metrics(config.metrics)
                .with_tokens(config.query_tokens)
                .svc(),
        );
    let drained = async {
        let _ = drain_rx.await;
    };
    // TLS: our own accept loop does the handshakes, with the configuration current at
    // each accept, so a renewed certificate or client CA needs no restart.
    let tls = config.tls.is_some();
    let (serve, _accepting): (Serving, _) =
        match config.tls {
            None => (
                Box::pin(router.serve_with_incoming_shutdown(
                    crate::transport::grpc_incoming(listener),
                    drained,
                )),
                None,
            ),
            Some(tls) => {
                let (incoming, accepting) = crate::tls::incoming(listener, tls);
                (
                    Box::pin(router.serve_with_incoming_shutdown(incoming, drained)),
                    Some(accepting),
                )
            }
        };
    info!(%addr, tls, "serving");
    drain(
        serve,
        health,
        (drain_tx, stopping_tx),
        ready,
        config.shutdown_grace,
        shutdown,
    )
    .await
}

/// Answers every method of `authz.v1.PolicyAdminService` when the admin API is off:
/// UNIMPLEMENTED saying why, so a caller is not left with tonic's empty message.
/// Reflection does not list the service then ([`served_services`]).
#[derive(Clone, Copy, Debug)]
struct AdminOff;

impl tonic::server::NamedService for AdminOff {
    const NAME: &'static str = "authz.v1.PolicyAdminService";
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for AdminOff {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Request<B>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::unimplemented(
            "the admin API is off on this server: it needs --database-url and an admin tokens file \
             (--admin-tokens-file; with --admin-tokens-optional a missing file turns it off); \
             see docs/operations.md, Admin API",
        )
        .into_http()))
    }
}

/// The services reflection lists: those served (the Envoy service is served but has no
/// descriptor to register).
fn served_services(admin: bool) -> Vec<&'static str> {
    let mut names = vec![
        SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    if admin {
        names.push("authz.v1.PolicyAdminService");
    }
    names
}

async fn drain(
    serve: impl Future<Output = Result<(), tonic::transport::Error>>,
    health: tonic_health::server::HealthReporter,
    (drain_tx, stopping_tx): (
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::watch::Sender<bool>,
    ),
    ready: tokio::task::JoinHandle<()>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    tokio::pin!(serve);
    tokio::select! {
        res = &mut serve => {
            ready.abort();
            return Ok(res?);
        }
        _ = shutdown => {}
    }
    ready.abort();
    info!("shutting down: health NOT_SERVING, draining requests");
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<AuthorizationServiceServer<AuthzService>>()
        .await;
    health.set_not_serving::<EnvoyServer>().await;
    let _ = stopping_tx.send(true);
    let _ = drain_tx.send(());
    match tokio::time::timeout(grace, serve).await {
        Ok(res) => {
            info!("drained; stopped");
            Ok(res?)
        }
        Err(_) => {
            warn!(
                ?grace,
                "grace period over; stopping with requests in flight"
            );
            Ok(())
        }
    }
}
