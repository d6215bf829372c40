//! The gRPC query service: translate the request, delegate to the evaluator, translate
//! back. Wire types stay here; the domain never sees them.

pub mod convert;
pub mod service;
pub mod status;

pub use service::{AuthzService, ServiceConfig};
