//! Runs the query service's handlers in a loop for instruction counting under callgrind:
//! everything a Check or BatchCheck costs in authzd above the HTTP/2 transport —
//! validation, the cache lookup, the decision, the explanation, the response message and
//! its protobuf encoding.
//!
//! ```text
//! cargo build --release --example callgrind_service
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/callgrind_service 20000 20
//! callgrind_annotate --inclusive=yes cg.out | grep 'callgrind_service::run_'
//! ```
//!
//! With `AUTHZ_CALLGRIND_TELEMETRY=serve` the process first installs the subscriber
//! `authzd serve` installs with tracing off, so the two counts give the cost of the
//! disabled spans (docs/benchmarks.md, "Tracing off").
//!
//! `N` Checks (default 20,000) and `B` BatchChecks of 1,000 items (default 20) run, each
//! kind in its own never-inlined `run_*` function; inclusive cost / N is instructions per
//! Check, / (B × 1000) per batch decision. The policy is `examples/policies/chat-api.yaml`
//! (tenant `acme`); the batch mixes routes and named permissions for one subject, as
//! docs/benchmarks.md describes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement tool: a broken fixture should stop it loudly"
)]

use std::hint::black_box;

use authz::{
    cache::Cache,
    grpc::{AuthzService, ServiceConfig},
    pb::{self, authorization_service_server::AuthorizationService},
    store::file,
};
use prost::Message;

fn route(method: &str, path: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        action: Some(pb::check_request::Action::Route(pb::HttpRoute {
            method: method.into(),
            path: path.into(),
        })),
        ..Default::default()
    }
}

fn permission(p: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        action: Some(pb::check_request::Action::Permission(p.into())),
        ..Default::default()
    }
}

/// The batch: 1,000 items cycling through granted and denied routes and permissions.
pub fn batch_items(detail: i32) -> pb::BatchCheckRequest {
    let kinds = [
        route("PUT", "/experts/e-1"),
        route("GET", "/chats/c-9"),
        route("DELETE", "/connectors/c-1"),
        route("GET", "/connectors/knowledge-bases"),
        route("POST", "/experts/"),
        permission("chat.use"),
        permission("billing.manage"),
        route("GET", "/health/"),
    ];
    pb::BatchCheckRequest {
        tenant_id: "acme".into(),
        subject_id: "carl".into(),
        checks: (0..1000).map(|i| kinds[i % kinds.len()].clone()).collect(),
        min_revision: 0,
        detail,
    }
}

#[inline(never)]
fn run_check(rt: &tokio::runtime::Runtime, svc: &AuthzService, n: usize) -> usize {
    let mut bytes = 0;
    for _ in 0..n {
        let req = tonic::Request::new(pb::CheckRequest {
            tenant_id: "acme".into(),
            subject_id: "carl".into(),
            ..route("PUT", "/experts/e-1")
        });
        let r = rt.block_on(svc.check(black_box(req))).unwrap().into_inner();
        bytes += r.encode_to_vec().len();
    }
    bytes
}

#[inline(never)]
fn run_batch(
    rt: &tokio::runtime::Runtime,
    svc: &AuthzService,
    req: &pb::BatchCheckRequest,
    n: usize,
) -> usize {
    let mut bytes = 0;
    for _ in 0..n {
        let r = rt
            .block_on(svc.batch_check(tonic::Request::new(black_box(req.clone()))))
            .unwrap()
            .into_inner();
        bytes += r.encode_to_vec().len();
    }
    bytes
}

/// Cloning the request alone, to subtract from [`run_batch`].
#[inline(never)]
fn run_batch_clone_only(req: &pb::BatchCheckRequest, n: usize) -> usize {
    let mut len = 0;
    for _ in 0..n {
        len += black_box(req.clone()).checks.len();
    }
    len
}

#[inline(never)]
fn run_batch_full(rt: &tokio::runtime::Runtime, svc: &AuthzService, n: usize) -> usize {
    run_batch(rt, svc, &batch_items(pb::Detail::Unspecified as i32), n)
}

#[inline(never)]
fn run_batch_decisions(rt: &tokio::runtime::Runtime, svc: &AuthzService, n: usize) -> usize {
    run_batch(rt, svc, &batch_items(pb::Detail::Decision as i32), n)
}

/// A service that does nothing, to count what [`authz::grpc::trace::TraceLayer`] adds
/// around a request with tracing off.
#[derive(Clone, Copy)]
struct Nop;

impl tonic::codegen::Service<tonic::codegen::http::Request<()>> for Nop {
    type Response = usize;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<usize, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<()>) -> Self::Future {
        std::future::ready(Ok(req.uri().path().len()))
    }
}

/// `n` requests through `svc` (the bare [`Nop`], or it inside the trace layer).
#[inline(never)]
fn run_requests<S>(rt: &tokio::runtime::Runtime, mut svc: S, n: usize) -> usize
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<()>, Response = usize>,
    S::Error: std::fmt::Debug,
{
    let mut total = 0;
    for _ in 0..n {
        let req = tonic::codegen::http::Request::builder()
            .uri("/authz.v1.AuthorizationService/Check")
            .body(())
            .unwrap();
        total += rt.block_on(svc.call(black_box(req))).unwrap();
    }
    total
}

#[inline(never)]
fn run_layer_bare(rt: &tokio::runtime::Runtime, n: usize) -> usize {
    run_requests(rt, Nop, n)
}

#[inline(never)]
fn run_layer_off(rt: &tokio::runtime::Runtime, n: usize) -> usize {
    use tower_layer::Layer as _;
    let layer = authz::grpc::trace::TraceLayer::new(authz::telemetry::tracing_on());
    run_requests(rt, layer.layer(Nop), n)
}

fn main() {
    // `serve`: the subscriber `authzd serve` installs without --otlp-endpoint (logging at
    // info, tracing off), to count what the disabled spans cost; default: none at all.
    let _telemetry = (std::env::var("AUTHZ_CALLGRIND_TELEMETRY").as_deref() == Ok("serve"))
        .then(|| authz::telemetry::init(authz::telemetry::LogFormat::Text, None, 1.0));
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(20_000, |a| a.parse().expect("N"));
    let b: usize = args.next().map_or(20, |a| a.parse().expect("B"));
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/chat-api.yaml");
    let (policy, _) = file::load(&path, 1).unwrap();
    let cache = Cache::new();
    cache.replace_all(policy, 1);
    let svc = AuthzService::new(cache, ServiceConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let results = [
        ("check", run_check(&rt, &svc, n)),
        ("requests, bare", run_layer_bare(&rt, n)),
        ("requests, trace layer (tracing off)", run_layer_off(&rt, n)),
        ("batch 1000 (full)", run_batch_full(&rt, &svc, b)),
        ("batch 1000 (decisions)", run_batch_decisions(&rt, &svc, b)),
        (
            "batch request clone",
            run_batch_clone_only(&batch_items(0), b),
        ),
    ];
    for (name, r) in results {
        println!("{name}: {r}");
    }
}
