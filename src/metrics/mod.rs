//! Prometheus metrics: what the request path records, what is computed at scrape time,
//! and the `/metrics` endpoint ([`http`]) on its own port (`--metrics-listen`, off by
//! default).
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `authz_decisions_total` | counter | `rpc`, `result`, `reason` | decisions made (a BatchCheck counts each item) |
//! | `authz_request_errors_total` | counter | `rpc`, `code` | requests (BatchCheck: items) answered with an error instead of a decision |
//! | `authz_request_duration_seconds` | histogram | `rpc` | time in the handler, including any `min_revision` wait |
//! | `authz_requests_in_flight` | gauge | `rpc` | requests being handled now |
//! | `authz_policy_revision` | gauge | | the revision the cache has applied (0: nothing loaded) |
//! | `authz_policy_tenants` | gauge | | tenants in the cache |
//! | `authz_policy_staleness_seconds` | gauge | | seconds since the store last confirmed the cache current ([`Cache::staleness`]), or since the oldest stale tenant stopped compiling if that is longer; exported once a policy is loaded |
//! | `authz_policy_stale_tenants` | gauge | | tenants whose policy in the store does not compile (served from their last good snapshot at its own revision); exported once a policy is loaded |
//! | `authz_policy_last_reload_timestamp_seconds` | gauge | | Unix time the store last applied a policy version |
//! | `authz_policy_reload_failures_total` | counter | | policy versions the store rejected or could not read |
//! | `authz_db_connected` | gauge | | 1 while the store's database connection is up, 0 while down; only exported once a store reports it |
//! | `authz_admin_api_enabled` | gauge | | 1 when the admin API is served, 0 when it is off |
//! | `authz_build_info` | gauge | `version` | always 1 |
//! | `process_*` | | | CPU seconds, resident and virtual memory, open and maximum fds, start time (Linux, from `/proc`; [`process`]) |
//!
//! `rpc`: `check`, `batch_check`, `list_permissions` and `lookup_subjects` (no decisions),
//! `envoy_check`; in `authz_request_errors_total` also `admin`: admin API requests
//! refused before their handler ran (they do not decode, or are over the size limit).
//! `result`: `allowed` (reasons `granted`, `public`) or `denied` (the other reasons).
//! `code`: the gRPC status code in snake case (`invalid_argument`, `unauthenticated`,
//! `permission_denied`, `unavailable`, ...), every code but OK.
//!
//! # The request path
//! Every series a request can touch is created in [`Metrics::new`] and kept as a handle
//! in structs indexed by enums ([`Rpc`], [`Reason`]); recording is a `match` and a
//! relaxed atomic add: no label hashing, no lock, no allocation per request. Series
//! start at zero, so a rate over a never-seen reason is 0 rather than absent.
//!
//! The policy gauges are computed when scraped, from the [`Cache`] and the store's
//! [`PolicySource`], so neither the request path nor the store does anything for them.

pub mod histogram;
pub mod http;
#[cfg(target_os = "linux")]
mod process;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering::Relaxed},
    },
    time::{Instant, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};
use tokio::sync::watch;

use crate::{cache::Cache, policy::Reason, store::file::ReloadStatus};
pub use histogram::LatencyHistogram;

/// The RPC a request came in on (label `rpc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// `authz.v1.AuthorizationService/Check`.
    Check,
    /// `authz.v1.AuthorizationService/BatchCheck`.
    BatchCheck,
    /// `authz.v1.AuthorizationService/ListPermissions`.
    ListPermissions,
    /// `authz.v1.AuthorizationService/LookupSubjects`.
    LookupSubjects,
    /// `envoy.service.auth.v3.Authorization/Check`.
    EnvoyCheck,
}

impl Rpc {
    /// Every RPC.
    pub const ALL: [Rpc; 5] = [
        Rpc::Check,
        Rpc::BatchCheck,
        Rpc::ListPermissions,
        Rpc::LookupSubjects,
        Rpc::EnvoyCheck,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Check => "check",
            Rpc::BatchCheck => "batch_check",
            Rpc::ListPermissions => "list_permissions",
            Rpc::LookupSubjects => "lookup_subjects",
            Rpc::EnvoyCheck => "envoy_check",
        }
    }
}

/// Every status code a request can end with instead of a decision (label `code`): all
/// of gRPC's but OK, counted as they are, so a caller refused for missing credentials
/// (`unauthenticated`) or another tenant (`permission_denied`) is not mistaken for a
/// failure of ours (`internal`).
#[cfg(test)]
const ERROR_CODES: [tonic::Code; 16] = [
    tonic::Code::Cancelled,
    tonic::Code::Unknown,
    tonic::Code::InvalidArgument,
    tonic::Code::DeadlineExceeded,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::PermissionDenied,
    tonic::Code::ResourceExhausted,
    tonic::Code::FailedPrecondition,
    tonic::Code::Aborted,
    tonic::Code::OutOfRange,
    tonic::Code::Unimplemented,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
    tonic::Code::DataLoss,
    tonic::Code::Unauthenticated,
];

/// The label value of a status code: its name in snake case, as gRPC's own
/// instrumentation (`grpc_code`) spells it in lower case.
fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::Unknown => "unknown",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::OutOfRange => "out_of_range",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::Internal => "internal",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DataLoss => "data_loss",
        tonic::Code::Unauthenticated => "unauthenticated",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rpc: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// One handle per reason.
#[derive(Debug)]
struct ByReason<T> {
    granted: T,
    public: T,
    unknown_tenant: T,
    unknown_subject: T,
    subject_disabled: T,
    no_grant: T,
    no_matching_rule: T,
    method_not_allowed: T,
}

impl<T> ByReason<T> {
    fn new(mut f: impl FnMut(Reason) -> T) -> Self {
        ByReason {
            granted: f(Reason::Granted),
            public: f(Reason::Public),
            unknown_tenant: f(Reason::UnknownTenant),
            unknown_subject: f(Reason::UnknownSubject),
            subject_disabled: f(Reason::SubjectDisabled),
            no_grant: f(Reason::NoGrant),
            no_matching_rule: f(Reason::NoMatchingRule),
            method_not_allowed: f(Reason::MethodNotAllowed),
        }
    }

    fn get(&self, r: Reason) -> &T {
        match r {
            Reason::Granted => &self.granted,
            Reason::Public => &self.public,
            Reason::UnknownTenant => &self.unknown_tenant,
            Reason::UnknownSubject => &self.unknown_subject,
            Reason::SubjectDisabled => &self.subject_disabled,
            Reason::NoGrant => &self.no_grant,
            Reason::NoMatchingRule => &self.no_matching_rule,
            Reason::MethodNotAllowed => &self.method_not_allowed,
        }
    }
}

/// One handle per error status code, indexed by the code's number (OK, 0, is never
/// counted: its slot is there so that indexing needs no offset).
#[derive(Debug)]
struct ByError<T> {
    by_code: [T; 17],
}

impl<T> ByError<T> {
    fn new(mut f: impl FnMut(tonic::Code) -> T) -> Self {
        ByError {
            by_code: std::array::from_fn(|i| {
                f(tonic::Code::from_i32(i32::try_from(i).unwrap_or(2)))
            }),
        }
    }

    fn get(&self, c: tonic::Code) -> Option<&T> {
        self.by_code.get(c as usize)
    }
}

/// One RPC's series.
#[derive(Debug)]
struct RpcSeries {
    /// `None` for ListPermissions, which makes no decisions.
    decisions: Option<ByReason<Counter>>,
    errors: ByError<Counter>,
    latency: LatencyHistogram,
    in_flight: Gauge,
}

/// One handle per RPC.
#[derive(Debug)]
struct ByRpc<T> {
    check: T,
    batch_check: T,
    list_permissions: T,
    lookup_subjects: T,
    envoy_check: T,
}

impl<T> ByRpc<T> {
    fn new(mut f: impl FnMut(Rpc) -> T) -> Self {
        ByRpc {
            check: f(Rpc::Check),
            batch_check: f(Rpc::BatchCheck),
            list_permissions: f(Rpc::ListPermissions),
            lookup_subjects: f(Rpc::LookupSubjects),
            envoy_check: f(Rpc::EnvoyCheck),
        }
    }

    fn get(&self, rpc: Rpc) -> &T {
        match rpc {
            Rpc::Check => &self.check,
            Rpc::BatchCheck => &self.batch_check,
            Rpc::ListPermissions => &self.list_permissions,
            Rpc::LookupSubjects => &self.lookup_subjects,
            Rpc::EnvoyCheck => &self.envoy_check,
        }
    }
}

/// What a policy store reports about its reloads, read at scrape time. (How current
/// the cache is, the store records in the cache itself: [`Cache::confirm`].)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Freshness {
    /// When the store last applied a policy version (the first load included).
    pub reloaded_at: Option<SystemTime>,
    /// Versions the store rejected, and failures to read the source.
    pub reload_failures: u64,
}

/// A policy store's freshness, as [`Metrics`] reads it on each scrape. A store without
/// a running reloader can pass a fixed [`Freshness`].
pub trait PolicySource: std::fmt::Debug + Send + Sync + 'static {
    /// The current freshness.
    fn freshness(&self) -> Freshness;
}

impl PolicySource for Freshness {
    fn freshness(&self) -> Freshness {
        self.clone()
    }
}

impl PolicySource for watch::Receiver<ReloadStatus> {
    fn freshness(&self) -> Freshness {
        let s = self.borrow();
        Freshness {
            reloaded_at: s.reloaded_at,
            reload_failures: s.failures,
        }
    }
}

impl PolicySource for watch::Receiver<crate::store::follow::FollowStatus> {
    fn freshness(&self) -> Freshness {
        let s = self.borrow();
        Freshness {
            reloaded_at: s.applied_at,
            reload_failures: s.failures,
        }
    }
}

/// `authz_db_connected`: not reported yet, down, up.
const DB_UNKNOWN: u8 = 0;
const DB_DOWN: u8 = 1;
const DB_UP: u8 = 2;

/// The metrics a server records, and their registry. A cheap, cloneable handle.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rpcs: ByRpc<RpcSeries>,
    /// `authz_request_errors_total{rpc="admin"}`: admin requests refused before their
    /// handler (they do not decode, or are over the size limit).
    admin_errors: ByError<Counter>,
    db_connected: Arc<AtomicU8>,
    admin_api: Gauge,
}

impl Metrics {
    /// Creates every series. `source` reports the store's reloads (`None`: the
    /// last-reload and reload-failure metrics are not exported).
    pub fn new(cache: Cache, source: Option<Box<dyn PolicySource>>) -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<RpcLabels, LatencyHistogram>::default();
        let in_flight = Family::<RpcLabels, Gauge>::default();
        let rpcs = ByRpc::new(|rpc| {
            let rpc_labels = RpcLabels { rpc: rpc.as_str() };
            RpcSeries {
                decisions: (rpc != Rpc::ListPermissions).then(|| {
                    ByReason::new(|reason| {
                        decisions
                            .get_or_create(&DecisionLabels {
                                rpc: rpc.as_str(),
                                result: if reason.allowed() {
                                    "allowed"
                                } else {
                                    "denied"
                                },
                                reason: reason.as_str(),
                            })
                            .clone()
                    })
                }),
                errors: ByError::new(|code| {
                    // OK is no error: its slot holds a counter no family exports.
                    if code == tonic::Code::Ok {
                        return Counter::default();
                    }
                    errors
                        .get_or_create(&ErrorLabels {
                            rpc: rpc.as_str(),
                            code: code_label(code),
                        })
                        .clone()
                }),
                latency: latency.get_or_create(&rpc_labels).clone(),
                in_flight: in_flight.get_or_create(&rpc_labels).clone(),
            }
        });
        let admin_errors = ByError::new(|code| {
            if code == tonic::Code::Ok {
                return Counter::default();
            }
            errors
                .get_or_create(&ErrorLabels {
                    rpc: "admin",
                    code: code_label(code),
                })
                .clone()
        });
        registry.register(
            "authz_decisions",
            "Decisions made, by RPC, result and reason (a BatchCheck counts each item)",
            decisions,
        );
        registry.register(
            "authz_request_errors",
            "Requests (BatchCheck: items) answered with an error instead of a decision, by RPC and gRPC code",
            errors,
        );
        registry.register(
            "authz_request_duration_seconds",
            "Time spent handling a request, by RPC, including any min_revision wait",
            latency,
        );
        registry.register(
            "authz_requests_in_flight",
            "Requests being handled, by RPC",
            in_flight,
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "authz_build_info",
            "The running build: always 1, with the version as a label",
            build,
        );
        let admin_api = Gauge::default();
        registry.register(
            "authz_admin_api_enabled",
            "1 when the admin API (authz.v1.PolicyAdminService) is served, 0 when it is off",
            admin_api.clone(),
        );
        #[cfg(target_os = "linux")]
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        let db_connected = Arc::new(AtomicU8::new(DB_UNKNOWN));
        registry.register_collector(Box::new(PolicyCollector {
            cache,
            source,
            db_connected: Arc::clone(&db_connected),
        }));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                rpcs,
                admin_errors,
                db_connected,
                admin_api,
            }),
        }
    }

    /// Marks a request of `rpc` as started: in flight until the returned guard drops,
    /// which records its duration.
    pub fn start(&self, rpc: Rpc) -> InFlight<'_> {
        let series = self.inner.rpcs.get(rpc);
        series.in_flight.inc();
        InFlight {
            series,
            started: Instant::now(),
        }
    }

    /// Counts a decision.
    pub fn decision(&self, rpc: Rpc, reason: Reason) {
        if let Some(d) = &self.inner.rpcs.get(rpc).decisions {
            d.get(reason).inc();
        }
    }

    /// Counts a request (or BatchCheck item) answered with an error status.
    pub fn error(&self, rpc: Rpc, code: tonic::Code) {
        if let Some(counter) = self.inner.rpcs.get(rpc).errors.get(code) {
            counter.inc();
        }
    }

    /// Counts an admin request (`authz.v1.PolicyAdminService`) refused before its handler
    /// ran: it does not decode, or is over the size limit ([`crate::grpc::rescue`]).
    pub fn admin_error(&self, code: tonic::Code) {
        if let Some(counter) = self.inner.admin_errors.get(code) {
            counter.inc();
        }
    }

    /// For a store with a database: whether its connection is up. `authz_db_connected`
    /// is exported from the first call on, so a server without a database does not
    /// report a connection it does not have.
    pub fn set_db_connected(&self, connected: bool) {
        self.inner
            .db_connected
            .store(if connected { DB_UP } else { DB_DOWN }, Relaxed);
    }

    /// Whether the admin API is served (`authz_admin_api_enabled`).
    pub fn set_admin_api_enabled(&self, enabled: bool) {
        self.inner.admin_api.set(i64::from(enabled));
    }

    /// Decisions counted so far for `rpc` and `reason` (tests and benchmarks).
    pub fn decisions(&self, rpc: Rpc, reason: Reason) -> u64 {
        self.inner
            .rpcs
            .get(rpc)
            .decisions
            .as_ref()
            .map_or(0, |d| d.get(reason).get())
    }

    /// Every metric in the OpenMetrics text format, `# EOF` included.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}

/// A request in flight; dropping it ends the request and records its duration.
#[derive(Debug)]
#[must_use = "the request ends when the guard drops"]
pub struct InFlight<'a> {
    series: &'a RpcSeries,
    started: Instant,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.series.latency.observe(self.started.elapsed());
        self.series.in_flight.dec();
    }
}

/// The policy gauges, computed on each scrape.
#[derive(Debug)]
struct PolicyCollector {
    cache: Cache,
    source: Option<Box<dyn PolicySource>>,
    db_connected: Arc<AtomicU8>,
}

/// Encodes a gauge. (`help` ends with a period: unlike `Registry::register`, a
/// collector's descriptor adds none.)
fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "authz_policy_revision",
            "The policy revision the cache has applied (0: nothing loaded yet).",
            // Revisions count loads and changes; they stay far below i64::MAX.
            i64::try_from(self.cache.revision()).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "authz_policy_tenants",
            "Tenants in the cache.",
            i64::try_from(self.cache.tenant_count()).unwrap_or(i64::MAX),
        )?;
        if self.cache.is_loaded() {
            // A tenant whose source does not compile is as stale as the time since then.
            let stale = self.cache.stale_tenants();
            let oldest = stale.iter().map(|(_, d)| *d).max().unwrap_or_default();
            gauge(
                &mut encoder,
                "authz_policy_staleness_seconds",
                "Seconds since the store last confirmed the cache holds its current policy (or since the oldest stale tenant stopped compiling, if longer).",
                self.cache.staleness().max(oldest).as_secs_f64(),
            )?;
            gauge(
                &mut encoder,
                "authz_policy_stale_tenants",
                "Tenants whose policy in the store does not compile: answered from their last good policy at its revision, or UNAVAILABLE.",
                i64::try_from(stale.len()).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(source) = &self.source {
            let f = source.freshness();
            if let Some(at) = f.reloaded_at {
                gauge(
                    &mut encoder,
                    "authz_policy_last_reload_timestamp_seconds",
                    "Unix time the store last applied a policy version.",
                    unix_seconds(at),
                )?;
            }
            let failures = ConstCounter::new(f.reload_failures);
            failures.encode(encoder.encode_descriptor(
                "authz_policy_reload_failures",
                "Policy versions the store rejected, and failures to read the source.",
                None,
                failures.metric_type(),
            )?)?;
        }
        match self.db_connected.load(Relaxed) {
            DB_UNKNOWN => {}
            state => gauge(
                &mut encoder,
                "authz_db_connected",
                "1 while the store's database connection is up, 0 while it is down.",
                i64::from(state == DB_UP),
            )?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const REASONS: [Reason; 8] = [
        Reason::Granted,
        Reason::Public,
        Reason::UnknownTenant,
        Reason::UnknownSubject,
        Reason::SubjectDisabled,
        Reason::NoGrant,
        Reason::NoMatchingRule,
        Reason::MethodNotAllowed,
    ];

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_series_exists_from_the_start_and_moves() {
        let m = Metrics::new(Cache::new(), None);
        let text = m.encode().unwrap();
        assert!(text.ends_with("# EOF\n"));
        for rpc in Rpc::ALL {
            let r = rpc.as_str();
            for reason in REASONS {
                let result = if reason.allowed() {
                    "allowed"
                } else {
                    "denied"
                };
                let series = format!(
                    "authz_decisions_total{{rpc=\"{r}\",result=\"{result}\",reason=\"{}\"}}",
                    reason.as_str()
                );
                let want = (rpc != Rpc::ListPermissions).then_some(0.0);
                assert_eq!(sample(&text, &series), want, "{series}");
            }
            for code in ERROR_CODES {
                let series = format!(
                    "authz_request_errors_total{{rpc=\"{r}\",code=\"{}\"}}",
                    code_label(code)
                );
                assert_eq!(sample(&text, &series), Some(0.0), "{series}");
            }
            let series = format!("authz_requests_in_flight{{rpc=\"{r}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        assert_eq!(sample(&text, "authz_policy_revision"), Some(0.0));
        assert_eq!(
            sample(
                &text,
                &format!(
                    "authz_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, "authz_admin_api_enabled"), Some(0.0));
        assert!(!text.contains("authz_db_connected"), "not reported yet");
        assert!(!text.contains("staleness"), "nothing loaded");
        assert!(!text.contains("reload"), "no source");

        {
            let _guard = m.start(Rpc::Check);
            m.decision(Rpc::Check, Reason::NoGrant);
            m.decision(Rpc::ListPermissions, Reason::Granted);
            m.error(Rpc::EnvoyCheck, tonic::Code::InvalidArgument);
            m.error(Rpc::Check, tonic::Code::Unauthenticated);
            m.error(Rpc::BatchCheck, tonic::Code::PermissionDenied);
            m.error(Rpc::Check, tonic::Code::Ok);
            let text = m.encode().unwrap();
            assert_eq!(
                sample(&text, "authz_requests_in_flight{rpc=\"check\"}"),
                Some(1.0)
            );
        }
        m.set_db_connected(false);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                "authz_decisions_total{rpc=\"check\",result=\"denied\",reason=\"no_grant\"}"
            ),
            Some(1.0)
        );
        assert_eq!(m.decisions(Rpc::Check, Reason::NoGrant), 1);
        assert_eq!(
            sample(
                &text,
                "authz_request_errors_total{rpc=\"envoy_check\",code=\"invalid_argument\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "authz_request_errors_total{rpc=\"check\",code=\"unauthenticated\"}"
            ),
            Some(1.0),
            "counted as it is, not as internal"
        );
        assert_eq!(
            sample(
                &text,
                "authz_request_errors_total{rpc=\"batch_check\",code=\"permission_denied\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "authz_request_errors_total{rpc=\"check\",code=\"internal\"}"
            ),
            Some(0.0)
        );
        assert!(!text.contains("code=\"ok\""), "OK is no error");
        assert_eq!(
            sample(&text, "authz_requests_in_flight{rpc=\"check\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "authz_request_duration_seconds_count{rpc=\"check\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "authz_db_connected"), Some(0.0));
        m.set_db_connected(true);
        assert_eq!(
            sample(&m.encode().unwrap(), "authz_db_connected"),
            Some(1.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_come_from_proc() {
        let text = Metrics::new(Cache::new(), None).encode().unwrap();
        let cpu = sample(&text, "process_cpu_seconds_total").unwrap();
        assert!(cpu >= 0.0, "{text}");
        assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e5);
        assert!(sample(&text, "process_virtual_memory_bytes").unwrap() > 1e5);
        assert!(sample(&text, "process_open_fds").unwrap() >= 3.0);
        assert!(sample(&text, "process_max_fds").unwrap() >= 3.0);
        let started = sample(&text, "process_start_time_seconds").unwrap();
        let now = unix_seconds(SystemTime::now());
        assert!(
            (now - 24.0 * 3600.0..=now + 1.0).contains(&started),
            "{started} vs {now}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
    }

    #[test]
    fn freshness_is_computed_at_scrape_time() {
        let source = Freshness {
            reloaded_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            reload_failures: 2,
        };
        let cache = Cache::new();
        cache.publish(3);
        let m = Metrics::new(cache, Some(Box::new(source)));
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "authz_policy_revision"), Some(3.0));
        let stale = sample(&text, "authz_policy_staleness_seconds").unwrap();
        assert!((0.0..60.0).contains(&stale), "{stale}");
        assert_eq!(
            sample(&text, "authz_policy_last_reload_timestamp_seconds"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            sample(&text, "authz_policy_reload_failures_total"),
            Some(2.0)
        );
    }
}
