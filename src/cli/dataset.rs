//! `authzd gen-dataset`: a large, realistic synthetic policy written straight into an
//! empty PostgreSQL database, for load, memory and propagation measurements.
//!
//! The data: 10 built-in roles with include chains, permissions and route rules, and a
//! global endpoint table of 15 entries; per tenant (`tenant-00000`, ...) 1–3 custom roles,
//! one default role (sometimes two), an own endpoint entry in about one tenant of ten,
//! members with 26-character ULID-like ids holding 1–3 assignments each at the root,
//! `workspaces/ws-N` or `workspaces/ws-N/projects/p-M` (about 2% disabled), and two
//! groups with members and one assignment each. Everything derives from `--seed`, so a
//! run is reproducible. Each tenant gets exactly `--assignments-per-tenant` assignments.
//!
//! # How it is fast
//! The built-in roles go through `sync::apply_in` like any policy change (captured,
//! revision bumped once, NOTIFY at commit). The tenants are generated as documents in
//! chunks, each chunk compiled (so the data is known to be valid) and written with
//! `COPY` while `session_replication_role = replica` disables the row triggers: no
//! change row and no validation per data row. That setting needs a superuser, which is
//! fine for a development tool. Instead of per-row change rows the same revision gets
//! ONE `authz_changes` row per tenant (entity `tenants`, op `INSERT`), and at the end
//! `authz_validate_tenant('')` checks every role reference and include cycle in the
//! database. All in one transaction: it commits whole or not at all. A `VACUUM
//! (ANALYZE)` afterwards sets hint bits and statistics, so the first load by a server is
//! not the one paying for them.
//!
//! Replicas already running should be restarted after a load of this size: reloading
//! every tenant from the change log is no faster than a fresh start.

use std::time::{Duration, Instant};

use clap::Args;
use tokio_postgres::{Client, error::SqlState};

use super::{
    Exit,
    migrate::{block_on, exit_for},
};
use crate::{
    policy::{
        CompileError, PolicyDocument, compile,
        source::{AssignmentDoc, EndpointDoc, GroupDoc, RoleDoc, RouteDoc, SubjectDoc, TenantDoc},
    },
    store::{
        postgres::connect,
        sync::{self, CopyBatch, Desired, SyncError, TABLES},
    },
};

/// `authzd gen-dataset`.
#[derive(Clone, Debug, Args)]
pub struct GenDatasetArgs {
    /// PostgreSQL URL of an empty, migrated database; the user must be a superuser.
    #[arg(long, env = "AUTHZ_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Number of tenants.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub tenants: u32,
    /// Role assignments per tenant (two of them to groups).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub assignments_per_tenant: u32,
    /// Seed of the pseudo-random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct DatasetOptions {
    /// Number of tenants.
    pub tenants: usize,
    /// Role assignments per tenant.
    pub assignments_per_tenant: usize,
    /// Seed of the pseudo-random choices.
    pub seed: u64,
}

/// What [`generate`] wrote and how long it took.
#[derive(Clone, Debug)]
pub struct DatasetReport {
    /// The revision of the load.
    pub revision: u64,
    /// Rows written per table, built-in rows included.
    pub rows: Vec<(&'static str, u64)>,
    /// Generating, compiling and copying the tenants.
    pub load: Duration,
    /// `authz_validate_tenant('')`.
    pub validate: Duration,
    /// The commit.
    pub commit: Duration,
    /// `VACUUM (ANALYZE)` of the tables.
    pub vacuum: Duration,
    /// All of it, from connecting on.
    pub total: Duration,
}

impl DatasetReport {
    /// Rows written to one table.
    pub fn rows(&self, table: &str) -> u64 {
        self.rows
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, n)| *n)
    }
}

/// Why generating failed.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The database already holds tenants or roles.
    #[error(
        "the database already holds policy data; gen-dataset fills an empty, migrated database"
    )]
    NotEmpty,
    /// Triggers cannot be disabled: the user is not a superuser.
    #[error(
        "{0}; gen-dataset disables triggers for the bulk load (`session_replication_role`), which needs a superuser"
    )]
    Privilege(String),
    /// The generated policy does not compile: a bug in the generator.
    #[error("the generated policy does not compile (a bug in the generator):\n{0}")]
    Generated(#[from] CompileError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] SyncError),
}

impl From<tokio_postgres::Error> for DatasetError {
    fn from(e: tokio_postgres::Error) -> Self {
        DatasetError::Db(e.into())
    }
}

/// Runs the command.
pub fn run(args: &GenDatasetArgs) -> Exit {
    let opts = DatasetOptions {
        tenants: args.tenants as usize,
        assignments_per_tenant: args.assignments_per_tenant as usize,
        seed: args.seed,
    };
    if let Err(exit) = super::migrate::check_url(&args.database_url) {
        return exit;
    }
    block_on(async {
        let start = Instant::now();
        let mut client = match connect(&args.database_url).await {
            Ok(c) => c,
            Err(e) => return super::migrate::report(&SyncError::from(e)),
        };
        match generate(&mut client, &opts).await {
            Ok(mut r) => {
                r.total = start.elapsed();
                print(&r);
                Exit::Ok
            }
            Err(e) => {
                eprintln!("error: {e}");
                match e {
                    DatasetError::NotEmpty => Exit::DataErr,
                    DatasetError::Privilege(_) | DatasetError::Generated(_) => Exit::Software,
                    DatasetError::Db(e) => exit_for(&e),
                }
            }
        }
    })
}

fn print(r: &DatasetReport) {
    super::say!(
        "generated {} tenants and {} assignments at revision {} in {:.1}s",
        r.rows("tenants"),
        r.rows("assignments"),
        r.revision,
        r.total.as_secs_f64()
    );
    for (table, n) in &r.rows {
        super::say!("  {table:<17} {n:>10} rows");
    }
    super::say!(
        "  load {:.1}s, validate {:.1}s, commit {:.1}s, vacuum analyze {:.1}s",
        r.load.as_secs_f64(),
        r.validate.as_secs_f64(),
        r.commit.as_secs_f64(),
        r.vacuum.as_secs_f64()
    );
}

/// Tenants generated, compiled and copied at a time.
const CHUNK_TENANTS: usize = 500;

/// Writes the dataset (see the module documentation) into an empty, migrated database.
pub async fn generate(
    client: &mut Client,
    opts: &DatasetOptions,
) -> Result<DatasetReport, DatasetError> {
    let start = Instant::now();
    let base = builtin_document();
    compile(&base, "gen-dataset", 0)?;
    let tx = client.transaction().await?;
    let busy: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id <> '') OR EXISTS (SELECT 1 FROM roles)",
            &[],
        )
        .await?
        .try_get(0)?;
    if busy {
        return Err(DatasetError::NotEmpty);
    }
    // The built-in section as an ordinary, captured change: this bumps the revision.
    let builtin = sync::apply_in(&tx, &base, true).await?;
    // Validate the built-in rows now, while their deferred triggers are still queued.
    tx.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await?;
    if let Err(e) = tx
        .batch_execute("SET LOCAL session_replication_role = replica")
        .await
    {
        return Err(match e.code() {
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => DatasetError::Privilege(
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            ),
            _ => e.into(),
        });
    }
    // Chunks are generated, compiled and rendered on a blocking thread while the
    // previous chunk is copied: the client's work hides behind the server's.
    let (chunks, mut ready) = tokio::sync::mpsc::channel(2);
    let producer = {
        let (opts, base) = (*opts, base.clone());
        tokio::task::spawn_blocking(move || produce(&opts, &base, &chunks))
    };
    let mut counts = [0u64; 11];
    let mut ids = Vec::with_capacity(opts.tenants);
    while let Some(chunk) = ready.recv().await {
        let (chunk_ids, batch) = chunk?;
        for (c, n) in counts.iter_mut().zip(sync::copy_rows(&tx, &batch).await?) {
            *c += n;
        }
        ids.extend(chunk_ids);
    }
    drop(ready);
    if let Err(e) = producer.await {
        return Err(DatasetError::Db(SyncError::Db {
            message: format!("the generator thread failed: {e}"),
        }));
    }
    if ids.len() != opts.tenants {
        return Err(DatasetError::Db(SyncError::Db {
            message: format!("generated {} of {} tenants", ids.len(), opts.tenants),
        }));
    }
    tx.batch_execute("SET LOCAL session_replication_role = origin")
        .await?;
    let revision = match builtin.revision {
        Some(r) => i64::try_from(r).unwrap_or(i64::MAX),
        // Not reached (the database was empty and the built-in section is not), but a
        // load must still bump the revision and wake the listeners.
        None => {
            let r: i64 = tx
                .query_one(
                    "UPDATE authz_state SET revision = revision + 1 RETURNING revision",
                    &[],
                )
                .await?
                .try_get(0)?;
            tx.execute("SELECT pg_notify('authz_changes', $1::bigint::text)", &[&r])
                .await?;
            r
        }
    };
    tx.execute(
        "INSERT INTO authz_changes (revision, tenant_id, entity, op, new) \
         SELECT $1, t, 'tenants', 'INSERT', jsonb_build_object('id', t) FROM unnest($2::text[]) AS t",
        &[&revision, &ids],
    )
    .await?;
    let load = start.elapsed();

    let t = Instant::now();
    tx.batch_execute("SELECT authz_validate_tenant('')").await?;
    let validate = t.elapsed();
    let t = Instant::now();
    tx.commit().await?;
    let commit = t.elapsed();

    let t = Instant::now();
    let tables: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    client
        .batch_execute(&format!("VACUUM (ANALYZE) {}", tables.join(", ")))
        .await?;
    let vacuum = t.elapsed();

    let rows = TABLES
        .iter()
        .zip(counts)
        .map(|(t, n)| (t.name, n + builtin.table(t.name).inserted))
        .collect();
    Ok(DatasetReport {
        revision: u64::try_from(revision).unwrap_or(0),
        rows,
        load,
        validate,
        commit,
        vacuum,
        total: start.elapsed(),
    })
}

/// A chunk ready to copy: its tenant ids and its rows.
type Chunk = Result<(Vec<String>, CopyBatch), CompileError>;

/// Generates, compiles and renders the tenants chunk by chunk; stops at the first
/// problem (sent on) or when the receiver is gone.
fn produce(opts: &DatasetOptions, base: &PolicyDocument, out: &tokio::sync::mpsc::Sender<Chunk>) {
    let pool: Vec<String> = base.roles.iter().map(|r| r.id.clone()).collect();
    let mut first = 0;
    while first < opts.tenants {
        let end = (first + CHUNK_TENANTS).min(opts.tenants);
        let check = PolicyDocument {
            version: 1,
            roles: base.roles.clone(),
            endpoints: base.endpoints.clone(),
            tenants: (first..end).map(|i| tenant(opts, &pool, i)).collect(),
        };
        let chunk = compile(&check, "gen-dataset", 0).map(|_| {
            let mut rows = Desired::default();
            for t in &check.tenants {
                rows.add_tenant(t);
            }
            let ids = check.tenants.into_iter().map(|t| t.id).collect();
            (ids, rows.to_copy())
        });
        let failed = chunk.is_err();
        if out.blocking_send(chunk).is_err() || failed {
            return;
        }
        first = end;
    }
}

// ------------------------------------------------------------------------ the data

fn role(id: &str, includes: &[&str], permissions: &[&str], routes: &[(&[&str], &str)]) -> RoleDoc {
    RoleDoc {
        id: id.to_owned(),
        description: format!("{id} (generated)"),
        includes: strings(includes),
        permissions: strings(permissions),
        routes: routes
            .iter()
            .map(|(m, p)| RouteDoc {
                methods: strings(m),
                path: (*p).to_owned(),
            })
            .collect(),
    }
}

fn endpoint(path: &str, methods: &[&str], roles: &[&str]) -> EndpointDoc {
    EndpointDoc {
        path: path.to_owned(),
        methods: strings(methods),
        roles: strings(roles),
        public: roles.is_empty(),
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

/// The built-in roles and the global endpoint table.
pub fn builtin_document() -> PolicyDocument {
    let read = &["GET"][..];
    PolicyDocument {
        version: 1,
        roles: vec![
            role(
                "viewer",
                &[],
                &[
                    "projects.read",
                    "docs.read",
                    "members.read",
                    "comments.read",
                ],
                &[(read, "/projects/**"), (read, "/docs/{doc_id}")],
            ),
            role(
                "commenter",
                &["viewer"],
                &["comments.write", "comments.resolve"],
                &[(&["POST"], "/docs/{doc_id}/comments")],
            ),
            role(
                "editor",
                &["commenter"],
                &["docs.write", "docs.create", "docs.delete"],
                &[
                    (&["PUT", "PATCH", "DELETE"], "/docs/{doc_id}"),
                    (&["POST"], "/docs/"),
                ],
            ),
            role(
                "developer",
                &["viewer"],
                &["api_keys.view", "api_keys.manage", "deploys.create"],
                &[
                    (&["GET", "POST", "DELETE"], "/api-keys/**"),
                    (&["POST"], "/projects/*/deploys"),
                ],
            ),
            role(
                "billing-viewer",
                &[],
                &["billing.read", "invoices.read"],
                &[(read, "/billing/**")],
            ),
            role(
                "billing-admin",
                &["billing-viewer"],
                &["billing.manage", "invoices.pay"],
                &[(&["GET", "POST", "PUT"], "/billing/**")],
            ),
            role(
                "admin",
                &["editor", "developer", "billing-viewer"],
                &["members.manage", "roles.manage", "settings.manage"],
                &[
                    (&["*"], "/settings/**"),
                    (&["GET", "POST", "DELETE"], "/members/**"),
                ],
            ),
            role(
                "owner",
                &["admin", "billing-admin"],
                &["projects.delete", "org.transfer"],
                &[],
            ),
            role(
                "auditor",
                &["viewer"],
                &["audit.read", "audit.export"],
                &[(read, "/audit/**")],
            ),
            role(
                "support",
                &[],
                &["tickets.read", "tickets.write"],
                &[(read, "/tickets/**"), (&["POST"], "/tickets/")],
            ),
        ],
        endpoints: vec![
            endpoint("/health/", read, &[]),
            endpoint("/version", read, &[]),
            endpoint("/projects/", read, &["viewer"]),
            endpoint("/projects/", &["POST"], &["admin"]),
            endpoint("/projects/{project_id}", read, &["viewer"]),
            endpoint("/projects/{project_id}", &["PUT", "PATCH"], &["admin"]),
            endpoint("/projects/{project_id}", &["DELETE"], &["owner"]),
            endpoint("/docs/", read, &["viewer"]),
            endpoint("/docs/", &["POST"], &["editor"]),
            endpoint("/docs/{doc_id}", read, &["viewer"]),
            endpoint("/docs/{doc_id}", &["PUT", "PATCH", "DELETE"], &["editor"]),
            endpoint("/members/", read, &["viewer"]),
            endpoint("/members/{member_id}", &["PUT", "DELETE"], &["admin"]),
            endpoint("/billing/**", read, &["billing-viewer"]),
            endpoint("/audit/**", read, &["auditor"]),
        ],
        tenants: Vec::new(),
    }
}

/// splitmix64: small, fast, and good enough for test data.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const ULID_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A 26-character ULID-like member id, unique in its tenant: the first 6 characters
/// encode `n`, the rest is random.
fn member_id(rng: &mut Rng, n: usize) -> String {
    let mut id = String::with_capacity(26);
    let mut prefix = n as u64;
    let mut head = [b'0'; 6];
    for c in head.iter_mut().rev() {
        *c = ULID_ALPHABET
            .get((prefix & 31) as usize)
            .copied()
            .unwrap_or(b'0');
        prefix >>= 5;
    }
    id.extend(head.iter().map(|&b| char::from(b)));
    let mut bits = rng.next();
    for i in 0..20 {
        if i == 12 {
            bits = rng.next();
        }
        id.push(char::from(
            ULID_ALPHABET
                .get((bits & 31) as usize)
                .copied()
                .unwrap_or(b'0'),
        ));
        bits >>= 5;
    }
    id
}

/// Tenant number `index`, derived from the seed and the index alone.
pub fn tenant(opts: &DatasetOptions, builtins: &[String], index: usize) -> TenantDoc {
    let mut rng = Rng::new(opts.seed, index as u64);
    let ops = format!("custom-ops-{}", index % 7);
    let customs = [
        role(
            "custom-lead",
            &["editor"],
            &["team.manage", "reports.read", "reports.share"],
            &[],
        ),
        role(
            "custom-reader",
            &["viewer"],
            &["reports.read"],
            &[
                (&["GET"], "/reports/{report_id}"),
                (&["GET", "HEAD"], "/exports/**"),
            ],
        ),
        role(
            &ops,
            &[],
            &["deploys.approve", "incidents.close"],
            &[(&["POST"], "/deploys/*/approve")],
        ),
    ];
    let custom_count = 1 + rng.below(3);
    let mut t = TenantDoc {
        id: format!("tenant-{index:05}"),
        roles: customs.into_iter().take(custom_count).collect(),
        default_roles: vec!["viewer".to_owned()],
        ..TenantDoc::default()
    };
    if rng.chance(20) {
        t.default_roles.push("support".to_owned());
    }
    if rng.chance(10) {
        t.endpoints.push(endpoint(
            "/reports/{report_id}",
            &["GET"],
            &["custom-lead", "auditor"],
        ));
    }
    let pool: Vec<&str> = builtins
        .iter()
        .map(String::as_str)
        .chain(t.roles.iter().map(|r| r.id.as_str()))
        .collect();

    let total = opts.assignments_per_tenant;
    let to_groups = total.min(2);
    let direct = total - to_groups;
    let mut n = 0;
    while n < direct {
        let sid = member_id(&mut rng, t.subjects.len());
        let count = (1 + rng.below(3)).min(direct - n);
        let mut roles: Vec<&str> = Vec::with_capacity(count);
        while roles.len() < count.min(pool.len()) {
            let r = pool.get(rng.below(pool.len())).copied().unwrap_or("viewer");
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
        for r in roles {
            let scope = match rng.below(10) {
                0..5 => String::new(),
                5..9 => format!("workspaces/ws-{}", rng.below(20)),
                _ => format!(
                    "workspaces/ws-{}/projects/p-{}",
                    rng.below(20),
                    rng.below(50)
                ),
            };
            t.assignments.push(AssignmentDoc {
                subject: Some(sid.clone()),
                group: None,
                role: r.to_owned(),
                scope,
            });
            n += 1;
        }
        t.subjects.push(SubjectDoc {
            id: sid,
            disabled: rng.chance(2),
        });
    }
    let members = |skip: usize, take: usize| -> Vec<String> {
        t.subjects
            .iter()
            .skip(skip)
            .take(take)
            .map(|s| s.id.clone())
            .collect()
    };
    let admins = GroupDoc {
        id: "admins".to_owned(),
        members: members(0, 3),
    };
    let engineering = GroupDoc {
        id: "engineering".to_owned(),
        members: members(3, 5),
    };
    t.groups = vec![admins, engineering];
    for (group, role, scope) in [
        ("admins", "admin", ""),
        ("engineering", "developer", "workspaces/ws-1"),
    ]
    .into_iter()
    .take(to_groups)
    {
        t.assignments.push(AssignmentDoc {
            subject: None,
            group: Some(group.to_owned()),
            role: role.to_owned(),
            scope: scope.to_owned(),
        });
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(per: usize) -> DatasetOptions {
        DatasetOptions {
            tenants: 3,
            assignments_per_tenant: per,
            seed: 7,
        }
    }

    #[test]
    fn tenants_compile_with_exactly_the_asked_assignments() {
        let base = builtin_document();
        let pool: Vec<String> = base.roles.iter().map(|r| r.id.clone()).collect();
        for per in [0, 1, 2, 3, 100] {
            let doc = PolicyDocument {
                tenants: (0..20).map(|i| tenant(&opts(per), &pool, i)).collect(),
                ..base.clone()
            };
            compile(&doc, "gen", 0).unwrap();
            for t in &doc.tenants {
                assert_eq!(t.assignments.len(), per, "{}", t.id);
            }
        }
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let pool = vec!["viewer".to_owned(), "editor".to_owned()];
        assert_eq!(tenant(&opts(50), &pool, 4), tenant(&opts(50), &pool, 4));
        let other = DatasetOptions {
            seed: 8,
            ..opts(50)
        };
        assert_ne!(tenant(&opts(50), &pool, 4), tenant(&other, &pool, 4));
    }

    #[test]
    fn member_ids_look_like_ulids_and_are_unique() {
        let mut rng = Rng::new(1, 1);
        let ids: std::collections::HashSet<String> =
            (0..5000).map(|n| member_id(&mut rng, n)).collect();
        assert_eq!(ids.len(), 5000);
        assert!(ids.iter().all(|i| i.len() == 26));
    }
}
