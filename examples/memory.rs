//! Heap held by compiled policies, per role assignment.
//!
//! ```text
//! cargo run --release --example memory -- [TENANTS] [ASSIGNMENTS_PER_TENANT] [--chat-api]
//! ```
//!
//! Defaults: 10,000 tenants × 100 assignments (1,000,000 assignments). Each tenant has
//! the built-in roles (shared), 3 custom roles, one default role, members holding 1–3
//! assignments each at the root, a project or an environment scope, and one group of 5
//! members with 2 assignments. Member ids are 26-character ULID-like strings.
//! `--chat-api` takes the built-in roles and the global endpoint table (70 entries) of
//! `examples/policies/chat-api.yaml` instead of the 8 built-in roles of the benchmarks.
//!
//! A counting global allocator (a wrapper around `System`) reports live heap bytes as
//! requested, live blocks, an estimate of glibc's chunk bytes for them (what a block
//! really occupies: size + 8 rounded up to 16, at least 32), and the peak. Phases:
//! the document, compile (peak), the compiled `Policy` alone after the document is
//! dropped, and the `Cache` holding it. Then a second compile is taken apart field by
//! field to show which structures hold the bytes. Results: `docs/benchmarks.md`.
#![allow(
    unsafe_code,
    reason = "a GlobalAlloc must be an `unsafe impl`; it only forwards to System and counts"
)]
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement tool: a broken fixture should stop it loudly"
)]

#[path = "../benches/fixtures/mod.rs"]
#[allow(dead_code, reason = "this example uses only the document builders")]
mod fixtures;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use authz::{
    cache::Cache,
    policy::{
        Policy, PolicyDocument, TenantSnapshot,
        pattern::Matcher,
        snapshot::RoleSet,
        source::{GroupDoc, RoleDoc, TenantDoc},
    },
};
use fixtures::{assign, assign_group, role, route, subject};

/// Live bytes as requested by the program.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Highest `LIVE` since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Live blocks.
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// Estimated glibc chunk bytes of the live blocks (see [`chunk`]).
static CHUNKS: AtomicUsize = AtomicUsize::new(0);

/// glibc malloc's footprint of a block: an 8-byte header, 16-byte granularity, 32 bytes
/// at least; blocks of 128 KiB and more are mmapped whole pages. An estimate (the mmap
/// threshold moves at run time), but a close one for the many small blocks here.
fn chunk(size: usize) -> usize {
    if size >= 128 * 1024 {
        (size + 16).div_ceil(4096) * 4096
    } else {
        ((size + 8).div_ceil(16) * 16).max(32)
    }
}

fn counted_alloc(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
    BLOCKS.fetch_add(1, Relaxed);
    CHUNKS.fetch_add(chunk(size), Relaxed);
}

fn counted_free(size: usize) {
    LIVE.fetch_sub(size, Relaxed);
    BLOCKS.fetch_sub(1, Relaxed);
    CHUNKS.fetch_sub(chunk(size), Relaxed);
}

/// `System`, counting.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters are plain atomics and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            counted_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            counted_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        counted_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counted_free(layout.size());
            counted_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap at one moment.
#[derive(Clone, Copy)]
struct Heap {
    bytes: usize,
    blocks: usize,
    chunks: usize,
}

impl Heap {
    fn now() -> Self {
        Heap {
            bytes: LIVE.load(Relaxed),
            blocks: BLOCKS.load(Relaxed),
            chunks: CHUNKS.load(Relaxed),
        }
    }

    fn zero() -> Self {
        Heap {
            bytes: 0,
            blocks: 0,
            chunks: 0,
        }
    }

    fn since(self, base: Heap) -> Heap {
        Heap {
            bytes: self.bytes.saturating_sub(base.bytes),
            blocks: self.blocks.saturating_sub(base.blocks),
            chunks: self.chunks.saturating_sub(base.chunks),
        }
    }
}

fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// A line of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status(key: &str) -> usize {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| {
            v.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// splitmix64: deterministic pseudo-random ids.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A 26-character ULID-like member id.
fn member_id(tenant: usize, n: usize) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut id = String::with_capacity(26);
    let mut h = mix(((tenant as u64) << 20) ^ n as u64);
    let mut l = mix(h);
    for i in 0..26 {
        if i == 13 {
            h = l;
            l = mix(l);
        }
        id.push(char::from(ALPHABET[(h & 31) as usize]));
        h >>= 5;
    }
    id
}

/// The policy measured: see the module documentation.
fn document(tenants: usize, per_tenant: usize, chat_api: bool) -> PolicyDocument {
    document_range(0..tenants, per_tenant, chat_api)
}

/// The tenants `range` of the policy measured.
fn document_range(
    range: std::ops::Range<usize>,
    per_tenant: usize,
    chat_api: bool,
) -> PolicyDocument {
    let (builtins, endpoints) = if chat_api {
        let d = fixtures::chat_api_doc();
        (d.roles, d.endpoints)
    } else {
        (fixtures::builtin_roles(), Vec::new())
    };
    let b: Vec<String> = builtins.iter().map(|r| r.id.clone()).collect();
    let customs = |t: usize| -> Vec<RoleDoc> {
        let mut reader = role("custom-reader", &[&b[0]], &["reports.read"]);
        reader.routes = vec![
            route(&["GET"], "/reports/{report_id}"),
            route(&["GET", "HEAD"], "/exports/**"),
        ];
        vec![
            role(
                "custom-lead",
                &[&b[2.min(b.len() - 1)]],
                &["team.manage", "reports.read", "reports.share"],
            ),
            reader,
            role(
                &format!("custom-ops-{}", t % 7),
                &[],
                &["deploys.approve", "incidents.close"],
            ),
        ]
    };
    // The roles members get: mostly built-in, some custom.
    let mut pool: Vec<String> = b.clone();
    pool.extend(["custom-lead".to_owned(), "custom-reader".to_owned()]);

    let mut doc = PolicyDocument {
        version: 1,
        roles: builtins,
        endpoints,
        tenants: Vec::with_capacity(range.len()),
    };
    for t in range {
        let roles = customs(t);
        let ops = roles[2].id.clone();
        let mut td = TenantDoc {
            id: format!("tenant-{t:05}"),
            roles,
            default_roles: vec![b[0].clone()],
            ..TenantDoc::default()
        };
        let scope = |k: usize| match k % 4 {
            0 | 1 => String::new(),
            2 => format!("projects/p-{}", k % 20),
            _ => format!("projects/p-{}/envs/{}", k % 20, ["prod", "staging"][k % 2]),
        };
        // Two assignments go to the group; the rest to members, 1–3 each.
        let direct = per_tenant.saturating_sub(2);
        let mut n = 0;
        let mut k = 0;
        while n < direct {
            let sid = member_id(t, k);
            td.subjects.push(subject(&sid));
            let count = (k % 3 + 1).min(direct - n);
            for j in 0..count {
                let role = if (k + j) % 11 == 10 {
                    &ops
                } else {
                    &pool[(k * 5 + j * 3) % pool.len()]
                };
                td.assignments.push(assign(&sid, role, &scope(k + j)));
            }
            n += count;
            k += 1;
        }
        if per_tenant >= 2 {
            td.groups.push(GroupDoc {
                id: "on-call".to_owned(),
                members: td.subjects.iter().take(5).map(|s| s.id.clone()).collect(),
            });
            td.assignments.push(assign_group("on-call", &ops, ""));
            td.assignments
                .push(assign_group("on-call", &pool[1], "projects/p-3"));
        }
        doc.tenants.push(td);
    }
    doc
}

fn compile(doc: &PolicyDocument) -> Policy {
    match authz::policy::compile(doc, "memory", 1) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Frees one part of every snapshot and returns the bytes and blocks that freed.
fn free_part(tenants: &mut [TenantSnapshot], mut f: impl FnMut(&mut TenantSnapshot)) -> Heap {
    let before = Heap::now();
    for t in tenants.iter_mut() {
        f(t);
    }
    before.since(Heap::now())
}

fn main() {
    let mut positional = Vec::new();
    let mut chat_api = false;
    let mut rss = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--chat-api" => chat_api = true,
            "--rss" => rss = true,
            _ => positional.push(a.parse::<usize>().unwrap_or_else(|e| panic!("{a}: {e}"))),
        }
    }
    let tenants = positional.first().copied().unwrap_or(10_000);
    let per_tenant = positional.get(1).copied().unwrap_or(100);
    if rss {
        resident(tenants, per_tenant, chat_api);
        return;
    }

    let base = Heap::now();
    let doc = document(tenants, per_tenant, chat_api);
    let assignments: usize = doc.tenants.iter().map(|t| t.assignments.len()).sum();
    let subjects: usize = doc.tenants.iter().map(|t| t.subjects.len()).sum();
    let with_doc = Heap::now();
    reset_peak();
    let policy = compile(&doc);
    let peak = PEAK.load(Relaxed).saturating_sub(with_doc.bytes);
    let with_both = Heap::now();
    drop(doc);
    let policy_alone = Heap::now().since(base);

    let cache = Cache::new();
    cache.replace_all(policy, 1);
    let in_cache = Heap::now().since(base);
    drop(cache);
    let leftover = Heap::now().since(base);

    let a = assignments.max(1) as f64;
    let t = tenants.max(1) as f64;
    println!(
        "{tenants} tenants × {per_tenant} assignments = {assignments} assignments, {subjects} members{}",
        if chat_api {
            " (chat-api built-in roles and global endpoint table)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "{:<44} {:>8} {:>9} {:>9} {:>13} {:>14}",
        "live heap", "MiB", "B/tenant", "B/assign", "blocks/assign", "est. glibc B/a"
    );
    let line = |name: &str, h: Heap| {
        println!(
            "{:<44} {:>8.1} {:>9.0} {:>9.1} {:>13.2} {:>14.1}",
            name,
            mib(h.bytes),
            h.bytes as f64 / t,
            h.bytes as f64 / a,
            h.blocks as f64 / a,
            h.chunks as f64 / a
        );
    };
    line("document (PolicyDocument)", with_doc.since(base));
    line("document + compiled Policy", with_both.since(base));
    line("compiled Policy alone (document dropped)", policy_alone);
    line("Cache holding the Policy", in_cache);
    println!(
        "{:<44} {:>8.1} {:>9.0} {:>9.1}",
        "peak during compile, above the document",
        mib(peak),
        peak as f64 / t,
        peak as f64 / a
    );
    println!(
        "{:<44} {:>8.1}",
        "left after dropping the Cache",
        mib(leftover.bytes)
    );

    breakdown(tenants, per_tenant, chat_api, assignments);
}

/// Fills a `Cache` 100 tenants at a time (document, compile, drop the document, store
/// the snapshots), so freed document memory is reused and the process's resident set
/// is the cache's, then reports the growth of `VmRSS`.
fn resident(tenants: usize, per_tenant: usize, chat_api: bool) {
    let rss_base = proc_status("VmRSS");
    let base = Heap::now();
    let cache = Cache::new();
    let mut assignments = 0;
    let mut start = 0;
    while start < tenants {
        let end = (start + 100).min(tenants);
        let doc = document_range(start..end, per_tenant, chat_api);
        assignments += doc
            .tenants
            .iter()
            .map(|t| t.assignments.len())
            .sum::<usize>();
        let policy = compile(&doc);
        drop(doc);
        for s in policy.tenants {
            cache.store(s);
        }
        start = end;
    }
    cache.publish(1);
    let heap = Heap::now().since(base);
    let rss = proc_status("VmRSS").saturating_sub(rss_base);
    let hwm = proc_status("VmHWM");
    let a = assignments.max(1) as f64;
    let t = tenants.max(1) as f64;
    println!(
        "{} tenants × {per_tenant} assignments = {assignments} assignments{}, filled 100 tenants at a time",
        cache.tenant_count(),
        if chat_api {
            " (chat-api built-in roles and global endpoint table)"
        } else {
            ""
        }
    );
    let line = |name: &str, bytes: usize| {
        println!(
            "{name:<24} {:>8.1} MiB {:>8.0} B/tenant {:>7.1} B/assignment",
            mib(bytes),
            bytes as f64 / t,
            bytes as f64 / a
        );
    };
    line("live heap (requested)", heap.bytes);
    line("est. glibc chunks", heap.chunks);
    line("VmRSS growth", rss);
    println!(
        "({:.2} blocks/assignment; VmHWM {:.1} MiB)",
        heap.blocks as f64 / a,
        mib(hwm)
    );
}

/// Compiles again and frees the snapshots part by part.
fn breakdown(tenants: usize, per_tenant: usize, chat_api: bool, assignments: usize) {
    let doc = document(tenants, per_tenant, chat_api);
    let Policy {
        tenants: mut snapshots,
    } = compile(&doc);
    drop(doc);
    let total = Heap::now();
    let a = assignments.max(1) as f64;
    let mut rows: Vec<(String, Heap)> = Vec::new();
    let mut row = |name: &str, h: Heap| rows.push((name.to_owned(), h));

    row(
        "subjects (flat: ids, entries, assignments, groups)",
        free_part(&mut snapshots, |t| drop(std::mem::take(&mut t.subjects))),
    );
    row(
        "groups (ids, member lists, assignments)",
        free_part(&mut snapshots, |t| t.groups = Default::default()),
    );
    row(
        "scopes (Box<[Box<str>]>)",
        free_part(&mut snapshots, |t| t.scopes = Default::default()),
    );
    row(
        "role_index (HashMap<Box<str>, RoleIdx>)",
        free_part(&mut snapshots, |t| drop(std::mem::take(&mut t.role_index))),
    );
    row(
        "permission_holders (HashMap<Box<str>, RoleSet>)",
        free_part(&mut snapshots, |t| {
            drop(std::mem::take(&mut t.permission_holders))
        }),
    );
    row(
        "custom roles: route tries (Matcher)",
        free_part(&mut snapshots, |t| {
            for r in t.custom.parts() {
                r.matcher = Matcher::default();
            }
        }),
    );
    row(
        "custom roles: rules (patterns, methods)",
        free_part(&mut snapshots, |t| {
            for r in t.custom.parts() {
                r.rules = Box::new([]);
            }
        }),
    );
    row(
        "custom roles: closures and closure sets",
        free_part(&mut snapshots, |t| {
            for r in t.custom.parts() {
                r.closure = Box::new([]);
                r.closure_set = RoleSet::default();
            }
        }),
    );
    row(
        "custom roles: permission names",
        free_part(&mut snapshots, |t| {
            for r in t.custom.parts() {
                r.permissions = Box::new([]);
            }
        }),
    );
    row(
        "custom roles: the rest (ids, descriptions, table)",
        free_part(&mut snapshots, |t| t.custom = Default::default()),
    );
    row(
        "endpoint entries (per-tenant copies of global)",
        free_part(&mut snapshots, |t| t.endpoints = Default::default()),
    );
    row(
        "endpoint trie (Matcher)",
        free_part(&mut snapshots, |t| t.endpoint_matcher = Default::default()),
    );
    let rest = free_part(&mut snapshots, |t| {
        t.default_roles = Default::default();
        t.id = Box::from("");
    });
    let before = Heap::now();
    drop(snapshots);
    row(
        "the rest (snapshot structs, ids, default roles)",
        rest.plus(before.since(Heap::now())),
    );

    println!();
    println!(
        "breakdown of the compiled Policy ({:.1} MiB): bytes per assignment by structure",
        mib(total.bytes)
    );
    let t = tenants.max(1) as f64;
    println!(
        "{:<52} {:>9} {:>9} {:>7} {:>13} {:>14}",
        "structure", "B/tenant", "B/assign", "share", "blocks/assign", "est. glibc B/a"
    );
    let sum = rows.iter().fold(Heap::zero(), |acc, (_, h)| acc.plus(*h));
    for (name, h) in &rows {
        println!(
            "{:<52} {:>9.0} {:>9.1} {:>6.1}% {:>13.2} {:>14.1}",
            name,
            h.bytes as f64 / t,
            h.bytes as f64 / a,
            100.0 * h.bytes as f64 / sum.bytes.max(1) as f64,
            h.blocks as f64 / a,
            h.chunks as f64 / a
        );
    }
    println!(
        "{:<52} {:>9.0} {:>9.1} {:>7} {:>13.2} {:>14.1}",
        "sum",
        sum.bytes as f64 / t,
        sum.bytes as f64 / a,
        "",
        sum.blocks as f64 / a,
        sum.chunks as f64 / a
    );
    println!(
        "(`groups` includes the group's member id strings; a field replaced by its default \
         keeps that default's small allocation, so rows are net)"
    );
}

/// Mutable access to a snapshot's slice, whether it is a `Box<[T]>` or an `Arc<[T]>`
/// (empty when the `Arc` is shared: then nothing of it can be freed here).
trait Parts<T> {
    fn parts(&mut self) -> &mut [T];
}

impl<T> Parts<T> for Box<[T]> {
    fn parts(&mut self) -> &mut [T] {
        self
    }
}

impl<T> Parts<T> for std::sync::Arc<[T]> {
    fn parts(&mut self) -> &mut [T] {
        std::sync::Arc::get_mut(self).unwrap_or_default()
    }
}

impl Heap {
    /// The sum of two measurements.
    fn plus(self, other: Heap) -> Heap {
        Heap {
            bytes: self.bytes + other.bytes,
            blocks: self.blocks + other.blocks,
            chunks: self.chunks + other.chunks,
        }
    }
}
