//! Policy documents ↔ PostgreSQL: [`apply`] makes the database match a document,
//! [`export`] reads the database back as one.
//!
//! # What `apply` changes
//! The built-in roles and the global endpoint table (the pseudo-tenant `''`) are made to
//! match the document's, and so is every tenant the document names (created if missing).
//! Tenants the document does not name are left alone. Everything happens in one
//! transaction, and only rows that differ are written: applying the same document twice
//! writes nothing the second time, so the capture trigger bumps no revision.
//!
//! # How the diff works
//! Both sides become normalized rows, table by table (`TABLES`): the document through
//! `Desired`, the database through the same columns, read for `''` and the named
//! tenants only. A row is identified by its key columns, the table's natural key (never a
//! serial: role and group `position`s and assignment ids follow insertion order); the
//! other columns are its value. Keys only in the database are DELETEd, children before
//! parents; keys on both sides whose value differs are UPDATEd (a role's description, a
//! subject's `disabled`, a list entry's position or content); keys only in the document
//! are INSERTed, parents before children and in document order, so new roles, groups and
//! assignments get serials in document order. Unchanged assignments keep their ids.
//! References between rows are by id and checked by the schema's deferred validation
//! triggers at commit, so deleting a role together with its references passes, and a
//! change that would leave another tenant naming a removed built-in role is refused
//! with the database's message.
//!
//! # Concurrency
//! The transaction starts by locking the `authz_state` row. Every captured write takes
//! that lock before it can commit (the capture trigger bumps the revision), so no other
//! write commits between this transaction's reads and its writes: the diff is computed
//! against the state it is applied to, and concurrent applies take turns (the later ones
//! find less or nothing to do). The capture trigger runs at the end of a statement, so a
//! writer may hold row locks while it waits for `authz_state`; if this apply needs one of
//! those rows, PostgreSQL reports a deadlock and aborts one of the two, which may simply
//! be retried.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt, pin_mut};
use serde_json::{Map, Value};
use tokio_postgres::{Client, Transaction, error::SqlState, types::ToSql};

use super::postgres::{StoreError, Tenants, read_document};
use crate::policy::{
    CompileError, PolicyDocument,
    source::{EndpointDoc, RoleDoc, TenantDoc},
};

/// Why applying or exporting a document failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The document does not compile; nothing was written.
    #[error(transparent)]
    Invalid(#[from] CompileError),
    /// The database refused the change (a key, a check or a validation trigger); nothing
    /// was written. The message is the database's.
    #[error("the database rejected the change: {message}")]
    Rejected {
        /// The database's message, with its detail when it gave one.
        message: String,
    },
    /// The database cannot be reached, the connection broke, or the schema is missing.
    #[error("database unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
    },
    /// The apply would delete or overwrite rows whose last write did not come from a
    /// document apply (the admin API, SQL), or re-create rows those deleted, and was not
    /// forced; nothing was written.
    #[error(
        "the apply would delete or overwrite {} rows written through the admin API or SQL, not by a document apply, or re-create rows they deleted: {}; apply with --force (ApplyPolicy: `force`) to do it anyway",
        rows.len(),
        listed(rows)
    )]
    Protected {
        /// Each row, as `table (key, ...)`, with `: deleted at revision N` for a row to
        /// be re-created. The message names the first 20 and counts the rest.
        rows: Vec<String>,
    },
    /// The database failed the operation for another reason.
    #[error("database: {message}")]
    Db {
        /// What went wrong.
        message: String,
    },
}

/// How many protected rows an error message lists by name.
const LISTED_ROWS: usize = 20;

/// The first [`LISTED_ROWS`] rows, joined with `; `, then how many more there are.
fn listed(rows: &[String]) -> String {
    let mut out = rows
        .iter()
        .take(LISTED_ROWS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if rows.len() > LISTED_ROWS {
        out.push_str(&format!("; and {} more", rows.len() - LISTED_ROWS));
    }
    out
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No server error: the connection failed or closed.
            return SyncError::Unavailable { message: chain(&e) };
        };
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            message = format!("{message} ({detail})");
        }
        let code = db.code();
        let class = code.code().get(..2).unwrap_or_default();
        if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_FUNCTION {
            SyncError::Unavailable {
                message: format!("{message}; is the schema migrated? run `authzd migrate`"),
            }
        } else if matches!(class, "23" | "22") || *code == SqlState::RAISE_EXCEPTION {
            // 23: integrity constraint violation (keys, checks and the validation
            // triggers' RAISEs); 22: data exception (a value the column cannot hold).
            SyncError::Rejected { message }
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            // A role without the rights for this command: a configuration mistake, not
            // a failure of ours.
            SyncError::Rejected {
                message: format!(
                    "{message}; this database role may not do this (deploy/README.md lists the rights each command needs)"
                ),
            }
        } else if matches!(class, "08" | "53" | "57" | "28" | "3D") {
            // Connection, resources, operator intervention, authentication, no such
            // database.
            SyncError::Unavailable { message }
        } else {
            SyncError::Db { message }
        }
    }
}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => e.into(),
            StoreError::Pool(_) => SyncError::Unavailable {
                message: e.to_string(),
            },
            other => SyncError::Db {
                message: other.to_string(),
            },
        }
    }
}

/// An error and its causes, joined with `: ` (tokio-postgres puts the cause, such as
/// "connection refused", in the source chain).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// Rows written to one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Rows inserted.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
}

impl RowCounts {
    /// Rows written in all.
    pub fn total(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }

    fn add(&mut self, o: RowCounts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
    }
}

/// What [`apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// The revision the database was at before.
    pub previous_revision: u64,
    /// The new revision, or `None` if nothing differed and nothing was written.
    pub revision: Option<u64>,
    /// Rows written per table, for every table, parents first: `tenants`, `roles`,
    /// `role_includes`, `role_permissions`, `role_routes`, `endpoints`, `default_roles`,
    /// `subjects`, `groups`, `group_members`, `assignments`.
    pub tables: Vec<(&'static str, RowCounts)>,
}

impl ApplyReport {
    /// Rows written over all tables.
    pub fn total(&self) -> RowCounts {
        let mut t = RowCounts::default();
        for (_, c) in &self.tables {
            t.add(*c);
        }
        t
    }

    /// Rows written to one table (zero for an unknown name).
    pub fn table(&self, name: &str) -> RowCounts {
        self.tables
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// The revision the database is at now.
    pub fn current_revision(&self) -> u64 {
        self.revision.unwrap_or(self.previous_revision)
    }
}

/// Makes the database match `doc` (see the module documentation); `file` names the
/// document in errors. The document is compiled first, held to the database's own limits
/// (`authz_limits`), and refused before anything is written if it is invalid.
pub async fn apply(
    client: &mut Client,
    doc: &PolicyDocument,
    file: &str,
) -> Result<ApplyReport, SyncError> {
    apply_with(client, doc, file, false).await
}

/// [`apply`]; with `force`, rows written through the admin API or SQL are deleted or
/// overwritten too, and rows they deleted are re-created (without, the apply refuses
/// with [`SyncError::Protected`]).
pub async fn apply_with(
    client: &mut Client,
    doc: &PolicyDocument,
    file: &str,
    force: bool,
) -> Result<ApplyReport, SyncError> {
    let tx = client.transaction().await?;
    let limits = super::postgres::read_limits(&tx).await?;
    crate::policy::compile_with(doc, file, 0, limits)?;
    let report = apply_in(&tx, doc, force).await?;
    if report.revision.is_some() {
        // The deferred validation triggers run here; a refusal rolls everything back.
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(report)
}

/// [`apply`] inside a transaction the caller owns and commits, for a document the caller
/// has compiled.
pub(crate) async fn apply_in(
    tx: &Transaction<'_>,
    doc: &PolicyDocument,
    force: bool,
) -> Result<ApplyReport, SyncError> {
    // INVARIANT: nothing else commits a captured write until this transaction ends (see
    // "Concurrency" above), so the state read below is the state written to.
    let previous: i64 = tx
        .query_one("SELECT revision FROM authz_state FOR UPDATE", &[])
        .await?
        .try_get(0)?;
    // Rows this transaction writes are the document's (migration V5's origin column).
    tx.batch_execute("SET LOCAL authz.origin = 'document'")
        .await?;
    let names: Vec<String> = doc.tenants.iter().map(|t| t.id.clone()).collect();
    let desired = Desired::of(doc);
    let mut tables = Vec::with_capacity(TABLES.len());
    let mut diffs = Vec::with_capacity(TABLES.len());
    for (table, want) in TABLES.iter().zip(desired.tables()) {
        let have = read_rows(tx, table, &names).await?;
        diffs.push(diff(want, have));
    }
    if !force {
        let mut protected = Vec::new();
        // Deleting such a row would silently undo that write; so would overwriting a
        // subject's `disabled` the admin API set (an incident response's disable), or a
        // rule's or an endpoint entry's content at a position the admin API wrote.
        // Other updates only move a row in its list (positions) or change a
        // description.
        // Re-creating a row the admin API deleted (a revoked grant, a removed member)
        // would silently undo that deletion (migration V6's `authz_deleted`).
        let tracks_deletions = has_table(tx, "authz_deleted").await?;
        for (table, d) in TABLES.iter().zip(&diffs) {
            protected.extend(not_from_documents(tx, table, &d.delete).await?);
            if matches!(table.name, "subjects" | "role_routes" | "endpoints") {
                protected.extend(not_from_documents(tx, table, &d.update).await?);
            }
            if tracks_deletions {
                protected.extend(deleted_outside_documents(tx, table, &d.insert).await?);
            }
        }
        if !protected.is_empty() {
            return Err(SyncError::Protected { rows: protected });
        }
    }
    // Deletes from children to parents, so no delete cascades behind the counts' back.
    let mut counts = vec![RowCounts::default(); TABLES.len()];
    for ((table, d), c) in TABLES.iter().zip(&diffs).zip(&mut counts).rev() {
        c.deleted = write(tx, table, Op::Delete, &d.delete).await?;
    }
    for ((table, d), c) in TABLES.iter().zip(&diffs).zip(&mut counts) {
        c.updated = write(tx, table, Op::Update, &d.update).await?;
        c.inserted = write(tx, table, Op::Insert, &d.insert).await?;
    }
    for (table, c) in TABLES.iter().zip(counts) {
        tables.push((table.name, c));
    }
    let written = tables.iter().any(|(_, c)| c.total() > 0);
    let revision = if written {
        let r: i64 = tx
            .query_one("SELECT revision FROM authz_state", &[])
            .await?
            .try_get(0)?;
        Some(u64::try_from(r).unwrap_or(0))
    } else {
        None
    };
    Ok(ApplyReport {
        previous_revision: u64::try_from(previous).unwrap_or(0),
        revision,
        tables,
    })
}

/// Reads the built-in section and the given tenants (every tenant for `None`) as a
/// document, with the revision it reflects, from one consistent snapshot.
pub async fn export(
    client: &mut Client,
    tenants: Option<&[String]>,
) -> Result<(u64, PolicyDocument), SyncError> {
    let which = match tenants {
        None => Tenants::All,
        Some(t) => Tenants::Only(t),
    };
    Ok(read_document(client, which).await?)
}

/// The whole current policy (every tenant) as a document, with the revision it reflects
/// and the limits the database holds it to, from one consistent snapshot: what
/// `authzd test --database-url` and `authzd diff now` compile.
pub async fn export_current(
    client: &mut Client,
) -> Result<(u64, PolicyDocument, crate::policy::Limits), SyncError> {
    use crate::store::postgres::{
        read_document_in, read_limits, read_revision, snapshot_transaction,
    };
    let tx = snapshot_transaction(client).await?;
    let revision = read_revision(&tx).await?;
    let limits = read_limits(&tx).await?;
    let doc = read_document_in(&tx, Tenants::All).await?;
    tx.commit().await?;
    Ok((revision, doc, limits))
}

// ------------------------------------------------------------------- rows and tables

/// A column's type.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `text NOT NULL`.
    Text,
    /// `text`, nullable.
    OptText,
    /// `int`.
    Int,
    /// `boolean`.
    Bool,
    /// `text[]`.
    List,
}

impl Kind {
    fn sql(self) -> &'static str {
        match self {
            Kind::Text | Kind::OptText => "text",
            Kind::Int => "int",
            Kind::Bool => "boolean",
            Kind::List => "text[]",
        }
    }
}

/// A column: name and type.
#[derive(Debug)]
pub(crate) struct Col(&'static str, Kind);

/// A table as the diff sees it: the key columns identify a row, the value columns are
/// what an UPDATE may change. Serial columns (`roles.position`, `groups.position`,
/// `assignments.id`) are left to their defaults.
#[derive(Debug)]
pub(crate) struct Table {
    /// Table name.
    pub(crate) name: &'static str,
    key: &'static [Col],
    value: &'static [Col],
}

impl Table {
    fn columns(&self) -> impl Iterator<Item = &Col> {
        self.key.iter().chain(self.value)
    }

    /// `"a", "b"` for every column.
    pub(crate) fn column_list(&self) -> String {
        self.columns()
            .map(|c| format!("\"{}\"", c.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

use Kind::{Bool, Int, List, OptText, Text};

/// Every table, parents before children (the insert order).
pub(crate) const TABLES: [Table; 11] = [
    Table {
        name: "tenants",
        key: &[Col("id", Text)],
        value: &[],
    },
    Table {
        name: "roles",
        key: &[Col("tenant_id", Text), Col("id", Text)],
        value: &[Col("description", Text)],
    },
    Table {
        name: "role_includes",
        key: &[
            Col("tenant_id", Text),
            Col("role_id", Text),
            Col("included", Text),
        ],
        value: &[Col("position", Int)],
    },
    Table {
        name: "role_permissions",
        key: &[
            Col("tenant_id", Text),
            Col("role_id", Text),
            Col("permission", Text),
        ],
        value: &[],
    },
    Table {
        name: "role_routes",
        key: &[
            Col("tenant_id", Text),
            Col("role_id", Text),
            Col("position", Int),
        ],
        value: &[Col("methods", List), Col("path", Text)],
    },
    Table {
        name: "endpoints",
        key: &[Col("tenant_id", Text), Col("position", Int)],
        value: &[
            Col("path", Text),
            Col("methods", List),
            Col("roles", List),
            Col("public", Bool),
        ],
    },
    Table {
        name: "default_roles",
        key: &[Col("tenant_id", Text), Col("role_id", Text)],
        value: &[Col("position", Int)],
    },
    Table {
        name: "subjects",
        key: &[Col("tenant_id", Text), Col("id", Text)],
        value: &[Col("disabled", Bool)],
    },
    Table {
        name: "groups",
        key: &[Col("tenant_id", Text), Col("id", Text)],
        value: &[],
    },
    Table {
        name: "group_members",
        key: &[
            Col("tenant_id", Text),
            Col("group_id", Text),
            Col("subject_id", Text),
        ],
        value: &[],
    },
    Table {
        name: "assignments",
        key: &[
            Col("tenant_id", Text),
            Col("subject_id", OptText),
            Col("group_id", OptText),
            Col("role_id", Text),
            Col("scope", Text),
        ],
        value: &[],
    },
];

/// One column value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Val {
    /// SQL NULL (a nullable text column).
    Null,
    /// Text.
    Text(String),
    /// An integer (list positions).
    Int(i32),
    /// A boolean.
    Bool(bool),
    /// A text array.
    List(Vec<String>),
}

impl Val {
    fn json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Text(s) => Value::String(s.clone()),
            Val::Int(i) => Value::from(*i),
            Val::Bool(b) => Value::Bool(*b),
            Val::List(l) => Value::Array(l.iter().cloned().map(Value::String).collect()),
        }
    }

    /// Appends the value in COPY text format.
    fn copy_text(&self, out: &mut Vec<u8>) {
        match self {
            Val::Null => out.extend_from_slice(b"\\N"),
            Val::Text(s) => copy_escape(s, out),
            Val::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Val::Bool(b) => out.push(if *b { b't' } else { b'f' }),
            Val::List(l) => {
                // An array literal, `{"a","b"}`, then escaped for COPY like any text.
                let mut lit = String::from("{");
                for (i, s) in l.iter().enumerate() {
                    if i > 0 {
                        lit.push(',');
                    }
                    lit.push('"');
                    for c in s.chars() {
                        if c == '"' || c == '\\' {
                            lit.push('\\');
                        }
                        lit.push(c);
                    }
                    lit.push('"');
                }
                lit.push('}');
                copy_escape(&lit, out);
            }
        }
    }
}

fn copy_escape(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

fn text(s: &str) -> Val {
    Val::Text(s.to_owned())
}

fn opt(s: &Option<String>) -> Val {
    s.as_deref().map_or(Val::Null, text)
}

fn list(l: &[String]) -> Val {
    Val::List(l.to_vec())
}

/// 1-based list position.
fn pos(i: usize) -> Val {
    Val::Int(i32::try_from(i + 1).unwrap_or(i32::MAX))
}

/// A row: key columns, then value columns.
type Row = (Vec<Val>, Vec<Val>);

/// One table's rows in document order, unique by key (the first occurrence wins).
#[derive(Debug, Default)]
pub(crate) struct Rows {
    rows: Vec<Row>,
    keys: HashSet<Vec<Val>>,
}

impl Rows {
    fn push(&mut self, key: Vec<Val>, value: Vec<Val>) {
        if self.keys.insert(key.clone()) {
            self.rows.push((key, value));
        }
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The rows in COPY text format, columns in [`Table::column_list`] order.
    pub(crate) fn copy_text(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rows.len() * 64);
        for (k, v) in &self.rows {
            for (i, val) in k.iter().chain(v).enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                val.copy_text(&mut out);
            }
            out.push(b'\n');
        }
        out
    }
}

/// A document as rows, one [`Rows`] per table.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    tenants: Rows,
    roles: Rows,
    role_includes: Rows,
    role_permissions: Rows,
    role_routes: Rows,
    endpoints: Rows,
    default_roles: Rows,
    subjects: Rows,
    groups: Rows,
    group_members: Rows,
    assignments: Rows,
}

impl Desired {
    /// The rows of the built-in section and of every tenant of `doc`.
    pub(crate) fn of(doc: &PolicyDocument) -> Self {
        let mut d = Desired::default();
        d.add_roles("", &doc.roles);
        d.add_endpoints("", &doc.endpoints);
        for t in &doc.tenants {
            d.add_tenant(t);
        }
        d
    }

    /// The tables' rows in [`TABLES`] order.
    pub(crate) fn tables(&self) -> [&Rows; 11] {
        [
            &self.tenants,
            &self.roles,
            &self.role_includes,
            &self.role_permissions,
            &self.role_routes,
            &self.endpoints,
            &self.default_roles,
            &self.subjects,
            &self.groups,
            &self.group_members,
            &self.assignments,
        ]
    }

    /// Adds one tenant's rows (the tenant row included).
    pub(crate) fn add_tenant(&mut self, t: &TenantDoc) {
        let tid = t.id.as_str();
        self.tenants.push(vec![text(tid)], vec![]);
        self.add_roles(tid, &t.roles);
        self.add_endpoints(tid, &t.endpoints);
        for (i, r) in dedup(&t.default_roles).into_iter().enumerate() {
            self.default_roles
                .push(vec![text(tid), text(r)], vec![pos(i)]);
        }
        for s in &t.subjects {
            self.subjects
                .push(vec![text(tid), text(&s.id)], vec![Val::Bool(s.disabled)]);
        }
        for g in &t.groups {
            self.groups.push(vec![text(tid), text(&g.id)], vec![]);
            for m in &g.members {
                self.group_members
                    .push(vec![text(tid), text(&g.id), text(m)], vec![]);
            }
        }
        for a in &t.assignments {
            self.assignments.push(
                vec![
                    text(tid),
                    opt(&a.subject),
                    opt(&a.group),
                    text(&a.role),
                    text(&a.scope),
                ],
                vec![],
            );
        }
    }

    fn add_roles(&mut self, tid: &str, roles: &[RoleDoc]) {
        for r in roles {
            let rid = r.id.as_str();
            self.roles
                .push(vec![text(tid), text(rid)], vec![text(&r.description)]);
            for (i, inc) in dedup(&r.includes).into_iter().enumerate() {
                self.role_includes
                    .push(vec![text(tid), text(rid), text(inc)], vec![pos(i)]);
            }
            for p in &r.permissions {
                self.role_permissions
                    .push(vec![text(tid), text(rid), text(p)], vec![]);
            }
            for (i, route) in r.routes.iter().enumerate() {
                self.role_routes.push(
                    vec![text(tid), text(rid), pos(i)],
                    vec![list(&route.methods), text(&route.path)],
                );
            }
        }
    }

    fn add_endpoints(&mut self, tid: &str, endpoints: &[EndpointDoc]) {
        for (i, e) in endpoints.iter().enumerate() {
            self.endpoints.push(
                vec![text(tid), pos(i)],
                vec![
                    text(&e.path),
                    list(&e.methods),
                    list(&e.roles),
                    Val::Bool(e.public),
                ],
            );
        }
    }
}

/// A list without repeats, first occurrences in order (`includes: [a, a]` is one row;
/// positions are counted after dropping the repeat, so an export applies unchanged).
fn dedup(l: &[String]) -> Vec<&str> {
    let mut seen = HashSet::new();
    l.iter()
        .map(String::as_str)
        .filter(|s| seen.insert(*s))
        .collect()
}

/// Reads a table's rows of the built-in section and of `tenants`.
async fn read_rows(
    tx: &Transaction<'_>,
    table: &Table,
    tenants: &[String],
) -> Result<HashMap<Vec<Val>, Vec<Val>>, SyncError> {
    let filter = if table.name == "tenants" {
        "id = ANY($1)"
    } else {
        "(tenant_id = '' OR tenant_id = ANY($1))"
    };
    let sql = format!(
        "SELECT {} FROM \"{}\" WHERE {filter}",
        table.column_list(),
        table.name
    );
    let params: [&(dyn ToSql + Sync); 1] = [&tenants];
    let rows = tx.query_raw(&sql, params).await?;
    pin_mut!(rows);
    let mut out = HashMap::new();
    while let Some(row) = rows.try_next().await? {
        let mut vals = Vec::with_capacity(table.key.len() + table.value.len());
        for (i, c) in table.columns().enumerate() {
            vals.push(match c.1 {
                Text => Val::Text(row.try_get(i)?),
                OptText => opt(&row.try_get(i)?),
                Int => Val::Int(row.try_get(i)?),
                Bool => Val::Bool(row.try_get(i)?),
                List => Val::List(row.try_get(i)?),
            });
        }
        let value = vals.split_off(table.key.len());
        out.insert(vals, value);
    }
    Ok(out)
}

/// What to write to one table.
#[derive(Debug, Default)]
struct Diff {
    delete: Vec<Row>,
    update: Vec<Row>,
    insert: Vec<Row>,
}

fn diff(want: &Rows, mut have: HashMap<Vec<Val>, Vec<Val>>) -> Diff {
    let mut d = Diff::default();
    for (k, v) in &want.rows {
        match have.remove(k) {
            None => d.insert.push((k.clone(), v.clone())),
            Some(old) if old != *v => d.update.push((k.clone(), v.clone())),
            Some(_) => {}
        }
    }
    // What is left exists only in the database; sorted, so the writes are deterministic.
    d.delete = have.into_iter().collect();
    d.delete.sort();
    d
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert,
    Update,
    Delete,
}

/// Rows per statement: big enough to amortize the round trip, small enough to keep the
/// parameter modest.
const CHUNK: usize = 5_000;

/// Writes rows in chunks, each chunk one statement over `jsonb_to_recordset`; returns
/// the rows affected.
/// The rows among `rows` (keys of `table`) whose last write was not a document apply's
/// (`origin = 'api'`, migration V5), as `table (key, ...)`. None for `tenants` (no
/// origin) or a schema without the column.
async fn not_from_documents(
    tx: &Transaction<'_>,
    table: &Table,
    rows: &[Row],
) -> Result<Vec<String>, SyncError> {
    if rows.is_empty() || table.name == "tenants" {
        return Ok(Vec::new());
    }
    let has_origin: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_schema = current_schema()
                              AND table_name = $1 AND column_name = 'origin')",
            &[&table.name],
        )
        .await?
        .try_get(0)?;
    if !has_origin {
        return Ok(Vec::new());
    }
    let defs = table
        .key
        .iter()
        .map(|c| format!("\"{}\" {}", c.0, c.1.sql()))
        .collect::<Vec<_>>()
        .join(", ");
    let matches = table
        .key
        .iter()
        .map(|c| match c.1 {
            OptText => format!("cur.\"{0}\" IS NOT DISTINCT FROM x.\"{0}\"", c.0),
            _ => format!("cur.\"{0}\" = x.\"{0}\"", c.0),
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let shown = table
        .key
        .iter()
        .map(|c| format!("coalesce(cur.\"{}\"::text, '')", c.0))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let name = table.name;
    let sql = format!(
        "SELECT {shown} FROM \"{name}\" AS cur JOIN jsonb_to_recordset($1::jsonb) AS x({defs}) \
         ON {matches} WHERE cur.origin <> 'document' ORDER BY 1"
    );
    let statement = tx.prepare(&sql).await?;
    let mut out = Vec::new();
    for chunk in rows.chunks(CHUNK) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|(k, _)| {
                let mut obj = Map::new();
                for (c, val) in table.key.iter().zip(k) {
                    obj.insert(c.0.to_owned(), val.json());
                }
                Value::Object(obj)
            })
            .collect();
        let param = Value::Array(items);
        for row in tx.query(&statement, &[&param]).await? {
            let key: String = row.try_get(0)?;
            out.push(format!("{name} ({key})"));
        }
    }
    Ok(out)
}

/// Whether the schema has `table` (a migration may not have run yet).
async fn has_table(tx: &Transaction<'_>, table: &str) -> Result<bool, SyncError> {
    Ok(tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .try_get(0)?)
}

/// The rows of `rows` (to be inserted) whose key the admin API or SQL deleted and no
/// write has re-created since (migration V6's `authz_deleted`), each as
/// `table (key, ...): deleted at revision N`.
async fn deleted_outside_documents(
    tx: &Transaction<'_>,
    table: &Table,
    rows: &[Row],
) -> Result<Vec<String>, SyncError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The key as `authz_natural_key` builds it: the key columns by name, JSON-typed.
    let shown = table
        .key
        .iter()
        .map(|c| format!("coalesce(d.key ->> '{}', '')", c.0))
        .collect::<Vec<_>>()
        .join(" || ', ' || ");
    let statement = tx
        .prepare(&format!(
            "SELECT {shown}, d.revision FROM authz_deleted d \
             JOIN jsonb_array_elements($2::jsonb) AS x(key) ON d.key = x.key \
             WHERE d.entity = $1 ORDER BY 1"
        ))
        .await?;
    let name = table.name;
    let mut out = Vec::new();
    for chunk in rows.chunks(CHUNK) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|(k, _)| {
                let mut obj = Map::new();
                for (c, val) in table.key.iter().zip(k) {
                    obj.insert(c.0.to_owned(), val.json());
                }
                Value::Object(obj)
            })
            .collect();
        let param = Value::Array(items);
        for row in tx.query(&statement, &[&name, &param]).await? {
            let key: String = row.try_get(0)?;
            let revision: i64 = row.try_get(1)?;
            out.push(format!("{name} ({key}): deleted at revision {revision}"));
        }
    }
    Ok(out)
}

async fn write(
    tx: &Transaction<'_>,
    table: &Table,
    op: Op,
    rows: &[Row],
) -> Result<u64, SyncError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let defs = |cols: &mut dyn Iterator<Item = &Col>| -> String {
        cols.map(|c| format!("\"{}\" {}", c.0, c.1.sql()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let matches = table
        .key
        .iter()
        .map(|c| match c.1 {
            OptText => format!("cur.\"{0}\" IS NOT DISTINCT FROM x.\"{0}\"", c.0),
            _ => format!("cur.\"{0}\" = x.\"{0}\"", c.0),
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let name = table.name;
    let sql = match op {
        Op::Insert => format!(
            "INSERT INTO \"{name}\" ({cols}) SELECT {cols} FROM jsonb_to_recordset($1::jsonb) \
             AS x({defs}, \"ord\" int) ORDER BY \"ord\"",
            cols = table.column_list(),
            defs = defs(&mut table.columns()),
        ),
        Op::Update => format!(
            "UPDATE \"{name}\" AS cur SET {set} FROM jsonb_to_recordset($1::jsonb) AS x({defs}) \
             WHERE {matches}",
            set = table
                .value
                .iter()
                .map(|c| format!("\"{0}\" = x.\"{0}\"", c.0))
                .collect::<Vec<_>>()
                .join(", "),
            defs = defs(&mut table.columns()),
        ),
        Op::Delete => format!(
            "DELETE FROM \"{name}\" AS cur USING jsonb_to_recordset($1::jsonb) AS x({defs}) \
             WHERE {matches}",
            defs = defs(&mut table.key.iter()),
        ),
    };
    let statement = tx.prepare(&sql).await?;
    let cols: Vec<&Col> = match op {
        Op::Delete => table.key.iter().collect(),
        Op::Insert | Op::Update => table.columns().collect(),
    };
    let mut affected = 0;
    for (n, chunk) in rows.chunks(CHUNK).enumerate() {
        let mut items = Vec::with_capacity(chunk.len());
        for (i, (k, v)) in chunk.iter().enumerate() {
            let mut obj = Map::new();
            for (c, val) in cols.iter().zip(k.iter().chain(v)) {
                obj.insert(c.0.to_owned(), val.json());
            }
            if let Op::Insert = op {
                obj.insert("ord".to_owned(), Value::from(n * CHUNK + i));
            }
            items.push(Value::Object(obj));
        }
        let param = Value::Array(items);
        affected += tx.execute(&statement, &[&param]).await?;
    }
    Ok(affected)
}

/// Rows rendered for COPY, one text per table of [`TABLES`]; built off the async
/// runtime (see [`Desired::to_copy`]), written by [`copy_rows`].
#[derive(Debug)]
pub(crate) struct CopyBatch {
    texts: [(Bytes, usize); 11],
}

impl Desired {
    /// The rows in COPY text format.
    pub(crate) fn to_copy(&self) -> CopyBatch {
        CopyBatch {
            texts: self
                .tables()
                .map(|rows| (Bytes::from(rows.copy_text()), rows.len())),
        }
    }
}

/// Loads rows with COPY, table by table, parents first. The caller runs this in its own
/// transaction and decides about triggers (the dataset generator disables them); the rows
/// must be new, or COPY fails on a key. Returns the rows written per table.
pub(crate) async fn copy_rows(
    tx: &Transaction<'_>,
    batch: &CopyBatch,
) -> Result<[u64; 11], SyncError> {
    let mut counts = [0u64; 11];
    for ((table, (text, rows)), count) in TABLES.iter().zip(&batch.texts).zip(&mut counts) {
        if *rows == 0 {
            continue;
        }
        let sql = format!(
            "COPY \"{}\" ({}) FROM STDIN",
            table.name,
            table.column_list()
        );
        let sink = tx.copy_in(&sql).await?;
        pin_mut!(sink);
        // Pieces of about 1 MiB, so the server parses while the rest is in flight.
        let mut start = 0;
        while start < text.len() {
            let end = next_line_end(text, start + (1 << 20));
            sink.send(text.slice(start..end)).await?;
            start = end;
        }
        *count = sink.finish().await?;
    }
    Ok(counts)
}

/// The end (exclusive) of the line containing byte `at`, or the end of `text`.
fn next_line_end(text: &[u8], at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    text.get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        .map_or(text.len(), |i| at + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::source::Format;

    fn doc(yaml: &str) -> PolicyDocument {
        PolicyDocument::parse(yaml, Format::Yaml, "t.yaml").unwrap()
    }

    #[test]
    fn rows_are_normalized_and_unique() {
        let d = Desired::of(&doc(
            "version: 1\nroles:\n  - {id: a, includes: [b, b, c], permissions: [p, p]}\n  - {id: b}\n  - {id: c}\n\
             tenants:\n  - id: t\n    default_roles: [a, a]\n    subjects: [{id: s}]\n\
             \x20   groups: [{id: g, members: [s, s]}]\n\
             \x20   assignments: [{subject: s, role: a}, {subject: s, role: a}, {group: g, role: a, scope: x}]\n",
        ));
        assert_eq!(d.tenants.len(), 1);
        assert_eq!(d.roles.len(), 3);
        assert_eq!(d.role_includes.len(), 2);
        assert_eq!(d.role_includes.rows[1].1, vec![Val::Int(2)]);
        assert_eq!(d.role_permissions.len(), 1);
        assert_eq!(d.default_roles.len(), 1);
        assert_eq!(d.group_members.len(), 1);
        assert_eq!(d.assignments.len(), 2);
        assert_eq!(d.assignments.rows[1].0[1], Val::Null);
    }

    #[test]
    fn diff_splits_into_deletes_updates_and_inserts() {
        let mut want = Rows::default();
        want.push(vec![text("keep")], vec![Val::Bool(false)]);
        want.push(vec![text("change")], vec![Val::Bool(true)]);
        want.push(vec![text("new")], vec![Val::Bool(false)]);
        let have = HashMap::from([
            (vec![text("keep")], vec![Val::Bool(false)]),
            (vec![text("change")], vec![Val::Bool(false)]),
            (vec![text("gone")], vec![Val::Bool(false)]),
        ]);
        let d = diff(&want, have);
        assert_eq!(d.insert.len(), 1);
        assert_eq!(
            d.update,
            vec![(vec![text("change")], vec![Val::Bool(true)])]
        );
        assert_eq!(d.delete.len(), 1);
        assert_eq!(d.delete[0].0, vec![text("gone")]);
    }

    #[test]
    fn copy_text_escapes_text_and_arrays() {
        let mut rows = Rows::default();
        rows.push(
            vec![text("a\tb\\c"), Val::Null],
            vec![
                Val::List(vec!["GET".into(), "x\"y".into()]),
                Val::Int(3),
                Val::Bool(true),
            ],
        );
        assert_eq!(
            String::from_utf8(rows.copy_text()).unwrap(),
            "a\\tb\\\\c\t\\N\t{\"GET\",\"x\\\\\"y\"}\t3\tt\n"
        );
    }

    #[test]
    fn pieces_end_at_line_ends() {
        let text = b"ab\ncd\nef\n";
        assert_eq!(next_line_end(text, 0), 3);
        assert_eq!(next_line_end(text, 3), 6);
        assert_eq!(next_line_end(text, 7), 9);
        assert_eq!(next_line_end(text, 20), 9);
    }
}
