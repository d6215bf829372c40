//! `envoy.service.auth.v3.Authorization`: Envoy's (and Istio's) external authorization
//! API, answered by the same cache and evaluator as `authz.v1`, on the same server.
//!
//! Envoy's `ext_authz` HTTP filter sends each request's attributes; this service turns
//! them into a route check (`docs/semantics.md`) at the tenant root and answers in the
//! form Envoy acts on.
//!
//! # What is read
//! - method and path: `attributes.request.http.method` and `.path` (the query string
//!   is ignored, as for every route check);
//! - tenant: the `--envoy-tenant-header` header (default `x-tenant-id`), required;
//! - subject: the `--envoy-subject-header` header (default `x-subject-id`); absent or
//!   empty is anonymous (which may still call public endpoints).
//!
//! With `--envoy-jwt-payload-header` set (e.g. `x-jwt-payload`, which Envoy's
//! `jwt_authn` filter fills through `forward_payload_header` once a token verifies),
//! the subject comes only from that payload's `--envoy-subject-claim` (default `sub`),
//! never from the subject header, so a client cannot name itself; the tenant comes
//! from the `--envoy-tenant-claim` (default `tenant`), or from the tenant header when
//! the claim name is set to empty. A request without the payload header is anonymous,
//! with the tenant from the tenant header.
//!
//! # What is answered
//! | outcome | `status` | what Envoy does |
//! | --- | --- | --- |
//! | allowed | OK | forwards the request upstream with `x-authz-reason`, `x-authz-role` and `x-authz-revision` set (replacing any the client sent) |
//! | denied | PERMISSION_DENIED | answers 403 with `x-authz-reason` and `x-authz-revision` and the body `denied: REASON` |
//! | bad request (missing or invalid tenant, subject, method, path, JWT payload) | INVALID_ARGUMENT | answers 400 with `x-authz-reason: invalid_argument`, the problem in the body |
//! | no policy loaded yet, or stale beyond `--max-staleness` | UNAVAILABLE | answers 503 with `x-authz-reason: unavailable` |
//! | tenant of another shard (`--tenants`, `--tenant-shard`) | FAILED_PRECONDITION | answers 421 with `x-authz-reason: wrong_shard`, the shard it belongs to in the body |
//!
//! Nothing but an explained allow produces OK. Failures to decide are sent as denials,
//! never as `error_response`, which Envoy would let through where `failure_mode_allow`
//! is true. If the call itself fails (authzd down, an error status, a timeout), Envoy
//! denies, because the example configuration sets `failure_mode_allow: false`. gRPC
//! reflection does not list this service: the `envoy-types` crate exposes no encoded
//! descriptor set to register.

use std::{borrow::Cow, collections::HashMap, time::Duration};

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
        HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
        HttpStatusCode, OkHttpResponse,
    },
    pb::{envoy::service::auth::v3::attribute_context::HttpRequest, google::rpc},
};
use tonic::{Request, Response, Status};
use tracing::debug;

use super::{convert::FieldError, status};
use crate::{
    cache::{Cache, FreshnessError},
    metrics::{Metrics, Rpc},
    model::{self, InputError, Method},
    policy::{Action, Explanation, Query},
};

/// Response header naming the decision's reason (`granted`, `no_grant`, ...).
pub const REASON_HEADER: &str = "x-authz-reason";
/// Response header naming the granting role, on an allow through a role.
pub const ROLE_HEADER: &str = "x-authz-role";
/// Response header with the policy revision the decision was made on.
pub const REVISION_HEADER: &str = "x-authz-revision";

/// Where the Envoy service finds tenant and subject. Header names are lower-case, as
/// Envoy sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyConfig {
    /// Header naming the tenant.
    pub tenant_header: String,
    /// Header naming the subject (not read when `jwt_payload_header` is set).
    pub subject_header: String,
    /// Header with the verified JWT payload (base64url JSON), if tokens are used.
    pub jwt_payload_header: Option<String>,
    /// Claim naming the tenant; empty: the tenant header names it.
    pub tenant_claim: String,
    /// Claim naming the subject.
    pub subject_claim: String,
}

impl Default for EnvoyConfig {
    fn default() -> Self {
        EnvoyConfig {
            tenant_header: "x-tenant-id".into(),
            subject_header: "x-subject-id".into(),
            jwt_payload_header: None,
            tenant_claim: "tenant".into(),
            subject_claim: "sub".into(),
        }
    }
}

/// Why an Envoy check got no decision. Mapped to a denial in `status.rs`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvoyError {
    /// The request lacks a value or has a bad one.
    #[error(transparent)]
    Input(#[from] FieldError),
    /// No policy is loaded yet, or it is older than the staleness limit.
    #[error(transparent)]
    Freshness(#[from] FreshnessError),
}

/// `jwt_authn` writes the payload base64url-encoded, unpadded unless
/// `pad_forward_payload_header` is set; accept both.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The Envoy authorization service: a cheap handle on the cache.
#[derive(Clone, Debug)]
pub struct EnvoyAuthzService {
    cache: Cache,
    config: EnvoyConfig,
    metrics: Option<Metrics>,
    /// Deny (503) when the cache has not been confirmed current for this long.
    max_staleness: Option<Duration>,
}

impl EnvoyAuthzService {
    /// A service answering from `cache`, recording into `metrics` if given.
    pub fn new(cache: Cache, config: EnvoyConfig, metrics: Option<Metrics>) -> Self {
        EnvoyAuthzService {
            cache,
            config,
            metrics,
            max_staleness: None,
        }
    }

    /// The same service, denying with 503 while the cache has not been confirmed
    /// current within `max` (as the query service fails with UNAVAILABLE).
    pub fn fail_when_stale(self, max: Option<Duration>) -> Self {
        EnvoyAuthzService {
            max_staleness: max,
            ..self
        }
    }

    /// The service wrapped in its generated server, with message size limits.
    pub fn svc(self, max_message_bytes: usize) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// Decides one Envoy check request.
    pub fn decide(&self, req: &CheckRequest) -> Result<Explanation, EnvoyError> {
        let http = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| field("attributes.request.http", InputError::Empty))?;
        let method =
            Method::parse(&http.method).map_err(|e| field("attributes.request.http.method", e))?;
        let path = model::request_path(&http.path)
            .map_err(|e| field("attributes.request.http.path", e))?;
        let (tenant, subject) = self.identity(http)?;
        if !self.cache.is_loaded() {
            return Err(FreshnessError::NotLoaded.into());
        }
        if let Some(max) = self.max_staleness {
            self.cache.check_staleness(max)?;
        }
        let q = Query {
            subject: &subject,
            scope: "",
            action: Action::Route { method, path },
        };
        // One snapshot, and the revision it answers for (as Check does).
        let resolved = self.cache.resolve(&tenant, 0, self.max_staleness)?;
        let explanation = match resolved.snapshot() {
            Some(snapshot) => {
                let mut ex = snapshot.explain(&q, &snapshot.check(&q));
                ex.revision = resolved.revision;
                ex
            }
            None => Explanation::unknown_tenant(&tenant, resolved.revision),
        };
        debug!(
            %tenant, %subject, %method, path, allowed = explanation.allowed,
            explanation = %explanation.explanation, "envoy check"
        );
        Ok(explanation)
    }

    /// Tenant and subject (empty: anonymous), validated.
    fn identity<'a>(
        &self,
        http: &'a HttpRequest,
    ) -> Result<(Cow<'a, str>, Cow<'a, str>), FieldError> {
        let c = &self.config;
        let tenant_from_header = || -> Result<Cow<'a, str>, FieldError> {
            let t = header(http, &c.tenant_header)?.unwrap_or_default();
            model::tenant_id(t).map_err(|e| field(&c.tenant_header, e))?;
            Ok(Cow::Borrowed(t))
        };
        let Some(jwt_header) = &c.jwt_payload_header else {
            let tenant = tenant_from_header()?;
            let subject = header(http, &c.subject_header)?.unwrap_or_default();
            if !subject.is_empty() {
                model::subject_id(subject).map_err(|e| field(&c.subject_header, e))?;
            }
            return Ok((tenant, Cow::Borrowed(subject)));
        };
        let Some(encoded) = header(http, jwt_header)? else {
            return Ok((tenant_from_header()?, Cow::Borrowed("")));
        };
        let claims = jwt_claims(encoded).map_err(|e| field(jwt_header, e))?;
        let tenant = if c.tenant_claim.is_empty() {
            tenant_from_header()?
        } else {
            let t = claim(&claims, jwt_header, &c.tenant_claim)?;
            model::tenant_id(&t)
                .map_err(|e| field(&claim_field(jwt_header, &c.tenant_claim), e))?;
            Cow::Owned(t)
        };
        let subject = claim(&claims, jwt_header, &c.subject_claim)?;
        model::subject_id(&subject)
            .map_err(|e| field(&claim_field(jwt_header, &c.subject_claim), e))?;
        Ok((tenant, Cow::Owned(subject)))
    }

    fn record(&self, outcome: &Result<Explanation, EnvoyError>) {
        let Some(m) = &self.metrics else { return };
        match outcome {
            Ok(e) => m.decision(Rpc::EnvoyCheck, e.reason),
            Err(e) => m.error(Rpc::EnvoyCheck, status::envoy_denial(e).0),
        }
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthzService {
    #[tracing::instrument(
        level = "debug",
        name = "envoy.service.auth.v3.Authorization/Check",
        skip_all,
        fields(allowed = tracing::field::Empty, reason = tracing::field::Empty)
    )]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let _in_flight = self.metrics.as_ref().map(|m| m.start(Rpc::EnvoyCheck));
        let outcome = self.decide(request.get_ref());
        if let Ok(e) = &outcome {
            crate::telemetry::record_decision(e);
        }
        self.record(&outcome);
        Ok(Response::new(to_response(outcome)))
    }
}

fn field(name: &str, error: InputError) -> FieldError {
    FieldError {
        field: name.to_owned(),
        error,
    }
}

fn claim_field(header: &str, claim: &str) -> String {
    format!("{header}.{claim}")
}

/// A request header's value. Envoy sends lower-case names in `headers`, or, with
/// `encode_raw_headers`, every occurrence in `header_map`; a header given twice there
/// is ambiguous and rejected.
fn header<'a>(http: &'a HttpRequest, name: &str) -> Result<Option<&'a str>, FieldError> {
    if let Some(v) = http.headers.get(name) {
        return Ok(Some(v));
    }
    let mut found = None;
    for h in http.header_map.iter().flat_map(|m| &m.headers) {
        if h.key.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(field(
                    name,
                    InputError::Malformed("is given more than once"),
                ));
            }
            let value = if h.value.is_empty() {
                std::str::from_utf8(&h.raw_value)
                    .map_err(|_| field(name, InputError::Malformed("is not UTF-8")))?
            } else {
                h.value.as_str()
            };
            found = Some(value);
        }
    }
    Ok(found)
}

/// Decodes a forwarded JWT payload into its claims.
fn jwt_claims(encoded: &str) -> Result<serde_json::Map<String, serde_json::Value>, InputError> {
    let json = BASE64URL
        .decode(encoded.trim())
        .map_err(|_| InputError::Malformed("is not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| InputError::Malformed("is not a JSON object"))
}

fn claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    header: &str,
    name: &str,
) -> Result<String, FieldError> {
    match claims.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        None | Some(serde_json::Value::Null) => {
            Err(field(&claim_field(header, name), InputError::Empty))
        }
        Some(_) => Err(field(
            &claim_field(header, name),
            InputError::Malformed("must be a string"),
        )),
    }
}

fn header_option(key: &str, value: String) -> HeaderValueOption {
    #[expect(deprecated, reason = "`append` is deprecated; left unset")]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// The answer Envoy acts on. Only an explained allow is OK.
fn to_response(outcome: Result<Explanation, EnvoyError>) -> CheckResponse {
    match outcome {
        Ok(e) if e.allowed => {
            let mut headers = vec![
                header_option(REASON_HEADER, e.reason.as_str().to_owned()),
                header_option(REVISION_HEADER, e.revision.to_string()),
            ];
            let mut headers_to_remove = Vec::new();
            match e.grant {
                Some(g) => headers.push(header_option(ROLE_HEADER, g.role)),
                // A public allow names no role: drop one the client may have sent.
                None => headers_to_remove.push(ROLE_HEADER.to_owned()),
            }
            #[expect(deprecated, reason = "`dynamic_metadata` is deprecated; left unset")]
            let ok = OkHttpResponse {
                headers,
                headers_to_remove,
                dynamic_metadata: None,
                response_headers_to_add: Vec::new(),
                query_parameters_to_set: Vec::new(),
                query_parameters_to_remove: Vec::new(),
            };
            CheckResponse {
                status: Some(rpc_status(tonic::Code::Ok, "")),
                http_response: Some(HttpResponse::OkResponse(ok)),
                dynamic_metadata: None,
            }
        }
        Ok(e) => denied(
            tonic::Code::PermissionDenied,
            HttpStatusCode::Forbidden,
            e.reason.as_str(),
            Some(e.revision),
            format!("denied: {}\n", e.reason.as_str()),
        ),
        Err(err) => {
            let (code, http, reason) = status::envoy_denial(&err);
            denied(code, http, reason, None, format!("{err}\n"))
        }
    }
}

fn rpc_status(code: tonic::Code, message: &str) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

fn denied(
    code: tonic::Code,
    http: HttpStatusCode,
    reason: &str,
    revision: Option<u64>,
    body: String,
) -> CheckResponse {
    let mut headers = vec![
        header_option(REASON_HEADER, reason.to_owned()),
        header_option("content-type", "text/plain; charset=utf-8".to_owned()),
    ];
    if let Some(r) = revision {
        headers.push(header_option(REVISION_HEADER, r.to_string()));
    }
    CheckResponse {
        status: Some(rpc_status(code, body.trim_end())),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}

/// A check request as Envoy's HTTP filter sends it, with lower-case header names (for
/// tests and examples).
pub fn http_request(
    method: &str,
    path: &str,
    headers: impl IntoIterator<Item = (String, String)>,
) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    headers: headers.into_iter().collect::<HashMap<_, _>>(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;

    use super::*;
    use crate::policy::{PolicyDocument, compile, source::Format};

    fn loaded() -> Cache {
        let yaml = r#"
version: 1
endpoints:
  - {path: /health, methods: [GET], public: true}
roles:
  - id: reader
    routes: [{methods: [GET], path: "/docs/*"}]
tenants:
  - id: t
    subjects: [{id: ann}]
    assignments: [{subject: ann, role: reader}]
"#;
        let doc = PolicyDocument::parse(yaml, Format::Yaml, "t.yaml").unwrap();
        let cache = Cache::new();
        cache.replace_all(compile(&doc, "t.yaml", 1).unwrap(), 1);
        cache
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    async fn ask(svc: &EnvoyAuthzService, req: CheckRequest) -> (i32, Option<i32>) {
        let r = Authorization::check(svc, Request::new(req))
            .await
            .unwrap()
            .into_inner();
        let http = match r.http_response.unwrap() {
            HttpResponse::DeniedResponse(d) => Some(d.status.unwrap().code),
            HttpResponse::OkResponse(_) => None,
            HttpResponse::ErrorResponse(_) => panic!("never sent"),
        };
        (r.status.unwrap().code, http)
    }

    #[tokio::test]
    async fn nothing_loaded_is_a_503_denial_never_ok() {
        let svc = EnvoyAuthzService::new(Cache::new(), EnvoyConfig::default(), None);
        let req = http_request("GET", "/health", h(&[("x-tenant-id", "t")]));
        assert_eq!(
            ask(&svc, req).await,
            (tonic::Code::Unavailable as i32, Some(503))
        );
    }

    #[tokio::test]
    async fn a_stale_cache_is_a_503_denial_when_asked_to_fail_closed() {
        let cache = loaded();
        let svc = EnvoyAuthzService::new(cache.clone(), EnvoyConfig::default(), None);
        let req = || http_request("GET", "/health", h(&[("x-tenant-id", "t")]));
        assert_eq!(ask(&svc, req()).await, (0, None));
        // Wait (bounded) until the cache is measurably older than the zero allowance.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cache.staleness().is_zero() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let svc = svc.fail_when_stale(Some(Duration::ZERO));
        assert_eq!(
            ask(&svc, req()).await,
            (tonic::Code::Unavailable as i32, Some(503))
        );
    }

    #[tokio::test]
    async fn raw_headers_are_read_and_duplicates_rejected() {
        let svc = EnvoyAuthzService::new(loaded(), EnvoyConfig::default(), None);
        let raw = |pairs: &[(&str, &str)]| {
            let mut req = http_request("GET", "/docs/a", []);
            if let Some(http) = req
                .attributes
                .as_mut()
                .and_then(|a| a.request.as_mut())
                .and_then(|r| r.http.as_mut())
            {
                http.header_map = Some(HeaderMap {
                    headers: pairs
                        .iter()
                        .map(|(k, v)| HeaderValue {
                            key: (*k).into(),
                            value: String::new(),
                            raw_value: v.as_bytes().to_vec(),
                        })
                        .collect(),
                });
            }
            req
        };
        let req = raw(&[("X-Tenant-Id", "t"), ("x-subject-id", "ann")]);
        assert_eq!(ask(&svc, req).await, (0, None));
        let req = raw(&[
            ("x-tenant-id", "t"),
            ("x-subject-id", "ann"),
            ("x-subject-id", "bob"),
        ]);
        assert_eq!(
            ask(&svc, req).await,
            (tonic::Code::InvalidArgument as i32, Some(400))
        );
    }

    #[test]
    fn jwt_payloads_padded_or_not() {
        for encoded in ["eyJzdWIiOiJhbm4ifQ", "eyJzdWIiOiJhbm4ifQ=="] {
            let claims = jwt_claims(encoded).unwrap();
            assert_eq!(claims["sub"], "ann", "{encoded}");
        }
        assert!(jwt_claims("eyJzdWIiOiJhbm4ifQ.sig").is_err());
    }
}
