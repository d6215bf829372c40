//! Every error the query service returns is mapped to a gRPC status here, and only here.
//!
//! | error | status |
//! | --- | --- |
//! | bad request value ([`FieldError`]) | INVALID_ARGUMENT, naming the field |
//! | nothing loaded yet | UNAVAILABLE |
//! | `min_revision` not reached in time | UNAVAILABLE (retry) |
//! | cache staler than `--max-staleness` | UNAVAILABLE |
//! | tenant not served by this replica (`--tenants`, `--tenant-shard`; [`FreshnessError::NotServed`]) | FAILED_PRECONDITION, naming the shard it belongs to |
//! | query credential limited to other tenants ([`TenantRefused`]) | PERMISSION_DENIED |
//!
//! | request does not decode (tonic's INTERNAL, rewritten in [`super::rescue`]) | INVALID_ARGUMENT, naming the field |
//! | request over `--max-message-bytes` (tonic's OUT_OF_RANGE, rewritten in [`super::rescue`]) | RESOURCE_EXHAUSTED |
//!
//! Unknown tenants and subjects are deny reasons, not errors. Nothing here is ever an
//! allow.
//!
//! The admin service ([`AdminRequestError`], [`AdminError`]):
//!
//! | error | status |
//! | --- | --- |
//! | bad request value, invalid policy document | INVALID_ARGUMENT, naming the field or the problem |
//! | token not limited to this tenant, or not to all tenants | PERMISSION_DENIED |
//! | row to change or delete missing | NOT_FOUND |
//! | row to create exists (unique violation, 23505) | ALREADY_EXISTS |
//! | built-in role, keys, checks and validation triggers (23xxx) | FAILED_PRECONDITION, with the database's message |
//! | a write to a read-only database (25006: a standby) | FAILED_PRECONDITION, saying the admin API needs the primary |
//! | Watch from a revision older than the retained change log | OUT_OF_RANGE |
//! | database unreachable or not migrated; Watch ended by shutdown | UNAVAILABLE |
//! | anything else | INTERNAL (logged) |
//!
//! Missing or wrong credentials are UNAUTHENTICATED, from [`super::auth::AdminAuth`].
//!
//! The Envoy service answers every request with a `CheckResponse`; a request it cannot
//! decide is denied ([`envoy_denial`]):
//!
//! | error | `CheckResponse.status` | HTTP status | `x-authz-reason` |
//! | --- | --- | --- | --- |
//! | bad request value ([`FieldError`]) | INVALID_ARGUMENT | 400 | `invalid_argument` |
//! | nothing loaded yet, or stale beyond `max_staleness` | UNAVAILABLE | 503 | `unavailable` |
//! | tenant not served by this replica | FAILED_PRECONDITION | 421 | `wrong_shard` |
//!
//! Why FAILED_PRECONDITION for a tenant of another shard, not UNAVAILABLE: retrying the
//! same replica can never succeed, and clients retry UNAVAILABLE; the request was routed
//! to the wrong replica set, which the message names (`shard 1/2`) so the router can be
//! fixed. It is never an "unknown tenant" deny, which would be a wrong answer.

use envoy_types::ext_authz::v3::pb::HttpStatusCode;
use tonic::{Code, Status};

use tracing::error;

use super::{
    admin::AdminRequestError, convert::FieldError, envoy::EnvoyError, service::TenantRefused,
};
use crate::{cache::FreshnessError, store::admin::AdminError};

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<TenantRefused> for Status {
    fn from(e: TenantRefused) -> Self {
        Status::permission_denied(e.to_string())
    }
}

impl From<FreshnessError> for Status {
    fn from(e: FreshnessError) -> Self {
        match e {
            FreshnessError::NotServed { .. } => Status::failed_precondition(e.to_string()),
            FreshnessError::NotLoaded
            | FreshnessError::Stale { .. }
            | FreshnessError::TenantStale { .. }
            | FreshnessError::RevisionNotReached { .. } => Status::unavailable(e.to_string()),
        }
    }
}

impl From<AdminRequestError> for Status {
    fn from(e: AdminRequestError) -> Self {
        match e {
            AdminRequestError::Field { .. } => Status::invalid_argument(e.to_string()),
            AdminRequestError::Denied(m) => Status::permission_denied(m),
            AdminRequestError::Store(e) => e.into(),
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(m) => Status::not_found(m),
            AdminError::AlreadyExists(m) => Status::already_exists(m),
            AdminError::Precondition(m) => Status::failed_precondition(m),
            AdminError::Invalid(m) => Status::invalid_argument(m),
            AdminError::OutOfRange(m) => Status::out_of_range(m),
            // Logged once per outage by the admin service, not once per request.
            AdminError::Unavailable(_) => Status::unavailable(e.to_string()),
            AdminError::Db(_) => {
                error!(cause = %e, "admin request failed");
                Status::internal(e.to_string())
            }
        }
    }
}

/// How an Envoy check that got no decision is denied: the gRPC code for
/// `CheckResponse.status`, the HTTP status Envoy answers with, and the reason header.
pub fn envoy_denial(e: &EnvoyError) -> (Code, HttpStatusCode, &'static str) {
    match e {
        EnvoyError::Input(_) => (
            Code::InvalidArgument,
            HttpStatusCode::BadRequest,
            "invalid_argument",
        ),
        EnvoyError::Freshness(FreshnessError::NotServed { .. }) => (
            Code::FailedPrecondition,
            HttpStatusCode::MisdirectedRequest,
            "wrong_shard",
        ),
        EnvoyError::Freshness(_) => (
            Code::Unavailable,
            HttpStatusCode::ServiceUnavailable,
            "unavailable",
        ),
    }
}
