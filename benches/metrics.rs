//! What recording metrics costs a request: the decision path and the whole Check handler,
//! each without and with a [`Metrics`] recorder, and the recording alone.
//!
//! Run with `cargo bench --bench metrics`; results are in `docs/benchmarks.md`
//! ("Metrics overhead"). The request is a granted route check on the chat API example
//! (`PUT /experts/e-1` as `erin`, 89-entry endpoint table).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark set-up: a broken fixture should stop the run loudly"
)]

use std::{hint::black_box, path::Path, time::Duration};

use authz::{
    cache::Cache,
    grpc::{AuthzService, ServiceConfig},
    metrics::{Metrics, Rpc},
    model::Method,
    pb::{self, authorization_service_server::AuthorizationService},
    policy::{Action, Query, Reason},
    store::file,
};
use criterion::{Criterion, criterion_main};

fn chat_cache() -> Cache {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/chat-api.yaml");
    let (policy, _) = file::load(&path, 1).unwrap();
    let cache = Cache::new();
    cache.replace_all(policy, 1);
    cache
}

fn query() -> Query<'static> {
    Query {
        subject: "erin",
        scope: "",
        action: Action::Route {
            method: Method::parse("PUT").unwrap(),
            path: "/experts/e-1",
        },
    }
}

/// The server's decision path minus gRPC: find the snapshot, decide.
fn decide(cache: &Cache, q: &Query<'_>) -> Reason {
    cache.tenant("acme").unwrap().check(q).reason
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g
}

fn decision_path(c: &mut Criterion) {
    let cache = chat_cache();
    let q = query();
    assert_eq!(decide(&cache, &q), Reason::Granted);
    let metrics = Metrics::new(cache.clone(), None);

    let mut g = group(c, "metrics/decide");
    g.bench_function("without_metrics", |b| {
        b.iter(|| decide(&cache, black_box(&q)))
    });
    // What a handler adds: in flight +1 and a clock read, the decision counter, then
    // the latency histogram and in flight -1.
    g.bench_function("with_metrics", |b| {
        b.iter(|| {
            let _in_flight = metrics.start(Rpc::Check);
            let reason = decide(&cache, black_box(&q));
            metrics.decision(Rpc::Check, reason);
            reason
        })
    });
    g.bench_function("recording_only", |b| {
        b.iter(|| {
            let _in_flight = metrics.start(Rpc::Check);
            metrics.decision(Rpc::Check, black_box(Reason::Granted));
        })
    });
    g.finish();
}

fn handler(c: &mut Criterion) {
    let cache = chat_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let plain = AuthzService::new(cache.clone(), ServiceConfig::default());
    let metrics = Metrics::new(cache.clone(), None);
    let recorded = plain.clone().with_metrics(Some(metrics.clone()));
    let request = pb::CheckRequest {
        tenant_id: "acme".into(),
        subject_id: "erin".into(),
        action: Some(pb::check_request::Action::Route(pb::HttpRoute {
            method: "PUT".into(),
            path: "/experts/e-1".into(),
        })),
        ..Default::default()
    };
    let call = |svc: &AuthzService| {
        let r = runtime
            .block_on(svc.check(tonic::Request::new(black_box(request.clone()))))
            .unwrap();
        r.into_inner().allowed
    };
    assert!(call(&plain) && call(&recorded));

    // The Check handler as tonic calls it (request validation, freshness, decision,
    // explanation, response), on a current-thread runtime; no network.
    let mut g = group(c, "metrics/check_handler");
    g.bench_function("without_metrics", |b| b.iter(|| call(&plain)));
    g.bench_function("with_metrics", |b| b.iter(|| call(&recorded)));
    g.finish();
}

/// In a private module: `criterion_group!` makes an undocumented `pub fn`.
mod group {
    use super::{decision_path, handler};
    criterion::criterion_group!(benches, decision_path, handler);
}
criterion_main!(group::benches);
