//! Work grows linearly with every size a policy can grow in: measured as heap bytes
//! allocated (a counting global allocator, per thread) while a document of size N and
//! one of size 4N are parsed and compiled. Super-linear code shows up as a ratio well
//! over 4 (a quadratic structure: 16); the test allows 4.5. Nothing is timed.
//!
//! Roles per tenant and include fan-out caught the dense role bit sets this replaced
//! (`policy::snapshot::RoleSet` was a bit set over every role of the tenant: x7.3 for
//! 4x the roles at 2,000 roles); they are sorted role lists now, x4.0.
#![allow(
    unsafe_code,
    reason = "a GlobalAlloc must be an `unsafe impl`; it only forwards to System and counts"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    fmt::Write as _,
};

use authz::policy::{Limits, PolicyDocument, compile, compile_with, source::Format};

thread_local! {
    /// Bytes allocated by this thread so far (reallocations count their new size).
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// counting touches only a const-initialized thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn count(bytes: usize) {
    // `try_with`: the thread-local may be gone while the thread exits.
    let _ = ALLOCATED.try_with(|a| a.set(a.get() + bytes as u64));
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes this thread allocates compiling `yaml` (the document must be valid). Parsing is
/// measured apart: its many small allocations would hide a quadratic structure of the
/// compiled snapshot behind a large linear term.
fn cost(yaml: &str) -> u64 {
    let doc = PolicyDocument::parse(yaml, Format::Yaml, "p.yaml").unwrap();
    let before = ALLOCATED.with(Cell::get);
    let policy = compile(&doc, "p.yaml", 1).unwrap();
    let after = ALLOCATED.with(Cell::get);
    drop((doc, policy));
    after - before
}

/// Bytes this thread allocates parsing `yaml`.
fn parse_cost(yaml: &str) -> u64 {
    let before = ALLOCATED.with(Cell::get);
    let doc = PolicyDocument::parse(yaml, Format::Yaml, "p.yaml").unwrap();
    let after = ALLOCATED.with(Cell::get);
    drop(doc);
    after - before
}

/// Asserts that the cost of `make(4n)` is at most 4.5 times that of `make(n)`.
fn linear(what: &str, n: usize, make: impl Fn(usize) -> String, cost: impl Fn(&str) -> u64) {
    // Warm up lazily initialized state (thread-locals, interned statics) first.
    cost(&make(n));
    let small = cost(&make(n));
    let large = cost(&make(4 * n));
    let ratio = large as f64 / small as f64;
    println!(
        "{what}: {n} -> {small} bytes, {} -> {large} bytes, x{ratio:.2}",
        4 * n
    );
    assert!(
        ratio <= 4.5,
        "{what}: x{ratio:.2} for 4x the size ({small} -> {large} bytes)"
    );
}

const BASE: &str = "version: 1\nroles:\n  - id: viewer\n    permissions: [docs.read]\n    routes: [{methods: [GET], path: /docs/**}]\n";

#[test]
fn endpoint_entries() {
    linear(
        "endpoint entries",
        1000,
        |n| {
            let mut y = format!("{BASE}tenants:\n  - id: t\n    endpoints:\n");
            for i in 0..n {
                let _ = writeln!(
                    y,
                    "      - {{path: \"/e/{i}/{{id}}/x\", methods: [GET, PUT], roles: [viewer]}}"
                );
            }
            y
        },
        cost,
    );
}

#[test]
fn subjects_and_assignments() {
    linear(
        "subjects and assignments",
        2000,
        |n| {
            let mut y = format!("{BASE}tenants:\n  - id: t\n    subjects:\n");
            for i in 0..n {
                let _ = writeln!(y, "      - {{id: user-{i:08}}}");
            }
            y.push_str("    groups:\n      - id: g\n        members: [");
            for i in 0..n {
                let _ = write!(y, "user-{i:08}, ");
            }
            y.push_str("]\n    assignments:\n");
            for i in 0..n {
                let _ = writeln!(
                    y,
                    "      - {{subject: user-{i:08}, role: viewer, scope: workspaces/ws-{}}}",
                    i % 50
                );
            }
            y
        },
        cost,
    );
}

#[test]
fn tenants() {
    linear(
        "tenants",
        500,
        |n| {
            let mut y = format!("{BASE}tenants:\n");
            for i in 0..n {
                let _ = writeln!(
                    y,
                    "  - id: t{i}\n    roles: [{{id: c, includes: [viewer], permissions: [x]}}]\n    subjects: [{{id: s}}]\n    assignments: [{{subject: s, role: c}}]"
                );
            }
            y
        },
        cost,
    );
}

#[test]
fn parsing() {
    linear(
        "parsing subjects",
        2000,
        |n| {
            let mut y = format!("{BASE}tenants:\n  - id: t\n    subjects:\n");
            for i in 0..n {
                let _ = writeln!(y, "      - {{id: user-{i:08}}}");
            }
            y
        },
        parse_cost,
    );
}

#[test]
fn yaml_nesting() {
    // Refused before parsing, however deep and long: the scan's cost follows the bytes.
    let refused = |yaml: &str| {
        let before = ALLOCATED.with(Cell::get);
        let err = PolicyDocument::parse(yaml, Format::Yaml, "p.yaml").unwrap_err();
        let after = ALLOCATED.with(Cell::get);
        assert!(err.to_string().contains("nested deeper"), "{err}");
        after - before
    };
    linear(
        "nesting (dashes)",
        20_000,
        |n| format!("version: 1\nroles:\n{}x\n", "- ".repeat(n)),
        refused,
    );
    linear(
        "nesting (flow)",
        20_000,
        |n| format!("version: 1\nroles: {}{}\n", "[".repeat(n), "]".repeat(n)),
        refused,
    );
}

#[test]
fn roles_per_tenant() {
    linear(
        "roles per tenant",
        2000,
        |n| {
            let mut y = format!("{BASE}tenants:\n  - id: t\n    roles:\n");
            for i in 0..n {
                // Chains of 8 (includes within the depth limit) and a shared permission.
                let includes = if i % 8 == 0 {
                    "viewer".to_owned()
                } else {
                    format!("r{}", i - 1)
                };
                let _ = writeln!(
                    y,
                    "      - {{id: r{i}, includes: [{includes}], permissions: [p{i}, shared]}}"
                );
            }
            y
        },
        cost,
    );
}

#[test]
fn include_fan_out() {
    linear(
        "include fan-out",
        2000,
        |n| {
            let mut y = format!("{BASE}tenants:\n  - id: t\n    roles:\n");
            for i in 0..n {
                let _ = writeln!(y, "      - {{id: r{i}, permissions: [p{i}]}}");
            }
            y.push_str("      - id: top\n        includes: [");
            for i in 0..n {
                let _ = write!(y, "r{i}, ");
            }
            y.push_str("]\n      - {id: above, includes: [top]}\n");
            y
        },
        cost,
    );
}

/// Bytes this thread allocates refusing `yaml` for `max_closure_cost = 50000` (the
/// document must be refused for that limit, naming it).
fn closure_refusal_cost(yaml: &str) -> u64 {
    let limits = Limits {
        closure_cost_per_tenant: 50_000,
        ..Limits::default()
    };
    let doc = PolicyDocument::parse(yaml, Format::Yaml, "p.yaml").unwrap();
    let before = ALLOCATED.with(Cell::get);
    let e = compile_with(&doc, "p.yaml", 1, limits).unwrap_err();
    let after = ALLOCATED.with(Cell::get);
    assert!(e.to_string().contains("max_closure_cost = 50000"), "{e}");
    drop(doc);
    after - before
}

/// A hub including N roles, included by N roles: N² closure entries, quadratic in the
/// document, unless `max_closure_cost` stops it. Refused at the cost of the limit
/// (here 50,000) plus what is linear in the roles, not at the cost of N².
#[test]
fn a_hub_over_the_closure_limit_is_refused_at_the_cost_of_the_limit() {
    linear(
        "hub over the closure limit",
        1000,
        |n| {
            let mut y = format!("{BASE}tenants:\n  - id: t\n    roles:\n");
            for i in 0..n {
                let _ = writeln!(y, "      - {{id: leaf{i}}}");
            }
            y.push_str("      - id: hub\n        includes: [");
            for i in 0..n {
                let _ = write!(y, "leaf{i}, ");
            }
            y.push_str("]\n");
            for i in 0..n {
                let _ = writeln!(y, "      - {{id: user{i}, includes: [hub]}}");
            }
            y
        },
        closure_refusal_cost,
    );
}

/// Three layers of N roles, each including every role of the next: 2N² includes, and
/// N³ units of closure work (each top role follows every include of the middle layer),
/// super-linear in the document unless `max_closure_cost` stops it: refused at the cost
/// of the limit plus what is linear in the includes.
#[test]
fn a_dense_include_graph_over_the_closure_limit_is_refused_at_the_cost_of_the_limit() {
    // 4x the includes: 2x the roles per layer.
    let make = |n: usize| {
        let mut y = format!("{BASE}tenants:\n  - id: t\n    roles:\n");
        for layer in 0..3 {
            for i in 0..n {
                let _ = write!(y, "      - {{id: l{layer}_{i}, includes: [");
                if layer < 2 {
                    for j in 0..n {
                        let _ = write!(y, "l{}_{j}, ", layer + 1);
                    }
                }
                y.push_str("]}\n");
            }
        }
        y
    };
    closure_refusal_cost(&make(60));
    let small = closure_refusal_cost(&make(60));
    let large = closure_refusal_cost(&make(120));
    let ratio = large as f64 / small as f64;
    println!("dense include graph: 60 -> {small} bytes, 120 -> {large} bytes, x{ratio:.2}");
    assert!(
        ratio <= 4.5,
        "x{ratio:.2} for 4x the includes ({small} -> {large} bytes)"
    );
}
