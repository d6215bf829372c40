//! `authz.v1.PolicyAdminService`: translate and validate the request, check the caller's
//! tenant limit, delegate to [`crate::store::admin`], translate back.
//!
//! Authentication happens before any of this, in [`super::auth::AdminAuth`], which puts
//! the caller ([`Admin`]) in the request's extensions. Each handler then:
//! 1. validates every value with [`crate::model`] (and route patterns and methods as the
//!    policy compiler does), failing with INVALID_ARGUMENT naming the field;
//! 2. refuses a tenant the token is not limited to with PERMISSION_DENIED (whole-policy
//!    operations need a token for every tenant), and a tenant this replica does not
//!    serve (`--tenants`, `--tenant-shard`) with FAILED_PRECONDITION naming its shard
//!    (whole-policy operations need a replica serving every tenant);
//! 3. runs the store operation; its errors are mapped in `grpc/status.rs`.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use tracing::{error, info, warn};

use super::auth::{Admin, AdminAuth, AdminTokens};
use crate::{
    model::{self, InputError, MethodSet},
    pb::{self, policy_admin_service_server::PolicyAdminServiceServer},
    policy::{
        PolicyDocument,
        pattern::Pattern,
        source::{AssignmentDoc, Format, RoleDoc, RouteDoc},
    },
    shard::TenantFilter,
    store::{
        admin::{AdminError, AdminStore, ChangeRow},
        off_runtime,
    },
};

/// Revisions a Watch reads from the change log per query.
const WATCH_BATCH: u64 = 500;
/// How often an idle Watch looks for new changes when the cache's revision does not
/// move (a server without a database follower, or one whose follower is behind).
const WATCH_POLL: Duration = Duration::from_millis(500);

/// Items per page when the request asks for none.
const DEFAULT_PAGE: usize = 100;
/// The most items per page; larger requests get this many.
const MAX_PAGE: usize = 1000;

/// Why an admin request was refused before reaching the database.
#[derive(Debug, thiserror::Error)]
pub enum AdminRequestError {
    /// A request value is invalid.
    #[error("invalid `{field}`: {message}")]
    Field {
        /// The field path, e.g. `role.routes[1].path`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The token may not manage this tenant (or all tenants).
    #[error("{0}")]
    Denied(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] AdminError),
}

type Result<T> = std::result::Result<T, AdminRequestError>;

fn bad(field: impl Into<String>, message: impl ToString) -> AdminRequestError {
    AdminRequestError::Field {
        field: field.into(),
        message: message.to_string(),
    }
}

fn input<T>(field: &str, r: std::result::Result<T, InputError>) -> Result<T> {
    r.map_err(|e| bad(field, e))
}

/// The admin service over a database pool, with the tokens that may call it.
#[derive(Clone, Debug)]
pub struct PolicyAdmin {
    store: AdminStore,
    tokens: Arc<AdminTokens>,
    /// The cache's applied revision: wakes idle Watch streams as soon as the follower
    /// applies a change, instead of waiting for the next poll.
    revisions: Option<watch::Receiver<Option<u64>>>,
    /// Turns true when the server shuts down: Watch streams end then, so they do not
    /// hold the drain for the whole grace period.
    stopping: watch::Receiver<bool>,
    /// Requests refused because the database is unavailable, logged once per outage.
    outage: Arc<OutageLog>,
    /// The tenants this replica serves (`--tenants`, `--tenant-shard`): a request about
    /// another is FAILED_PRECONDITION, as on the query service, and whole-policy
    /// operations need a replica serving every tenant.
    filter: Arc<TenantFilter>,
}

impl PolicyAdmin {
    /// The service over `store`, callable with `tokens`.
    pub fn new(store: AdminStore, tokens: AdminTokens) -> Self {
        PolicyAdmin {
            store,
            tokens: Arc::new(tokens),
            revisions: None,
            // A sender dropped at once reads as "not stopping" until replaced.
            stopping: watch::channel(false).1,
            outage: Arc::new(OutageLog::default()),
            filter: Arc::new(TenantFilter::All),
        }
    }

    /// Serves only the tenants `filter` accepts (the cache's).
    pub fn with_filter(mut self, filter: TenantFilter) -> Self {
        self.filter = Arc::new(filter);
        self
    }

    /// Validates the tenant, checks this replica serves it and the caller may manage it.
    fn tenant<'a>(&self, admin: &Admin, t: &'a str) -> Result<&'a str> {
        let t = tenant(admin, t)?;
        if !self.filter.serves(t) {
            return Err(AdminRequestError::Store(AdminError::Precondition(format!(
                "tenant `{t}` is not served here (this replica serves {}); it belongs to {}",
                self.filter,
                self.filter.home_of(t)
            ))));
        }
        Ok(t)
    }

    /// Checks the caller may manage every tenant, and this replica serves every tenant.
    fn unlimited(&self, admin: &Admin, what: &str) -> Result<()> {
        unlimited(admin, what)?;
        if !self.filter.is_all() {
            return Err(AdminRequestError::Store(AdminError::Precondition(format!(
                "{what} needs a replica serving every tenant (this one serves {})",
                self.filter
            ))));
        }
        Ok(())
    }

    /// Wakes Watch streams when `revisions` (the cache's) moves, and ends them when
    /// `stopping` turns true.
    pub fn with_signals(
        mut self,
        revisions: watch::Receiver<Option<u64>>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        self.revisions = Some(revisions);
        self.stopping = stopping;
        self
    }

    /// The generated server, behind the token interceptor.
    pub fn svc(
        self,
        max_message_bytes: usize,
    ) -> InterceptedService<PolicyAdminServiceServer<PolicyAdmin>, AdminAuth> {
        let auth = AdminAuth::new(self.tokens.clone());
        InterceptedService::new(
            PolicyAdminServiceServer::new(self)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            auth,
        )
    }
}

impl PolicyAdmin {
    /// The response, or the error's status (an unavailable database logged once per
    /// outage).
    fn done<T>(&self, r: Result<T>) -> std::result::Result<Response<T>, Status> {
        match r {
            Ok(t) => {
                self.outage.succeeded(Instant::now());
                Ok(Response::new(t))
            }
            Err(e) => Err(self.status(e)),
        }
    }

    fn status(&self, e: AdminRequestError) -> Status {
        self.outage.status(e)
    }

    /// DiffPolicy between two committed revisions (`new`: the current state when
    /// unset), each rebuilt from the change log ([`AdminStore::policy_at`]) and
    /// compiled with the limits the database holds itself to now.
    async fn diff_revisions(&self, old: u64, new: Option<u64>) -> Result<pb::DiffPolicyResponse> {
        let (_, old_doc, limits) = self.store.policy_at(Some(old)).await?;
        let (new, new_doc, _) = self.store.policy_at(new).await?;
        let diffed = off_runtime(move || {
            compile_and_diff(
                DiffSide::database(old, old_doc),
                DiffSide::database(new, new_doc),
                limits,
            )
        })
        .await
        .map_err(|e| AdminError::Db(e.to_string()))??;
        let mut out = crate::grpc::convert::diff_to_pb(&diffed, old);
        out.new_revision = new;
        Ok(out)
    }
}

/// One side of a DiffPolicy comparison.
struct DiffSide {
    /// Its label in the diff.
    label: String,
    doc: PolicyDocument,
    /// The revision it is compiled at.
    revision: u64,
    /// The request's document (a problem with it is the caller's: INVALID_ARGUMENT
    /// naming `document`), not the database's state (a problem there is internal).
    from_request: bool,
}

impl DiffSide {
    /// The database's state at `revision`.
    fn database(revision: u64, doc: PolicyDocument) -> Self {
        DiffSide {
            label: format!("database revision {revision}"),
            doc,
            revision,
            from_request: false,
        }
    }
}

/// Compiles both sides with the database's `limits` (documents of any size: they are
/// already read) and diffs them ([`crate::policy::diff::diff`]); CPU work for a
/// blocking thread.
fn compile_and_diff(
    old: DiffSide,
    new: DiffSide,
    limits: crate::policy::Limits,
) -> Result<crate::policy::diff::PolicyDiff> {
    let limits = crate::policy::Limits {
        document_bytes: u64::MAX,
        ..limits
    };
    let blame = |side: &DiffSide, e: String| -> AdminRequestError {
        if side.from_request {
            bad("document", e)
        } else {
            AdminError::Db(format!("the database's policy does not compile: {e}")).into()
        }
    };
    let compile = |side: &DiffSide| {
        crate::policy::compile_with(&side.doc, &side.label, side.revision, limits)
            .map_err(|e| blame(side, e.to_string()))
    };
    let (old_policy, new_policy) = (compile(&old)?, compile(&new)?);
    crate::policy::diff::diff(
        crate::policy::diff::Side {
            label: &old.label,
            doc: &old.doc,
            policy: &old_policy,
        },
        crate::policy::diff::Side {
            label: &new.label,
            doc: &new.doc,
            policy: &new_policy,
        },
    )
    // Too many probe paths: the document's fault when there is one, else the
    // database's state is beyond what the diff evaluates.
    .map_err(|e| {
        if new.from_request {
            bad("document", e)
        } else {
            AdminError::Invalid(e.to_string()).into()
        }
    })
}

/// How often an ongoing database outage is summarized in the log.
pub const OUTAGE_SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Admin requests refused because the database is unavailable, logged once per outage
/// rather than once per request (a 10 s outage under load once logged 282 ERROR lines):
/// the first refusal at ERROR with its cause, then a WARN summary every
/// [`OUTAGE_SUMMARY_EVERY`] while it lasts, and an INFO line with the count when the
/// database answers again.
#[derive(Debug, Default)]
struct OutageLog {
    /// Whether an outage is on: the fast path of every answered request.
    active: AtomicBool,
    state: Mutex<Option<Outage>>,
}

#[derive(Debug)]
struct Outage {
    started: Instant,
    refused: u64,
    summarized: Instant,
    refused_since_summary: u64,
}

/// What the outage log writes for one event.
#[derive(Debug, PartialEq, Eq)]
enum OutageLine {
    /// The first refusal of an outage (ERROR).
    Began,
    /// Refusals since the last line, while the outage lasts (WARN).
    Ongoing { refused: u64, lasted: Duration },
    /// The database answered again (INFO).
    Ended { refused: u64, lasted: Duration },
}

impl OutageLog {
    /// The status of a refused request, logging it if it starts or summarizes an
    /// outage; any other error means the database answered (or was not asked).
    fn status(&self, e: AdminRequestError) -> Status {
        if let AdminRequestError::Store(AdminError::Unavailable(cause)) = &e {
            match self.failed(Instant::now()) {
                Some(OutageLine::Began) => {
                    error!(%cause, "admin requests refused: the database is unavailable (logged once per outage, summarized every 30s)");
                }
                Some(OutageLine::Ongoing { refused, lasted }) => {
                    warn!(%cause, refused, ?lasted, "admin requests still refused: the database is unavailable");
                }
                _ => {}
            }
        } else if matches!(e, AdminRequestError::Store(_)) {
            self.succeeded(Instant::now());
        }
        Status::from(e)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self, now: Instant) -> Option<OutageLine> {
        let mut state = self.lock();
        self.active.store(true, Relaxed);
        match state.as_mut() {
            None => {
                *state = Some(Outage {
                    started: now,
                    refused: 1,
                    summarized: now,
                    refused_since_summary: 0,
                });
                Some(OutageLine::Began)
            }
            Some(o) => {
                o.refused += 1;
                o.refused_since_summary += 1;
                (now.saturating_duration_since(o.summarized) >= OUTAGE_SUMMARY_EVERY).then(|| {
                    let refused = std::mem::take(&mut o.refused_since_summary);
                    o.summarized = now;
                    OutageLine::Ongoing {
                        refused,
                        lasted: now.saturating_duration_since(o.started),
                    }
                })
            }
        }
    }

    fn succeeded(&self, now: Instant) -> Option<OutageLine> {
        if !self.active.load(Relaxed) {
            return None;
        }
        let ended = {
            let mut state = self.lock();
            // Under the lock: a refusal racing with this success starts a new outage.
            self.active.store(false, Relaxed);
            state.take()?
        };
        let (refused, lasted) = (ended.refused, now.saturating_duration_since(ended.started));
        info!(
            refused,
            ?lasted,
            "admin requests served again: the database answers"
        );
        Some(OutageLine::Ended { refused, lasted })
    }
}

/// The authenticated caller; refused if the interceptor did not run (never expected).
fn caller<T>(req: &Request<T>) -> std::result::Result<Admin, Status> {
    req.extensions()
        .get::<Admin>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("not authenticated"))
}

/// Validates the tenant and checks the caller may manage it.
fn tenant<'a>(admin: &Admin, tenant: &'a str) -> Result<&'a str> {
    let t = input("tenant_id", model::tenant_id(tenant))?;
    if !admin.may(t) {
        warn!(token = %admin.name, tenant = %t, "admin request refused: tenant not permitted");
        return Err(AdminRequestError::Denied(format!(
            "this token may not manage tenant `{t}`"
        )));
    }
    Ok(t)
}

fn unlimited(admin: &Admin, what: &str) -> Result<()> {
    if admin.is_unlimited() {
        Ok(())
    } else {
        warn!(token = %admin.name, what, "admin request refused: needs a token for all tenants");
        Err(AdminRequestError::Denied(format!(
            "{what} needs a token for all tenants"
        )))
    }
}

fn role(r: Option<&pb::Role>) -> Result<RoleDoc> {
    let r = r.ok_or_else(|| bad("role", InputError::Empty))?;
    input("role.id", model::name(&r.id))?;
    for (i, inc) in r.includes.iter().enumerate() {
        input(&format!("role.includes[{i}]"), model::name(inc))?;
    }
    for (i, p) in r.permissions.iter().enumerate() {
        input(&format!("role.permissions[{i}]"), model::name(p))?;
    }
    for (i, route) in r.routes.iter().enumerate() {
        MethodSet::parse(&route.methods)
            .map_err(|e| bad(format!("role.routes[{i}].methods"), e))?;
        Pattern::parse(&route.path).map_err(|e| bad(format!("role.routes[{i}].path"), e))?;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, inc) in r.includes.iter().enumerate() {
        if !seen.insert(inc) {
            return Err(bad(
                format!("role.includes[{i}]"),
                format!("lists `{inc}` twice"),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in r.permissions.iter().enumerate() {
        if !seen.insert(p) {
            return Err(bad(
                format!("role.permissions[{i}]"),
                format!("lists `{p}` twice"),
            ));
        }
    }
    Ok(RoleDoc {
        id: r.id.clone(),
        description: r.description.clone(),
        includes: r.includes.clone(),
        permissions: r.permissions.clone(),
        routes: r
            .routes
            .iter()
            .map(|x| RouteDoc {
                methods: x.methods.clone(),
                path: x.path.clone(),
            })
            .collect(),
    })
}

fn assignment(a: Option<&pb::Assignment>) -> Result<AssignmentDoc> {
    let a = a.ok_or_else(|| bad("assignment", InputError::Empty))?;
    let (subject, group) = match (a.subject_id.is_empty(), a.group_id.is_empty()) {
        (false, true) => (
            Some(input("assignment.subject_id", model::subject_id(&a.subject_id))?.to_owned()),
            None,
        ),
        (true, false) => (
            None,
            Some(input("assignment.group_id", model::subject_id(&a.group_id))?.to_owned()),
        ),
        _ => {
            return Err(bad(
                "assignment.subject_id",
                "give exactly one of `subject_id` and `group_id`",
            ));
        }
    };
    input("assignment.role_id", model::name(&a.role_id))?;
    input("assignment.scope", model::scope(&a.scope))?;
    Ok(AssignmentDoc {
        subject,
        group,
        role: a.role_id.clone(),
        scope: a.scope.clone(),
    })
}

fn page_size(n: i32) -> Result<usize> {
    match usize::try_from(n) {
        Ok(0) => Ok(DEFAULT_PAGE),
        Ok(n) => Ok(n.min(MAX_PAGE)),
        Err(_) => Err(bad("page_size", "must not be negative")),
    }
}

/// Page tokens are the last item's key, base64url: opaque to callers, and a changed
/// list never makes a page skip or repeat an item that stayed.
fn encode_token(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

/// The longest page token this server issues: the base64 of the longest key (a group
/// or subject id of 256 bytes, an assignment number).
const MAX_PAGE_TOKEN: usize = 400;

/// The key a page token carries. Checked before it reaches the database: a key this
/// server issued is an id or a number, never longer than an id and never holding a
/// control character (a NUL byte would be refused by PostgreSQL as a server error).
fn decode_token(token: &str) -> Result<String> {
    if token.is_empty() {
        return Ok(String::new());
    }
    (token.len() <= MAX_PAGE_TOKEN)
        .then(|| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
        })
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|key| !key.chars().any(char::is_control))
        .ok_or_else(|| bad("page_token", "is not a token this server issued"))
}

fn decode_number(token: &str, empty: i64) -> Result<i64> {
    if token.is_empty() {
        return Ok(empty);
    }
    decode_token(token)?
        .parse()
        .map_err(|_| bad("page_token", "is not a token this server issued"))
}

fn format(f: i32) -> Result<Format> {
    match pb::DocumentFormat::try_from(f) {
        Ok(pb::DocumentFormat::Unspecified | pb::DocumentFormat::Yaml) => Ok(Format::Yaml),
        Ok(pb::DocumentFormat::Json) => Ok(Format::Json),
        Err(_) => Err(bad("format", format!("unknown format {f}"))),
    }
}

/// The body of a write RPC: the caller, the message, the store operation's revision,
/// a log line, the response. (A body-only macro: `async_trait` must see the methods.)
macro_rules! write_rpc {
    ($request:ident, $svc:expr, $resp:ident, |$admin:ident, $m:ident, $s:ident| $body:expr) => {{
        let svc: &PolicyAdmin = $svc;
        let $admin = caller(&$request)?;
        let $m = $request.into_inner();
        let $s: &AdminStore = &svc.store;
        let r: Result<u64> = async { Ok($body) }.await;
        if let Ok(revision) = &r {
            let rpc = stringify!($resp).trim_end_matches("Response");
            info!(token = %$admin.name, rpc, revision, "admin write");
        }
        svc.done(r.map(|revision| pb::$resp { revision }))
    }};
}

#[tonic::async_trait]
impl pb::policy_admin_service_server::PolicyAdminService for PolicyAdmin {
    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> std::result::Result<Response<pb::CreateRoleResponse>, Status> {
        write_rpc!(request, self, CreateRoleResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let r = role(m.role.as_ref())?;
            store.create_role(&admin.name, t, &r).await?
        })
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> std::result::Result<Response<pb::UpdateRoleResponse>, Status> {
        write_rpc!(request, self, UpdateRoleResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let r = role(m.role.as_ref())?;
            store.update_role(&admin.name, t, &r).await?
        })
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> std::result::Result<Response<pb::DeleteRoleResponse>, Status> {
        write_rpc!(request, self, DeleteRoleResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let r = input("role_id", model::name(&m.role_id))?;
            store.delete_role(&admin.name, t, r).await?
        })
    }

    async fn grant_role(
        &self,
        request: Request<pb::GrantRoleRequest>,
    ) -> std::result::Result<Response<pb::GrantRoleResponse>, Status> {
        write_rpc!(request, self, GrantRoleResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let a = assignment(m.assignment.as_ref())?;
            store.grant(&admin.name, t, &a).await?
        })
    }

    async fn revoke_role(
        &self,
        request: Request<pb::RevokeRoleRequest>,
    ) -> std::result::Result<Response<pb::RevokeRoleResponse>, Status> {
        write_rpc!(request, self, RevokeRoleResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let a = assignment(m.assignment.as_ref())?;
            store.revoke(&admin.name, t, &a).await?
        })
    }

    async fn register_subject(
        &self,
        request: Request<pb::RegisterSubjectRequest>,
    ) -> std::result::Result<Response<pb::RegisterSubjectResponse>, Status> {
        write_rpc!(request, self, RegisterSubjectResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let s = input("subject_id", model::subject_id(&m.subject_id))?;
            store
                .register_subject(&admin.name, t, s, m.disabled)
                .await?
        })
    }

    async fn set_subject_disabled(
        &self,
        request: Request<pb::SetSubjectDisabledRequest>,
    ) -> std::result::Result<Response<pb::SetSubjectDisabledResponse>, Status> {
        write_rpc!(
            request,
            self,
            SetSubjectDisabledResponse,
            |admin, m, store| {
                let t = self.tenant(&admin, &m.tenant_id)?;
                let s = input("subject_id", model::subject_id(&m.subject_id))?;
                store
                    .set_subject_disabled(&admin.name, t, s, m.disabled)
                    .await?
            }
        )
    }

    async fn delete_subject(
        &self,
        request: Request<pb::DeleteSubjectRequest>,
    ) -> std::result::Result<Response<pb::DeleteSubjectResponse>, Status> {
        write_rpc!(request, self, DeleteSubjectResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let s = input("subject_id", model::subject_id(&m.subject_id))?;
            store.delete_subject(&admin.name, t, s).await?
        })
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> std::result::Result<Response<pb::CreateGroupResponse>, Status> {
        write_rpc!(request, self, CreateGroupResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let g = input("group_id", model::subject_id(&m.group_id))?;
            store.create_group(&admin.name, t, g).await?
        })
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> std::result::Result<Response<pb::DeleteGroupResponse>, Status> {
        write_rpc!(request, self, DeleteGroupResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let g = input("group_id", model::subject_id(&m.group_id))?;
            store.delete_group(&admin.name, t, g).await?
        })
    }

    async fn add_group_member(
        &self,
        request: Request<pb::AddGroupMemberRequest>,
    ) -> std::result::Result<Response<pb::AddGroupMemberResponse>, Status> {
        write_rpc!(request, self, AddGroupMemberResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let g = input("group_id", model::subject_id(&m.group_id))?;
            let s = input("subject_id", model::subject_id(&m.subject_id))?;
            store.add_group_member(&admin.name, t, g, s).await?
        })
    }

    async fn remove_group_member(
        &self,
        request: Request<pb::RemoveGroupMemberRequest>,
    ) -> std::result::Result<Response<pb::RemoveGroupMemberResponse>, Status> {
        write_rpc!(
            request,
            self,
            RemoveGroupMemberResponse,
            |admin, m, store| {
                let t = self.tenant(&admin, &m.tenant_id)?;
                let g = input("group_id", model::subject_id(&m.group_id))?;
                let s = input("subject_id", model::subject_id(&m.subject_id))?;
                store.remove_group_member(&admin.name, t, g, s).await?
            }
        )
    }

    async fn set_default_roles(
        &self,
        request: Request<pb::SetDefaultRolesRequest>,
    ) -> std::result::Result<Response<pb::SetDefaultRolesResponse>, Status> {
        write_rpc!(request, self, SetDefaultRolesResponse, |admin, m, store| {
            let t = self.tenant(&admin, &m.tenant_id)?;
            let mut seen = std::collections::HashSet::new();
            for (i, r) in m.role_ids.iter().enumerate() {
                let field = format!("role_ids[{i}]");
                input(&field, model::name(r))?;
                if !seen.insert(r) {
                    return Err(bad(field, format!("lists `{r}` twice")));
                }
            }
            store.set_default_roles(&admin.name, t, &m.role_ids).await?
        })
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> std::result::Result<Response<pb::ListRolesResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                let t = self.tenant(&admin, &m.tenant_id)?;
                let size = page_size(m.page_size)?;
                let after = decode_token(&m.page_token)?;
                let page = self.store.list_roles(t, &after, size).await?;
                let next_page_token = match (page.more, page.items.last()) {
                    (true, Some(last)) => encode_token(&last.role.id),
                    _ => String::new(),
                };
                let roles = page
                    .items
                    .into_iter()
                    .map(|r| pb::Role {
                        id: r.role.id,
                        description: r.role.description,
                        includes: r.role.includes,
                        permissions: r.role.permissions,
                        routes: r
                            .role
                            .routes
                            .into_iter()
                            .map(|x| pb::RoleRoute {
                                methods: x.methods,
                                path: x.path,
                            })
                            .collect(),
                        built_in: r.built_in,
                    })
                    .collect();
                Ok(pb::ListRolesResponse {
                    roles,
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn list_subjects(
        &self,
        request: Request<pb::ListSubjectsRequest>,
    ) -> std::result::Result<Response<pb::ListSubjectsResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                let t = self.tenant(&admin, &m.tenant_id)?;
                let size = page_size(m.page_size)?;
                let after = decode_token(&m.page_token)?;
                let page = self.store.list_subjects(t, &after, size).await?;
                let next_page_token = match (page.more, page.items.last()) {
                    (true, Some((id, _))) => encode_token(id),
                    _ => String::new(),
                };
                Ok(pb::ListSubjectsResponse {
                    subjects: page
                        .items
                        .into_iter()
                        .map(|(id, disabled)| pb::Subject { id, disabled })
                        .collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> std::result::Result<Response<pb::ListGroupsResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                let t = self.tenant(&admin, &m.tenant_id)?;
                let size = page_size(m.page_size)?;
                let after = decode_token(&m.page_token)?;
                let page = self.store.list_groups(t, &after, size).await?;
                let next_page_token = match (page.more, page.items.last()) {
                    (true, Some(g)) => encode_token(&g.id),
                    _ => String::new(),
                };
                Ok(pb::ListGroupsResponse {
                    groups: page
                        .items
                        .into_iter()
                        .map(|g| pb::Group {
                            id: g.id,
                            member_ids: g.members,
                        })
                        .collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn list_assignments(
        &self,
        request: Request<pb::ListAssignmentsRequest>,
    ) -> std::result::Result<Response<pb::ListAssignmentsResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                let t = self.tenant(&admin, &m.tenant_id)?;
                let size = page_size(m.page_size)?;
                let after = decode_number(&m.page_token, 0)?;
                let page = self.store.list_assignments(t, after, size).await?;
                let next_page_token = match (page.more, page.items.last()) {
                    (true, Some((id, _))) => encode_token(&id.to_string()),
                    _ => String::new(),
                };
                Ok(pb::ListAssignmentsResponse {
                    assignments: page
                        .items
                        .into_iter()
                        .map(|(_, a)| pb::Assignment {
                            subject_id: a.subject.unwrap_or_default(),
                            group_id: a.group.unwrap_or_default(),
                            role_id: a.role,
                            scope: a.scope,
                        })
                        .collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> std::result::Result<Response<pb::ApplyPolicyResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                // The document rewrites the built-in roles every tenant shares.
                self.unlimited(&admin, "ApplyPolicy")?;
                // Parsed (and compiled, in the store) on blocking threads: a large
                // document must not stall the Checks this runtime answers.
                let fmt = format(m.format)?;
                let document = m.document;
                let doc = off_runtime(move || PolicyDocument::parse(&document, fmt, "document"))
                    .await
                    .map_err(|e| AdminError::Db(e.to_string()))?
                    .map_err(|e| bad("document", e))?;
                let report = self.store.apply_policy(&admin.name, doc, m.force).await?;
                let total = report.total();
                info!(token = %admin.name, rpc = "ApplyPolicy", revision = report.current_revision(), "admin write");
                Ok(pb::ApplyPolicyResponse {
                    revision: report.current_revision(),
                    changed: report.revision.is_some(),
                    rows_inserted: total.inserted,
                    rows_updated: total.updated,
                    rows_deleted: total.deleted,
                })
            }
            .await,
        )
    }

    async fn diff_policy(
        &self,
        request: Request<pb::DiffPolicyRequest>,
    ) -> std::result::Result<Response<pb::DiffPolicyResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                // Like ApplyPolicy, the document speaks for the built-in roles every
                // tenant shares.
                unlimited(&admin, "DiffPolicy")?;
                let fmt = format(m.format)?;
                if let Some(old_revision) = m.old_revision {
                    if !m.document.is_empty() {
                        return Err(bad("document", "must be empty when `old_revision` is set"));
                    }
                    return self.diff_revisions(old_revision, m.new_revision).await;
                }
                if m.new_revision.is_some() {
                    return Err(bad("old_revision", "required when `new_revision` is set"));
                }
                let document = m.document;
                // Parsed, compiled and compared on a blocking thread: the Checks this
                // runtime answers must not wait on it.
                let doc = off_runtime(move || PolicyDocument::parse(&document, fmt, "document"))
                    .await
                    .map_err(|e| AdminError::Db(e.to_string()))?
                    .map_err(|e| bad("document", e))?;
                let protected_rows = self.store.protected_rows(&doc).await?;
                let (revision, current, limits) = self.store.current_policy().await?;
                let diffed = off_runtime(move || {
                    let new = crate::policy::diff::after_apply(&current, &doc);
                    let new = DiffSide {
                        label: "document".to_owned(),
                        doc: new,
                        revision,
                        from_request: true,
                    };
                    compile_and_diff(DiffSide::database(revision, current), new, limits)
                })
                .await
                .map_err(|e| AdminError::Db(e.to_string()))??;
                let mut out = crate::grpc::convert::diff_to_pb(&diffed, revision);
                out.protected_rows = protected_rows;
                Ok(out)
            }
            .await,
        )
    }

    async fn export_policy(
        &self,
        request: Request<pb::ExportPolicyRequest>,
    ) -> std::result::Result<Response<pb::ExportPolicyResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                let fmt = format(m.format)?;
                let tenants = if m.tenant_ids.is_empty() {
                    self.unlimited(&admin, "exporting every tenant")?;
                    None
                } else {
                    for t in &m.tenant_ids {
                        self.tenant(&admin, t)?;
                    }
                    Some(m.tenant_ids.as_slice())
                };
                let (revision, doc) = self.store.export_policy(tenants).await?;
                let document = match fmt {
                    Format::Yaml => doc
                        .to_yaml()
                        .map_err(|e| AdminError::Db(format!("cannot write YAML: {e}")))?,
                    Format::Json => serde_json::to_string_pretty(&doc)
                        .map_err(|e| AdminError::Db(format!("cannot write JSON: {e}")))?,
                };
                Ok(pb::ExportPolicyResponse { document, revision })
            }
            .await,
        )
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> std::result::Result<Response<pb::ListAuditEventsResponse>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        self.done(
            async {
                let only = if m.tenant_id.is_empty() {
                    self.unlimited(&admin, "listing every tenant's audit events")?;
                    None
                } else {
                    Some(self.tenant(&admin, &m.tenant_id)?)
                };
                let size = page_size(m.page_size)?;
                let before = decode_number(&m.page_token, i64::MAX)?;
                let page = self.store.list_audit(only, before, size).await?;
                let next_page_token = match (page.more, page.items.last()) {
                    (true, Some(e)) => encode_token(&e.id.to_string()),
                    _ => String::new(),
                };
                Ok(pb::ListAuditEventsResponse {
                    events: page
                        .items
                        .into_iter()
                        .map(|e| pb::AuditEvent {
                            id: u64::try_from(e.id).unwrap_or(0),
                            at: e.at,
                            actor: e.actor,
                            tenant_id: e.tenant_id,
                            action: e.action,
                            detail_json: e.detail,
                            revision: e.revision,
                        })
                        .collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }
    type WatchStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        let admin = caller(&request)?;
        let m = request.into_inner();
        let tenant = if m.tenant_id.is_empty() {
            self.unlimited(&admin, "watching every tenant")?;
            None
        } else {
            Some(self.tenant(&admin, &m.tenant_id)?.to_owned())
        };
        // The first read happens before the stream starts, so a revision older than the
        // change log is the call's status (OUT_OF_RANGE), not a stream item.
        let first = self
            .store
            .changes_after(tenant.as_deref(), m.after_revision, WATCH_BATCH)
            .await
            .map_err(|e| self.status(e.into()))?;
        info!(token = %admin.name, tenant = tenant.as_deref().unwrap_or("*"), after = m.after_revision, "watch started");
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(watch_task(
            self.store.clone(),
            self.outage.clone(),
            tenant,
            first,
            tx,
            self.revisions.clone(),
            self.stopping.clone(),
        ));
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }
}

type WatchItem = std::result::Result<pb::WatchResponse, Status>;

/// Feeds one Watch stream until the client goes away, the server stops, or reading
/// the change log fails (sent as the stream's final status).
async fn watch_task(
    store: AdminStore,
    outage: Arc<OutageLog>,
    tenant: Option<String>,
    mut batch: crate::store::admin::Changes,
    tx: mpsc::Sender<WatchItem>,
    mut revisions: Option<watch::Receiver<Option<u64>>>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        for response in group_by_revision(std::mem::take(&mut batch.rows)) {
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
        if !batch.more {
            let moved = async {
                match revisions.as_mut() {
                    Some(r) => {
                        if r.changed().await.is_err() {
                            // The cache is gone; polling alone from now on.
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            // `wait_for`'s guard must not live across the send below (it is not Send).
            let stop = async {
                if stopping.wait_for(|s| *s).await.is_err() {
                    // No server to stop it (the sender is gone): never.
                    std::future::pending::<()>().await;
                }
            };
            let stopped = tokio::select! {
                _ = tx.closed() => return,
                _ = stop => true,
                _ = moved => false,
                _ = tokio::time::sleep(WATCH_POLL) => false,
            };
            if stopped {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "the server is shutting down; watch again from the last revision received",
                    )))
                    .await;
                return;
            }
        }
        batch = match store
            .changes_after(tenant.as_deref(), batch.upto, WATCH_BATCH)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(outage.status(e.into()))).await;
                return;
            }
        };
    }
}

/// One response per revision, in order; rows arrive sorted by revision.
fn group_by_revision(rows: Vec<ChangeRow>) -> Vec<pb::WatchResponse> {
    let mut out: Vec<pb::WatchResponse> = Vec::new();
    for row in rows {
        let change = pb::Change {
            tenant_id: row.tenant_id,
            entity: row.entity,
            operation: match row.op.as_str() {
                "INSERT" => pb::ChangeOperation::Insert,
                "UPDATE" => pb::ChangeOperation::Update,
                "DELETE" => pb::ChangeOperation::Delete,
                _ => pb::ChangeOperation::Unspecified,
            } as i32,
            old_json: row.old.unwrap_or_default(),
            new_json: row.new.unwrap_or_default(),
        };
        match out.last_mut() {
            Some(last) if last.revision == row.revision => last.changes.push(change),
            _ => out.push(pb::WatchResponse {
                revision: row.revision,
                changes: vec![change],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_once_then_summarized_then_ended() {
        let log = OutageLog::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.succeeded(t0), None, "no outage, nothing to say");
        assert_eq!(log.failed(at(0)), Some(OutageLine::Began));
        for i in 1..=100 {
            assert_eq!(log.failed(at(i % 29)), None, "refusal {i} is only counted");
        }
        assert_eq!(
            log.failed(at(30)),
            Some(OutageLine::Ongoing {
                refused: 101,
                lasted: Duration::from_secs(30)
            })
        );
        assert_eq!(log.failed(at(31)), None);
        assert_eq!(
            log.succeeded(at(40)),
            Some(OutageLine::Ended {
                refused: 103,
                lasted: Duration::from_secs(40)
            })
        );
        assert_eq!(log.succeeded(at(41)), None);
        assert_eq!(log.failed(at(50)), Some(OutageLine::Began), "a new outage");
    }

    #[test]
    fn page_tokens_carry_ids_only() {
        assert_eq!(decode_token("").unwrap(), "");
        assert_eq!(decode_token(&encode_token("alice")).unwrap(), "alice");
        for key in ["a\0b", "a\nb", &"x".repeat(400)] {
            assert!(decode_token(&encode_token(key)).is_err(), "{key:?}");
        }
        assert!(decode_token(&encode_token(&"x".repeat(256))).is_ok());
        assert!(decode_number(&encode_token("12"), 0).unwrap() == 12);
    }
}
