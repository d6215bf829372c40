//! The admin API's writes and reads in PostgreSQL.
//!
//! Every write is one transaction: the change, then its audit row (`audit_log`, schema
//! V2) carrying the revision the change committed under, then the commit. The revision
//! is read from `authz_state` inside the transaction after the change: the capture
//! trigger bumped it at the first captured write and holds its row lock until commit,
//! so no other writer can move it in between. A write that changes nothing (an empty
//! default-role list set to empty, say) returns the current revision.
//!
//! Inputs arrive validated (ids, scopes, patterns, methods: `grpc::admin`); references
//! between rows (unknown roles, include cycles, unregistered members) are checked by the
//! schema's keys and deferred validation triggers, whose refusals become
//! [`AdminError::Precondition`] with the database's message. Nothing here knows about
//! gRPC.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{Pool, Transaction};
use serde_json::{Value, json};
use tokio_postgres::error::SqlState;

use super::{
    postgres::StoreError,
    sync::{self, SyncError},
};
use crate::policy::{
    PolicyDocument,
    source::{AssignmentDoc, RoleDoc, RouteDoc},
};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The row to change or delete does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The row to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The change would break a rule of the policy (a built-in role is read-only, an
    /// unknown role, an include cycle, an unregistered member); nothing was written.
    #[error("{0}")]
    Precondition(String),
    /// A policy document does not compile; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A watch asked for changes older than the retained change log.
    #[error("{0}")]
    OutOfRange(String),
    /// The database cannot be reached, or the schema is missing.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database failed the operation for another reason.
    #[error("database: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return AdminError::Unavailable(e.to_string());
        };
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            message = format!("{message} ({detail})");
        }
        let code = db.code();
        let class = code.code().get(..2).unwrap_or_default();
        if *code == SqlState::UNIQUE_VIOLATION {
            AdminError::AlreadyExists(message)
        } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            // `--database-url` names a standby (or a pooler in front of one).
            AdminError::Precondition(format!(
                "{message}: the admin API writes to the primary; this replica's database is read-only (a standby?)"
            ))
        } else if matches!(class, "23" | "22") || *code == SqlState::RAISE_EXCEPTION {
            // 23: keys, checks and the validation triggers' RAISEs; 22: a value the
            // column cannot hold (inputs are validated first, so a rule of the schema).
            AdminError::Precondition(message)
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            // The server's database role may not write: a deployment mistake, not an
            // internal error (which would page someone for a configuration fix).
            AdminError::Precondition(format!(
                "{message}; the admin API needs a database role that may write (deploy/README.md)"
            ))
        } else if *code == SqlState::UNDEFINED_TABLE || matches!(class, "08" | "53" | "57" | "3D") {
            AdminError::Unavailable(message)
        } else {
            AdminError::Db(message)
        }
    }
}

impl From<deadpool_postgres::PoolError> for AdminError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        AdminError::Unavailable(e.to_string())
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => e.into(),
            StoreError::Pool(e) => e.into(),
            other => AdminError::Db(other.to_string()),
        }
    }
}

impl From<SyncError> for AdminError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Invalid(e) => AdminError::Invalid(e.to_string()),
            SyncError::Rejected { message } => AdminError::Precondition(message),
            SyncError::Unavailable { message } => AdminError::Unavailable(message),
            SyncError::Db { message } => AdminError::Db(message),
            e @ SyncError::Protected { .. } => AdminError::Precondition(e.to_string()),
        }
    }
}

/// A role as listed: its definition and whether it is built-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedRole {
    /// The definition.
    pub role: RoleDoc,
    /// Built-in (shared by every tenant, read-only through the admin API).
    pub built_in: bool,
}

/// A group as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedGroup {
    /// Group id.
    pub id: String,
    /// Member ids, sorted.
    pub members: Vec<String>,
}

/// An audit log row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increasing id.
    pub id: i64,
    /// Commit time, RFC 3339 UTC.
    pub at: String,
    /// Who: the admin token's name.
    pub actor: String,
    /// The tenant written; empty for a whole-policy apply.
    pub tenant_id: String,
    /// The operation.
    pub action: String,
    /// The request's values, as JSON text.
    pub detail: String,
    /// The revision the write committed.
    pub revision: u64,
}

/// One row of the change log (`authz_changes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRow {
    /// The revision it committed under.
    pub revision: u64,
    /// The row's tenant; empty for built-in roles and global endpoints.
    pub tenant_id: String,
    /// The table.
    pub entity: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: String,
    /// The row before, as JSON text.
    pub old: Option<String>,
    /// The row after, as JSON text.
    pub new: Option<String>,
}

/// Changes after a revision, read by [`AdminStore::changes_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Every row of the revisions after the one asked for, up to and including `upto`.
    pub rows: Vec<ChangeRow>,
    /// The last revision these rows cover (the one asked for, when nothing is new).
    pub upto: u64,
    /// More revisions are already committed after `upto`.
    pub more: bool,
}

/// A page of items and whether more follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// More items follow the last one.
    pub more: bool,
}

impl<T> Page<T> {
    /// Keeps `size` of `items` fetched with `LIMIT size + 1`.
    fn of(mut items: Vec<T>, size: usize) -> Self {
        let more = items.len() > size;
        items.truncate(size);
        Page { items, more }
    }
}

/// Admin writes and reads over a connection pool.
#[derive(Clone, Debug)]
pub struct AdminStore {
    pool: Pool,
}

/// The audit row of a write: who, which tenant, what.
#[derive(Clone, Copy, Debug)]
pub struct Audit<'a> {
    /// The admin token's name.
    pub actor: &'a str,
    /// The tenant written (empty: the whole policy).
    pub tenant: &'a str,
    /// The operation, e.g. `GrantRole`.
    pub action: &'a str,
}

fn to_u64(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn limit(size: usize) -> i64 {
    i64::try_from(size.saturating_add(1)).unwrap_or(i64::MAX)
}

impl AdminStore {
    /// An admin store over `pool` (see [`super::postgres::pool`]).
    pub fn new(pool: Pool) -> Self {
        AdminStore { pool }
    }

    /// Creates a custom role (and its tenant, if missing).
    pub async fn create_role(
        &self,
        actor: &str,
        tenant: &str,
        role: &RoleDoc,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "CreateRole",
        };
        let detail = json!({ "role": role });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        ensure_tenant(tx, tenant).await?;
        not_built_in(tx, &role.id).await?;
        tx.execute(
            "INSERT INTO roles (tenant_id, id, description) VALUES ($1, $2, $3)",
            &[&tenant, &role.id, &role.description],
        )
        .await
        .map_err(|e| match AdminError::from(e) {
            AdminError::AlreadyExists(_) => AdminError::AlreadyExists(format!(
                "tenant `{tenant}`: role `{}` already exists",
                role.id
            )),
            other => other,
        })?;
        insert_role_parts(tx, tenant, role).await?;
        finish(txn, audit, detail).await
    }

    /// Replaces a custom role's description, includes, permissions and routes.
    pub async fn update_role(
        &self,
        actor: &str,
        tenant: &str,
        role: &RoleDoc,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "UpdateRole",
        };
        let detail = json!({ "role": role });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        not_built_in(tx, &role.id).await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM roles WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                &[&tenant, &role.id],
            )
            .await?;
        if exists.is_none() {
            return Err(role_not_found(tenant, &role.id));
        }
        // Only rows that differ are written: a row this call leaves alone keeps its
        // origin (migration V5), so an update with the same content takes nothing over
        // from the documents that wrote the role.
        tx.execute(
            "UPDATE roles SET description = $3 \
             WHERE tenant_id = $1 AND id = $2 AND description IS DISTINCT FROM $3",
            &[&tenant, &role.id, &role.description],
        )
        .await?;
        update_role_parts(tx, tenant, role).await?;
        finish(txn, audit, detail).await
    }

    /// Deletes a custom role; refused at commit while it is assigned or included.
    pub async fn delete_role(
        &self,
        actor: &str,
        tenant: &str,
        role: &str,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "DeleteRole",
        };
        let detail = json!({ "role_id": role });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        not_built_in(tx, role).await?;
        not_referenced(tx, tenant, role).await?;
        let n = tx
            .execute(
                "DELETE FROM roles WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &role],
            )
            .await?;
        if n == 0 {
            return Err(role_not_found(tenant, role));
        }
        finish(txn, audit, detail).await
    }

    /// Assigns a role to a subject or a group at a scope.
    pub async fn grant(
        &self,
        actor: &str,
        tenant: &str,
        a: &AssignmentDoc,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "GrantRole",
        };
        let detail = json!({ "assignment": a });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        tx.execute(
            "INSERT INTO assignments (tenant_id, subject_id, group_id, role_id, scope) \
                 VALUES ($1, $2, $3, $4, $5)",
            &[&tenant, &a.subject, &a.group, &a.role, &a.scope],
        )
        .await
        .map_err(|e| match AdminError::from(e) {
            AdminError::AlreadyExists(_) => AdminError::AlreadyExists(format!(
                "tenant `{tenant}`: {} already holds role `{}` at `{}`",
                holder(a),
                a.role,
                a.scope
            )),
            other => other,
        })?;
        finish(txn, audit, detail).await
    }

    /// Removes an assignment.
    pub async fn revoke(
        &self,
        actor: &str,
        tenant: &str,
        a: &AssignmentDoc,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "RevokeRole",
        };
        let detail = json!({ "assignment": a });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        let n = tx
            .execute(
                "DELETE FROM assignments WHERE tenant_id = $1 \
                     AND subject_id IS NOT DISTINCT FROM $2 AND group_id IS NOT DISTINCT FROM $3 \
                     AND role_id = $4 AND scope = $5",
                &[&tenant, &a.subject, &a.group, &a.role, &a.scope],
            )
            .await?;
        if n == 0 {
            return Err(AdminError::NotFound(format!(
                "tenant `{tenant}`: {} does not hold role `{}` at `{}`",
                holder(a),
                a.role,
                a.scope
            )));
        }
        finish(txn, audit, detail).await
    }

    /// Registers a member (and its tenant, if missing).
    pub async fn register_subject(
        &self,
        actor: &str,
        tenant: &str,
        subject: &str,
        disabled: bool,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "RegisterSubject",
        };
        let detail = json!({ "subject_id": subject, "disabled": disabled });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        ensure_tenant(tx, tenant).await?;
        tx.execute(
            "INSERT INTO subjects (tenant_id, id, disabled) VALUES ($1, $2, $3)",
            &[&tenant, &subject, &disabled],
        )
        .await
        .map_err(|e| match AdminError::from(e) {
            AdminError::AlreadyExists(_) => AdminError::AlreadyExists(format!(
                "tenant `{tenant}`: subject `{subject}` is already registered"
            )),
            other => other,
        })?;
        finish(txn, audit, detail).await
    }

    /// Disables or enables a member.
    pub async fn set_subject_disabled(
        &self,
        actor: &str,
        tenant: &str,
        subject: &str,
        disabled: bool,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "SetSubjectDisabled",
        };
        let detail = json!({ "subject_id": subject, "disabled": disabled });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        let n = tx
            .execute(
                "UPDATE subjects SET disabled = $3 WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &subject, &disabled],
            )
            .await?;
        if n == 0 {
            return Err(subject_not_found(tenant, subject));
        }
        finish(txn, audit, detail).await
    }

    /// Deletes a member with its assignments and memberships.
    pub async fn delete_subject(
        &self,
        actor: &str,
        tenant: &str,
        subject: &str,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "DeleteSubject",
        };
        let detail = json!({ "subject_id": subject });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        let n = tx
            .execute(
                "DELETE FROM subjects WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &subject],
            )
            .await?;
        if n == 0 {
            return Err(subject_not_found(tenant, subject));
        }
        finish(txn, audit, detail).await
    }

    /// Creates an empty group (and its tenant, if missing).
    pub async fn create_group(
        &self,
        actor: &str,
        tenant: &str,
        group: &str,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "CreateGroup",
        };
        let detail = json!({ "group_id": group });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        ensure_tenant(tx, tenant).await?;
        tx.execute(
            "INSERT INTO groups (tenant_id, id) VALUES ($1, $2)",
            &[&tenant, &group],
        )
        .await
        .map_err(|e| match AdminError::from(e) {
            AdminError::AlreadyExists(_) => AdminError::AlreadyExists(format!(
                "tenant `{tenant}`: group `{group}` already exists"
            )),
            other => other,
        })?;
        finish(txn, audit, detail).await
    }

    /// Deletes a group with its memberships and assignments.
    pub async fn delete_group(
        &self,
        actor: &str,
        tenant: &str,
        group: &str,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "DeleteGroup",
        };
        let detail = json!({ "group_id": group });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        let n = tx
            .execute(
                "DELETE FROM groups WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &group],
            )
            .await?;
        if n == 0 {
            return Err(group_not_found(tenant, group));
        }
        finish(txn, audit, detail).await
    }

    /// Adds a registered member to a group.
    pub async fn add_group_member(
        &self,
        actor: &str,
        tenant: &str,
        group: &str,
        subject: &str,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "AddGroupMember",
        };
        let detail = json!({ "group_id": group, "subject_id": subject });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM groups WHERE tenant_id = $1 AND id = $2",
                &[&tenant, &group],
            )
            .await?;
        if exists.is_none() {
            return Err(group_not_found(tenant, group));
        }
        tx.execute(
            "INSERT INTO group_members (tenant_id, group_id, subject_id) VALUES ($1, $2, $3)",
            &[&tenant, &group, &subject],
        )
        .await
        .map_err(|e| match AdminError::from(e) {
            AdminError::AlreadyExists(_) => AdminError::AlreadyExists(format!(
                "tenant `{tenant}`: subject `{subject}` is already a member of group `{group}`"
            )),
            AdminError::Precondition(_) => AdminError::Precondition(format!(
                "tenant `{tenant}`: subject `{subject}` is not registered"
            )),
            other => other,
        })?;
        finish(txn, audit, detail).await
    }

    /// Removes a member from a group.
    pub async fn remove_group_member(
        &self,
        actor: &str,
        tenant: &str,
        group: &str,
        subject: &str,
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "RemoveGroupMember",
        };
        let detail = json!({ "group_id": group, "subject_id": subject });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        let n = tx
                .execute(
                    "DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2 AND subject_id = $3",
                    &[&tenant, &group, &subject],
                )
                .await?;
        if n == 0 {
            return Err(AdminError::NotFound(format!(
                "tenant `{tenant}`: subject `{subject}` is not a member of group `{group}`"
            )));
        }
        finish(txn, audit, detail).await
    }

    /// Replaces a tenant's default roles (and creates the tenant, if missing).
    pub async fn set_default_roles(
        &self,
        actor: &str,
        tenant: &str,
        roles: &[String],
    ) -> Result<u64, AdminError> {
        let audit = Audit {
            actor,
            tenant,
            action: "SetDefaultRoles",
        };
        let detail = json!({ "role_ids": roles });
        let mut conn = self.pool.get().await?;
        let txn = conn.transaction().await?;
        let tx = &txn;
        ensure_tenant(tx, tenant).await?;
        tx.execute("DELETE FROM default_roles WHERE tenant_id = $1", &[&tenant])
            .await?;
        for (i, role) in roles.iter().enumerate() {
            // 1-based, as `policy apply` numbers list entries (sync.rs), so a list the API
            // wrote and the same list in a document are the same rows.
            let position = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO default_roles (tenant_id, role_id, position) VALUES ($1, $2, $3)",
                &[&tenant, role, &position],
            )
            .await?;
        }
        finish(txn, audit, detail).await
    }

    /// Makes the database match `doc` ([`sync`]'s rules), in one transaction with its
    /// audit row. The document is compiled first and refused if invalid; without
    /// `force`, an apply that would delete or overwrite rows written through the admin
    /// API or SQL, or re-create rows they deleted, is refused (`FAILED_PRECONDITION`
    /// listing them).
    pub async fn apply_policy(
        &self,
        actor: &str,
        doc: PolicyDocument,
        force: bool,
    ) -> Result<sync::ApplyReport, AdminError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        // Held to the database's own limits (authz_limits), as its triggers will be.
        let limits = super::postgres::read_limits(&tx).await?;
        // Compiled on a blocking thread (the document can be as large as a gRPC
        // message), then handed back for the writes.
        let doc = super::off_runtime(move || {
            crate::policy::compile_with(&doc, "document", 0, limits).map(|_| doc)
        })
        .await
        .map_err(|e| AdminError::Db(e.to_string()))?
        .map_err(SyncError::from)?;
        let tenants: Vec<&str> = doc.tenants.iter().map(|t| t.id.as_str()).collect();
        let audit = Audit {
            actor,
            tenant: "",
            action: "ApplyPolicy",
        };
        let report = sync::apply_in(&tx, &doc, force).await?;
        // Recorded even when nothing differed: someone applied this document. A forced
        // apply records what it overrode (the first 100 rows, and how many).
        let detail = if force {
            json!({
                "tenants": tenants,
                "force": true,
                "overridden": report.overridden.iter().take(100).collect::<Vec<_>>(),
                "overridden_count": report.overridden.len(),
            })
        } else {
            json!({ "tenants": tenants })
        };
        finish(tx, audit, detail).await?;
        Ok(report)
    }

    /// Reads the built-in section and the given tenants (every tenant for `None`) as a
    /// document, with the revision it reflects.
    pub async fn export_policy(
        &self,
        tenants: Option<&[String]>,
    ) -> Result<(u64, PolicyDocument), AdminError> {
        let mut conn = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        Ok(sync::export(client, tenants).await?)
    }

    /// The whole current policy as a document, with its revision and the limits the
    /// database holds it to ([`sync::export_current`]).
    pub async fn current_policy(
        &self,
    ) -> Result<(u64, PolicyDocument, crate::policy::Limits), AdminError> {
        let mut conn = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        Ok(sync::export_current(client).await?)
    }

    /// The whole policy at a past `revision` ([`crate::store::postgres::export_at`]), or
    /// now (`None`), with the revision it reflects and the limits the database holds it
    /// to now. [`AdminError::OutOfRange`] when the revision is newer than the database's
    /// or older than the retained change log.
    pub async fn policy_at(
        &self,
        revision: Option<u64>,
    ) -> Result<(u64, PolicyDocument, crate::policy::Limits), AdminError> {
        let Some(revision) = revision else {
            return self.current_policy().await;
        };
        let mut conn = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        match crate::store::postgres::export_at(client, revision).await {
            Ok((doc, limits)) => Ok((revision, doc, limits)),
            Err(StoreError::Revision(message)) => Err(AdminError::OutOfRange(message)),
            Err(e) => Err(e.into()),
        }
    }

    /// The rows an ApplyPolicy of `doc` would refuse to write without `force`
    /// ([`sync::protected_rows`]); nothing is written.
    pub async fn protected_rows(&self, doc: &PolicyDocument) -> Result<Vec<String>, AdminError> {
        let mut conn = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        Ok(sync::protected_rows(client, doc).await?)
    }

    /// Built-in roles and the tenant's custom roles with ids after `after`, by id.
    pub async fn list_roles(
        &self,
        tenant: &str,
        after: &str,
        size: usize,
    ) -> Result<Page<ListedRole>, AdminError> {
        let mut conn = self.pool.get().await?;
        let tx = read_tx(&mut conn).await?;
        // Custom ids never equal built-in ids (a validation trigger), so the id alone
        // identifies a role within the tenant.
        let rows = tx
            .query(
                "SELECT tenant_id, id, description FROM roles \
                 WHERE tenant_id IN ('', $1) AND id > $2 ORDER BY id LIMIT $3",
                &[&tenant, &after, &limit(size)],
            )
            .await?;
        let mut roles = Vec::with_capacity(rows.len());
        for row in &rows {
            let owner: String = row.try_get(0)?;
            roles.push(ListedRole {
                role: RoleDoc {
                    id: row.try_get(1)?,
                    description: row.try_get(2)?,
                    ..RoleDoc::default()
                },
                built_in: owner.is_empty(),
            });
        }
        let page = Page::of(roles, size);
        let mut roles = page.items;
        let ids: Vec<String> = roles.iter().map(|r| r.role.id.clone()).collect();
        let find = |roles: &mut Vec<ListedRole>, id: &str| -> Option<usize> {
            roles.iter().position(|r| r.role.id == id)
        };
        for row in tx
            .query(
                "SELECT role_id, included FROM role_includes \
                 WHERE tenant_id IN ('', $1) AND role_id = ANY($2) ORDER BY role_id, position",
                &[&tenant, &ids],
            )
            .await?
        {
            let id: String = row.try_get(0)?;
            if let Some(r) = find(&mut roles, &id).and_then(|i| roles.get_mut(i)) {
                r.role.includes.push(row.try_get(1)?);
            }
        }
        for row in tx
            .query(
                "SELECT role_id, permission FROM role_permissions \
                 WHERE tenant_id IN ('', $1) AND role_id = ANY($2) ORDER BY role_id, permission",
                &[&tenant, &ids],
            )
            .await?
        {
            let id: String = row.try_get(0)?;
            if let Some(r) = find(&mut roles, &id).and_then(|i| roles.get_mut(i)) {
                r.role.permissions.push(row.try_get(1)?);
            }
        }
        for row in tx
            .query(
                "SELECT role_id, methods, path FROM role_routes \
                 WHERE tenant_id IN ('', $1) AND role_id = ANY($2) ORDER BY role_id, position",
                &[&tenant, &ids],
            )
            .await?
        {
            let id: String = row.try_get(0)?;
            if let Some(r) = find(&mut roles, &id).and_then(|i| roles.get_mut(i)) {
                r.role.routes.push(RouteDoc {
                    methods: row.try_get(1)?,
                    path: row.try_get(2)?,
                });
            }
        }
        tx.commit().await?;
        Ok(Page {
            items: roles,
            more: page.more,
        })
    }

    /// The tenant's members with ids after `after`, by id: `(id, disabled)`.
    pub async fn list_subjects(
        &self,
        tenant: &str,
        after: &str,
        size: usize,
    ) -> Result<Page<(String, bool)>, AdminError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT id, disabled FROM subjects WHERE tenant_id = $1 AND id > $2 \
                 ORDER BY id LIMIT $3",
                &[&tenant, &after, &limit(size)],
            )
            .await?;
        let items = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(Page::of(items, size))
    }

    /// The tenant's groups with ids after `after`, by id, with their members.
    pub async fn list_groups(
        &self,
        tenant: &str,
        after: &str,
        size: usize,
    ) -> Result<Page<ListedGroup>, AdminError> {
        let conn = self.pool.get().await?;
        // One statement, so groups and members come from one snapshot.
        let rows = conn
            .query(
                "SELECT g.id, coalesce(array_agg(m.subject_id ORDER BY m.subject_id) \
                        FILTER (WHERE m.subject_id IS NOT NULL), '{}') \
                 FROM groups g LEFT JOIN group_members m \
                   ON m.tenant_id = g.tenant_id AND m.group_id = g.id \
                 WHERE g.tenant_id = $1 AND g.id > $2 \
                 GROUP BY g.id ORDER BY g.id LIMIT $3",
                &[&tenant, &after, &limit(size)],
            )
            .await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(ListedGroup {
                    id: r.try_get(0)?,
                    members: r.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(Page::of(items, size))
    }

    /// The tenant's assignments with ids after `after`, oldest first: `(id, assignment)`.
    pub async fn list_assignments(
        &self,
        tenant: &str,
        after: i64,
        size: usize,
    ) -> Result<Page<(i64, AssignmentDoc)>, AdminError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT id, subject_id, group_id, role_id, scope FROM assignments \
                 WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&tenant, &after, &limit(size)],
            )
            .await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    AssignmentDoc {
                        subject: r.try_get(1)?,
                        group: r.try_get(2)?,
                        role: r.try_get(3)?,
                        scope: r.try_get(4)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(Page::of(items, size))
    }

    /// The changes committed after revision `after`, at most `max_revisions` revisions
    /// of them, only `tenant`'s (and the shared built-in section's) when given; fails
    /// with [`AdminError::OutOfRange`] when the change log no longer reaches back to
    /// `after` (rows were pruned).
    pub async fn changes_after(
        &self,
        tenant: Option<&str>,
        after: u64,
        max_revisions: u64,
    ) -> Result<Changes, AdminError> {
        let mut conn = self.pool.get().await?;
        // One snapshot: the revision, the oldest retained row and the rows agree.
        let tx = read_tx(&mut conn).await?;
        let current = to_u64(
            tx.query_one("SELECT revision FROM authz_state", &[])
                .await?
                .try_get(0)?,
        );
        if current <= after {
            tx.commit().await?;
            return Ok(Changes {
                rows: Vec::new(),
                upto: after,
                more: false,
            });
        }
        let oldest = super::postgres::oldest_change(&tx).await?;
        if !super::postgres::log_reaches_back(oldest, after) {
            return Err(AdminError::OutOfRange(format!(
                "revision {after} is older than the retained change log ({}); \
                 read the current state (ExportPolicy or the List calls) and watch from \
                 the revision it reflects",
                super::postgres::retained_text(oldest)
            )));
        }
        let upto = current.min(after.saturating_add(max_revisions.max(1)));
        let to_i64 = |r: u64| i64::try_from(r).unwrap_or(i64::MAX);
        let rows = tx
            .query(
                "SELECT revision, tenant_id, entity, op, old::text, new::text FROM authz_changes \
                 WHERE revision > $1 AND revision <= $2 \
                   AND ($3::text IS NULL OR tenant_id IN ('', $3)) \
                 ORDER BY revision, seq",
                &[&to_i64(after), &to_i64(upto), &tenant],
            )
            .await?;
        tx.commit().await?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(ChangeRow {
                    revision: to_u64(r.try_get(0)?),
                    tenant_id: r.try_get(1)?,
                    entity: r.try_get(2)?,
                    op: r.try_get(3)?,
                    old: r.try_get(4)?,
                    new: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(Changes {
            rows,
            upto,
            more: upto < current,
        })
    }

    /// Audit events with ids below `before`, newest first; only `tenant`'s when given.
    pub async fn list_audit(
        &self,
        tenant: Option<&str>,
        before: i64,
        size: usize,
    ) -> Result<Page<AuditEvent>, AdminError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                        actor, tenant_id, action, detail::text, revision \
                 FROM audit_log WHERE ($1::text IS NULL OR tenant_id = $1) AND id < $2 \
                 ORDER BY id DESC LIMIT $3",
                &[&tenant, &before, &limit(size)],
            )
            .await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(AuditEvent {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    tenant_id: r.try_get(3)?,
                    action: r.try_get(4)?,
                    detail: r.try_get(5)?,
                    revision: to_u64(r.try_get(6)?),
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(Page::of(items, size))
    }
}

/// Records `audit` with `detail` and the revision the transaction's change committed
/// under, and commits. Returns the revision.
async fn finish(tx: Transaction<'_>, audit: Audit<'_>, detail: Value) -> Result<u64, AdminError> {
    // After the change: the capture trigger has bumped the revision and holds its lock
    // until commit (see the module documentation).
    let revision: i64 = tx
        .query_one("SELECT revision FROM authz_state", &[])
        .await?
        .try_get(0)?;
    tx.execute(
        "INSERT INTO audit_log (actor, tenant_id, action, detail, revision) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &audit.actor,
            &audit.tenant,
            &audit.action,
            &detail,
            &revision,
        ],
    )
    .await?;
    // The deferred validation triggers run here; a refusal rolls everything back.
    tx.commit().await?;
    Ok(to_u64(revision))
}

/// A read-only transaction seeing one snapshot.
async fn read_tx(
    conn: &mut deadpool_postgres::Object,
) -> Result<Transaction<'_>, tokio_postgres::Error> {
    conn.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// Creates the tenant unless it exists. `DO NOTHING` writes (and captures) nothing for
/// an existing tenant.
async fn ensure_tenant(tx: &Transaction<'_>, tenant: &str) -> Result<(), AdminError> {
    tx.execute(
        "INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&tenant],
    )
    .await?;
    Ok(())
}

/// Refuses to touch a built-in role: they are shared by every tenant and change only
/// with a whole policy document.
async fn not_built_in(tx: &Transaction<'_>, role: &str) -> Result<(), AdminError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM roles WHERE tenant_id = '' AND id = $1",
            &[&role],
        )
        .await?;
    match row {
        Some(_) => Err(AdminError::Precondition(format!(
            "role `{role}` is a built-in role; built-in roles are read-only"
        ))),
        None => Ok(()),
    }
}

/// Refuses to delete a role that assignments, other roles' `includes`, the default
/// roles or endpoint entries still name, saying which (the commit-time validation would
/// refuse it too, but as "role `x` is not defined" of the rows that name it). The
/// validation triggers stay the guard against a reference committed concurrently.
async fn not_referenced(tx: &Transaction<'_>, tenant: &str, role: &str) -> Result<(), AdminError> {
    let row = tx
        .query_one(
            "SELECT \
               (SELECT count(*) FROM assignments WHERE tenant_id = $1 AND role_id = $2), \
               ARRAY(SELECT role_id FROM role_includes \
                     WHERE tenant_id = $1 AND included = $2 ORDER BY role_id LIMIT 5), \
               (SELECT count(*) FROM role_includes WHERE tenant_id = $1 AND included = $2), \
               EXISTS (SELECT 1 FROM default_roles WHERE tenant_id = $1 AND role_id = $2), \
               (SELECT count(*) FROM endpoints WHERE tenant_id = $1 AND $2 = ANY (roles))",
            &[&tenant, &role],
        )
        .await?;
    let assigned: i64 = row.try_get(0)?;
    let includers: Vec<String> = row.try_get(1)?;
    let included: i64 = row.try_get(2)?;
    let default: bool = row.try_get(3)?;
    let endpoints: i64 = row.try_get(4)?;
    let mut uses = Vec::new();
    if assigned > 0 {
        uses.push(format!("assigned {assigned} time{}", plural(assigned)));
    }
    if included > 0 {
        let mut names = includers
            .iter()
            .map(|r| format!("`{r}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let shown = i64::try_from(includers.len()).unwrap_or(i64::MAX);
        if included > shown {
            names.push_str(&format!(" and {} more", included - shown));
        }
        uses.push(format!("included by role{} {names}", plural(included)));
    }
    if default {
        uses.push("a default role".to_owned());
    }
    if endpoints > 0 {
        uses.push(format!(
            "named by {endpoints} endpoint entr{}",
            if endpoints == 1 { "y" } else { "ies" }
        ));
    }
    if uses.is_empty() {
        return Ok(());
    }
    Err(AdminError::Precondition(format!(
        "tenant `{tenant}`: role `{role}` is still in use ({}); remove those references first",
        uses.join(", ")
    )))
}

fn plural(n: i64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Makes a role's includes, permissions and routes those of `role`, writing only the
/// rows that differ (list positions 1-based, as `policy apply` numbers them).
async fn update_role_parts(
    tx: &Transaction<'_>,
    tenant: &str,
    role: &RoleDoc,
) -> Result<(), AdminError> {
    let id = role.id.as_str();
    // Includes: keyed by the included role, with a position.
    let old: HashMap<String, i32> = tx
        .query(
            "SELECT included, position FROM role_includes WHERE tenant_id = $1 AND role_id = $2",
            &[&tenant, &id],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let new: HashMap<&str, i32> = role
        .includes
        .iter()
        .enumerate()
        .map(|(i, inc)| (inc.as_str(), i32::try_from(i + 1).unwrap_or(i32::MAX)))
        .collect();
    for gone in old.keys().filter(|k| !new.contains_key(k.as_str())) {
        tx.execute(
            "DELETE FROM role_includes WHERE tenant_id = $1 AND role_id = $2 AND included = $3",
            &[&tenant, &id, gone],
        )
        .await?;
    }
    for (i, included) in role.includes.iter().enumerate() {
        let position = i32::try_from(i + 1).unwrap_or(i32::MAX);
        match old.get(included) {
            Some(&p) if p == position => {}
            Some(_) => {
                tx.execute(
                    "UPDATE role_includes SET position = $4 \
                     WHERE tenant_id = $1 AND role_id = $2 AND included = $3",
                    &[&tenant, &id, included, &position],
                )
                .await?;
            }
            None => {
                tx.execute(
                    "INSERT INTO role_includes (tenant_id, role_id, included, position) VALUES ($1, $2, $3, $4)",
                    &[&tenant, &id, included, &position],
                )
                .await?;
            }
        }
    }
    // Permissions: a set.
    let old: HashSet<String> = tx
        .query(
            "SELECT permission FROM role_permissions WHERE tenant_id = $1 AND role_id = $2",
            &[&tenant, &id],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let new: HashSet<&str> = role.permissions.iter().map(String::as_str).collect();
    for gone in old.iter().filter(|p| !new.contains(p.as_str())) {
        tx.execute(
            "DELETE FROM role_permissions WHERE tenant_id = $1 AND role_id = $2 AND permission = $3",
            &[&tenant, &id, gone],
        )
        .await?;
    }
    for permission in &role.permissions {
        if !old.contains(permission) {
            tx.execute(
                "INSERT INTO role_permissions (tenant_id, role_id, permission) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&tenant, &id, permission],
            )
            .await?;
        }
    }
    // Routes: by position.
    let old: HashMap<i32, (Vec<String>, String)> = tx
        .query(
            "SELECT position, methods, path FROM role_routes WHERE tenant_id = $1 AND role_id = $2",
            &[&tenant, &id],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let count = i32::try_from(role.routes.len()).unwrap_or(i32::MAX);
    for gone in old.keys().filter(|&&p| p < 1 || p > count) {
        tx.execute(
            "DELETE FROM role_routes WHERE tenant_id = $1 AND role_id = $2 AND position = $3",
            &[&tenant, &id, gone],
        )
        .await?;
    }
    for (i, route) in role.routes.iter().enumerate() {
        let position = i32::try_from(i + 1).unwrap_or(i32::MAX);
        match old.get(&position) {
            Some((m, p)) if *m == route.methods && *p == route.path => {}
            Some(_) => {
                tx.execute(
                    "UPDATE role_routes SET methods = $4, path = $5 \
                     WHERE tenant_id = $1 AND role_id = $2 AND position = $3",
                    &[&tenant, &id, &position, &route.methods, &route.path],
                )
                .await?;
            }
            None => {
                tx.execute(
                    "INSERT INTO role_routes (tenant_id, role_id, position, methods, path) VALUES ($1, $2, $3, $4, $5)",
                    &[&tenant, &id, &position, &route.methods, &route.path],
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn insert_role_parts(
    tx: &Transaction<'_>,
    tenant: &str,
    role: &RoleDoc,
) -> Result<(), AdminError> {
    for (i, included) in role.includes.iter().enumerate() {
        // 1-based, as `policy apply` numbers list entries (sync.rs), so a list the API
        // wrote and the same list in a document are the same rows.
        let position = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO role_includes (tenant_id, role_id, included, position) VALUES ($1, $2, $3, $4)",
            &[&tenant, &role.id, included, &position],
        )
        .await?;
    }
    for permission in &role.permissions {
        tx.execute(
            "INSERT INTO role_permissions (tenant_id, role_id, permission) VALUES ($1, $2, $3)",
            &[&tenant, &role.id, permission],
        )
        .await?;
    }
    for (i, route) in role.routes.iter().enumerate() {
        // 1-based, as `policy apply` numbers list entries (sync.rs), so a list the API
        // wrote and the same list in a document are the same rows.
        let position = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO role_routes (tenant_id, role_id, position, methods, path) VALUES ($1, $2, $3, $4, $5)",
            &[&tenant, &role.id, &position, &route.methods, &route.path],
        )
        .await?;
    }
    Ok(())
}

fn holder(a: &AssignmentDoc) -> String {
    match (&a.subject, &a.group) {
        (Some(s), _) => format!("subject `{s}`"),
        (None, Some(g)) => format!("group `{g}`"),
        (None, None) => "nobody".to_owned(),
    }
}

fn role_not_found(tenant: &str, role: &str) -> AdminError {
    AdminError::NotFound(format!("tenant `{tenant}`: role `{role}` does not exist"))
}

fn subject_not_found(tenant: &str, subject: &str) -> AdminError {
    AdminError::NotFound(format!(
        "tenant `{tenant}`: subject `{subject}` is not registered"
    ))
}

fn group_not_found(tenant: &str, group: &str) -> AdminError {
    AdminError::NotFound(format!("tenant `{tenant}`: group `{group}` does not exist"))
}
