//! authz: role-based authorization decisions with reasons, answered from memory.
//!
//! # Layout
//! - [`model`]: validated request values (ids, scopes, methods, paths) and limits.
//! - [`policy`]: the policy document ([`policy::source`]), its compiler
//!   ([`mod@policy::compile`]) into immutable per-tenant snapshots ([`policy::snapshot`]),
//!   route patterns and the most-specific-match trie ([`policy::pattern`]), the pure
//!   evaluator ([`policy::eval`]), decisions and their explanations
//!   ([`policy::decision`]), listings ([`policy::list`]) and incremental member changes
//!   ([`policy::update`]); expectation files ([`policy::expect`], `authzd test`) and the
//!   effective-access diff between two policies ([`policy::diff`], `authzd diff`).
//! - [`cache`]: the shared in-memory policy: tenant slots swapped atomically, and the
//!   applied revision.
//! - [`store`]: where policies come from: a file, reloaded on change
//!   ([`store::file`]), or PostgreSQL ([`store::postgres`] schema and reads,
//!   [`store::follow`] the live follower, [`store::sync`] apply/export), and the admin
//!   API's writes ([`store::admin`]).
//! - [`grpc`]: the `authz.v1.AuthorizationService` implementation, and Envoy's
//!   `envoy.service.auth.v3.Authorization` ([`grpc::envoy`]), the admin API
//!   `authz.v1.PolicyAdminService` ([`grpc::admin`], behind [`grpc::auth`]'s bearer
//!   tokens and client certificates, which can also guard the query service); [`pb`]
//!   the generated bindings.
//! - [`metrics`]: Prometheus metrics and their `/metrics` endpoint.
//! - [`authzen`]: the OpenID AuthZEN 1.0 HTTP/JSON API, a second front door to the query
//!   service (same evaluator, same snapshots).
//! - [`shard`]: which tenants a replica serves (all, a list, or a hash shard).
//! - [`reload`]: tokens files read again when they change (polling and SIGHUP).
//! - [`server`]: one listener with the query service, health and reflection; graceful
//!   shutdown; [`tls`] its TLS and client-certificate settings; [`transport`] the socket
//!   and HTTP/2 settings of every listener (TCP_NODELAY, keepalives, windows). [`config`] and [`cli`]:
//!   the `authzd` command line.
//!
//! # The path a Check takes
//! `grpc::service` validates the request (`grpc::convert`, INVALID_ARGUMENT naming the
//! field), finds the tenant's snapshot in the [`cache::Cache`] (a DashMap shard read
//! lock to find the slot, then `ArcSwap::load`; no lock held while evaluating), calls [`policy::TenantSnapshot::check`] (pure, no allocation), then explains
//! the [`policy::Decision`] in words and returns it.
#![forbid(unsafe_code)]

pub mod authzen;
pub mod cache;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod pb;
pub mod policy;
pub mod reload;
pub mod server;
pub mod shard;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
