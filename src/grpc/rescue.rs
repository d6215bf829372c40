//! Statuses tonic answers with before a handler runs, rewritten to the codes our API
//! promises (a tower layer around every service of the listener):
//!
//! | tonic answers | because | we answer |
//! | --- | --- | --- |
//! | INTERNAL `failed to decode Protobuf message: ...` | the request does not decode (a string field that is not UTF-8, a wrong wire type, a truncated message) | INVALID_ARGUMENT `the request does not decode: CheckRequest.tenant_id: invalid string value: ...` |
//! | OUT_OF_RANGE `Error, decoded message length too large: ...` | the request is over `--max-message-bytes` | RESOURCE_EXHAUSTED `the request message is too large: found N bytes, the limit is: M bytes` |
//!
//! Both are the client's fault, so INTERNAL (our fault: alerts, retries) and OUT_OF_RANGE
//! (which the admin service's Watch uses for a pruned change log) were the wrong codes.
//! They are counted in `authz_request_errors_total` (`invalid_argument`; the size limit
//! as `resource_exhausted`): under their RPC for the query and Envoy RPCs, under
//! `rpc="admin"` for the admin API's.
//!
//! tonic reports both by turning the status into a trailers-only response (the status in
//! the response headers) before the generated server calls the handler, so they are
//! recognized by code and by tonic's message prefix; `tests/grpc.rs` pins both against
//! the tonic in use. A normal response carries its status in trailers, so the cost on
//! the request path is one header lookup that finds nothing, and a comparison of the
//! request path when metrics are on.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{
    Code, Status,
    codegen::{Service, http},
};

use crate::metrics::{Metrics, Rpc};

/// The prefix of prost's decode errors, which tonic answers as INTERNAL.
const DECODE_ERROR: &str = "failed to decode Protobuf message: ";
/// The prefix of tonic's message-size refusal, which it answers as OUT_OF_RANGE.
const TOO_LARGE: &str = "Error, decoded message length too large: ";

/// Wraps a service so tonic's decode and size refusals get our codes.
#[derive(Clone, Debug, Default)]
pub struct RescueLayer {
    metrics: Option<Metrics>,
}

impl RescueLayer {
    /// The layer, counting what it rewrites in `metrics` if given.
    pub fn new(metrics: Option<Metrics>) -> Self {
        RescueLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RescueLayer`] builds.
#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
    metrics: Option<Metrics>,
}

impl<S, B, R> Service<http::Request<B>> for Rescue<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The RPC is only known from the request, so it is looked up before the call;
        // without metrics there is nothing to count and nothing to look up.
        let counter = self
            .metrics
            .as_ref()
            .and_then(|m| Some((m.clone(), rpc_of(req.uri().path())?)));
        RescueFuture {
            inner: self.inner.call(req),
            counter,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Rescue`].
    #[derive(Debug)]
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        counter: Option<(Metrics, Metered)>,
    }
}

impl<F, R, E> Future for RescueFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(status) = rescue(response.headers()) {
            match this.counter.take() {
                Some((metrics, Metered::Rpc(rpc))) => metrics.error(rpc, status.code()),
                Some((metrics, Metered::Admin)) => metrics.admin_error(status.code()),
                None => {}
            }
            let headers = response.headers_mut();
            headers.remove("grpc-message");
            headers.remove("grpc-status-details-bin");
            if status.add_header(headers).is_err() {
                // Our own code and an ASCII message always encode; keep tonic's answer.
                tracing::warn!("cannot rewrite a status");
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// The status to answer instead of the trailers-only one in `headers`, if it is one of
/// tonic's refusals in the module table.
pub fn rescue(headers: &http::HeaderMap) -> Option<Status> {
    // Trailers-only responses carry the status in the headers; every other response
    // (an answer, a handler's error) in trailers, which this never sees.
    let code = headers.get("grpc-status")?;
    let wanted = match code.as_bytes() {
        b"13" => Code::Internal,
        b"11" => Code::OutOfRange,
        _ => return None,
    };
    let status = Status::from_header_map(headers)?;
    rewrite(wanted, status.message())
}

/// The rewrite of a status with `code` and `message`, if it is one of tonic's refusals.
pub fn rewrite(code: Code, message: &str) -> Option<Status> {
    match code {
        Code::Internal => message
            .strip_prefix(DECODE_ERROR)
            .map(|what| Status::invalid_argument(format!("the request does not decode: {what}"))),
        Code::OutOfRange => message.strip_prefix(TOO_LARGE).map(|what| {
            Status::resource_exhausted(format!("the request message is too large: {what}"))
        }),
        _ => None,
    }
}

/// Where a refusal is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metered {
    /// Under its RPC.
    Rpc(Rpc),
    /// Under `rpc="admin"`: any method of the admin API.
    Admin,
}

/// Where a request to `path` is counted; health and reflection are not.
fn rpc_of(path: &str) -> Option<Metered> {
    Some(Metered::Rpc(match path {
        "/authz.v1.AuthorizationService/Check" => Rpc::Check,
        "/authz.v1.AuthorizationService/BatchCheck" => Rpc::BatchCheck,
        "/authz.v1.AuthorizationService/ListPermissions" => Rpc::ListPermissions,
        "/authz.v1.AuthorizationService/LookupSubjects" => Rpc::LookupSubjects,
        "/envoy.service.auth.v3.Authorization/Check" => Rpc::EnvoyCheck,
        _ if path.starts_with("/authz.v1.PolicyAdminService/") => return Some(Metered::Admin),
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_refusals_are_rewritten() {
        let s = rewrite(
            Code::Internal,
            "failed to decode Protobuf message: CheckRequest.tenant_id: invalid string value: data is not UTF-8 encoded",
        )
        .unwrap();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "the request does not decode: CheckRequest.tenant_id: invalid string value: data is not UTF-8 encoded"
        );
        let s = rewrite(
            Code::OutOfRange,
            "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes",
        )
        .unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("found 5000 bytes"), "{}", s.message());
        // A handler's own INTERNAL or OUT_OF_RANGE (Watch's pruned change log) stays.
        assert!(rewrite(Code::Internal, "database: boom").is_none());
        assert!(rewrite(Code::OutOfRange, "revision 3 is older than the change log").is_none());
        assert!(rewrite(Code::InvalidArgument, DECODE_ERROR).is_none());
    }

    #[test]
    fn rpcs_are_named_by_path() {
        for (path, want) in [
            ("/authz.v1.AuthorizationService/Check", Rpc::Check),
            ("/authz.v1.AuthorizationService/BatchCheck", Rpc::BatchCheck),
            (
                "/authz.v1.AuthorizationService/ListPermissions",
                Rpc::ListPermissions,
            ),
            (
                "/authz.v1.AuthorizationService/LookupSubjects",
                Rpc::LookupSubjects,
            ),
            (
                "/envoy.service.auth.v3.Authorization/Check",
                Rpc::EnvoyCheck,
            ),
        ] {
            assert_eq!(rpc_of(path), Some(Metered::Rpc(want)), "{path}");
        }
        assert_eq!(
            rpc_of("/authz.v1.PolicyAdminService/CreateRole"),
            Some(Metered::Admin)
        );
        assert_eq!(rpc_of("/grpc.health.v1.Health/Check"), None);
    }
}
