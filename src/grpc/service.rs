//! `authz.v1.AuthorizationService`.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::{
    auth::{Admin, AdminTokens},
    convert::{self, FieldError},
};
use crate::{
    cache::{Cache, FreshnessError, Resolved},
    metrics::{InFlight, Metrics, Rpc},
    model::InputError,
    pb::{self, authorization_service_server::AuthorizationServiceServer},
    policy::{Explanation, Query, Reason},
};

/// Limits and waits of the query service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// How long a request with `min_revision` waits for the cache to reach it.
    pub revision_wait: Duration,
    /// Most checks in one BatchCheck.
    pub max_batch: usize,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Fail closed (UNAVAILABLE) when the source has not confirmed the cache current for
    /// longer than this; `None`: answer from the cache however old.
    pub max_staleness: Option<Duration>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            revision_wait: Duration::from_secs(1),
            max_batch: 1000,
            max_message_bytes: 4 * 1024 * 1024,
            max_staleness: None,
        }
    }
}

/// The query service: a cheap handle on the cache.
#[derive(Clone, Debug)]
pub struct AuthzService {
    cache: Cache,
    config: ServiceConfig,
    metrics: Option<Metrics>,
    /// Who may ask (`--query-tokens-file`); `None`: anyone.
    tokens: Option<Arc<AdminTokens>>,
}

impl AuthzService {
    /// A service answering from `cache`.
    pub fn new(cache: Cache, config: ServiceConfig) -> Self {
        AuthzService {
            cache,
            config,
            metrics: None,
            tokens: None,
        }
    }

    /// The same service, answering only callers with one of `tokens` (a bearer token
    /// or a listed client certificate), about the tenants each may ask about; `None`:
    /// anyone.
    pub fn with_tokens(self, tokens: Option<AdminTokens>) -> Self {
        AuthzService {
            tokens: tokens.map(Arc::new),
            ..self
        }
    }

    /// The credentials the service requires (`--query-tokens-file`), if any.
    pub(crate) fn tokens(&self) -> Option<&AdminTokens> {
        self.tokens.as_deref()
    }

    /// Records an error answered over another front door (AuthZEN HTTP) under `rpc`.
    pub(crate) fn count_http_error(&self, rpc: Rpc, code: tonic::Code) {
        self.count_error(rpc, code);
    }

    /// The caller, when the service requires credentials.
    fn caller<T>(&self, rpc: Rpc, req: &Request<T>) -> Result<Option<Admin>, Status> {
        match &self.tokens {
            None => Ok(None),
            Some(tokens) => self.counted(rpc, tokens.caller(req, "query").map(Some)),
        }
    }

    /// The same service, recording requests and decisions in `metrics` if given.
    pub fn with_metrics(self, metrics: Option<Metrics>) -> Self {
        AuthzService { metrics, ..self }
    }

    /// The service wrapped in its generated server, with message size limits.
    pub fn svc(self) -> AuthorizationServiceServer<Self> {
        let max = self.config.max_message_bytes;
        AuthorizationServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Decides a validated query in `tenant`, on the tenant's current snapshot.
    pub fn decide(&self, tenant: &str, q: &Query<'_>) -> Result<pb::CheckResponse, FreshnessError> {
        let resolved = self.resolve(tenant, 0)?;
        Ok(convert::explanation_to_pb(explain_on(&resolved, tenant, q)))
    }

    /// The snapshot to answer about `tenant` from, and the revision the answer claims.
    #[inline]
    fn resolve(&self, tenant: &str, min_revision: u64) -> Result<Resolved, FreshnessError> {
        self.cache
            .resolve(tenant, min_revision, self.config.max_staleness)
    }

    /// Counts a decision under `rpc`.
    #[inline]
    fn count_decision(&self, rpc: Rpc, e: &Explanation) {
        if let Some(m) = &self.metrics {
            m.decision(rpc, e.reason);
        }
    }

    /// Starts timing a request of `rpc`; it ends when the guard drops.
    fn start(&self, rpc: Rpc) -> Option<InFlight<'_>> {
        self.metrics.as_ref().map(|m| m.start(rpc))
    }

    /// Counts a request (or batch item) of `rpc` that failed with `code`.
    fn count_error(&self, rpc: Rpc, code: tonic::Code) {
        if let Some(m) = &self.metrics {
            m.error(rpc, code);
        }
    }

    /// Passes a handler's result through, counting it if it is an error.
    fn counted<T>(&self, rpc: Rpc, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.count_error(rpc, status.code());
        }
        result
    }

    /// Waits for `min_revision` (or fails); without one, only checks that a policy is
    /// loaded, without waiting.
    async fn fresh(&self, min_revision: u64) -> Result<(), Status> {
        if let Some(max) = self.config.max_staleness {
            self.cache.check_staleness(max)?;
        }
        if min_revision == 0 && self.cache.is_loaded() {
            return Ok(());
        }
        self.cache
            .wait_for(min_revision, self.config.revision_wait)
            .await?;
        Ok(())
    }
}

// The trait methods time the request and count errors; the handlers below do the work.
#[tonic::async_trait]
impl pb::authorization_service_server::AuthorizationService for AuthzService {
    #[tracing::instrument(
        level = "debug",
        name = "authz.v1.AuthorizationService/Check",
        skip_all,
        fields(tenant = tracing::field::Empty, allowed = tracing::field::Empty, reason = tracing::field::Empty)
    )]
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let _in_flight = self.start(Rpc::Check);
        let caller = self.caller(Rpc::Check, &request)?;
        let result = self.check_one(caller.as_ref(), request.into_inner()).await;
        self.counted(Rpc::Check, result).map(Response::new)
    }

    #[tracing::instrument(
        level = "debug",
        name = "authz.v1.AuthorizationService/BatchCheck",
        skip_all,
        fields(tenant = tracing::field::Empty)
    )]
    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let _in_flight = self.start(Rpc::BatchCheck);
        let caller = self.caller(Rpc::BatchCheck, &request)?;
        let result = self
            .batch_check_many(caller.as_ref(), request.into_inner())
            .await;
        self.counted(Rpc::BatchCheck, result).map(Response::new)
    }

    #[tracing::instrument(
        level = "debug",
        name = "authz.v1.AuthorizationService/ListPermissions",
        skip_all,
        fields(tenant = tracing::field::Empty)
    )]
    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        let _in_flight = self.start(Rpc::ListPermissions);
        let caller = self.caller(Rpc::ListPermissions, &request)?;
        let result = self.list(caller.as_ref(), request.into_inner()).await;
        self.counted(Rpc::ListPermissions, result)
            .map(Response::new)
    }

    #[tracing::instrument(
        level = "debug",
        name = "authz.v1.AuthorizationService/LookupSubjects",
        skip_all,
        fields(tenant = tracing::field::Empty)
    )]
    async fn lookup_subjects(
        &self,
        request: Request<pb::LookupSubjectsRequest>,
    ) -> Result<Response<pb::LookupSubjectsResponse>, Status> {
        let _in_flight = self.start(Rpc::LookupSubjects);
        let caller = self.caller(Rpc::LookupSubjects, &request)?;
        let result = self.lookup(caller.as_ref(), request.into_inner()).await;
        self.counted(Rpc::LookupSubjects, result).map(Response::new)
    }
}

/// A credential limited to other tenants asked about this one (PERMISSION_DENIED, mapped
/// in `grpc::status`).
#[derive(Debug, thiserror::Error)]
#[error("`{caller}` may not ask about tenant `{tenant}`")]
pub struct TenantRefused {
    caller: String,
    tenant: String,
}

/// Why `caller` may not ask about `tenant`, if it may not.
fn refusal(caller: Option<&Admin>, tenant: &str) -> Option<TenantRefused> {
    let caller = caller?;
    (!caller.may(tenant)).then(|| TenantRefused {
        caller: caller.name.clone(),
        tenant: tenant.to_owned(),
    })
}

/// Decides `q` on a resolved snapshot, claiming the resolved revision.
#[inline]
fn explain_on(resolved: &Resolved, tenant: &str, q: &Query<'_>) -> Explanation {
    match resolved.snapshot() {
        Some(snapshot) => {
            let mut ex = snapshot.explain(q, &snapshot.check(q));
            ex.revision = resolved.revision;
            ex
        }
        None => Explanation::unknown_tenant(tenant, resolved.revision),
    }
}

/// A batch item's error.
fn item_error(status: &Status, field: String) -> pb::batch_check_result::Result {
    pb::batch_check_result::Result::Error(pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        field,
    })
}

impl AuthzService {
    pub(crate) async fn check_one(
        &self,
        caller: Option<&Admin>,
        req: pb::CheckRequest,
    ) -> Result<pb::CheckResponse, Status> {
        let (tenant, query) = convert::check_request(&req, None, "", "")?;
        crate::telemetry::record_tenant(tenant);
        if let Some(refused) = refusal(caller, tenant) {
            return Err(refused.into());
        }
        // Another shard's tenant is refused at once, not after a min_revision wait
        // that could only end in UNAVAILABLE (which clients retry on the wrong replica).
        // Without a wait, `resolve` refuses it (no second hash on the hot path).
        if req.min_revision != 0 && !self.cache.filter().serves(tenant) {
            return Err(self.cache.not_served(tenant).into());
        }
        self.fresh(req.min_revision).await?;
        let resolved = self.resolve(tenant, req.min_revision)?;
        let explanation = explain_on(&resolved, tenant, &query);
        self.count_decision(Rpc::Check, &explanation);
        crate::telemetry::record_decision(&explanation);
        Ok(convert::explanation_to_pb(explanation))
    }

    /// Resolves the tenants of a batch naming several, all at one revision R: every
    /// snapshot returned answers exactly as the committed state at R. It reads R, loads
    /// each tenant, and if one of them already reflects a newer revision (a writer
    /// stores tenants before it publishes their revision), waits for that revision and
    /// tries again, within `revision_wait`. A stale tenant cannot be answered at R: its
    /// items fail with UNAVAILABLE (asked alone, it answers at its own revision).
    async fn resolve_at_one_revision<'t>(
        &self,
        tenants: Vec<&'t str>,
        min_revision: u64,
    ) -> Result<(u64, Vec<(&'t str, Result<Resolved, FreshnessError>)>), FreshnessError> {
        let deadline = tokio::time::Instant::now() + self.config.revision_wait;
        loop {
            let read = self.cache.revision();
            let mut resolved: Vec<(&str, Result<Resolved, FreshnessError>)> = tenants
                .iter()
                .map(|&t| (t, self.resolve(t, min_revision)))
                .collect();
            let newest = resolved
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .filter(|r| !r.is_stale())
                .map(|r| r.revision)
                .max()
                .unwrap_or(read);
            if newest <= read {
                for (t, r) in &mut resolved {
                    if r.as_ref().is_ok_and(Resolved::is_stale) {
                        *r = Err(FreshnessError::TenantStale {
                            tenant: (*t).to_owned(),
                            why: "a batch naming several tenants is answered at one revision, and this tenant's policy does not compile at it; ask for its items in a batch of their own".into(),
                        });
                    }
                }
                return Ok((read, resolved));
            }
            drop(resolved);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.cache.wait_for(newest, left).await?;
        }
    }

    /// Every item of a batch is decided on the committed state at one revision, the
    /// response's `revision`: each tenant's snapshot is resolved once (the first item
    /// naming it), and when the batch names several tenants they are resolved together at
    /// one revision ([`Self::resolve_at_one_revision`]).
    pub(crate) async fn batch_check_many(
        &self,
        caller: Option<&Admin>,
        req: pb::BatchCheckRequest,
    ) -> Result<pb::BatchCheckResponse, Status> {
        if req.checks.len() > self.config.max_batch {
            return Err(FieldError {
                field: "checks".into(),
                error: InputError::TooManyItems {
                    limit: self.config.max_batch,
                },
            }
            .into());
        }
        self.fresh(req.min_revision).await?;
        let decision_only = req.detail == pb::Detail::Decision as i32;
        // The tenants the items name (almost always one): a short list beats a map.
        let mut names: Vec<&str> = Vec::with_capacity(1);
        for item in &req.checks {
            let t = if item.tenant_id.is_empty() {
                req.tenant_id.as_str()
            } else {
                item.tenant_id.as_str()
            };
            if !names.contains(&t) {
                names.push(t);
            }
        }
        let (batch_revision, tenants) = match names.as_slice() {
            [one] => {
                let r = self.resolve(one, req.min_revision);
                let revision = r.as_ref().map_or(0, |r| r.revision);
                (revision, vec![(*one, r)])
            }
            _ => {
                self.resolve_at_one_revision(names, req.min_revision)
                    .await?
            }
        };
        let mut results = Vec::with_capacity(req.checks.len());
        for (i, item) in req.checks.iter().enumerate() {
            let result =
                match convert::check_request(item, Some(i), &req.tenant_id, &req.subject_id) {
                    Err(e) => {
                        self.count_error(Rpc::BatchCheck, tonic::Code::InvalidArgument);
                        pb::batch_check_result::Result::Error(pb::ItemError {
                            code: tonic::Code::InvalidArgument as i32,
                            message: e.to_string(),
                            field: e.field,
                        })
                    }
                    Ok((tenant, query)) => match refusal(caller, tenant) {
                        // This item only: the caller may ask about other tenants.
                        Some(refused) => {
                            let status = Status::from(refused);
                            self.count_error(Rpc::BatchCheck, status.code());
                            item_error(&status, convert::field(Some(i), "tenant_id"))
                        }
                        None => {
                            match tenants.iter().find(|(t, _)| *t == tenant).map(|(_, r)| r) {
                                Some(Ok(resolved)) if decision_only => {
                                    let reason = match resolved.snapshot() {
                                        Some(snapshot) => snapshot.check(&query).reason,
                                        None => Reason::UnknownTenant,
                                    };
                                    if let Some(m) = &self.metrics {
                                        m.decision(Rpc::BatchCheck, reason);
                                    }
                                    pb::batch_check_result::Result::Response(pb::CheckResponse {
                                        allowed: reason.allowed(),
                                        reason: convert::reason_to_pb(reason) as i32,
                                        revision: resolved.revision,
                                        ..Default::default()
                                    })
                                }
                                Some(Ok(resolved)) => {
                                    let explanation = explain_on(resolved, tenant, &query);
                                    self.count_decision(Rpc::BatchCheck, &explanation);
                                    pb::batch_check_result::Result::Response(
                                        convert::explanation_to_pb(explanation),
                                    )
                                }
                                Some(Err(e)) => {
                                    let status = Status::from(e.clone());
                                    self.count_error(Rpc::BatchCheck, status.code());
                                    item_error(&status, convert::field(Some(i), "tenant_id"))
                                }
                                // Unreachable: every valid item's tenant was resolved above.
                                None => {
                                    let status = Status::internal("batch tenant lookup failed");
                                    self.count_error(Rpc::BatchCheck, status.code());
                                    item_error(&status, convert::field(Some(i), "tenant_id"))
                                }
                            }
                        }
                    },
                };
            results.push(pb::BatchCheckResult {
                result: Some(result),
            });
        }
        let revision = if batch_revision == 0 {
            self.cache.revision()
        } else {
            batch_revision
        };
        Ok(pb::BatchCheckResponse { results, revision })
    }

    /// One page of LookupSubjects, on one snapshot.
    pub(crate) async fn lookup(
        &self,
        caller: Option<&Admin>,
        req: pb::LookupSubjectsRequest,
    ) -> Result<pb::LookupSubjectsResponse, Status> {
        let l = convert::lookup_request(&req)?;
        crate::telemetry::record_tenant(l.tenant);
        if let Some(refused) = refusal(caller, l.tenant) {
            return Err(refused.into());
        }
        // Another shard's tenant is refused at once, not after a min_revision wait
        // that could only end in UNAVAILABLE (which clients retry on the wrong replica).
        // Without a wait, `resolve` refuses it (no second hash on the hot path).
        if req.min_revision != 0 && !self.cache.filter().serves(l.tenant) {
            return Err(self.cache.not_served(l.tenant).into());
        }
        self.fresh(req.min_revision).await?;
        let resolved = self.resolve(l.tenant, req.min_revision)?;
        let Some(snapshot) = resolved.snapshot() else {
            // An unknown tenant has no subjects.
            return Ok(pb::LookupSubjectsResponse {
                revision: resolved.revision,
                ..Default::default()
            });
        };
        let (page, more) = snapshot.lookup_subjects(l.scope, l.action, &l.after, l.page_size);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => convert::page_token(l.tenant, l.scope, &l.action, last.subject),
            _ => String::new(),
        };
        let subjects = page
            .iter()
            .map(|a| {
                let q = Query {
                    subject: a.subject,
                    scope: l.scope,
                    action: l.action,
                };
                let ex = snapshot.explain(&q, &snapshot.check(&q));
                pb::AllowedSubject {
                    subject_id: a.subject.to_owned(),
                    reason: convert::reason_to_pb(ex.reason) as i32,
                    grant: ex.grant.map(convert::grant_to_pb),
                }
            })
            .collect();
        Ok(pb::LookupSubjectsResponse {
            subjects,
            next_page_token,
            revision: resolved.revision,
        })
    }

    pub(crate) async fn list(
        &self,
        caller: Option<&Admin>,
        req: pb::ListPermissionsRequest,
    ) -> Result<pb::ListPermissionsResponse, Status> {
        let (tenant, subject, scope) = convert::list_request(&req)?;
        crate::telemetry::record_tenant(tenant);
        if let Some(refused) = refusal(caller, tenant) {
            return Err(refused.into());
        }
        // Another shard's tenant is refused at once, not after a min_revision wait
        // that could only end in UNAVAILABLE (which clients retry on the wrong replica).
        // Without a wait, `resolve` refuses it (no second hash on the hot path).
        if req.min_revision != 0 && !self.cache.filter().serves(tenant) {
            return Err(self.cache.not_served(tenant).into());
        }
        self.fresh(req.min_revision).await?;
        let resolved = self.resolve(tenant, req.min_revision)?;
        let response = match resolved.snapshot() {
            Some(snapshot) => {
                let mut listing = snapshot.list(subject, scope);
                listing.revision = resolved.revision;
                convert::listing_to_pb(listing)
            }
            None => pb::ListPermissionsResponse {
                reason: pb::Reason::UnknownTenant as i32,
                revision: resolved.revision,
                ..Default::default()
            },
        };
        Ok(response)
    }
}
