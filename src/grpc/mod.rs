//! The gRPC services: translate the request, delegate to the evaluator, translate back.
//! Wire types stay here; the domain never sees them. [`service`] is `authz.v1`;
//! [`envoy`] is Envoy's external authorization API over the same cache; [`admin`] is
//! `authz.v1.PolicyAdminService` over PostgreSQL, behind [`auth`]'s bearer tokens;
//! [`rescue`] gives tonic's own refusals (undecodable or oversized requests) our codes.

pub mod admin;
pub mod auth;
pub mod convert;
pub mod envoy;
pub mod rescue;
pub mod service;
pub mod status;
pub mod trace;

pub use admin::PolicyAdmin;
pub use envoy::{EnvoyAuthzService, EnvoyConfig};
pub use service::{AuthzService, ServiceConfig};
