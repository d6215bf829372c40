//! PostgreSQL as the source of truth: schema migrations, loading, and the connection
//! helpers the loader, the listener and the policy sync share.
//!
//! The schema (`migrations/`) captures every committed write in `authz_changes` under a
//! revision, in commit order, and NOTIFYs `authz_changes`; see `migrations/V1__schema.sql`
//! for why revisions can never commit out of order. A streaming standby replays commits
//! in the primary's commit order, so the same holds for reads from a standby.
//!
//! Reads run as unnamed statements with their parameter types given
//! (`query_typed*`): one round trip, and no named prepared statement that would outlive
//! its transaction, so they work through PgBouncer in transaction mode, which hands each
//! transaction to whichever server connection is free.

use std::{collections::HashMap, time::Duration};

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::Client;
use tracing::warn;

use crate::policy::{
    PolicyDocument,
    source::{AssignmentDoc, EndpointDoc, GroupDoc, RoleDoc, RouteDoc, SubjectDoc, TenantDoc},
};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The channel writers NOTIFY with the new revision.
pub const CHANNEL: &str = "authz_changes";

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a statement, or the connection broke. Shown with
    /// its causes (tokio-postgres keeps "connection refused" or the TLS verifier's
    /// reason in the source chain, not in its message).
    #[error("database: {}", super::sync::chain(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The connection pool could not hand out a connection.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The pool could not be built from the URL.
    #[error("database pool: {0}")]
    CreatePool(#[from] deadpool_postgres::CreatePoolError),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] refinery::Error),
    /// A tenant's data in the database does not compile (a row the constraints did not
    /// catch).
    #[error(transparent)]
    Compile(#[from] crate::policy::CompileError),
    /// The database URL is invalid.
    #[error("invalid database URL: {0}")]
    Url(String),
    /// A TLS file named by the URL (`sslrootcert`, `sslcert`, `sslkey`) is unreadable
    /// or holds no certificate or key.
    #[error("database TLS: {0}")]
    Tls(String),
    /// The connection closed.
    #[error("database connection closed: {0}")]
    Closed(String),
    /// The server's snapshot is older than what the cache has already applied.
    #[error(
        "the database is at revision {revision}, behind the {applied} already applied (a standby catching up?)"
    )]
    Behind {
        /// The server's revision.
        revision: u64,
        /// The cache's.
        applied: u64,
    },
    /// A compile task on a blocking thread did not finish.
    #[error(transparent)]
    Task(#[from] super::CompileTaskError),
    /// A past revision was asked for that the database cannot rebuild: newer than the
    /// current one, or older than the retained change log.
    #[error("{0}")]
    Revision(String),
}

impl StoreError {
    /// Whether retrying later may succeed (connection trouble), as opposed to a fault
    /// in the data or the request that retrying cannot fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Db(e) => {
                e.is_closed()
                    || e.as_db_error().is_none_or(|db| {
                        let c = db.code().code();
                        // Class 08: connection exceptions; 57P: operator intervention
                        // (admin shutdown, terminated backend); 53: insufficient resources.
                        c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
                    })
            }
            StoreError::Pool(_) | StoreError::Closed(_) | StoreError::Behind { .. } => true,
            StoreError::CreatePool(_)
            | StoreError::Tls(_)
            | StoreError::Migrate(_)
            | StoreError::Compile(_)
            | StoreError::Task(_)
            | StoreError::Revision(_)
            | StoreError::Url(_) => false,
        }
    }
}

/// A database URL with its password replaced by `***`, for logs and messages: the
/// password of `postgres://user:PASSWORD@host/db`, a `password=` query parameter, or a
/// `password=` key of the key-value form (`host=db password=...`).
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    // postgres://user:PASSWORD@host: the userinfo ends at the last `@` before the path.
    if let Some(scheme_end) = url.find("://") {
        let (scheme, after) = url.split_at(scheme_end + 3);
        let authority_end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, tail) = after.split_at(authority_end);
        out.push_str(scheme);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    // `password=...` up to the next separator (`&` in a URL query, whitespace in the
    // key-value form; a quoted value there runs to its closing quote). The key in any
    // case (`PASSWORD=`), with spaces around `=` as libpq's key-value form allows.
    let mut remaining = rest;
    loop {
        let lower = remaining.to_ascii_lowercase();
        let Some(at) = lower.find("password") else {
            break;
        };
        let starts_key = at == 0
            || lower
                .get(..at)
                .and_then(|b| b.chars().last())
                .is_some_and(|c| matches!(c, '?' | '&' | ' ' | '\t' | '\n' | '\r'));
        let after_key = at + "password".len();
        let tail = remaining.get(after_key..).unwrap_or_default();
        let spaced = tail.trim_start_matches([' ', '\t']);
        let value_at = spaced
            .strip_prefix('=')
            .map(|v| v.trim_start_matches([' ', '\t']));
        let (Some(value), true) = (value_at, starts_key) else {
            // Not a key: keep the text up to the end of this occurrence.
            out.push_str(remaining.get(..after_key).unwrap_or(remaining));
            remaining = tail;
            continue;
        };
        let value_start = remaining.len() - value.len();
        out.push_str(remaining.get(..value_start).unwrap_or_default());
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // A quoted value: to the closing quote not escaped by a backslash.
            let mut end = value.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i + 2;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            end
        } else {
            value
                .find(['&', ' ', '\t', '\n', '\r'])
                .unwrap_or(value.len())
        };
        out.push_str("***");
        remaining = value.get(end..).unwrap_or_default();
    }
    out.push_str(remaining);
    out
}

/// Opens one connection; the connection's driver runs on a spawned task.
pub async fn connect(url: &str) -> Result<Client, StoreError> {
    let (config, tls) = super::pgtls::connect_config(url)?;
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(cause = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// A connection pool for request-driven work (policy sync, admin writes).
pub fn pool(url: &str, size: usize) -> Result<deadpool_postgres::Pool, StoreError> {
    let (config, tls) = super::pgtls::connect_config(url)?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Url(e.to_string()))
}

/// The session-level advisory lock `migrate` holds while it migrates ("authzmig"), so
/// that migrators started at once (an init container in every new pod of a rollout)
/// run one after the other: the first applies, the others find nothing to do.
const MIGRATION_LOCK: i64 = 0x6175_7468_7a6d_6967;

/// Brings the schema up to date; returns the versions applied now. Concurrent calls on
/// one database are serialized by an advisory lock.
pub async fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let mut client = connect(url).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Migrated by a newer release: nothing to apply (this binary serves that schema).
    if let SchemaState::Ahead { .. } = schema_state(&client).await? {
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        return Ok(Vec::new());
    }
    let report = embedded::migrations::runner().run_async(&mut client).await;
    // Released with the session anyway; unlocking now lets the next migrator go on
    // before this connection is torn down.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}

/// The newest migration embedded in this binary.
pub fn expected_schema_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Where a database's schema stands against the migrations embedded in this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaState {
    /// No migration applied: an empty database.
    Missing,
    /// Migrated, but not to this binary's newest migration.
    Behind {
        /// The newest migration applied.
        applied: i64,
    },
    /// Migrated to exactly this binary's newest migration.
    Current,
    /// Migrated by a newer binary (during a rollout, older replicas still run).
    Ahead {
        /// The newest migration applied.
        applied: i64,
    },
}

/// Reads refinery's migration table (`refinery_schema_history`) for the newest
/// migration applied.
pub async fn schema_state(client: &Client) -> Result<SchemaState, StoreError> {
    let exists: bool = client
        .query_typed_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(SchemaState::Missing);
    }
    let applied: Option<i64> = client
        .query_typed_one(
            "SELECT MAX(version)::int8 FROM refinery_schema_history",
            &[],
        )
        .await?
        .get(0);
    let expected = expected_schema_version();
    Ok(match applied {
        None => SchemaState::Missing,
        Some(v) if v < expected => SchemaState::Behind { applied: v },
        Some(v) if v > expected => SchemaState::Ahead { applied: v },
        Some(_) => SchemaState::Current,
    })
}

/// Which tenants to read (the built-in roles and global endpoints are always read).
#[derive(Clone, Copy, Debug)]
pub enum Tenants<'a> {
    /// Every tenant.
    All,
    /// Only these.
    Only(&'a [String]),
    /// Tenants whose ids sort between these two, both included: one index range scan
    /// per table, for loading in batches.
    Between(&'a str, &'a str),
}

impl Tenants<'_> {
    /// The SQL condition on `column`, with its parameters from `$1`.
    fn condition(&self, column: &str) -> String {
        match self {
            Tenants::All => "true".to_owned(),
            Tenants::Only(_) => format!("({column} = '' OR {column} = ANY($1))"),
            Tenants::Between(..) => format!("({column} = '' OR {column} BETWEEN $1 AND $2)"),
        }
    }
}

/// Reads the built-in roles, the global endpoint table and the chosen tenants as a policy
/// document, with the revision it reflects, from one consistent snapshot (REPEATABLE
/// READ). Rows are decoded as they stream in; no table is buffered whole in the client.
pub async fn read_document(
    client: &mut Client,
    tenants: Tenants<'_>,
) -> Result<(u64, PolicyDocument), StoreError> {
    let tx = snapshot_transaction(client).await?;
    let revision = read_revision(&tx).await?;
    let doc = read_document_in(&tx, tenants).await?;
    tx.commit().await?;
    Ok((revision, doc))
}

/// Starts a read-only REPEATABLE READ transaction: every read in it sees one snapshot.
pub async fn snapshot_transaction(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The revision the transaction's snapshot reflects.
pub async fn read_revision(tx: &tokio_postgres::Transaction<'_>) -> Result<u64, StoreError> {
    let r: i64 = tx
        .query_typed_one("SELECT revision FROM authz_state", &[])
        .await?
        .get(0);
    Ok(u64::try_from(r).unwrap_or(0))
}

/// The per-tenant limits the database holds policies to (its `authz_limits` row, which
/// its validation triggers enforce at commit), so replicas compile with the same ones.
/// A schema older than the table (migration V3) gives the defaults.
pub async fn read_limits(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<crate::policy::Limits, StoreError> {
    let exists: bool = tx
        .query_typed_one("SELECT to_regclass('authz_limits') IS NOT NULL", &[])
        .await?
        .get(0);
    let d = crate::policy::Limits::default();
    if !exists {
        return Ok(d);
    }
    // By name: a column a newer migration adds is read when it exists. Unnamed
    // statements (query_typed): a transaction pooler may not keep prepared ones.
    let Some(row) = tx
        .query_typed_opt("SELECT * FROM authz_limits", &[])
        .await?
    else {
        return Ok(d);
    };
    let get = |name: &str, default: u32| -> u32 {
        row.try_get::<_, i32>(name)
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default)
    };
    Ok(crate::policy::Limits {
        include_depth: get("max_include_depth", d.include_depth),
        roles_per_tenant: get("max_roles_per_tenant", d.roles_per_tenant),
        rules_per_role: get("max_rules_per_role", d.rules_per_role),
        permissions_per_role: get("max_permissions_per_role", d.permissions_per_role),
        endpoints_per_tenant: get("max_endpoints_per_tenant", d.endpoints_per_tenant),
        closure_cost_per_tenant: row
            .try_get::<_, i64>("max_closure_cost")
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(d.closure_cost_per_tenant),
        document_bytes: d.document_bytes,
    })
}

/// Every tenant id, sorted.
pub async fn tenant_ids(tx: &tokio_postgres::Transaction<'_>) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .query_typed("SELECT id FROM tenants WHERE id <> '' ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// [`read_document`] within a transaction the caller controls (several reads of one
/// snapshot, e.g. a load in batches of tenants).
pub async fn read_document_in(
    tx: &tokio_postgres::Transaction<'_>,
    tenants: Tenants<'_>,
) -> Result<PolicyDocument, StoreError> {
    read_document_as_of(tx, tenants, None).await
}

/// The whole policy (every tenant) as it was at a past `revision`, with the limits the
/// database holds itself to now (`authz_limits` is not versioned), from one consistent
/// snapshot: what `authzd diff rev:N` compiles. `revision` may be the current one.
///
/// The change log (`authz_changes`) holds every captured row's old and new value, so a
/// row's state at `revision` is its current state unless a later change touched its
/// key, and otherwise the state before the first such change: the old value, or no row
/// when that change created it. Errors with [`StoreError::Revision`] when `revision` is
/// newer than the database's or the log no longer reaches back to it (rows pruned).
/// Rows written with the capture triggers disabled (`gen-dataset`'s bulk load) have no
/// change rows: a revision before such a load shows their tenants as absent.
pub async fn export_at(
    client: &mut Client,
    revision: u64,
) -> Result<(PolicyDocument, crate::policy::Limits), StoreError> {
    let tx = snapshot_transaction(client).await?;
    let current = read_revision(&tx).await?;
    if revision > current {
        return Err(StoreError::Revision(format!(
            "revision {revision} is newer than the database's, {current}"
        )));
    }
    if revision < current {
        let oldest = oldest_change(&tx).await?;
        if !log_reaches_back(oldest, revision) {
            let rebuildable = match oldest {
                Some(o) => format!(
                    "the revisions it can rebuild are {} to {current}",
                    o.saturating_sub(1)
                ),
                None => format!("the only revision it can rebuild is the current one, {current}"),
            };
            return Err(StoreError::Revision(format!(
                "revision {revision} is older than the retained change log ({}): {rebuildable}",
                retained_text(oldest)
            )));
        }
    }
    let limits = read_limits(&tx).await?;
    let at = (revision < current).then_some(revision);
    let doc = read_document_as_of(&tx, Tenants::All, at).await?;
    tx.commit().await?;
    Ok((doc, limits))
}

/// The oldest revision the change log (`authz_changes`) still holds, `None` when it is
/// empty.
pub async fn oldest_change(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<Option<u64>, StoreError> {
    let oldest: Option<i64> = tx
        .query_typed_one("SELECT min(revision) FROM authz_changes", &[])
        .await?
        .get(0);
    Ok(oldest.and_then(|o| u64::try_from(o).ok()))
}

/// Whether a change log whose oldest revision is `oldest` ([`oldest_change`]) holds
/// every change after revision `after`. Every revision has change rows (the capture
/// trigger writes them as it takes the revision), and the log is pruned whole
/// revisions oldest first, so it does iff it holds `after + 1`.
pub fn log_reaches_back(oldest: Option<u64>, after: u64) -> bool {
    oldest.is_some_and(|o| o <= after.saturating_add(1))
}

/// `oldest` ([`oldest_change`]) in words, for the messages of callers that find the log
/// does not reach back far enough.
pub fn retained_text(oldest: Option<u64>) -> String {
    match oldest {
        Some(o) => format!("the oldest retained change is at revision {o}"),
        None => "no changes are retained".to_owned(),
    }
}

/// Each table's primary key: what identifies a row across its changes in the log.
const PRIMARY_KEYS: [(&str, &[&str]); 11] = [
    ("tenants", &["id"]),
    ("roles", &["tenant_id", "id"]),
    ("role_includes", &["tenant_id", "role_id", "included"]),
    ("role_permissions", &["tenant_id", "role_id", "permission"]),
    ("role_routes", &["tenant_id", "role_id", "position"]),
    ("endpoints", &["tenant_id", "position"]),
    ("default_roles", &["tenant_id", "role_id"]),
    ("subjects", &["tenant_id", "id"]),
    ("groups", &["tenant_id", "id"]),
    ("group_members", &["tenant_id", "group_id", "subject_id"]),
    ("assignments", &["id"]),
];

/// What a query reads for `table`: the table itself, or with `at`, a subquery giving
/// its rows as they were at revision `at` (see [`export_at`]), under the table's name.
fn source(table: &str, at: Option<u64>) -> String {
    let Some(at) = at else {
        return table.to_owned();
    };
    let key: &[&str] = PRIMARY_KEYS
        .iter()
        .find(|(t, _)| *t == table)
        .map_or(&[], |(_, k)| k);
    let img_key = key
        .iter()
        .map(|k| format!("img ->> '{k}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let first_cols = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("img ->> '{k}' AS k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let matches = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("f.k{i} = cur.\"{k}\"::text"))
        .collect::<Vec<_>>()
        .join(" AND ");
    // The events touching each key after `at`: an old value says the key held it just
    // before; a new value says the key was empty before, unless the same change's old
    // value has the same key (an UPDATE in place), which sorts first.
    format!(
        "(WITH ev AS ( \
             SELECT seq, old AS img, true AS existed FROM authz_changes \
              WHERE revision > {at} AND entity = '{table}' AND old IS NOT NULL \
             UNION ALL \
             SELECT seq, new, false FROM authz_changes \
              WHERE revision > {at} AND entity = '{table}' AND new IS NOT NULL), \
         first AS ( \
             SELECT DISTINCT ON ({img_key}) {first_cols}, img, existed FROM ev \
              ORDER BY {img_key}, seq, existed DESC) \
         SELECT cur.* FROM {table} cur \
          WHERE NOT EXISTS (SELECT 1 FROM first f WHERE {matches}) \
         UNION ALL \
         SELECT r.* FROM first f, jsonb_populate_record(NULL::{table}, f.img) r \
          WHERE f.existed) AS {table}"
    )
}

/// [`read_document_in`] at a past revision (`at`), or now (`None`).
async fn read_document_as_of(
    tx: &tokio_postgres::Transaction<'_>,
    tenants: Tenants<'_>,
    at: Option<u64>,
) -> Result<PolicyDocument, StoreError> {
    let filter = tenants;
    let from = |table: &str| source(table, at);
    let mut doc = PolicyDocument {
        version: 1,
        ..PolicyDocument::default()
    };
    // Tenant id → index in doc.tenants.
    let mut index: HashMap<String, usize> = HashMap::new();
    {
        let rows = stream(
            tx,
            &format!(
                "SELECT id FROM {} WHERE id <> '' AND $ID ORDER BY id",
                from("tenants")
            ),
            &filter,
        )
        .await?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            let id: String = row.get(0);
            index.insert(id.clone(), doc.tenants.len());
            doc.tenants.push(TenantDoc {
                id,
                ..TenantDoc::default()
            });
        }
    }
    // Roles, then their parts, attached by (tenant, role) → position in the role list.
    let mut role_at: HashMap<(String, String), usize> = HashMap::new();
    {
        let rows = stream(
            tx,
            &format!(
                "SELECT tenant_id, id, description FROM {} WHERE $F ORDER BY tenant_id, position",
                from("roles")
            ),
            &filter,
        )
        .await?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            let (tenant, id): (String, String) = (row.get(0), row.get(1));
            let role = RoleDoc {
                id: id.clone(),
                description: row.get(2),
                ..RoleDoc::default()
            };
            if let Some(list) = roles_of(&mut doc, &index, &tenant) {
                role_at.insert((tenant, id), list.len());
                list.push(role);
            }
        }
    }
    macro_rules! each_role_row {
        ($sql:expr, |$role:ident, $row:ident| $body:block) => {{
            let rows = stream(&tx, $sql, &filter).await?;
            pin_mut!(rows);
            while let Some($row) = rows.try_next().await? {
                let (tenant, id): (String, String) = ($row.get(0), $row.get(1));
                let Some(&at) = role_at.get(&(tenant.clone(), id)) else { continue };
                if let Some($role) = roles_of(&mut doc, &index, &tenant).and_then(|l| l.get_mut(at)) $body
            }
        }};
    }
    // Positions need not be unique (a SQL writer may repeat one): ties are broken by
    // the key, so a read is deterministic.
    each_role_row!(
        &format!(
            "SELECT tenant_id, role_id, included FROM {} WHERE $F ORDER BY tenant_id, role_id, position, included",
            from("role_includes")
        ),
        |role, row| {
            role.includes.push(row.get(2));
        }
    );
    each_role_row!(
        &format!(
            "SELECT tenant_id, role_id, permission FROM {} WHERE $F ORDER BY tenant_id, role_id, permission",
            from("role_permissions")
        ),
        |role, row| {
            role.permissions.push(row.get(2));
        }
    );
    each_role_row!(
        &format!(
            "SELECT tenant_id, role_id, methods, path FROM {} WHERE $F ORDER BY tenant_id, role_id, position",
            from("role_routes")
        ),
        |role, row| {
            role.routes.push(RouteDoc {
                methods: row.get(2),
                path: row.get(3),
            });
        }
    );
    {
        let rows = stream(
            tx,
            &format!("SELECT tenant_id, path, methods, roles, public FROM {} WHERE $F ORDER BY tenant_id, position", from("endpoints")),
            &filter,
        )
        .await?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            let tenant: String = row.get(0);
            let e = EndpointDoc {
                path: row.get(1),
                methods: row.get(2),
                roles: row.get(3),
                public: row.get(4),
            };
            if tenant.is_empty() {
                doc.endpoints.push(e);
            } else if let Some(t) = index.get(&tenant).and_then(|&i| doc.tenants.get_mut(i)) {
                t.endpoints.push(e);
            }
        }
    }
    macro_rules! each_tenant_row {
        ($sql:expr, |$t:ident, $row:ident| $body:block) => {{
            let rows = stream(&tx, $sql, &filter).await?;
            pin_mut!(rows);
            while let Some($row) = rows.try_next().await? {
                let tenant: String = $row.get(0);
                if let Some($t) = index.get(&tenant).and_then(|&i| doc.tenants.get_mut(i)) $body
            }
        }};
    }
    each_tenant_row!(
        &format!(
            "SELECT tenant_id, role_id FROM {} WHERE $F ORDER BY tenant_id, position, role_id",
            from("default_roles")
        ),
        |t, row| {
            t.default_roles.push(row.get(1));
        }
    );
    each_tenant_row!(
        &format!(
            "SELECT tenant_id, id, disabled FROM {} WHERE $F ORDER BY tenant_id, id",
            from("subjects")
        ),
        |t, row| {
            t.subjects.push(SubjectDoc {
                id: row.get(1),
                disabled: row.get(2),
            });
        }
    );
    let mut group_at: HashMap<(String, String), usize> = HashMap::new();
    each_tenant_row!(
        &format!(
            "SELECT tenant_id, id FROM {} WHERE $F ORDER BY tenant_id, position",
            from("groups")
        ),
        |t, row| {
            let id: String = row.get(1);
            group_at.insert((t.id.clone(), id.clone()), t.groups.len());
            t.groups.push(GroupDoc {
                id,
                members: Vec::new(),
            });
        }
    );
    each_tenant_row!(
        &format!(
            "SELECT tenant_id, group_id, subject_id FROM {} WHERE $F ORDER BY tenant_id, group_id, subject_id",
            from("group_members")
        ),
        |t, row| {
            let group: String = row.get(1);
            if let Some(g) = group_at
                .get(&(t.id.clone(), group))
                .and_then(|&i| t.groups.get_mut(i))
            {
                g.members.push(row.get(2));
            }
        }
    );
    each_tenant_row!(
        &format!(
            "SELECT tenant_id, subject_id, group_id, role_id, scope FROM {} WHERE $F ORDER BY tenant_id, id",
            from("assignments")
        ),
        |t, row| {
            t.assignments.push(AssignmentDoc {
                subject: row.get(1),
                group: row.get(2),
                role: row.get(3),
                scope: row.get(4),
            });
        }
    );
    Ok(doc)
}

/// The role list a row of `tenant` belongs to: the built-in roles for `""`.
fn roles_of<'d>(
    doc: &'d mut PolicyDocument,
    index: &HashMap<String, usize>,
    tenant: &str,
) -> Option<&'d mut Vec<RoleDoc>> {
    if tenant.is_empty() {
        Some(&mut doc.roles)
    } else {
        index
            .get(tenant)
            .and_then(|&i| doc.tenants.get_mut(i))
            .map(|t| &mut t.roles)
    }
}

/// Streams a query; `$F` (or `$ID` for the `tenants` table) in `sql` becomes the tenant
/// condition.
async fn stream(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    filter: &Tenants<'_>,
) -> Result<tokio_postgres::RowStream, StoreError> {
    let sql = sql
        .replace("$F", &filter.condition("tenant_id"))
        .replace("$ID", &filter.condition("id"));
    use tokio_postgres::types::{ToSql, Type};
    let list;
    let params: Vec<(&(dyn ToSql + Sync), Type)> = match filter {
        Tenants::All => Vec::new(),
        Tenants::Only(t) => {
            list = t.to_vec();
            vec![(&list, Type::TEXT_ARRAY)]
        }
        Tenants::Between(a, b) => vec![(a, Type::TEXT), (b, Type::TEXT)],
    };
    Ok(tx.query_typed_raw(&sql, params).await?)
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, want) in [
            (
                "postgres://authz:s3cret@db:5432/authz",
                "postgres://authz:***@db:5432/authz",
            ),
            (
                "postgresql://authz:p%40ss@db/authz?sslmode=require",
                "postgresql://authz:***@db/authz?sslmode=require",
            ),
            ("postgres://authz@db/authz", "postgres://authz@db/authz"),
            ("postgres://db/authz", "postgres://db/authz"),
            (
                "postgres://db/authz?user=a&password=s3cret&sslmode=require",
                "postgres://db/authz?user=a&password=***&sslmode=require",
            ),
            (
                "host=db user=authz password=s3cret dbname=authz",
                "host=db user=authz password=*** dbname=authz",
            ),
            (
                "host=db password='s3 cret' dbname=authz",
                "host=db password=*** dbname=authz",
            ),
            ("host=db dbname=mypassword=x", "host=db dbname=mypassword=x"),
            (
                "host=db password = s3cret dbname=authz",
                "host=db password = *** dbname=authz",
            ),
            (
                "host=db PASSWORD=s3cret dbname=authz",
                "host=db PASSWORD=*** dbname=authz",
            ),
            (
                "postgres://db/authz?PassWord=s3cret",
                "postgres://db/authz?PassWord=***",
            ),
            (
                "host=db password='s3 \\' cret' dbname=authz",
                "host=db password=*** dbname=authz",
            ),
            ("password=s3cret", "password=***"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
            assert!(!redact_url(url).contains("s3"), "{url}");
        }
    }
}
