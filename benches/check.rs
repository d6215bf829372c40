//! Criterion benchmarks of the decision path, in process (no gRPC): the cache lookup
//! (`Cache::tenant`), the pure evaluator (`TenantSnapshot::check`) and the explanation
//! (`TenantSnapshot::explain`), plus compile time for reload cost.
//!
//! Run with `cargo bench --bench check`; results and targets are in
//! `docs/benchmarks.md`. The policies are built in `benches/fixtures/mod.rs`, shared with
//! `examples/callgrind_check.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark set-up: a broken fixture should stop the run loudly"
)]

mod fixtures;

use std::{hint::black_box, time::Duration};

use authz::{
    cache::Cache,
    policy::{Query, Reason},
};
use criterion::{BenchmarkId, Criterion, criterion_main};

/// The server's path minus gRPC: find the tenant's snapshot, decide.
fn decide(cache: &Cache, tenant: &str, q: &Query<'_>) -> Reason {
    let snapshot = cache.tenant(tenant).expect("tenant");
    snapshot.check(q).reason
}

/// Checks that a fixture decides as its benchmark's name says.
fn assert_reason(cache: &Cache, tenant: &str, q: &Query<'_>, want: Reason) {
    let got = decide(cache, tenant, q);
    assert_eq!(got, want, "fixture for {q:?}");
}

fn permission(c: &mut Criterion) {
    let cache = fixtures::cache_of(&fixtures::permission_doc());
    let granted = fixtures::PERMISSION_GRANTED;
    let denied = fixtures::PERMISSION_DENIED;
    assert_reason(&cache, "t", &granted, Reason::Granted);
    assert_reason(&cache, "t", &denied, Reason::NoGrant);
    let snapshot = cache.tenant("t").unwrap();

    let mut g = c.benchmark_group("permission");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g.bench_function("cache_hit", |b| {
        b.iter(|| decide(&cache, black_box("t"), black_box(&granted)))
    });
    g.bench_function("snapshot_only", |b| {
        b.iter(|| snapshot.check(black_box(&granted)).reason)
    });
    g.bench_function("denied_all_searched", |b| {
        b.iter(|| decide(&cache, black_box("t"), black_box(&denied)))
    });
    g.bench_function("with_explain", |b| {
        b.iter(|| {
            let s = cache.tenant(black_box("t")).unwrap();
            let q = black_box(&granted);
            s.explain(q, &s.check(q))
        })
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    let cache = fixtures::cache_of(&fixtures::route_doc());
    let granted = fixtures::route_granted_last();
    let denied = fixtures::route_denied();
    assert_reason(&cache, "r", &granted, Reason::Granted);
    assert_reason(&cache, "r", &denied, Reason::MethodNotAllowed);
    {
        let s = cache.tenant("r").unwrap();
        let d = s.check(&granted);
        let ex = s.explain(&granted, &d);
        assert_eq!(
            ex.grant.unwrap().role,
            "res-webhooks",
            "granted by the last role"
        );
    }

    let mut g = c.benchmark_group("route");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g.bench_function("200_rules/granted_by_last_role", |b| {
        b.iter(|| decide(&cache, black_box("r"), black_box(&granted)))
    });
    g.bench_function("200_rules/denied_all_searched", |b| {
        b.iter(|| decide(&cache, black_box("r"), black_box(&denied)))
    });
    g.bench_function("200_rules/granted_with_explain", |b| {
        b.iter(|| {
            let s = cache.tenant(black_box("r")).unwrap();
            let q = black_box(&granted);
            s.explain(q, &s.check(q))
        })
    });

    let chat = fixtures::cache_of(&fixtures::chat_api_doc());
    let cases = [
        ("granted_kb_list", fixtures::chat_granted(), Reason::Granted),
        ("denied_kb_delete", fixtures::chat_denied(), Reason::NoGrant),
        ("granted_deep_path", fixtures::chat_deep(), Reason::Granted),
    ];
    for (name, q, want) in &cases {
        assert_reason(&chat, "acme", q, *want);
        g.bench_function(format!("endpoint_table/{name}"), |b| {
            b.iter(|| decide(&chat, black_box("acme"), black_box(q)))
        });
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    for n in [100, 1_000, 10_000] {
        let doc = fixtures::compile_doc(n);
        g.bench_with_input(BenchmarkId::new("assignments", n), &doc, |b, doc| {
            b.iter(|| fixtures::compiled(black_box(doc)))
        });
    }
    g.finish();
}

/// In a private module: `criterion_group!` makes an undocumented `pub fn`.
mod group {
    use super::{compile, permission, route};
    criterion::criterion_group!(benches, permission, route, compile);
}
criterion_main!(group::benches);
