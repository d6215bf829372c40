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

use tonic::Status;

use super::convert::FieldError;
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
