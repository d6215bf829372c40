//! Runs the decision path without and with metrics recording in a loop, for instruction
//! counting under callgrind: the numbers behind "Metrics overhead" in
//! `docs/benchmarks.md`, which do not depend on machine load as timings do.
//!
//! ```text
//! cargo build --release --example callgrind_metrics
//! valgrind --tool=callgrind --callgrind-out-file=cg.metrics \
//!     target/release/examples/callgrind_metrics 100000
//! callgrind_annotate --inclusive=yes cg.metrics | grep 'callgrind_metrics::run_'
//! ```
//!
//! Each variant runs `N` times (default 100,000) inside its own `run_*` function, never
//! inlined: its inclusive cost divided by `N` is the instructions per request. The
//! request is the one `benches/metrics.rs` times: `PUT /experts/e-1` as `erin` on the
//! chat API example.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement tool: a broken fixture should stop it loudly"
)]

use std::{hint::black_box, path::Path};

use authz::{
    cache::Cache,
    metrics::{Metrics, Rpc},
    model::Method,
    policy::{Action, Query, Reason},
    store::file,
};

/// `n` decisions; returns how many were allowed.
#[inline(never)]
fn run_decide(cache: &Cache, q: &Query<'_>, n: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        let snapshot = cache.tenant(black_box("acme")).unwrap();
        allowed += usize::from(snapshot.check(black_box(q)).allowed());
    }
    allowed
}

/// `n` decisions, each recorded as a Check handler records it.
#[inline(never)]
fn run_decide_with_metrics(cache: &Cache, metrics: &Metrics, q: &Query<'_>, n: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        let _in_flight = metrics.start(Rpc::Check);
        let snapshot = cache.tenant(black_box("acme")).unwrap();
        let reason = snapshot.check(black_box(q)).reason;
        metrics.decision(Rpc::Check, reason);
        allowed += usize::from(reason.allowed());
    }
    allowed
}

/// `n` recordings alone.
#[inline(never)]
fn run_record(metrics: &Metrics, n: usize) {
    for _ in 0..n {
        let _in_flight = metrics.start(Rpc::Check);
        metrics.decision(Rpc::Check, black_box(Reason::Granted));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("N: a count"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/chat-api.yaml");
    let (policy, _) = file::load(&path, 1).unwrap();
    let cache = Cache::new();
    cache.replace_all(policy, 1);
    let metrics = Metrics::new(cache.clone(), None);
    let q = Query {
        subject: "erin",
        scope: "",
        action: Action::Route {
            method: Method::parse("PUT").unwrap(),
            path: "/experts/e-1",
        },
    };
    assert_eq!(run_decide(&cache, &q, n), n);
    assert_eq!(run_decide_with_metrics(&cache, &metrics, &q, n), n);
    run_record(&metrics, n);
    assert_eq!(
        metrics.decisions(Rpc::Check, Reason::Granted),
        2 * n as u64,
        "every decision recorded"
    );
}
