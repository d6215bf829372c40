//! `authz.v1.AuthorizationService`.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::{self, FieldError};
use crate::{
    cache::Cache,
    model::InputError,
    pb::{self, authorization_service_server::AuthorizationServiceServer},
    policy::{Explanation, Query},
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
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            revision_wait: Duration::from_secs(1),
            max_batch: 1000,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The query service: a cheap handle on the cache.
#[derive(Clone, Debug)]
pub struct AuthzService {
    cache: Cache,
    config: ServiceConfig,
}

impl AuthzService {
    /// A service answering from `cache`.
    pub fn new(cache: Cache, config: ServiceConfig) -> Self {
        AuthzService { cache, config }
    }

    /// The service wrapped in its generated server, with message size limits.
    pub fn svc(self) -> AuthorizationServiceServer<Self> {
        let max = self.config.max_message_bytes;
        AuthorizationServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Decides a validated query in `tenant`.
    pub fn decide(&self, tenant: &str, q: &Query<'_>) -> pb::CheckResponse {
        let explanation = match self.cache.tenant(tenant) {
            Some(snapshot) => snapshot.explain(q, &snapshot.check(q)),
            None => Explanation::unknown_tenant(tenant, self.cache.revision()),
        };
        convert::explanation_to_pb(explanation)
    }

    /// Waits for `min_revision` (or fails); without one, only checks that a policy is
    /// loaded, without waiting.
    async fn fresh(&self, min_revision: u64) -> Result<(), Status> {
        if min_revision == 0 && self.cache.is_loaded() {
            return Ok(());
        }
        self.cache
            .wait_for(min_revision, self.config.revision_wait)
            .await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::authorization_service_server::AuthorizationService for AuthzService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let req = request.into_inner();
        let (tenant, query) = convert::check_request(&req, "", "", "")?;
        self.fresh(req.min_revision).await?;
        Ok(Response::new(self.decide(tenant, &query)))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let req = request.into_inner();
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
        let revision = self.cache.revision();
        let results = req
            .checks
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let prefix = format!("checks[{i}]");
                let result =
                    match convert::check_request(item, &prefix, &req.tenant_id, &req.subject_id) {
                        Ok((tenant, query)) => {
                            pb::batch_check_result::Result::Response(self.decide(tenant, &query))
                        }
                        Err(e) => pb::batch_check_result::Result::Error(pb::ItemError {
                            code: tonic::Code::InvalidArgument as i32,
                            message: e.to_string(),
                            field: e.field,
                        }),
                    };
                pb::BatchCheckResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(pb::BatchCheckResponse { results, revision }))
    }

    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        let req = request.into_inner();
        let (tenant, subject, scope) = convert::list_request(&req)?;
        self.fresh(req.min_revision).await?;
        let response = match self.cache.tenant(tenant) {
            Some(snapshot) => convert::listing_to_pb(snapshot.list(subject, scope)),
            None => pb::ListPermissionsResponse {
                reason: pb::Reason::UnknownTenant as i32,
                revision: self.cache.revision(),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}
