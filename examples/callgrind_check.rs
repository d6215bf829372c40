//! Runs checks in a loop for instruction counting under callgrind: the same policies
//! and queries as `benches/check.rs` (`benches/fixtures/mod.rs`).
//!
//! ```text
//! cargo build --release --example callgrind_check
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/callgrind_check 100000
//! callgrind_annotate --inclusive=yes cg.out | grep 'callgrind_check::run_'
//! ```
//!
//! Each kind of check runs `N` times (default 100,000) inside its own `run_*` function,
//! which is never inlined: callgrind's inclusive cost of `run_x` divided by `N` is the
//! instructions per check, loop included (a handful of instructions). `N = 0` runs the
//! set-up alone, so `(total(N) - total(0)) / N` over all kinds cross-checks it. Each
//! `run_*` does what the server does per request minus gRPC and validation: the cache
//! lookup (`Cache::resolve`: the applied revision, then the tenant's slot),
//! `TenantSnapshot::check`, and for `*_explain` the
//! explanation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement tool: a broken fixture should stop it loudly"
)]

#[path = "../benches/fixtures/mod.rs"]
#[allow(
    dead_code,
    reason = "compile-time fixtures are for the benchmarks only"
)]
mod fixtures;

use std::hint::black_box;

use authz::{
    cache::Cache,
    policy::{Query, Reason},
};

/// `n` checks of `q` in `tenant`; returns how many were allowed.
#[inline(never)]
fn run_check(cache: &Cache, tenant: &str, q: &Query<'_>, n: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        let resolved = cache.resolve(black_box(tenant), 0, None).unwrap();
        let snapshot = resolved.snapshot().unwrap();
        allowed += usize::from(snapshot.check(black_box(q)).allowed());
    }
    allowed
}

/// `n` checks with explanation; returns the total length of the explanations.
#[inline(never)]
fn run_explain(cache: &Cache, tenant: &str, q: &Query<'_>, n: usize) -> usize {
    let mut len = 0;
    for _ in 0..n {
        let resolved = cache.resolve(black_box(tenant), 0, None).unwrap();
        let snapshot = resolved.snapshot().unwrap();
        let q = black_box(q);
        len += snapshot.explain(q, &snapshot.check(q)).explanation.len();
    }
    len
}

// One function per kind, so each has its own line in callgrind's output.

#[inline(never)]
fn run_permission_granted(c: &Cache, n: usize) -> usize {
    run_check(c, "t", &fixtures::PERMISSION_GRANTED, n)
}

#[inline(never)]
fn run_permission_denied(c: &Cache, n: usize) -> usize {
    run_check(c, "t", &fixtures::PERMISSION_DENIED, n)
}

#[inline(never)]
fn run_permission_explain(c: &Cache, n: usize) -> usize {
    run_explain(c, "t", &fixtures::PERMISSION_GRANTED, n)
}

#[inline(never)]
fn run_route_granted_last(c: &Cache, n: usize) -> usize {
    run_check(c, "r", &fixtures::route_granted_last(), n)
}

#[inline(never)]
fn run_route_denied(c: &Cache, n: usize) -> usize {
    run_check(c, "r", &fixtures::route_denied(), n)
}

#[inline(never)]
fn run_endpoint_granted(c: &Cache, n: usize) -> usize {
    run_check(c, "acme", &fixtures::chat_granted(), n)
}

#[inline(never)]
fn run_endpoint_denied(c: &Cache, n: usize) -> usize {
    run_check(c, "acme", &fixtures::chat_denied(), n)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("N: a number of checks"));
    let perm = fixtures::cache_of(&fixtures::permission_doc());
    let route = fixtures::cache_of(&fixtures::route_doc());
    let chat = fixtures::cache_of(&fixtures::chat_api_doc());

    // The fixtures decide as their names say.
    let reason = |c: &Cache, t: &str, q: &Query<'_>| c.tenant(t).unwrap().check(q).reason;
    assert_eq!(
        reason(&perm, "t", &fixtures::PERMISSION_GRANTED),
        Reason::Granted
    );
    assert_eq!(
        reason(&perm, "t", &fixtures::PERMISSION_DENIED),
        Reason::NoGrant
    );
    assert_eq!(
        reason(&route, "r", &fixtures::route_granted_last()),
        Reason::Granted
    );
    assert_eq!(
        reason(&route, "r", &fixtures::route_denied()),
        Reason::MethodNotAllowed
    );
    assert_eq!(
        reason(&chat, "acme", &fixtures::chat_granted()),
        Reason::Granted
    );
    assert_eq!(
        reason(&chat, "acme", &fixtures::chat_denied()),
        Reason::NoGrant
    );

    let results = [
        ("permission granted", run_permission_granted(&perm, n)),
        ("permission denied", run_permission_denied(&perm, n)),
        ("permission + explain", run_permission_explain(&perm, n)),
        (
            "route granted (last role)",
            run_route_granted_last(&route, n),
        ),
        ("route denied (all roles)", run_route_denied(&route, n)),
        ("endpoint table granted", run_endpoint_granted(&chat, n)),
        ("endpoint table denied", run_endpoint_denied(&chat, n)),
    ];
    for (name, r) in results {
        println!("{name}: {r}");
    }
}
