//! One span per gRPC request when OpenTelemetry tracing is on (`--otlp-endpoint`): a
//! tower layer around every service of the listener (query, admin, Envoy, health,
//! reflection). With tracing off it creates no span and reads no header: a request
//! costs a branch and an empty span guard.
//!
//! The span is a server span named by the method (`authz.v1.AuthorizationService/Check`,
//! OpenTelemetry's RPC naming), with `rpc.system = "grpc"`, `rpc.service` and
//! `rpc.method`. Its parent is the caller's span when the request carries W3C Trace
//! Context (`traceparent`, and `tracestate`; <https://www.w3.org/TR/trace-context/>) in
//! its metadata, so authzd's spans join the caller's trace; a missing or malformed
//! `traceparent` starts a new trace. The handlers' own spans (with the tenant, and for a
//! decision `allowed` and `reason`: [`crate::telemetry::record_decision`]) are its
//! children. Whether a trace is kept is the sampler's decision
//! (`--otlp-sampling-ratio`, parent-based: a caller's sampled flag is followed).

use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::codegen::{Service, http};
use tracing::{Instrument as _, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Wraps a service so each request runs in its own span, child of the caller's trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer {
    enabled: bool,
}

impl TraceLayer {
    /// The layer; `enabled` is whether spans are exported
    /// ([`crate::telemetry::tracing_on`]).
    pub fn new(enabled: bool) -> Self {
        TraceLayer { enabled }
    }
}

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service [`TraceLayer`] builds.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
    enabled: bool,
}

impl<S, B> Service<http::Request<B>> for Traced<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !self.enabled {
            return self.inner.call(req).instrument(tracing::Span::none());
        }
        let span = request_span(req.uri().path(), req.headers());
        span.in_scope(|| self.inner.call(req)).instrument(span)
    }
}

/// The span of a request to `path` (`/package.Service/Method`), its parent taken from
/// the W3C Trace Context headers if there are any.
pub fn request_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let name = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let span = tracing::info_span!(
        target: "authz::rpc",
        "grpc request",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Before the span is entered: an entered span's parent can no longer change. Fails
    // only when the span is disabled or no OpenTelemetry layer is installed.
    let _ = span.set_parent(parent);
    span
}

/// Reads W3C Trace Context from request headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
