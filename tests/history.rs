//! A randomized history test against a real PostgreSQL and two authzd replicas.
//!
//! The rule under test: every answer (Check, each BatchCheck item, ListPermissions) is
//! computed on exactly one committed policy state and names that state's revision;
//! `min_revision` makes a replica wait for that revision or fail with an error status;
//! an internal failure is never `allowed: true`; and a write the policy rules refuse
//! changes nothing.
//!
//! How:
//! 1. A fresh database gets a base policy (three tenants with custom roles that include
//!    each other and built-in roles, route rules, endpoint tables, subjects, groups and
//!    assignments at scopes). Two in-process replicas follow it (replica 0 also serves
//!    the admin API).
//! 2. Two writers make random changes through the admin API and through direct SQL
//!    transactions on the policy tables, including writes that must be refused (an
//!    include cycle, an unknown role, a bad route pattern `/…/**/b`, a lower-case method,
//!    two endpoint entries with the same pattern and a common method). After each
//!    committed write a writer reads its own write (`min_revision` = the revision the
//!    write returned). Three readers ask both replicas random Checks, BatchChecks (one
//!    item may name another tenant through its own `tenant_id`) and ListPermissions,
//!    with and without `min_revision`. Every request and answer is recorded. In the
//!    second test the followers' database connections are killed several times
//!    meanwhile.
//! 3. The committed history is rebuilt from the change log `authz_changes`: a scratch
//!    database is migrated, its triggers switched off (`session_replication_role =
//!    replica`) and every revision's row changes replayed in order (INSERT by
//!    `jsonb_populate_record`, DELETE by the old row's primary key, UPDATE as both). After
//!    each revision the scratch database is read back as a document and every tenant
//!    compiled on its own, giving the exact committed state at every revision (a tenant a
//!    commit did not touch keeps its state). At the end the replayed database must equal
//!    the real one, or the replay itself is wrong. At every revision the state
//!    `postgres::export_at` rebuilds backwards from the current rows (what `authzd diff
//!    rev:N` compares) must equal the replayed one.
//! 4. Every recorded answer is recomputed with the library evaluator on the state at the
//!    revision it names, and must be equal in every field (decision, reason, granting
//!    role, include chain, source, group, scope, matched pattern, required roles,
//!    explanation; for ListPermissions every list; for a batch asking for
//!    DETAIL_DECISION, `allowed` and `reason`, every other field empty). A BatchCheck
//!    item must be exact both at its own revision and at its batch's
//!    (`BatchCheckResponse.revision` is "the policy revision every result was computed
//!    on"): a batch never mixes states. An answer naming a revision never committed, or
//!    one at which its tenant's committed state does not compile, fails. So does an
//!    answer older than its `min_revision`, an error status other than UNAVAILABLE, a
//!    must-refuse write that commits, a refused write whose marker shows up in the change
//!    log, and a committed state that does not compile.
//!
//! The seed (`AUTHZ_HISTORY_SEED`, decimal or 0x-hex) fixes each task's sequence of
//! operations and requests; how they interleave depends on timing, so a failure is
//! reproduced by running again with its seed, not replayed step by step. Set
//! `AUTHZ_HISTORY_KEEP_DB=1` to keep the databases for inspection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use authz::{
    grpc::{
        PolicyAdmin, ServiceConfig,
        auth::{AdminTokens, file_line},
        convert,
    },
    model::{self, Method},
    pb::{
        self, authorization_service_client::AuthorizationServiceClient,
        policy_admin_service_client::PolicyAdminServiceClient,
    },
    policy::{
        Action, Explanation, PolicyDocument, Query, TenantSnapshot, compile,
        source::{EndpointDoc, Format, TenantDoc},
    },
    server::ServerConfig,
    store::{
        admin::AdminStore,
        follow::FollowConfig,
        postgres::{self, Tenants, read_document},
        sync,
    },
};
use common::{Observed, TestServer, pg::TestDb};
use serde_json::Value;
use tokio_postgres::Client;
use tonic::{Code, Request, Status, transport::Channel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_committed_state_it_names() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_committed_state_it_names_while_followers_lose_their_connection() {
    run(true).await;
}

// ------------------------------------------------------------------------ settings

const DEFAULT_SEED: u64 = 0x00A1_7E57_2024_0001;
const WRITERS: usize = 2;
const OPS_PER_WRITER: usize = 300;
/// Writers stop early when this is used up (a slow machine).
const WRITE_BUDGET: Duration = Duration::from_secs(25);
const READERS: usize = 3;
const MAX_READS_PER_READER: usize = 5000;
const READ_PAUSE: Duration = Duration::from_millis(1);
/// Of every 100 writes, this many must be refused.
const BAD_WRITE_PERCENT: u64 = 12;
/// The whole test, setup to verdict.
const RUN_LIMIT: Duration = Duration::from_secs(180);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const REVISION_WAIT: Duration = Duration::from_secs(2);
/// Failures of one kind printed in full (with the revisions the answer matches).
const DETAILED: usize = 8;

const ROOT: &str = "history-root-token";

// ------------------------------------------------------------------------ universe

const TENANTS: [&str; 3] = ["t1", "t2", "t3"];
/// Created and dropped by the writers.
const EXTRA_TENANT: &str = "t4";
const QUERY_TENANTS: [&str; 5] = ["t1", "t2", "t3", "t4", "t-none"];
const SUBJECTS: [&str; 8] = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
const GROUPS: [&str; 3] = ["g-a", "g-b", "g-c"];
const SCOPES: [&str; 4] = ["", "ws/1", "ws/1/p/2", "ws/2"];
const QUERY_SCOPES: [&str; 6] = ["", "ws/1", "ws/1/p/2", "ws/1/p/2/d/3", "ws/2", "ws/10"];
const CUSTOM: [&str; 3] = ["t-auditor", "t-ops", "t-lead"];
const DYNAMIC: [&str; 2] = ["r-x1", "r-x2"];
const ROLES: [&str; 8] = [
    "viewer",
    "editor",
    "admin",
    "t-auditor",
    "t-ops",
    "t-lead",
    "r-x1",
    "r-x2",
];
const PERMISSIONS: [&str; 9] = [
    "docs.read",
    "docs.write",
    "audit.read",
    "ops.run",
    "admin.manage",
    "x.a",
    "x.b",
    "x.c",
    "nothing.here",
];
/// Valid route rules: methods (comma-separated) and pattern.
const RULES: [(&str, &str); 9] = [
    ("GET", "/docs/**"),
    ("PUT,DELETE", "/docs/{id}"),
    ("GET,POST", "/ops/*"),
    ("DELETE", "/ops/{id}/jobs/**"),
    ("*", "/admin/**"),
    ("GET", "/projects/*/files/**"),
    ("POST", "/projects/{p}"),
    ("GET,PUT", "/x/{a}/y"),
    ("PATCH", "/x/**"),
];
/// Requests asked about.
const PROBES: [(&str, &str); 24] = [
    ("GET", "/docs/7"),
    ("PUT", "/docs/7"),
    ("DELETE", "/docs/7"),
    ("HEAD", "/docs/7"),
    ("GET", "/docs/7/comments"),
    ("POST", "/docs/7/comments"),
    ("GET", "/health"),
    ("HEAD", "/health/"),
    ("GET", "/ops/status"),
    ("POST", "/ops/run"),
    ("DELETE", "/ops/9/jobs/1"),
    ("GET", "/projects/p1"),
    ("PUT", "/projects/p1"),
    ("PATCH", "/projects/p1"),
    ("GET", "/projects/p1/secrets"),
    ("GET", "/projects/p1/files/a/b"),
    ("GET", "/reports/q3"),
    ("PATCH", "/admin/users/1"),
    ("GET", "/x/1/y"),
    ("PATCH", "/x/z"),
    ("GET", "/w0/e1"),
    ("POST", "/w1/e2"),
    ("GET", "/a/c/b"),
    ("GET", "/nothing/here?x=1"),
];

fn base_policy() -> String {
    let mut y = String::from(
        r#"version: 1
roles:
  - id: viewer
    permissions: [docs.read]
    routes: [{methods: [GET], path: "/docs/**"}]
  - id: editor
    includes: [viewer]
    permissions: [docs.write]
    routes: [{methods: [PUT, DELETE], path: "/docs/{id}"}]
  - id: admin
    includes: [editor]
    permissions: [admin.manage]
    routes: [{methods: ["*"], path: "/admin/**"}]
endpoints:
  - {path: /health, methods: [GET], public: true}
  - {path: "/docs/{id}/comments", methods: [GET, POST], roles: [viewer]}
  - {path: "/reports/**", methods: [GET], roles: [admin]}
tenants:
"#,
    );
    type Assignments<'a> = &'a [(&'a str, &'a str, &'a str)];
    let tenants: [(&str, &str, &str, &str, Assignments<'_>); 3] = [
        (
            "t1",
            "[viewer]",
            "[u1, u2]",
            "[u3]",
            &[
                ("subject: u0", "admin", ""),
                ("subject: u1", "t-ops", "ws/1"),
                ("group: g-a", "editor", "ws/2"),
                ("subject: u2", "t-lead", "ws/1/p/2"),
                ("group: g-b", "t-auditor", ""),
            ],
        ),
        (
            "t2",
            "[]",
            "[u0, u3]",
            "[u4]",
            &[
                ("subject: u0", "t-lead", ""),
                ("group: g-a", "t-ops", "ws/1"),
                ("subject: u3", "viewer", "ws/2"),
            ],
        ),
        (
            "t3",
            "[t-auditor]",
            "[u2]",
            "[u1, u4]",
            &[
                ("subject: u1", "editor", ""),
                ("subject: u4", "t-ops", "ws/1"),
                ("group: g-b", "admin", "ws/1/p/2"),
                ("subject: u1", "t-ops", "ws/2"),
            ],
        ),
    ];
    for (id, defaults, ga, gb, assignments) in tenants {
        write!(
            y,
            r#"  - id: {id}
    roles:
      - id: t-auditor
        includes: [viewer]
        permissions: [audit.read]
      - id: t-ops
        includes: [t-auditor]
        permissions: [ops.run]
        routes:
          - {{methods: [GET, POST], path: "/ops/*"}}
          - {{methods: [DELETE], path: "/ops/{{id}}/jobs/**"}}
      - id: t-lead
        includes: [t-ops, editor]
        permissions: [x.a]
        routes: [{{methods: [GET], path: "/projects/*/files/**"}}]
    endpoints:
      - {{path: /ops/status, methods: [GET], public: true}}
      - {{path: "/projects/{{pid}}", methods: [GET, PUT], roles: [t-ops]}}
      - {{path: "/projects/{{pid}}/secrets", methods: [GET], roles: [t-lead]}}
    default_roles: {defaults}
    subjects: [{{id: u0}}, {{id: u1}}, {{id: u2}}, {{id: u3}}, {{id: u4}}, {{id: u5, disabled: true}}]
    groups: [{{id: g-a, members: {ga}}}, {{id: g-b, members: {gb}}}]
    assignments:
"#
        )
        .unwrap();
        for (holder, role, scope) in assignments {
            writeln!(y, "      - {{{holder}, role: {role}, scope: \"{scope}\"}}").unwrap();
        }
    }
    y
}

// ------------------------------------------------------------------------ randomness

fn seed() -> u64 {
    match std::env::var("AUTHZ_HISTORY_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            };
            parsed.unwrap_or_else(|| panic!("AUTHZ_HISTORY_SEED `{s}` is not a number"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// xorshift64*, seeded through splitmix64 so that nearby seeds and streams differ.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut z =
            (seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// One of `xs`, for the string constants the writers pick from.
    fn one(&mut self, xs: &[&'static str]) -> &'static str {
        xs[self.below(xs.len())]
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    /// An index into `weights`, chosen in proportion to them.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = (self.next() % u64::from(total)) as u32;
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// Each of `xs` with probability `p` percent, in order.
    fn subset(&mut self, xs: &[&str], p: u64) -> Vec<String> {
        xs.iter()
            .filter(|_| self.percent(p))
            .map(|s| s.to_string())
            .collect()
    }
}

// ------------------------------------------------------------------------ records

#[derive(Clone, Debug)]
enum Req {
    Check(pb::CheckRequest),
    Batch(pb::BatchCheckRequest),
    List(pb::ListPermissionsRequest),
}

#[derive(Debug)]
enum Resp {
    Check(pb::CheckResponse),
    Batch(pb::BatchCheckResponse),
    List(pb::ListPermissionsResponse),
}

#[derive(Debug)]
struct Record {
    replica: usize,
    /// `reader`, `read-your-write` or `final`.
    origin: &'static str,
    req: Req,
    resp: Result<Resp, (Code, String)>,
}

/// A write that the policy rules must refuse, identified by a marker string that
/// appears in the rows it would write.
#[derive(Debug)]
struct BadWrite {
    what: String,
    marker: String,
    outcome: Outcome,
}

#[derive(Clone, Debug)]
enum Outcome {
    /// Committed; the revision when known (an SQL transaction that changed no row has
    /// none).
    Committed(Option<u64>),
    /// Refused, with the status code or SQLSTATE and the message.
    Refused { code: String, message: String },
}

#[derive(Default)]
struct Shared {
    records: Mutex<Vec<Record>>,
    /// The newest revision a writer got back.
    latest: AtomicU64,
    bad: Mutex<Vec<BadWrite>>,
    /// Per kind of write: (committed, refused).
    writes: Mutex<BTreeMap<String, (usize, usize)>>,
    /// Problems found while writing (a bad write accepted and not revertible...).
    problems: Mutex<Vec<(&'static str, String)>>,
}

impl Shared {
    fn record(&self, r: Record) {
        self.records.lock().unwrap().push(r);
    }

    fn count_write(&self, kind: &str, outcome: &Outcome) {
        let mut w = self.writes.lock().unwrap();
        let e = w.entry(kind.to_owned()).or_default();
        match outcome {
            Outcome::Committed(_) => e.0 += 1,
            Outcome::Refused { .. } => e.1 += 1,
        }
    }

    fn problem(&self, category: &'static str, message: String) {
        self.problems.lock().unwrap().push((category, message));
    }
}

async fn ask(
    client: &AuthorizationServiceClient<Channel>,
    req: &Req,
) -> Result<Resp, (Code, String)> {
    let mut client = client.clone();
    let call = async {
        match req {
            Req::Check(r) => client
                .check(r.clone())
                .await
                .map(|x| Resp::Check(x.into_inner())),
            Req::Batch(r) => client
                .batch_check(r.clone())
                .await
                .map(|x| Resp::Batch(x.into_inner())),
            Req::List(r) => client
                .list_permissions(r.clone())
                .await
                .map(|x| Resp::List(x.into_inner())),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(s)) => Err((s.code(), s.message().to_owned())),
        Err(_) => Err((
            Code::DeadlineExceeded,
            format!("no answer within {REQUEST_TIMEOUT:?} (the test's own timeout)"),
        )),
    }
}

fn gen_action(rng: &mut Rng, invalid_percent: u64) -> pb::check_request::Action {
    if rng.percent(45) {
        pb::check_request::Action::Permission(rng.pick(&PERMISSIONS).to_string())
    } else {
        let (method, path) = *rng.pick(&PROBES);
        let method = if rng.percent(invalid_percent) {
            method.to_ascii_lowercase()
        } else {
            method.to_owned()
        };
        pb::check_request::Action::Route(pb::HttpRoute {
            method,
            path: path.to_owned(),
        })
    }
}

fn gen_subject(rng: &mut Rng) -> String {
    if rng.percent(12) {
        String::new()
    } else {
        rng.pick(&SUBJECTS).to_string()
    }
}

fn gen_tenant(rng: &mut Rng) -> &'static str {
    QUERY_TENANTS[rng.weighted(&[4, 4, 4, 2, 1])]
}

fn gen_check(rng: &mut Rng, tenant: &str, min_revision: u64) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.to_owned(),
        subject_id: gen_subject(rng),
        scope: rng.pick(&QUERY_SCOPES).to_string(),
        action: Some(gen_action(rng, 0)),
        min_revision,
    }
}

fn gen_batch(rng: &mut Rng, tenant: &str, min_revision: u64) -> pb::BatchCheckRequest {
    let n = 2 + rng.below(5);
    let other = rng.percent(60).then(|| rng.below(n));
    let checks = (0..n)
        .map(|i| pb::CheckRequest {
            // An item may name another tenant (or subject) itself; otherwise the batch's.
            tenant_id: if other == Some(i) || rng.percent(10) {
                gen_tenant(rng).to_owned()
            } else {
                String::new()
            },
            subject_id: if rng.percent(25) {
                gen_subject(rng)
            } else {
                String::new()
            },
            scope: rng.pick(&QUERY_SCOPES).to_string(),
            action: Some(gen_action(rng, 6)),
            min_revision: 0,
        })
        .collect();
    pb::BatchCheckRequest {
        tenant_id: tenant.to_owned(),
        subject_id: gen_subject(rng),
        checks,
        min_revision,
        // Mostly everything; sometimes the decision alone (allowed, reason, revision).
        detail: match rng.weighted(&[50, 20, 30]) {
            0 => pb::Detail::Unspecified,
            1 => pb::Detail::Full,
            _ => pb::Detail::Decision,
        } as i32,
    }
}

fn gen_list(rng: &mut Rng, tenant: &str, min_revision: u64) -> pb::ListPermissionsRequest {
    pb::ListPermissionsRequest {
        tenant_id: tenant.to_owned(),
        subject_id: gen_subject(rng),
        scope: rng.pick(&QUERY_SCOPES).to_string(),
        min_revision,
    }
}

// ------------------------------------------------------------------------ the run

async fn run(kill: bool) {
    let seed = seed();
    eprintln!(
        "history: seed {seed:#x}{} (AUTHZ_HISTORY_SEED to change it)",
        if kill {
            ", killing the followers' connections"
        } else {
            ""
        }
    );
    if tokio::time::timeout(RUN_LIMIT, run_inner(seed, kill))
        .await
        .is_err()
    {
        panic!(
            "history (seed {seed:#x}, kill {kill}) did not finish within {RUN_LIMIT:?}; \
             rerun with AUTHZ_HISTORY_SEED={seed:#x}"
        );
    }
}

fn fast_follow(url: &str) -> FollowConfig {
    let mut c = FollowConfig::new(url);
    c.poll_interval = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(200);
    c.consistency_interval = Duration::from_millis(700);
    c
}

fn service() -> ServiceConfig {
    ServiceConfig {
        revision_wait: REVISION_WAIT,
        ..ServiceConfig::default()
    }
}

async fn run_inner(seed: u64, kill: bool) {
    let started = Instant::now();
    let db = TestDb::create(if kill { "history_kill" } else { "history" }).await;
    let base = PolicyDocument::parse(&base_policy(), Format::Yaml, "base.yaml").unwrap();
    sync::apply(&mut db.client().await, &base, "base.yaml")
        .await
        .unwrap();

    let tokens = AdminTokens::parse(&file_line(ROOT, "*", Some("root")), "tokens").unwrap();
    let admin = PolicyAdmin::new(AdminStore::new(postgres::pool(&db.url, 4).unwrap()), tokens);
    let config = ServerConfig {
        service: service(),
        shutdown_grace: Duration::from_secs(5),
        admin: Some(admin),
        ..ServerConfig::default()
    };
    let (server_a, follower_a) =
        TestServer::start_db_configured(fast_follow(&db.url), config).await;
    let (server_b, follower_b) = TestServer::start_db(fast_follow(&db.url), service()).await;
    let replicas = [server_a.client.clone(), server_b.client.clone()];
    let admin = PolicyAdminServiceClient::new(server_a.channel.clone());
    let shared = Arc::new(Shared::default());
    shared.latest.store(db.revision().await, Ordering::Relaxed);

    // Readers and the killer run until the writers are done.
    let stop_readers = Arc::new(AtomicBool::new(false));
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (replicas, shared, stop) = (replicas.clone(), shared.clone(), stop_readers.clone());
        let mut rng = Rng::new(seed, 100 + r as u64);
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < MAX_READS_PER_READER {
                let replica = rng.below(2);
                let latest = shared.latest.load(Ordering::Relaxed);
                let min = match rng.weighted(&[60, 30, 10]) {
                    0 => 0,
                    1 => latest,
                    _ => latest.saturating_sub(rng.below(4) as u64).max(1),
                };
                let tenant = gen_tenant(&mut rng);
                let req = match rng.weighted(&[45, 30, 25]) {
                    0 => Req::Check(gen_check(&mut rng, tenant, min)),
                    1 => Req::Batch(gen_batch(&mut rng, tenant, min)),
                    _ => Req::List(gen_list(&mut rng, tenant, min)),
                };
                let resp = ask(&replicas[replica], &req).await;
                shared.record(Record {
                    replica,
                    origin: "reader",
                    req,
                    resp,
                });
                n += 1;
                tokio::time::sleep(READ_PAUSE).await;
            }
        }));
    }
    let killer = kill.then(|| {
        let (url, done) = (db.url.clone(), writers_done.clone());
        let mut rng = Rng::new(seed, 200);
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let (mut kills, mut killed) = (0, 0i64);
            while !done.load(Ordering::Relaxed) && kills < 8 {
                tokio::time::sleep(Duration::from_millis(200 + rng.below(500) as u64)).await;
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                          WHERE datname = current_database() AND application_name = 'authzd') t",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                kills += 1;
                killed += n;
            }
            killed
        })
    });
    let deadline = Instant::now() + WRITE_BUDGET;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (sql, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut writer = Writer {
            id: w,
            rng: Rng::new(seed, w as u64),
            admin: admin.clone(),
            sql,
            replicas: replicas.clone(),
            shared: shared.clone(),
            base: base.clone(),
        };
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while done < OPS_PER_WRITER && Instant::now() < deadline {
                writer.step(done).await;
                done += 1;
            }
            done
        }));
    }
    let mut ops = 0;
    for w in writers {
        ops += w.await.unwrap();
    }
    writers_done.store(true, Ordering::Relaxed);
    let killed = match killer {
        Some(k) => Some(k.await.unwrap()),
        None => None,
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_readers.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let run_time = started.elapsed();

    // Both replicas reach the final revision; then a last sweep at that revision, and a
    // revision that will never come must be refused.
    let head = db.revision().await;
    let mut failures = Failures::default();
    for (i, s) in [&server_a, &server_b].into_iter().enumerate() {
        let mut rx = s.cache.subscribe();
        let reached = tokio::time::timeout(
            Duration::from_secs(20),
            rx.wait_for(|r| r.is_some_and(|r| r >= head)),
        )
        .await;
        if !matches!(reached, Ok(Ok(_))) {
            failures.add(
                C_FRESH,
                format!(
                    "replica {i} did not reach the final revision {head} within 20s (at {})",
                    s.cache.revision()
                ),
            );
        }
    }
    for (replica, client) in replicas.iter().enumerate() {
        for tenant in QUERY_TENANTS {
            for subject in SUBJECTS.iter().copied().chain([""]) {
                for scope in ["", "ws/1/p/2"] {
                    let req = Req::List(pb::ListPermissionsRequest {
                        tenant_id: tenant.into(),
                        subject_id: subject.into(),
                        scope: scope.into(),
                        min_revision: head,
                    });
                    let resp = ask(client, &req).await;
                    shared.record(Record {
                        replica,
                        origin: "final",
                        req,
                        resp,
                    });
                }
            }
        }
    }
    // A revision that will never come: both replicas must refuse, after waiting.
    let never = Req::Check(pb::CheckRequest {
        tenant_id: "t1".into(),
        subject_id: "u0".into(),
        scope: String::new(),
        action: Some(pb::check_request::Action::Permission("docs.read".into())),
        min_revision: head + 1_000_000,
    });
    let (a, b) = tokio::join!(ask(&replicas[0], &never), ask(&replicas[1], &never));
    for (replica, answer) in [a, b].into_iter().enumerate() {
        if !matches!(answer, Err((Code::Unavailable, _))) {
            failures.add(
                C_MIN,
                format!(
                    "replica {replica}: a Check with min_revision {} (never committed) was not \
                     refused with UNAVAILABLE: {answer:?}",
                    head + 1_000_000
                ),
            );
        }
    }
    let follower_failures = [
        follower_a.status.borrow().failures,
        follower_b.status.borrow().failures,
    ];
    server_a.stop().await;
    server_b.stop().await;
    drop((follower_a, follower_b));

    // The committed history, and every answer held against it.
    let replay_started = Instant::now();
    let scratch = TestDb::create("history_replay").await;
    let history = replay(&db, &scratch).await;
    let replay_time = replay_started.elapsed();
    for (category, message) in shared.problems.lock().unwrap().drain(..) {
        failures.add(category, message);
    }
    history.report_invalid_states(&mut failures);
    check_bad_writes(&db, &shared, &mut failures).await;
    let records = std::mem::take(&mut *shared.records.lock().unwrap());
    let tally = verify(&records, &history, &mut failures);

    if let Some(killed) = killed {
        if killed == 0 {
            failures.add(
                C_VACUOUS,
                "no follower connection was killed: the kill variant tested nothing".into(),
            );
        }
        if follower_failures.iter().all(|&f| f == 0) {
            failures.add(
                C_VACUOUS,
                "the followers never noticed a lost connection".into(),
            );
        }
    }
    if tally.checked < 100 {
        failures.add(
            C_VACUOUS,
            format!(
                "only {} answers were checked (at least 100 needed)",
                tally.checked
            ),
        );
    }
    if tally.checked_min < 20 {
        failures.add(
            C_VACUOUS,
            format!(
                "only {} answers to requests with min_revision were checked (at least 20 needed)",
                tally.checked_min
            ),
        );
    }
    if tally.revisions.len() < 10 {
        failures.add(
            C_VACUOUS,
            format!(
                "answers named only {} distinct revisions (at least 10 needed)",
                tally.revisions.len()
            ),
        );
    }

    let writes = std::mem::take(&mut *shared.writes.lock().unwrap());
    let (committed, refused) = writes
        .values()
        .fold((0, 0), |(c, r), &(a, b)| (c + a, r + b));
    let bad = std::mem::take(&mut *shared.bad.lock().unwrap());
    let bad_accepted = bad
        .iter()
        .filter(|b| matches!(b.outcome, Outcome::Committed(_)))
        .count();
    let summary = format!(
        "seed {seed:#x}, kill {kill}: {ops} write operations ({committed} committed, {refused} \
         refused; {} must-refuse writes, {bad_accepted} of them accepted), revisions 1..={head}; \
         {} requests recorded, {} answers checked ({} with min_revision, {} batch items of which {} name another \
         revision than their batch, {} listings) over {} distinct revisions, {} UNAVAILABLE; follower failures (lost connections, failed loads) \
         {follower_failures:?}{}; run {run_time:.1?}, replay {replay_time:.1?}, total {:.1?}",
        bad.len(),
        records.len(),
        tally.checked,
        tally.checked_min,
        tally.batch_items,
        tally.batch_item_other_revision,
        tally.listings,
        tally.revisions.len(),
        tally.unavailable,
        killed.map_or(String::new(), |k| format!(", {k} backends killed")),
        started.elapsed()
    );
    eprintln!("history: {summary}");
    let mut kinds = String::new();
    for (kind, (c, r)) in writes.iter() {
        let _ = writeln!(kinds, "  {kind}: {c} committed, {r} refused");
    }
    eprintln!("history: writes by kind:\n{kinds}");

    if std::env::var_os("AUTHZ_HISTORY_KEEP_DB").is_some() {
        eprintln!("history: kept databases {} and {}", db.name, scratch.name);
    } else {
        db.drop_db().await;
        scratch.drop_db().await;
    }
    if !failures.is_empty() {
        panic!(
            "{}\n{summary}\nrerun with AUTHZ_HISTORY_SEED={seed:#x}",
            failures.report()
        );
    }
}

// ------------------------------------------------------------------------ writers

struct Writer {
    id: usize,
    rng: Rng,
    admin: PolicyAdminServiceClient<Channel>,
    sql: Client,
    replicas: [AuthorizationServiceClient<Channel>; 2],
    shared: Arc<Shared>,
    base: PolicyDocument,
}

fn root<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ROOT}").parse().unwrap());
    r
}

/// An admin call with the root token, bounded; its outcome.
macro_rules! admin_call {
    ($client:expr, $method:ident, $req:expr) => {{
        let mut client = $client.clone();
        let result: Result<u64, Status> =
            match tokio::time::timeout(REQUEST_TIMEOUT, client.$method(root($req))).await {
                Ok(Ok(r)) => Ok(r.into_inner().revision),
                Ok(Err(s)) => Err(s),
                Err(_) => Err(Status::deadline_exceeded(
                    "no answer within the test's own timeout",
                )),
            };
        match result {
            Ok(revision) => Outcome::Committed(Some(revision)),
            Err(s) => Outcome::Refused {
                code: format!("{:?}", s.code()),
                message: s.message().to_owned(),
            },
        }
    }};
}

/// A SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL `text[]` literal from comma-separated items.
fn arr(items: &str) -> String {
    format!("'{{{items}}}'")
}

fn holder_sql(subject: Option<&str>, group: Option<&str>) -> (String, String) {
    (
        subject.map_or("NULL".into(), lit),
        group.map_or("NULL".into(), lit),
    )
}

fn pb_role(
    id: &str,
    includes: Vec<String>,
    permissions: Vec<String>,
    rules: &[(&str, &str)],
) -> pb::Role {
    pb::Role {
        id: id.into(),
        description: format!("{id}, written by the history test"),
        includes,
        permissions,
        routes: rules
            .iter()
            .map(|(m, p)| pb::RoleRoute {
                methods: m.split(',').map(str::to_owned).collect(),
                path: (*p).to_owned(),
            })
            .collect(),
        built_in: false,
    }
}

impl Writer {
    /// One write (valid, or one that must be refused), then reading it back.
    async fn step(&mut self, i: usize) {
        if self.rng.percent(BAD_WRITE_PERCENT) {
            self.bad_write(i).await;
            return;
        }
        let tenant = if self.rng.percent(8) {
            EXTRA_TENANT
        } else {
            self.rng.one(&TENANTS)
        };
        let (kind, outcome, about) = if self.rng.percent(50) {
            let (kind, outcome) = self.admin_write(tenant).await;
            (kind, outcome, tenant.to_owned())
        } else {
            self.sql_write(tenant).await
        };
        self.shared.count_write(&kind, &outcome);
        if let Outcome::Committed(Some(revision)) = outcome {
            self.shared.latest.fetch_max(revision, Ordering::Relaxed);
            self.read_your_write(&about, revision).await;
        }
    }

    /// A Check or ListPermissions about `tenant` at the revision just written.
    async fn read_your_write(&mut self, tenant: &str, revision: u64) {
        let tenant = if tenant.is_empty() {
            self.rng.one(&TENANTS)
        } else {
            tenant
        };
        let replica = self.rng.below(2);
        let req = if self.rng.percent(70) {
            Req::Check(gen_check(&mut self.rng, tenant, revision))
        } else {
            Req::List(gen_list(&mut self.rng, tenant, revision))
        };
        let resp = ask(&self.replicas[replica], &req).await;
        self.shared.record(Record {
            replica,
            origin: "read-your-write",
            req,
            resp,
        });
    }

    fn assignment(&mut self) -> pb::Assignment {
        let group = self.rng.percent(30);
        pb::Assignment {
            subject_id: if group {
                String::new()
            } else {
                self.rng.pick(&SUBJECTS).to_string()
            },
            group_id: if group {
                self.rng.pick(&GROUPS).to_string()
            } else {
                String::new()
            },
            role_id: self.rng.pick(&ROLES).to_string(),
            scope: self.rng.pick(&SCOPES).to_string(),
        }
    }

    fn rules(&mut self) -> Vec<(&'static str, &'static str)> {
        RULES
            .iter()
            .copied()
            .filter(|_| self.rng.percent(25))
            .collect()
    }

    async fn admin_write(&mut self, t: &str) -> (String, Outcome) {
        let a = self.admin.clone();
        let tenant_id = t.to_owned();
        match self.rng.weighted(&[14, 8, 4, 6, 2, 4, 6, 3, 4, 5, 3]) {
            0 => {
                let assignment = Some(self.assignment());
                let req = pb::GrantRoleRequest {
                    tenant_id,
                    assignment,
                };
                ("admin GrantRole".into(), admin_call!(a, grant_role, req))
            }
            1 => {
                // Revoke an existing assignment when there is one.
                let mut listing = a.clone();
                let listed = listing
                    .list_assignments(root(pb::ListAssignmentsRequest {
                        tenant_id: tenant_id.clone(),
                        page_size: 500,
                        page_token: String::new(),
                    }))
                    .await
                    .map(|r| r.into_inner().assignments)
                    .unwrap_or_default();
                let assignment = if listed.is_empty() {
                    self.assignment()
                } else {
                    self.rng.pick(&listed).clone()
                };
                let req = pb::RevokeRoleRequest {
                    tenant_id,
                    assignment: Some(assignment),
                };
                ("admin RevokeRole".into(), admin_call!(a, revoke_role, req))
            }
            2 => {
                let req = pb::RegisterSubjectRequest {
                    tenant_id,
                    subject_id: self.rng.pick(&SUBJECTS).to_string(),
                    disabled: self.rng.percent(15),
                };
                (
                    "admin RegisterSubject".into(),
                    admin_call!(a, register_subject, req),
                )
            }
            3 => {
                let req = pb::SetSubjectDisabledRequest {
                    tenant_id,
                    subject_id: self.rng.pick(&SUBJECTS).to_string(),
                    disabled: self.rng.percent(40),
                };
                (
                    "admin SetSubjectDisabled".into(),
                    admin_call!(a, set_subject_disabled, req),
                )
            }
            4 => {
                let req = pb::DeleteSubjectRequest {
                    tenant_id,
                    subject_id: self.rng.pick(&SUBJECTS[5..]).to_string(),
                };
                (
                    "admin DeleteSubject".into(),
                    admin_call!(a, delete_subject, req),
                )
            }
            5 => {
                let group_id = self.rng.pick(&GROUPS).to_string();
                if self.rng.percent(60) {
                    let req = pb::CreateGroupRequest {
                        tenant_id,
                        group_id,
                    };
                    (
                        "admin CreateGroup".into(),
                        admin_call!(a, create_group, req),
                    )
                } else {
                    let req = pb::DeleteGroupRequest {
                        tenant_id,
                        group_id,
                    };
                    (
                        "admin DeleteGroup".into(),
                        admin_call!(a, delete_group, req),
                    )
                }
            }
            6 => {
                let group_id = self.rng.pick(&GROUPS).to_string();
                let subject_id = self.rng.pick(&SUBJECTS).to_string();
                if self.rng.percent(55) {
                    let req = pb::AddGroupMemberRequest {
                        tenant_id,
                        group_id,
                        subject_id,
                    };
                    (
                        "admin AddGroupMember".into(),
                        admin_call!(a, add_group_member, req),
                    )
                } else {
                    let req = pb::RemoveGroupMemberRequest {
                        tenant_id,
                        group_id,
                        subject_id,
                    };
                    (
                        "admin RemoveGroupMember".into(),
                        admin_call!(a, remove_group_member, req),
                    )
                }
            }
            7 => {
                let role_ids = self
                    .rng
                    .subset(&["viewer", "t-auditor", "editor", "r-x1"], 30);
                let req = pb::SetDefaultRolesRequest {
                    tenant_id,
                    role_ids,
                };
                (
                    "admin SetDefaultRoles".into(),
                    admin_call!(a, set_default_roles, req),
                )
            }
            8 => {
                let id = self.rng.one(&DYNAMIC);
                let includes = self
                    .rng
                    .subset(&["viewer", "editor", "t-auditor", "t-ops", "t-lead"], 30);
                let permissions = self.rng.subset(&PERMISSIONS[..8], 25);
                let rules = self.rules();
                let req = pb::CreateRoleRequest {
                    tenant_id,
                    role: Some(pb_role(id, includes, permissions, &rules)),
                };
                ("admin CreateRole".into(), admin_call!(a, create_role, req))
            }
            9 => {
                // A dynamic role anything (without a cycle), or a base role with the
                // includes that keep the base structure.
                let id = *self
                    .rng
                    .pick(&[DYNAMIC[0], DYNAMIC[1], CUSTOM[0], CUSTOM[1], CUSTOM[2]]);
                let includes: Vec<String> = match id {
                    "t-auditor" if self.rng.percent(50) => vec!["viewer".into(), "editor".into()],
                    "t-auditor" => vec!["viewer".into()],
                    "t-ops" => vec!["t-auditor".into()],
                    "t-lead" => vec!["t-ops".into(), "editor".into()],
                    _ => self
                        .rng
                        .subset(&["viewer", "editor", "t-auditor", "t-ops", "t-lead"], 30),
                };
                let permissions = self.rng.subset(&PERMISSIONS[..8], 25);
                let rules = self.rules();
                let req = pb::UpdateRoleRequest {
                    tenant_id,
                    role: Some(pb_role(id, includes, permissions, &rules)),
                };
                ("admin UpdateRole".into(), admin_call!(a, update_role, req))
            }
            _ => {
                let req = pb::DeleteRoleRequest {
                    tenant_id,
                    role_id: self.rng.pick(&DYNAMIC).to_string(),
                };
                ("admin DeleteRole".into(), admin_call!(a, delete_role, req))
            }
        }
    }

    /// One SQL transaction; the revision it committed, if it changed anything.
    async fn transaction(&mut self, sql: &str) -> Outcome {
        let refused = |e: tokio_postgres::Error| Outcome::Refused {
            code: e
                .code()
                .map_or_else(|| "connection".to_owned(), |c| c.code().to_owned()),
            message: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        };
        let tx = match self.sql.transaction().await {
            Ok(tx) => tx,
            Err(e) => return refused(e),
        };
        if let Err(e) = tx.batch_execute(sql).await {
            return refused(e);
        }
        // Set by the capture trigger at the transaction's first captured write.
        let revision: Option<String> = match tx
            .query_one("SELECT current_setting('authz.revision', true)", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(e) => return refused(e),
        };
        if let Err(e) = tx.commit().await {
            return refused(e);
        }
        Outcome::Committed(revision.and_then(|r| r.parse().ok()))
    }

    /// A valid-looking SQL write (it may still be refused: a missing row, a duplicate,
    /// a role still in use); returns the kind, the outcome and the tenant it is about.
    async fn sql_write(&mut self, t: &str) -> (String, Outcome, String) {
        let w = self.id;
        let tl = lit(t);
        let rng = &mut self.rng;
        let k = rng.below(8);
        let (kind, sql, about): (&str, String, &str) = match rng.weighted(&[
            12, 8, 4, 6, 6, 6, 6, 5, 5, 3, 3, 3, 4, 1,
        ]) {
            0 => {
                let group = rng.percent(30);
                let (s, g) = if group {
                    holder_sql(None, Some(rng.one(&GROUPS)))
                } else {
                    holder_sql(Some(rng.one(&SUBJECTS)), None)
                };
                let (role, scope) = (lit(rng.one(&ROLES)), lit(rng.one(&SCOPES)));
                (
                    "sql grant",
                    format!(
                        "INSERT INTO assignments (tenant_id, subject_id, group_id, role_id, scope) \
                         VALUES ({tl}, {s}, {g}, {role}, {scope})"
                    ),
                    t,
                )
            }
            1 => (
                "sql revoke",
                format!(
                    "DELETE FROM assignments WHERE id = (SELECT id FROM assignments \
                     WHERE tenant_id = {tl} ORDER BY id LIMIT 1 OFFSET {k})"
                ),
                t,
            ),
            2 => {
                let scope = lit(rng.one(&SCOPES));
                (
                    "sql move assignment (UPDATE)",
                    format!(
                        "UPDATE assignments SET scope = {scope} WHERE id = (SELECT id FROM assignments \
                         WHERE tenant_id = {tl} ORDER BY id LIMIT 1 OFFSET {k})"
                    ),
                    t,
                )
            }
            3 => {
                let s = lit(rng.one(&SUBJECTS));
                (
                    "sql toggle disabled (UPDATE)",
                    format!(
                        "UPDATE subjects SET disabled = NOT disabled WHERE tenant_id = {tl} AND id = {s}"
                    ),
                    t,
                )
            }
            4 => {
                let (g, s) = (lit(rng.one(&GROUPS)), lit(rng.one(&SUBJECTS)));
                if rng.percent(55) {
                    (
                        "sql add member",
                        format!("INSERT INTO group_members VALUES ({tl}, {g}, {s})"),
                        t,
                    )
                } else {
                    (
                        "sql remove member",
                        format!(
                            "DELETE FROM group_members WHERE tenant_id = {tl} AND group_id = {g} \
                             AND subject_id = {s}"
                        ),
                        t,
                    )
                }
            }
            5 => {
                // Mostly a tenant's role; sometimes a built-in one (every tenant reloads).
                let (tenant, role, perm) = if rng.percent(12) {
                    ("", rng.one(&["viewer", "editor"]), rng.one(&["x.b", "x.c"]))
                } else {
                    (
                        t,
                        rng.one(&[CUSTOM[0], CUSTOM[1], CUSTOM[2], DYNAMIC[0], DYNAMIC[1]]),
                        rng.one(&PERMISSIONS[..8]),
                    )
                };
                let (tn, role, perm) = (lit(tenant), lit(role), lit(perm));
                if rng.percent(55) {
                    (
                        "sql add permission",
                        format!(
                            "INSERT INTO role_permissions VALUES ({tn}, {role}, {perm}) ON CONFLICT DO NOTHING"
                        ),
                        tenant,
                    )
                } else {
                    (
                        "sql remove permission",
                        format!(
                            "DELETE FROM role_permissions WHERE tenant_id = {tn} AND role_id = {role} \
                             AND permission = {perm}"
                        ),
                        tenant,
                    )
                }
            }
            6 => {
                let role = lit(rng.one(&[CUSTOM[0], CUSTOM[1], CUSTOM[2], DYNAMIC[0], DYNAMIC[1]]));
                if rng.percent(55) {
                    let (methods, path) = *rng.pick(&RULES);
                    (
                        "sql add route rule",
                        format!(
                            "INSERT INTO role_routes (tenant_id, role_id, position, methods, path) \
                             SELECT {tl}, {role}, coalesce(max(position), -1) + 1, {}, {} \
                             FROM role_routes WHERE tenant_id = {tl} AND role_id = {role}",
                            arr(methods),
                            lit(path)
                        ),
                        t,
                    )
                } else {
                    (
                        "sql remove route rule",
                        format!(
                            "DELETE FROM role_routes WHERE (tenant_id, role_id, position) = \
                             (SELECT tenant_id, role_id, position FROM role_routes \
                              WHERE tenant_id = {tl} AND role_id = {role} ORDER BY position LIMIT 1 OFFSET {})",
                            k % 3
                        ),
                        t,
                    )
                }
            }
            7 => {
                // The tenant's own entries; each writer its own patterns, so that no two
                // entries ever share a pattern.
                let path = lit(&format!("/w{w}/e{}", k % 3));
                match rng.below(3) {
                    0 => {
                        let (roles, public) = if rng.percent(25) {
                            ("{}".to_owned(), "true")
                        } else {
                            (format!("{{{}}}", rng.pick(&["t-ops", "viewer", "r-x1"])), "false")
                        };
                        let methods = arr(rng.one(&["GET", "GET,POST", "*"]));
                        (
                            "sql add endpoint",
                            format!(
                                "INSERT INTO endpoints (tenant_id, position, path, methods, roles, public) \
                                 SELECT {tl}, coalesce(max(position), -1) + 1, {path}, {methods}, '{roles}', {public} \
                                 FROM endpoints WHERE tenant_id = {tl} \
                                 HAVING NOT EXISTS (SELECT 1 FROM endpoints WHERE tenant_id = {tl} AND path = {path})"
                            ),
                            t,
                        )
                    }
                    1 => (
                        "sql remove endpoint",
                        format!("DELETE FROM endpoints WHERE tenant_id = {tl} AND path = {path}"),
                        t,
                    ),
                    _ => (
                        "sql change endpoint methods (UPDATE)",
                        format!(
                            "UPDATE endpoints SET methods = {} WHERE tenant_id = {tl} AND path = {path}",
                            arr(rng.one(&["GET", "POST,PUT", "*"]))
                        ),
                        t,
                    ),
                }
            }
            8 => {
                let role = rng.one(&[DYNAMIC[0], DYNAMIC[1], CUSTOM[0]]);
                let included = if role == CUSTOM[0] {
                    rng.one(&["editor", "viewer"])
                } else {
                    rng.one(&ROLES)
                };
                let (role, included) = (lit(role), lit(included));
                if rng.percent(55) {
                    (
                        "sql add include",
                        format!(
                            "INSERT INTO role_includes VALUES ({tl}, {role}, {included}, {k}) ON CONFLICT DO NOTHING"
                        ),
                        t,
                    )
                } else {
                    (
                        "sql remove include",
                        format!(
                            "DELETE FROM role_includes WHERE tenant_id = {tl} AND role_id = {role} \
                             AND included = {included}"
                        ),
                        t,
                    )
                }
            }
            9 => {
                // One revision touching three tenants.
                let (s1, s3) = (lit(rng.one(&SUBJECTS)), lit(rng.one(&SUBJECTS)));
                let (role, scope) = (lit(rng.one(&ROLES[..6])), lit(rng.one(&SCOPES)));
                (
                    "sql three tenants at once",
                    format!(
                        "INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ('t1', {s1}, {role}, {scope});
                         DELETE FROM assignments WHERE id = (SELECT id FROM assignments WHERE tenant_id = 't2' ORDER BY id LIMIT 1 OFFSET {k});
                         UPDATE subjects SET disabled = NOT disabled WHERE tenant_id = 't3' AND id = {s3}"
                    ),
                    "t1",
                )
            }
            10 => {
                if rng.percent(50) {
                    (
                        "sql create tenant",
                        "INSERT INTO tenants VALUES ('t4');
                         INSERT INTO subjects VALUES ('t4', 'u0', false), ('t4', 'u1', true);
                         INSERT INTO roles (tenant_id, id) VALUES ('t4', 't-ops');
                         INSERT INTO role_permissions VALUES ('t4', 't-ops', 'ops.run');
                         INSERT INTO role_includes VALUES ('t4', 't-ops', 'viewer', 0);
                         INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ('t4', 'u0', 't-ops', 'ws/1')"
                            .to_owned(),
                        EXTRA_TENANT,
                    )
                } else {
                    (
                        "sql drop tenant",
                        "DELETE FROM tenants WHERE id = 't4'".to_owned(),
                        EXTRA_TENANT,
                    )
                }
            }
            11 => {
                let roles = rng.subset(&["viewer", "t-auditor", "editor", "r-x2"], 35);
                let mut sql = format!("DELETE FROM default_roles WHERE tenant_id = {tl};");
                for (i, r) in roles.iter().enumerate() {
                    let _ = write!(sql, "INSERT INTO default_roles VALUES ({tl}, {}, {i});", lit(r));
                }
                ("sql replace default roles", sql, t)
            }
            12 => {
                let s = lit(rng.one(&SUBJECTS[5..]));
                if rng.percent(55) {
                    let (role, scope) = (lit(rng.one(&ROLES[..6])), lit(rng.one(&SCOPES)));
                    (
                        "sql register member with a grant",
                        format!(
                            "INSERT INTO subjects VALUES ({tl}, {s}, false);
                             INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ({tl}, {s}, {role}, {scope})"
                        ),
                        t,
                    )
                } else {
                    (
                        "sql delete member",
                        format!("DELETE FROM subjects WHERE tenant_id = {tl} AND id = {s}"),
                        t,
                    )
                }
            }
            _ => (
                "sql change a global endpoint (UPDATE)",
                "UPDATE endpoints SET methods = CASE WHEN methods = '{GET}' THEN '{GET,HEAD}'::text[] \
                 ELSE '{GET}'::text[] END WHERE tenant_id = '' AND path = '/health'"
                    .to_owned(),
                "",
            ),
        };
        let about = about.to_owned();
        let outcome = self.transaction(&sql).await;
        (kind.to_owned(), outcome, about)
    }

    /// A write the policy rules must refuse. If it is committed anyway, that is recorded
    /// and the write is undone, so the run goes on from a valid policy.
    async fn bad_write(&mut self, i: usize) {
        let w = self.id;
        // Letters and digits only, with an end mark: usable in ids, permissions and
        // parameter names, and no marker is a prefix of another.
        let m = format!("m{w}x{i}z");
        let t = self.rng.one(&TENANTS);
        let tl = lit(t);
        let a = self.admin.clone();
        let kind = self.rng.below(16);
        let (what, outcome, revert): (String, Outcome, String) = match kind {
            0 => (
                format!("sql include cycle in {t} (t-auditor includes t-lead, which includes it)"),
                self.transaction(&format!(
                    "INSERT INTO role_permissions VALUES ({tl}, 't-ops', 'marker.{m}');
                     INSERT INTO role_includes VALUES ({tl}, 't-auditor', 't-lead', 7)"
                ))
                .await,
                format!(
                    "DELETE FROM role_permissions WHERE permission = 'marker.{m}';
                     DELETE FROM role_includes WHERE tenant_id = {tl} AND role_id = 't-auditor' AND included = 't-lead'"
                ),
            ),
            1 => (
                format!("sql include of an unknown role in {t}"),
                self.transaction(&format!(
                    "INSERT INTO role_includes VALUES ({tl}, 't-ops', 'ghost-{m}', 9)"
                ))
                .await,
                format!("DELETE FROM role_includes WHERE included = 'ghost-{m}'"),
            ),
            2 => (
                format!("sql route rule with pattern `/bad-{m}/**/b` in {t}"),
                self.transaction(&format!(
                    "INSERT INTO role_routes (tenant_id, role_id, position, methods, path)
                     SELECT {tl}, 't-ops', coalesce(max(position), -1) + 1, '{{GET}}', '/bad-{m}/**/b'
                     FROM role_routes WHERE tenant_id = {tl} AND role_id = 't-ops'"
                ))
                .await,
                format!("DELETE FROM role_routes WHERE path = '/bad-{m}/**/b'"),
            ),
            3 => (
                format!("sql route rule with methods [get] in {t}"),
                self.transaction(&format!(
                    "INSERT INTO role_routes (tenant_id, role_id, position, methods, path)
                     SELECT {tl}, 't-lead', coalesce(max(position), -1) + 1, '{{get}}', '/lower-{m}/x'
                     FROM role_routes WHERE tenant_id = {tl} AND role_id = 't-lead'"
                ))
                .await,
                format!("DELETE FROM role_routes WHERE path = '/lower-{m}/x'"),
            ),
            4 => (
                format!(
                    "sql endpoint `GET,PATCH /projects/{{p{m}}}` in {t}, conflicting with `GET,PUT /projects/{{pid}}`"
                ),
                self.transaction(&format!(
                    "INSERT INTO endpoints (tenant_id, position, path, methods, roles, public)
                     SELECT {tl}, coalesce(max(position), -1) + 1, '/projects/{{p{m}}}', '{{GET,PATCH}}', '{{t-ops}}', false
                     FROM endpoints WHERE tenant_id = {tl}"
                ))
                .await,
                format!("DELETE FROM endpoints WHERE path = '/projects/{{p{m}}}'"),
            ),
            5 => (
                format!("sql endpoint with pattern `/bad-{m}/**/b` in {t}"),
                self.transaction(&format!(
                    "INSERT INTO endpoints (tenant_id, position, path, methods, roles, public)
                     SELECT {tl}, coalesce(max(position), -1) + 1, '/bad-{m}/**/b', '{{GET}}', '{{}}', true
                     FROM endpoints WHERE tenant_id = {tl}"
                ))
                .await,
                format!("DELETE FROM endpoints WHERE path = '/bad-{m}/**/b'"),
            ),
            6 => (
                "sql global endpoint `GET /reports/**` twice (for every tenant)".to_owned(),
                self.transaction(&format!(
                    "INSERT INTO role_permissions VALUES ('', 'viewer', 'marker.{m}');
                     INSERT INTO endpoints (tenant_id, position, path, methods, roles, public)
                     SELECT '', coalesce(max(position), -1) + 1, '/reports/**', '{{GET}}', '{{viewer}}', false
                     FROM endpoints WHERE tenant_id = ''"
                ))
                .await,
                format!(
                    "DELETE FROM role_permissions WHERE permission = 'marker.{m}';
                     DELETE FROM endpoints WHERE tenant_id = '' AND path = '/reports/**' AND position > 2"
                ),
            ),
            7 => {
                let path = format!("/bad-{m}/**/b");
                let req = pb::CreateRoleRequest {
                    tenant_id: t.into(),
                    role: Some(pb_role(&format!("bad-{m}"), vec![], vec![], &[("GET", path.as_str())])),
                };
                (
                    format!("admin CreateRole with pattern `/bad-{m}/**/b` in {t}"),
                    admin_call!(a, create_role, req),
                    format!("DELETE FROM roles WHERE id = 'bad-{m}'"),
                )
            }
            8 => {
                let path = format!("/lower-{m}/x");
                let req = pb::CreateRoleRequest {
                    tenant_id: t.into(),
                    role: Some(pb_role(&format!("bad-{m}"), vec![], vec![], &[("get", path.as_str())])),
                };
                (
                    format!("admin CreateRole with methods [get] in {t}"),
                    admin_call!(a, create_role, req),
                    format!("DELETE FROM roles WHERE id = 'bad-{m}'"),
                )
            }
            9 => {
                let mut role = pb_role("t-auditor", vec!["viewer".into(), "t-lead".into()], vec!["audit.read".into()], &[]);
                role.description = format!("marker-{m}");
                let req = pb::UpdateRoleRequest {
                    tenant_id: t.into(),
                    role: Some(role),
                };
                (
                    format!("admin UpdateRole making an include cycle in {t}"),
                    admin_call!(a, update_role, req),
                    format!(
                        "DELETE FROM role_includes WHERE tenant_id = {tl} AND role_id = 't-auditor' AND included = 't-lead'"
                    ),
                )
            }
            10 => {
                let req = pb::GrantRoleRequest {
                    tenant_id: t.into(),
                    assignment: Some(pb::Assignment {
                        subject_id: self.rng.pick(&SUBJECTS[..5]).to_string(),
                        group_id: String::new(),
                        role_id: format!("ghost-{m}"),
                        scope: String::new(),
                    }),
                };
                (
                    format!("admin GrantRole of an unknown role in {t}"),
                    admin_call!(a, grant_role, req),
                    format!("DELETE FROM assignments WHERE role_id = 'ghost-{m}'"),
                )
            }
            11 => {
                let id = format!("cyc-{m}");
                let req = pb::CreateRoleRequest {
                    tenant_id: t.into(),
                    role: Some(pb_role(&id, vec![id.clone()], vec![], &[])),
                };
                (
                    format!("admin CreateRole including itself in {t}"),
                    admin_call!(a, create_role, req),
                    format!("DELETE FROM roles WHERE id = 'cyc-{m}'"),
                )
            }
            12 => {
                let mut doc = self.base.clone();
                if let Some(tenant) = doc.tenants.iter_mut().find(|x| x.id == t) {
                    tenant.endpoints.push(EndpointDoc {
                        path: format!("/projects/{{p{m}}}"),
                        methods: vec!["GET".into()],
                        roles: vec!["t-ops".into()],
                        public: false,
                    });
                }
                let req = pb::ApplyPolicyRequest {
                    document: serde_json::to_string(&doc).unwrap(),
                    format: pb::DocumentFormat::Json as i32,
                    // The document replaces what the admin writes of this history did:
                    // that is the apply under test, not the refusal to erase them.
                    force: true,
                };
                let outcome = {
                    let mut client = a.clone();
                    match tokio::time::timeout(REQUEST_TIMEOUT, client.apply_policy(root(req))).await {
                        Ok(Ok(r)) => Outcome::Committed(Some(r.into_inner().revision)),
                        Ok(Err(s)) => Outcome::Refused {
                            code: format!("{:?}", s.code()),
                            message: s.message().to_owned(),
                        },
                        Err(_) => Outcome::Refused {
                            code: "timeout".into(),
                            message: "no answer within the test's own timeout".into(),
                        },
                    }
                };
                (
                    format!("admin ApplyPolicy with conflicting endpoints in {t}"),
                    outcome,
                    format!("DELETE FROM endpoints WHERE path = '/projects/{{p{m}}}'"),
                )
            }
            13 => {
                let s = lit(self.rng.one(&SUBJECTS[..5]));
                (
                    format!("sql grant + pattern `/bad-{m}/**/b` in one transaction in {t}"),
                    self.transaction(&format!(
                        "INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ({tl}, {s}, 'viewer', 'ws/2');
                         INSERT INTO role_permissions VALUES ({tl}, 't-lead', 'marker.{m}');
                         INSERT INTO role_routes (tenant_id, role_id, position, methods, path)
                         SELECT {tl}, 't-lead', coalesce(max(position), -1) + 1, '{{GET}}', '/bad-{m}/**/b'
                         FROM role_routes WHERE tenant_id = {tl} AND role_id = 't-lead'"
                    ))
                    .await,
                    format!(
                        "DELETE FROM role_permissions WHERE permission = 'marker.{m}';
                         DELETE FROM role_routes WHERE path = '/bad-{m}/**/b'"
                    ),
                )
            }
            14 => (
                format!("sql default role that is not defined in {t}"),
                self.transaction(&format!(
                    "INSERT INTO default_roles VALUES ({tl}, 'ghost-{m}', 9)"
                ))
                .await,
                format!("DELETE FROM default_roles WHERE role_id = 'ghost-{m}'"),
            ),
            _ => {
                let req = pb::SetDefaultRolesRequest {
                    tenant_id: t.into(),
                    role_ids: vec!["viewer".into(), format!("ghost-{m}")],
                };
                (
                    format!("admin SetDefaultRoles with an unknown role in {t}"),
                    admin_call!(a, set_default_roles, req),
                    format!("DELETE FROM default_roles WHERE role_id = 'ghost-{m}'"),
                )
            }
        };
        let label = what.replace(&m, "…");
        let label = label.split(" in t").next().unwrap_or_default();
        self.shared
            .count_write(&format!("must refuse: {label}"), &outcome);
        if let Outcome::Committed(revision) = &outcome {
            let revision = revision.map_or("?".to_owned(), |r| r.to_string());
            // Undo it, so that the rest of the run starts again from a valid policy.
            let undone = match self.transaction(&revert).await {
                Outcome::Committed(r) => format!(
                    "undone at revision {}",
                    r.map_or("?".to_owned(), |r| r.to_string())
                ),
                Outcome::Refused { code, message } => {
                    format!("could NOT be undone ({code}: {message})")
                }
            };
            self.shared.problem(
                C_ACCEPTED,
                format!("{what}: committed at revision {revision}; {undone}"),
            );
        }
        self.shared.bad.lock().unwrap().push(BadWrite {
            what,
            marker: m,
            outcome,
        });
    }
}

/// A refused write must leave nothing: no row it would have written is in the change
/// log.
async fn check_bad_writes(db: &TestDb, shared: &Shared, failures: &mut Failures) {
    let rows = db
        .client()
        .await
        .query(
            "SELECT revision, coalesce(old::text, '') || ' ' || coalesce(new::text, '') FROM authz_changes",
            &[],
        )
        .await
        .unwrap();
    let log: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for b in shared.bad.lock().unwrap().iter() {
        let Outcome::Refused { code, message } = &b.outcome else {
            continue;
        };
        let hits: BTreeSet<i64> = log
            .iter()
            .filter(|(_, text)| text.contains(&b.marker))
            .map(|(r, _)| *r)
            .collect();
        if !hits.is_empty() {
            failures.add(
                C_LEFT,
                format!(
                    "{} was refused ({code}: {message}) but rows it wrote are in the change log at \
                     revisions {hits:?}",
                    b.what
                ),
            );
        }
    }
}

// ------------------------------------------------------------------------ replay

const TABLES: [&str; 11] = [
    "tenants",
    "roles",
    "role_includes",
    "role_permissions",
    "role_routes",
    "endpoints",
    "default_roles",
    "subjects",
    "groups",
    "group_members",
    "assignments",
];

/// One tenant at one revision: its compiled snapshot, or why its rows do not compile.
type Compiled = Arc<Result<TenantSnapshot, String>>;

/// The committed policy at one revision.
#[derive(Clone, Default)]
struct State {
    tenants: BTreeMap<String, Compiled>,
}

/// The committed policy at every revision.
struct History {
    /// `states[r]`: the state at revision `r`; `None` for a revision never committed.
    states: Vec<Option<State>>,
    /// `changes[r]`: the row changes revision `r` committed, as text (for messages).
    changes: Vec<Vec<String>>,
}

/// What a request should have been answered with at a revision.
enum Truth<T> {
    Value(T),
    /// No such revision was committed.
    Uncommitted,
    /// The tenant's committed rows at that revision do not compile.
    Broken(String),
}

/// Compiles one tenant of `doc` on its own (with the built-in section), so that one
/// tenant that does not compile leaves the others' states intact.
fn compile_one(
    doc: &PolicyDocument,
    t: &TenantDoc,
    revision: u64,
) -> Result<TenantSnapshot, String> {
    let one = PolicyDocument {
        version: doc.version,
        roles: doc.roles.clone(),
        endpoints: doc.endpoints.clone(),
        tenants: vec![t.clone()],
    };
    match compile(&one, "replayed state", revision) {
        Ok(mut p) => p
            .tenants
            .pop()
            .ok_or_else(|| "compiled to no tenant".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Compiles every tenant of `doc`, reusing `prev`'s snapshot of a tenant whose rows (and
/// the built-in section) did not change.
fn compile_state(
    doc: &PolicyDocument,
    revision: u64,
    prev: Option<&(PolicyDocument, State)>,
) -> State {
    let prev = prev.filter(|(d, _)| d.roles == doc.roles && d.endpoints == doc.endpoints);
    let mut tenants = BTreeMap::new();
    for t in &doc.tenants {
        let reused = prev.and_then(|(d, s)| {
            d.tenants
                .iter()
                .any(|x| x == t)
                .then(|| s.tenants.get(&t.id).cloned())
                .flatten()
        });
        let compiled = reused.unwrap_or_else(|| Arc::new(compile_one(doc, t, revision)));
        tenants.insert(t.id.clone(), compiled);
    }
    State { tenants }
}

/// Rebuilds the state at every committed revision by replaying `authz_changes` into
/// `scratch` (a migrated, empty database) with triggers off.
async fn replay(source: &TestDb, scratch: &TestDb) -> History {
    let mut src = source.client().await;
    let head: i64 = src
        .query_one("SELECT revision FROM authz_state", &[])
        .await
        .unwrap()
        .get(0);
    let rows = src
        .query(
            "SELECT revision, entity, op, old, new FROM authz_changes ORDER BY revision, seq",
            &[],
        )
        .await
        .unwrap();
    let mut c = scratch.client().await;
    // Triggers off: no capture, no validation, no foreign-key actions (the change log
    // holds every cascaded row change itself).
    c.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let mut statements = HashMap::new();
    for table in TABLES {
        let pk: Vec<String> = c
            .query(
                "SELECT a.attname::text FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                  WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY a.attnum",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!pk.is_empty(), "replay: table {table} has no primary key");
        let cols = pk.join(", ");
        let insert = c
            .prepare(&format!(
                "INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1::jsonb)"
            ))
            .await
            .unwrap();
        let delete = c
            .prepare(&format!(
                "DELETE FROM {table} WHERE ({cols}) = \
                 (SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1::jsonb))"
            ))
            .await
            .unwrap();
        statements.insert(table.to_owned(), (insert, delete));
    }

    let head = usize::try_from(head).unwrap();
    let mut states = Vec::with_capacity(head + 1);
    let (_, doc) = read_document(&mut c, Tenants::All).await.unwrap();
    // `authzd diff rev:N` rebuilds a past revision backwards, from the current rows and
    // the log's old values; it must give what this forward replay gives, at every one.
    let mut backwards = postgres::connect(&source.url).await.unwrap();
    rebuilt_matches(&mut backwards, 0, &doc).await;
    let state = compile_state(&doc, 0, None);
    states.push(Some(state.clone()));
    let mut changes = vec![Vec::new()];
    let mut prev = (doc, state);
    let mut at = 0;
    for revision in 1..=head {
        let start = at;
        while at < rows.len() && rows[at].get::<_, i64>(0) == revision as i64 {
            at += 1;
        }
        changes.push(
            rows[start..at]
                .iter()
                .map(|row| {
                    let (entity, op): (String, String) = (row.get(1), row.get(2));
                    let (old, new): (Option<Value>, Option<Value>) = (row.get(3), row.get(4));
                    match (old, new) {
                        (Some(o), Some(n)) => format!("{op} {entity} {o} -> {n}"),
                        (Some(o), None) => format!("{op} {entity} {o}"),
                        (None, Some(n)) => format!("{op} {entity} {n}"),
                        (None, None) => format!("{op} {entity}"),
                    }
                })
                .collect(),
        );
        if start == at {
            states.push(None);
            continue;
        }
        let tx = c.transaction().await.unwrap();
        for row in &rows[start..at] {
            let (entity, op): (String, String) = (row.get(1), row.get(2));
            let (old, new): (Option<Value>, Option<Value>) = (row.get(3), row.get(4));
            let (insert, delete) = statements
                .get(&entity)
                .unwrap_or_else(|| panic!("replay: change to unknown table `{entity}`"));
            if op != "INSERT" {
                let old = old.unwrap_or_else(|| panic!("replay: {op} {entity} without `old`"));
                let n = tx.execute(delete, &[&old]).await.unwrap();
                assert_eq!(
                    n, 1,
                    "replay (a bug of the test): revision {revision}: {op} {entity} {old}: the old row is not there"
                );
            }
            if op != "DELETE" {
                let new = new.unwrap_or_else(|| panic!("replay: {op} {entity} without `new`"));
                let n = tx.execute(insert, &[&new]).await.unwrap_or_else(|e| {
                    panic!(
                        "replay (a bug of the test): revision {revision}: {op} {entity} {new}: {e}"
                    )
                });
                assert_eq!(n, 1);
            }
        }
        tx.commit().await.unwrap();
        let (_, doc) = read_document(&mut c, Tenants::All).await.unwrap();
        rebuilt_matches(&mut backwards, revision as u64, &doc).await;
        let state = compile_state(&doc, revision as u64, Some(&prev));
        states.push(Some(state.clone()));
        prev = (doc, state);
    }
    assert_eq!(
        at,
        rows.len(),
        "replay: change-log rows beyond the revision {head}"
    );

    // The replay must end where the database is; otherwise it is the replay that is wrong.
    let (_, real) = read_document(&mut src, Tenants::All).await.unwrap();
    if real != prev.0 {
        let tenant = real
            .tenants
            .iter()
            .find(|t| !prev.0.tenants.contains(t))
            .map_or("the built-in section".to_owned(), |t| {
                format!("tenant `{}`", t.id)
            });
        panic!(
            "replay (a bug of the test): the replayed database differs from the real one in {tenant}\n\
             real: {}\nreplayed: {}",
            serde_json::to_string(&real).unwrap(),
            serde_json::to_string(&prev.0).unwrap()
        );
    }
    // Every key `authz_deleted` protects (migration V6) is one no row has: a row written
    // again, by any writer, ends its protection. The writers deleted through the admin
    // API and SQL, so there is something to check.
    let tracked: i64 = src
        .query_one("SELECT count(*) FROM authz_deleted", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        tracked > 0,
        "the history deleted nothing outside a document apply"
    );
    for table in TABLES {
        let alive: i64 = src
            .query_one(
                &format!(
                    "SELECT count(*) FROM authz_deleted d JOIN {table} r \
                     ON d.entity = '{table}' AND d.key = authz_natural_key('{table}', to_jsonb(r))"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            alive, 0,
            "{table}: a row exists under a key authz_deleted protects"
        );
    }
    History { states, changes }
}

/// The state at `revision` as [`postgres::export_at`] rebuilds it equals `replayed`.
async fn rebuilt_matches(client: &mut Client, revision: u64, replayed: &PolicyDocument) {
    let (doc, _) = postgres::export_at(client, revision).await.unwrap();
    assert!(
        doc == *replayed,
        "export_at({revision}) differs from the replayed state\nrebuilt: {}\nreplayed: {}",
        serde_json::to_string(&doc).unwrap(),
        serde_json::to_string(replayed).unwrap()
    );
}

/// Revisions as ranges: `3..=5, 9`.
fn ranges(revisions: impl IntoIterator<Item = u64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    let flush = |out: &mut Vec<String>, (a, b): (u64, u64)| {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}..={b}")
        });
    };
    for r in revisions {
        run = match run {
            Some((a, b)) if r == b + 1 => Some((a, r)),
            Some(x) => {
                flush(&mut out, x);
                Some((r, r))
            }
            None => Some((r, r)),
        };
    }
    if let Some(x) = run {
        flush(&mut out, x);
    }
    if out.is_empty() {
        "none".to_owned()
    } else {
        out.join(", ")
    }
}

impl History {
    /// What `revision` committed, for a message.
    fn committed(&self, revision: u64) -> String {
        const SHOWN: usize = 6;
        let Some(rows) = usize::try_from(revision)
            .ok()
            .and_then(|r| self.changes.get(r))
        else {
            return format!("revision {revision} was never committed");
        };
        let mut out = format!("revision {revision} committed:");
        for row in rows.iter().take(SHOWN) {
            let _ = write!(out, "\n      {row}");
        }
        if rows.len() > SHOWN {
            let _ = write!(out, "\n      ... and {} more rows", rows.len() - SHOWN);
        }
        out
    }

    fn state(&self, revision: u64) -> Option<&State> {
        self.states.get(usize::try_from(revision).ok()?)?.as_ref()
    }

    /// The answer the state at `revision` gives; with `decision_only` (a batch asking for
    /// DETAIL_DECISION) only `allowed` and `reason`, every other field empty.
    fn check(
        &self,
        revision: u64,
        tenant: &str,
        q: &Query<'_>,
        decision_only: bool,
    ) -> Truth<Observed> {
        let Some(state) = self.state(revision) else {
            return Truth::Uncommitted;
        };
        let full = match state.tenants.get(tenant).map(|t| &**t) {
            None => Observed::from(&Explanation::unknown_tenant(tenant, revision)),
            Some(Ok(s)) => Observed::from(&s.explain(q, &s.check(q))),
            Some(Err(e)) => return Truth::Broken(e.clone()),
        };
        Truth::Value(if decision_only {
            Observed {
                allowed: full.allowed,
                reason: full.reason,
                ..Observed::default()
            }
        } else {
            full
        })
    }

    /// The listing as the server sends it (the library's listing through the server's
    /// own conversion), with the revision zeroed.
    fn list(
        &self,
        revision: u64,
        tenant: &str,
        subject: &str,
        scope: &str,
    ) -> Truth<pb::ListPermissionsResponse> {
        let Some(state) = self.state(revision) else {
            return Truth::Uncommitted;
        };
        match state.tenants.get(tenant).map(|t| &**t) {
            None => Truth::Value(pb::ListPermissionsResponse {
                reason: pb::Reason::UnknownTenant as i32,
                ..Default::default()
            }),
            Some(Ok(s)) => {
                let mut l = convert::listing_to_pb(s.list(subject, scope));
                l.revision = 0;
                Truth::Value(l)
            }
            Some(Err(e)) => Truth::Broken(e.clone()),
        }
    }

    /// The revisions whose state gives `got` for this check.
    fn matching_check(
        &self,
        tenant: &str,
        q: &Query<'_>,
        decision_only: bool,
        got: &Observed,
    ) -> String {
        ranges((0..self.states.len() as u64).filter(
            |&r| matches!(self.check(r, tenant, q, decision_only), Truth::Value(v) if v == *got),
        ))
    }

    fn matching_list(
        &self,
        tenant: &str,
        subject: &str,
        scope: &str,
        got: &pb::ListPermissionsResponse,
    ) -> String {
        ranges((0..self.states.len() as u64).filter(
            |&r| matches!(self.list(r, tenant, subject, scope), Truth::Value(v) if v == *got),
        ))
    }

    /// Committed states that do not compile: the database accepted an invalid policy.
    fn report_invalid_states(&self, failures: &mut Failures) {
        let mut broken: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for (r, state) in self.states.iter().enumerate() {
            let Some(state) = state else { continue };
            for (tenant, compiled) in &state.tenants {
                if let Err(e) = &**compiled {
                    broken
                        .entry((tenant.clone(), e.clone()))
                        .or_default()
                        .push(r as u64);
                }
            }
        }
        for ((tenant, error), revisions) in broken {
            failures.add(
                C_INVALID_STATE,
                format!(
                    "tenant `{tenant}` does not compile at revisions {}: {error}",
                    ranges(revisions)
                ),
            );
        }
    }
}

// ------------------------------------------------------------------------ verdict

const C_DIFFERS: &str = "an answer differs from the committed state at the revision it names";
const C_NEVER: &str = "an answer names a revision that was never committed";
const C_BROKEN: &str =
    "an answer names a revision at which its tenant's committed state does not compile";
const C_BATCH_MIX: &str =
    "a batch mixes states: an item differs from the state at the batch's revision";
const C_MIN: &str = "an answer older than the min_revision asked for";
const C_STATUS: &str = "an unexpected error status";
const C_ITEM: &str = "a batch item answered where an item error was due, or the reverse";
const C_ACCEPTED: &str = "a write that must be refused was committed";
const C_LEFT: &str = "a refused write left changes in the change log";
const C_INVALID_STATE: &str =
    "a committed state does not compile (the database accepted an invalid policy)";
const C_FRESH: &str = "a replica did not catch up";
const C_VACUOUS: &str = "the run checked too little";

#[derive(Default)]
struct Failures {
    by: BTreeMap<&'static str, Vec<String>>,
}

impl Failures {
    /// Whether a failure of this kind is still printed in full.
    fn detailed(&self, category: &str) -> bool {
        self.by.get(category).map_or(0, Vec::len) < DETAILED
    }

    fn add(&mut self, category: &'static str, message: String) {
        self.by.entry(category).or_default().push(message);
    }

    fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    fn report(&self) -> String {
        let total: usize = self.by.values().map(Vec::len).sum();
        let mut out = format!("history: {total} failures\n");
        for (category, messages) in &self.by {
            let _ = writeln!(out, "\n=== {category}: {}", messages.len());
            for m in messages.iter().take(DETAILED) {
                let _ = writeln!(out, "- {m}");
            }
            if messages.len() > DETAILED {
                let _ = writeln!(out, "  ... and {} more", messages.len() - DETAILED);
            }
        }
        out
    }
}

#[derive(Default)]
struct Tally {
    checked: usize,
    checked_min: usize,
    batch_items: usize,
    /// Batch items naming another revision than their batch (exact at both).
    batch_item_other_revision: usize,
    listings: usize,
    unavailable: usize,
    revisions: BTreeSet<u64>,
}

/// A listing in comparable, printable form.
#[derive(Debug, PartialEq, Eq)]
struct ListView {
    reason: String,
    roles: Vec<String>,
    permissions: Vec<String>,
    routes: Vec<String>,
    endpoints: Vec<String>,
    scopes_below: Vec<String>,
}

fn grant_text(role: &str, chain: &[String], source: &str, group: &str, scope: &str) -> String {
    let group = if group.is_empty() {
        String::new()
    } else {
        format!(" `{group}`")
    };
    format!(
        "{role} (via {}; {source}{group} at `{scope}`)",
        chain.join(" > ")
    )
}

fn pb_reason(r: i32) -> String {
    pb::Reason::try_from(r).map_or_else(
        |_| format!("reason {r}"),
        |r| {
            r.as_str_name()
                .trim_start_matches("REASON_")
                .to_ascii_lowercase()
        },
    )
}

impl ListView {
    fn from_pb(r: &pb::ListPermissionsResponse) -> Self {
        ListView {
            reason: pb_reason(r.reason),
            roles: r
                .roles
                .iter()
                .map(|e| {
                    let g = e.grant.clone().unwrap_or_default();
                    let source = pb::GrantSource::try_from(g.source).map_or_else(
                        |_| format!("source {}", g.source),
                        |s| {
                            s.as_str_name()
                                .trim_start_matches("GRANT_SOURCE_")
                                .to_ascii_lowercase()
                        },
                    );
                    grant_text(&e.role, &g.include_chain, &source, &g.group_id, &g.scope)
                })
                .collect(),
            permissions: r.permissions.clone(),
            routes: r
                .routes
                .iter()
                .map(|x| format!("{}: {} {}", x.role, x.methods.join(","), x.path))
                .collect(),
            endpoints: r
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{} {}{}",
                        e.methods.join(","),
                        e.path,
                        if e.public { " public" } else { "" }
                    )
                })
                .collect(),
            scopes_below: r
                .scopes_below
                .iter()
                .map(|s| format!("{}: {}", s.scope, s.roles.join(",")))
                .collect(),
        }
    }

    /// What differs from `want`, field by field.
    fn diff(&self, want: &ListView) -> String {
        let mut out = String::new();
        if self.reason != want.reason {
            let _ = write!(
                out,
                " reason: answered {}, state {};",
                self.reason, want.reason
            );
        }
        for (name, got, want) in [
            ("roles", &self.roles, &want.roles),
            ("permissions", &self.permissions, &want.permissions),
            ("routes", &self.routes, &want.routes),
            ("endpoints", &self.endpoints, &want.endpoints),
            ("scopes_below", &self.scopes_below, &want.scopes_below),
        ] {
            if got != want {
                let extra: Vec<&String> = got.iter().filter(|x| !want.contains(x)).collect();
                let missing: Vec<&String> = want.iter().filter(|x| !got.contains(x)).collect();
                let _ = write!(
                    out,
                    " {name}: answered but not in the state {extra:?}, in the state but not answered {missing:?}{};",
                    if extra.is_empty() && missing.is_empty() {
                        " (order differs)"
                    } else {
                        ""
                    }
                );
            }
        }
        out
    }
}

fn show(o: &Observed) -> String {
    let mut s = format!(
        "{} {}",
        if o.allowed { "allowed" } else { "denied" },
        o.reason
    );
    if !o.role.is_empty() {
        let _ = write!(
            s,
            ", grant {}",
            grant_text(&o.role, &o.chain, &o.source, &o.group, &o.grant_scope)
        );
    }
    if !o.pattern.is_empty() {
        let _ = write!(s, ", pattern `{}`", o.pattern);
    }
    if !o.required_roles.is_empty() {
        let _ = write!(s, ", requires {:?}", o.required_roles);
    }
    let _ = write!(s, ": \"{}\"", o.explanation);
    s
}

fn action_text(a: &Option<pb::check_request::Action>) -> String {
    match a {
        Some(pb::check_request::Action::Permission(p)) => format!("permission `{p}`"),
        Some(pb::check_request::Action::Route(r)) => format!("route `{} {}`", r.method, r.path),
        None => "no action".into(),
    }
}

/// A check's tenant and query, with a batch's tenant and subject for the fields an item
/// leaves empty; an error for invalid input (which must be an item error).
fn parse_check<'a>(
    req: &'a pb::CheckRequest,
    batch_tenant: &'a str,
    batch_subject: &'a str,
) -> Result<(&'a str, Query<'a>), String> {
    let e = |e: model::InputError| e.to_string();
    let tenant = if req.tenant_id.is_empty() {
        batch_tenant
    } else {
        &req.tenant_id
    };
    let tenant = model::tenant_id(tenant).map_err(e)?;
    let subject = if req.subject_id.is_empty() {
        batch_subject
    } else {
        &req.subject_id
    };
    if !subject.is_empty() {
        model::subject_id(subject).map_err(e)?;
    }
    let scope = model::scope(&req.scope).map_err(e)?;
    let action = match &req.action {
        Some(pb::check_request::Action::Permission(p)) => {
            Action::Permission(model::name(p).map_err(e)?)
        }
        Some(pb::check_request::Action::Route(r)) => Action::Route {
            method: Method::parse(&r.method).map_err(e)?,
            path: model::request_path(&r.path).map_err(e)?,
        },
        None => return Err("no action".into()),
    };
    Ok((
        tenant,
        Query {
            subject,
            scope,
            action,
        },
    ))
}

/// Holds one decision against the state at `revision`; `category` for a difference.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per kind of answer"
)]
fn judge_check(
    h: &History,
    failures: &mut Failures,
    category: &'static str,
    revision: u64,
    tenant: &str,
    q: &Query<'_>,
    decision_only: bool,
    got: &Observed,
    context: &dyn Fn() -> String,
) {
    match h.check(revision, tenant, q, decision_only) {
        Truth::Value(want) if want == *got => {}
        Truth::Value(want) => {
            let mut m = format!(
                "{}\n    answered at revision {revision}: {}\n    the state at revision {revision} gives: {}",
                context(),
                show(got),
                show(&want)
            );
            if failures.detailed(category) {
                let _ = write!(
                    m,
                    "\n    the answer is what the states at revisions {} give\n    {}",
                    h.matching_check(tenant, q, decision_only, got),
                    h.committed(revision)
                );
            }
            failures.add(category, m);
        }
        Truth::Uncommitted => failures.add(
            C_NEVER,
            format!(
                "{}\n    answered at revision {revision}: {}",
                context(),
                show(got)
            ),
        ),
        Truth::Broken(e) => {
            let mut m = format!(
                "{}\n    answered at revision {revision}: {}\n    but tenant `{tenant}` does not compile at revision {revision}: {e}",
                context(),
                show(got)
            );
            if failures.detailed(C_BROKEN) {
                let _ = write!(
                    m,
                    "\n    the answer is what the states at revisions {} give\n    {}",
                    h.matching_check(tenant, q, decision_only, got),
                    h.committed(revision)
                );
            }
            failures.add(C_BROKEN, m);
        }
    }
}

fn verify(records: &[Record], h: &History, failures: &mut Failures) -> Tally {
    let mut tally = Tally::default();
    for rec in records {
        let who = format!("[replica {}, {}]", rec.replica, rec.origin);
        let resp = match &rec.resp {
            Ok(r) => r,
            Err((code, message)) => {
                if *code == Code::Unavailable {
                    tally.unavailable += 1;
                } else {
                    failures.add(
                        C_STATUS,
                        format!("{who} {:?}\n    failed with {code:?}: {message}", rec.req),
                    );
                }
                continue;
            }
        };
        match (&rec.req, resp) {
            (Req::Check(req), Resp::Check(resp)) => {
                let (tenant, q) = parse_check(req, "", "").expect("generated checks are valid");
                let context = || {
                    format!(
                        "{who} Check tenant `{tenant}` subject `{}` scope `{}` {} min_revision {}",
                        req.subject_id,
                        req.scope,
                        action_text(&req.action),
                        req.min_revision
                    )
                };
                if resp.revision < req.min_revision {
                    failures.add(
                        C_MIN,
                        format!("{}\n    answered at revision {}", context(), resp.revision),
                    );
                }
                let got = Observed::from_pb(resp);
                judge_check(
                    h,
                    failures,
                    C_DIFFERS,
                    resp.revision,
                    tenant,
                    &q,
                    false,
                    &got,
                    &context,
                );
                tally.checked += 1;
                tally.checked_min += usize::from(req.min_revision > 0);
                tally.revisions.insert(resp.revision);
            }
            (Req::Batch(req), Resp::Batch(resp)) => {
                let batch = resp.revision;
                let decision_only = req.detail == pb::Detail::Decision as i32;
                if batch < req.min_revision {
                    failures.add(
                        C_MIN,
                        format!(
                            "{who} BatchCheck min_revision {} answered at revision {batch}",
                            req.min_revision
                        ),
                    );
                }
                if resp.results.len() != req.checks.len() {
                    failures.add(
                        C_ITEM,
                        format!(
                            "{who} BatchCheck of {} items answered with {} results",
                            req.checks.len(),
                            resp.results.len()
                        ),
                    );
                    continue;
                }
                tally.revisions.insert(batch);
                for (i, (item, result)) in req.checks.iter().zip(&resp.results).enumerate() {
                    let context = || {
                        format!(
                            "{who} BatchCheck tenant `{}` subject `{}` min_revision {}{} (batch revision {batch}), \
                             item {i} of {}: tenant `{}` subject `{}` scope `{}` {}",
                            req.tenant_id,
                            req.subject_id,
                            req.min_revision,
                            if decision_only {
                                " detail DECISION"
                            } else {
                                ""
                            },
                            req.checks.len(),
                            item.tenant_id,
                            item.subject_id,
                            item.scope,
                            action_text(&item.action)
                        )
                    };
                    match (
                        parse_check(item, &req.tenant_id, &req.subject_id),
                        &result.result,
                    ) {
                        (Err(_), Some(pb::batch_check_result::Result::Error(e)))
                            if e.code == Code::InvalidArgument as i32 => {}
                        (Ok((tenant, q)), Some(pb::batch_check_result::Result::Response(r))) => {
                            if r.revision < req.min_revision {
                                failures.add(
                                    C_MIN,
                                    format!(
                                        "{}\n    item answered at revision {}",
                                        context(),
                                        r.revision
                                    ),
                                );
                            }
                            let got = Observed::from_pb(r);
                            judge_check(
                                h,
                                failures,
                                C_DIFFERS,
                                r.revision,
                                tenant,
                                &q,
                                decision_only,
                                &got,
                                &context,
                            );
                            // BatchCheckResponse.revision is "the policy revision every
                            // result was computed on": each item must also be exact there.
                            // A different number on the item alone is only counted.
                            if r.revision != batch {
                                tally.batch_item_other_revision += 1;
                                let item_revision = r.revision;
                                let context = || {
                                    format!(
                                        "{} (the item itself names revision {item_revision})",
                                        context()
                                    )
                                };
                                judge_check(
                                    h,
                                    failures,
                                    C_BATCH_MIX,
                                    batch,
                                    tenant,
                                    &q,
                                    decision_only,
                                    &got,
                                    &context,
                                );
                            }
                            tally.checked += 1;
                            tally.batch_items += 1;
                            tally.checked_min += usize::from(req.min_revision > 0);
                            tally.revisions.insert(r.revision);
                        }
                        (parsed, result) => failures.add(
                            C_ITEM,
                            format!(
                                "{}\n    input {}, answered {result:?}",
                                context(),
                                match parsed {
                                    Ok(_) => "valid".to_owned(),
                                    Err(e) => format!("invalid ({e})"),
                                }
                            ),
                        ),
                    }
                }
            }
            (Req::List(req), Resp::List(resp)) => {
                let r = resp.revision;
                let context = || {
                    format!(
                        "{who} ListPermissions tenant `{}` subject `{}` scope `{}` min_revision {}",
                        req.tenant_id, req.subject_id, req.scope, req.min_revision
                    )
                };
                if r < req.min_revision {
                    failures.add(
                        C_MIN,
                        format!("{}\n    answered at revision {r}", context()),
                    );
                }
                let mut got = resp.clone();
                got.revision = 0;
                match h.list(r, &req.tenant_id, &req.subject_id, &req.scope) {
                    Truth::Value(want) if want == got => {}
                    Truth::Value(want) => {
                        let mut diff = ListView::from_pb(&got).diff(&ListView::from_pb(&want));
                        if diff.is_empty() {
                            diff = format!("\n    answered {got:?}\n    the state gives {want:?}");
                        }
                        let mut m = format!(
                            "{}\n    answered at revision {r}; differs from the state at {r}:{diff}",
                            context(),
                        );
                        if failures.detailed(C_DIFFERS) {
                            let _ = write!(
                                m,
                                "\n    the answer is what the states at revisions {} give\n    {}",
                                h.matching_list(&req.tenant_id, &req.subject_id, &req.scope, &got),
                                h.committed(r)
                            );
                        }
                        failures.add(C_DIFFERS, m);
                    }
                    Truth::Uncommitted => failures.add(
                        C_NEVER,
                        format!("{}\n    answered at revision {r}", context()),
                    ),
                    Truth::Broken(e) => {
                        let mut m = format!(
                            "{}\n    answered at revision {r}, but tenant `{}` does not compile at revision {r}: {e}",
                            context(),
                            req.tenant_id
                        );
                        if failures.detailed(C_BROKEN) {
                            let _ = write!(
                                m,
                                "\n    the answer is what the states at revisions {} give\n    {}",
                                h.matching_list(&req.tenant_id, &req.subject_id, &req.scope, &got),
                                h.committed(r)
                            );
                        }
                        failures.add(C_BROKEN, m);
                    }
                }
                tally.checked += 1;
                tally.listings += 1;
                tally.checked_min += usize::from(req.min_revision > 0);
                tally.revisions.insert(r);
            }
            (req, resp) => panic!("a response of the wrong kind: {req:?} -> {resp:?}"),
        }
    }
    tally
}
