//! Every error the query service returns is mapped to a gRPC status here, and only here.
//!
//! | error | status |
//! | --- | --- |
//! | bad request value ([`FieldError`]) | INVALID_ARGUMENT, naming the field |
//! | nothing loaded yet | UNAVAILABLE |
//! | `min_revision` not reached in time | UNAVAILABLE (retry) |
//!
//! Unknown tenants and subjects are deny reasons, not errors. Nothing here is ever an
//! allow.
//!
//! The Envoy service answers every request with a `CheckResponse`; a request it cannot
//! decide is denied ([`envoy_denial`]):
//!
//! | error | `CheckResponse.status` | HTTP status | `x-authz-reason` |
//! | --- | --- | --- | --- |
//! | bad request value ([`FieldError`]) | INVALID_ARGUMENT | 400 | `invalid_argument` |
//! | nothing loaded yet, or stale beyond `max_staleness` | UNAVAILABLE | 503 | `unavailable` |

use envoy_types::ext_authz::v3::pb::HttpStatusCode;
use tonic::{Code, Status};

use super::{convert::FieldError, envoy::EnvoyError};
use crate::cache::FreshnessError;

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<FreshnessError> for Status {
    fn from(e: FreshnessError) -> Self {
        Status::unavailable(e.to_string())
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
        EnvoyError::Freshness(_) => (
            Code::Unavailable,
            HttpStatusCode::ServiceUnavailable,
            "unavailable",
        ),
    }
}
