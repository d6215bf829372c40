//! The OpenID AuthZEN Authorization API 1.0 over HTTP/JSON (axum), on its own listener
//! (`--http-listen`). A second front door to the same evaluator and snapshots as gRPC:
//! every request becomes the `authz.v1` request it means and is answered by
//! [`AuthzService`], so both doors give the same decisions at the same revisions.
//!
//! One PDP per tenant, at base path `/tenants/{tenant}` (docs/authzen.md):
//!
//! | method and path | answer |
//! | --- | --- |
//! | `POST /tenants/{t}/access/v1/evaluation` | `{"decision": bool}` (a deny is 200) |
//! | `POST /tenants/{t}/access/v1/evaluations` | `{"evaluations": [...]}`, in request order; `options.evaluations_semantic` |
//! | `POST /tenants/{t}/access/v1/search/subject` | LookupSubjects: `{"results": [{"type", "id"}], "page": {"next_token"}}` |
//! | `POST /tenants/{t}/access/v1/search/action` | methods allowed on a route, or permissions held at a scope |
//! | `POST /tenants/{t}/access/v1/search/resource` | scopes (`scope`) where the subject may do the action, or routes (`route`) it may call with that method |
//! | `GET /.well-known/authzen-configuration/tenants/{t}` | discovery |
//! | the same without `/tenants/{t}` | the `--http-default-tenant` PDP, else 404 saying to use `/tenants/{tenant}/...` |
//!
//! Mapping: `subject.id` is the subject; a resource of type `route` makes a route check
//! (`action.name` the method, `resource.id` the path); any other type a permission check
//! (`action.name` the permission) at the scope `resource.properties.scope`, or
//! `resource.id` for type `scope`, else the tenant root. Errors: 400 naming the field
//! (malformed JSON, a non-JSON content type, an empty body, a missing or mistyped
//! attribute), 401 with `WWW-Authenticate` when query credentials are required and
//! missing, 403 for a tenant the credentials may not ask about, 421 for a tenant this
//! replica does not serve (`--tenants`, `--tenant-shard`; the message names its shard),
//! 503 when the policy cannot be served; the body is the message, as text. `X-Request-ID` is echoed.
//!
//! With `--tls-cert` the listener serves HTTPS ([`serve_tls`]) with the gRPC listener's
//! certificate and key; client certificates are verified as on gRPC, and a request without
//! a bearer token is judged by its connection's certificate (`cert:` lines), as on gRPC.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequestParts, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt,
};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info};

use crate::{
    grpc::{
        AuthzService,
        auth::{Admin, common_name},
        convert,
    },
    metrics::Rpc,
    model::{self, Method},
    pb,
};

/// Settings of the HTTP front door.
#[derive(Clone, Debug, Default)]
pub struct AuthzenConfig {
    /// The tenant the root paths (`/access/v1/...`) serve; `None`: they answer 404.
    pub default_tenant: Option<String>,
}

#[derive(Clone, Debug)]
struct App {
    service: AuthzService,
    config: Arc<AuthzenConfig>,
    /// Whether the listener serves TLS (discovery then names `https` URLs).
    https: bool,
}

/// The AuthZEN routes over `service`.
pub fn router(service: AuthzService, config: AuthzenConfig) -> Router {
    router_for(service, config, false)
}

fn router_for(service: AuthzService, config: AuthzenConfig, https: bool) -> Router {
    let app = App {
        https,
        service,
        config: Arc::new(config),
    };
    Router::new()
        .route("/tenants/{tenant}/access/v1/evaluation", post(evaluation))
        .route("/tenants/{tenant}/access/v1/evaluations", post(evaluations))
        .route(
            "/tenants/{tenant}/access/v1/search/subject",
            post(search_subject),
        )
        .route(
            "/tenants/{tenant}/access/v1/search/action",
            post(search_action),
        )
        .route(
            "/tenants/{tenant}/access/v1/search/resource",
            post(search_resource),
        )
        .route(
            "/.well-known/authzen-configuration/tenants/{tenant}",
            get(discovery),
        )
        .route("/access/v1/evaluation", post(root_evaluation))
        .route("/access/v1/evaluations", post(root_evaluations))
        .route("/access/v1/search/subject", post(root_search_subject))
        .route("/access/v1/search/action", post(root_search_action))
        .route("/access/v1/search/resource", post(root_search_resource))
        .route("/.well-known/authzen-configuration", get(root_discovery))
        .fallback(|| async { plain(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn(echo_request_id))
        .with_state(app)
}

/// Serves the AuthZEN API on an already-bound listener (TCP_NODELAY on every accepted
/// socket) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: AuthzService,
    config: AuthzenConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving AuthZEN over HTTP");
    }
    let app = router(service, config);
    axum::serve(listener.tap_io(crate::transport::tune_accepted), app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// How long a client may take to complete the TLS handshake: a client that connects and
/// stays silent holds a task and a socket only this long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the AuthZEN API over HTTPS (HTTP/1.1 over TLS) on an already-bound listener
/// until `shutdown` resolves: TCP_NODELAY on every accepted socket, the handshake bounded
/// by [`TLS_HANDSHAKE_TIMEOUT`]. At shutdown it stops accepting, lets requests in flight
/// finish and closes idle connections, as [`serve`] does.
pub async fn serve_tls(
    listener: TcpListener,
    service: AuthzService,
    config: AuthzenConfig,
    tls: &crate::tls::TlsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving AuthZEN over HTTPS");
    }
    let acceptor = TlsAcceptor::from(tls.http_server_config());
    let app = router_for(service, config, true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    error!(cause = %e, "cannot accept an AuthZEN connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        crate::transport::tune_accepted(&mut stream);
        let (acceptor, app, watcher) = (acceptor.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        debug!(%peer, cause = %e, "AuthZEN TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "AuthZEN TLS handshake timed out");
                        return;
                    }
                };
            // A verified client certificate's name goes on every request of the
            // connection, for `cert:` lines; connections without one take the router as is.
            let cert_name = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf))
                .map(|cn| PeerCommonName(cn.into()));
            let app = match cert_name {
                Some(name) => app.layer(axum::Extension(name)),
                None => app,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(conn).await {
                debug!(%peer, cause = %e, "AuthZEN connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// An accept error about one connection (reset before it was accepted), not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Copies `X-Request-ID` from the request to the response.
async fn echo_request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = req.headers().get("x-request-id").cloned();
    let mut response = next.run(req).await;
    if let Some(id) = id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// An HTTP error: status and message.
#[derive(Debug)]
struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = plain(self.0, &self.1);
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"authzd\""),
            );
        }
        r
    }
}

fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_owned(),
    )
        .into_response()
}

fn bad(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message.into())
}

/// The HTTP form of a gRPC status from the query service.
fn from_status(s: &tonic::Status) -> HttpError {
    let code = match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // A tenant of another shard: the request reached the wrong replica set.
        tonic::Code::FailedPrecondition => StatusCode::MISDIRECTED_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    HttpError(code, s.message().to_owned())
}

fn json_ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The request's JSON object: 400 for a non-JSON content type, an empty body, malformed
/// JSON, or a body that is not an object.
fn body(headers: &HeaderMap, bytes: &Bytes) -> Result<Map<String, Value>, HttpError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let media = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media == "application/json" || media.ends_with("+json")
        })
        .unwrap_or(false);
    if !json_type {
        return Err(bad(
            "the body must be JSON: send `Content-Type: application/json`",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the body is empty: send a JSON object"));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => {
            shape(&m, "")?;
            Ok(m)
        }
        Ok(_) => Err(bad("the body must be a JSON object")),
        Err(e) => Err(bad(format!("malformed JSON: {e}"))),
    }
}

/// The members that must be objects when present: `options`, `page`, `context`, and the
/// `properties` of the subject, action and resource (a wrong type is a 400, as the
/// specification asks, never silently ignored).
fn shape(m: &Map<String, Value>, prefix: &str) -> Result<(), HttpError> {
    for key in [
        "options", "page", "context", "subject", "action", "resource",
    ] {
        match m.get(key) {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => return Err(bad(format!("`{prefix}{key}` must be an object"))),
        }
    }
    for key in ["subject", "action", "resource"] {
        if let Some(Value::Object(e)) = m.get(key) {
            match e.get("properties") {
                None | Some(Value::Null) | Some(Value::Object(_)) => {}
                Some(_) => {
                    return Err(bad(format!("`{prefix}{key}.properties` must be an object")));
                }
            }
        }
    }
    Ok(())
}

/// A request's JSON object.
type Body = Map<String, Value>;

/// What every AuthZEN request starts with: the tenant named in the path (validated),
/// the caller (when credentials are required) and the JSON body.
fn prologue(
    app: &App,
    tenant: &str,
    headers: &Headers,
    bytes: &Bytes,
) -> Result<(String, Option<Admin>, Body), HttpError> {
    let tenant = tenant_of(tenant)?;
    let caller = caller(app, headers, &tenant)?;
    let body = body(headers, bytes)?;
    Ok((tenant, caller, body))
}

/// The `subject` of `e` (errors name `{prefix}subject...`): its id (`""` when `with_id`
/// is false: a subject search names only the type) and its type, both required strings.
fn subject_of<'a>(
    e: &'a Map<String, Value>,
    prefix: &str,
    with_id: bool,
) -> Result<(&'a str, &'a str), HttpError> {
    let field = format!("{prefix}subject");
    let subject =
        object_at(e, "subject", &field)?.ok_or_else(|| bad(format!("`{field}` is required")))?;
    let id = if with_id {
        req_str(subject, "id").map_err(|e| rename(e, &field))?
    } else {
        ""
    };
    let stype = req_str(subject, "type").map_err(|e| rename(e, &field))?;
    Ok((id, stype))
}

/// The caller, when query credentials are required: 401 without (or with an unknown)
/// bearer token or listed client certificate, 403 for a tenant it may not ask about.
fn caller(app: &App, headers: &Headers, tenant: &str) -> Result<Option<Admin>, HttpError> {
    let Some(tokens) = app.service.tokens() else {
        return Ok(None);
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
                .then(|| token.trim())
        });
    // As on gRPC: a request with a token is judged by it; without one, by the verified
    // client certificate its TLS connection presented, if any.
    let admin = match (token, &headers.peer) {
        (Some(token), _) => tokens.authenticate(token).ok_or_else(|| {
            HttpError(
                StatusCode::UNAUTHORIZED,
                "the bearer token is not valid for this service".into(),
            )
        })?,
        (None, Some(PeerCommonName(cn))) => tokens.authenticate_cert(cn).ok_or_else(|| {
            HttpError(
                StatusCode::UNAUTHORIZED,
                format!("client certificate `{cn}` may not call the query API"),
            )
        })?,
        (None, None) => {
            return Err(HttpError(
                StatusCode::UNAUTHORIZED,
                "credentials are required: send `Authorization: Bearer <token>`".into(),
            ));
        }
    };
    if !admin.may(tenant) {
        return Err(HttpError(
            StatusCode::FORBIDDEN,
            format!("`{}` may not ask about tenant `{tenant}`", admin.name),
        ));
    }
    Ok(Some(admin.clone()))
}

/// The subject common name of the verified client certificate a TLS connection
/// presented; [`serve_tls`] puts it on each of the connection's requests. Never read from
/// the wire, so a client cannot claim one.
#[derive(Clone, Debug)]
struct PeerCommonName(Arc<str>);

/// A request's headers, and the connection's verified client certificate name, if any.
#[derive(Debug)]
struct Headers {
    map: HeaderMap,
    peer: Option<PeerCommonName>,
}

impl std::ops::Deref for Headers {
    type Target = HeaderMap;
    fn deref(&self) -> &HeaderMap {
        &self.map
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Headers {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Headers {
            map: parts.headers.clone(),
            peer: parts.extensions.get::<PeerCommonName>().cloned(),
        })
    }
}

/// A tenant named in the path, validated.
fn tenant_of(raw: &str) -> Result<String, HttpError> {
    model::tenant_id(raw)
        .map(str::to_owned)
        .map_err(|e| bad(format!("invalid tenant `{raw}` in the path: {e}")))
}

fn default_tenant(app: &App) -> Result<String, HttpError> {
    app.config.default_tenant.clone().ok_or_else(|| {
        HttpError(
            StatusCode::NOT_FOUND,
            "this server serves one PDP per tenant: use /tenants/{tenant}/access/v1/... (and /.well-known/authzen-configuration/tenants/{tenant})".into(),
        )
    })
}

// ------------------------------------------------------------------- request values

/// A required string at `path` (`subject.id`) of `obj`.
fn req_str<'a>(obj: &'a Map<String, Value>, path: &str) -> Result<&'a str, HttpError> {
    match lookup(obj, path) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(format!("`{path}` must be a string"))),
        None => Err(bad(format!("`{path}` is required"))),
    }
}

/// The value at a dotted path.
fn lookup<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = obj.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// An object member that must be an object when present.
fn object_at<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, HttpError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad(format!("`{field}` must be an object"))),
    }
}

/// What a resource and action ask, as an `authz.v1` action and scope.
fn action_of(
    e: &Map<String, Value>,
    prefix: &str,
) -> Result<(pb::check_request::Action, String), HttpError> {
    let f = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let resource = object_at(e, "resource", &f("resource"))?
        .ok_or_else(|| bad(format!("`{}` is required", f("resource"))))?;
    let action = object_at(e, "action", &f("action"))?
        .ok_or_else(|| bad(format!("`{}` is required", f("action"))))?;
    let rtype = req_str(resource, "type").map_err(|e| rename(e, &f("resource")))?;
    let rid = req_str(resource, "id").map_err(|e| rename(e, &f("resource")))?;
    let name = req_str(action, "name").map_err(|e| rename(e, &f("action")))?;
    let scope = scope_of(resource, rtype, rid, &f("resource"))?;
    let action = if rtype == "route" {
        pb::check_request::Action::Route(pb::HttpRoute {
            method: name.to_owned(),
            path: rid.to_owned(),
        })
    } else {
        pb::check_request::Action::Permission(name.to_owned())
    };
    Ok((action, scope))
}

/// The scope a resource names: `properties.scope`, the id of a `scope` resource, or the
/// tenant root.
fn scope_of(
    resource: &Map<String, Value>,
    rtype: &str,
    rid: &str,
    field: &str,
) -> Result<String, HttpError> {
    match lookup(resource, "properties.scope") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("`{field}.properties.scope` must be a string"))),
        None if rtype == "scope" => Ok(rid.to_owned()),
        None => Ok(String::new()),
    }
}

/// Puts `prefix.` in front of the field an error names.
fn rename(e: HttpError, prefix: &str) -> HttpError {
    HttpError(e.0, e.1.replacen('`', &format!("`{prefix}."), 1))
}

/// Whether the request asks for the decision context (our reason, revision and
/// explanation): `context.authz_explain: true`.
fn wants_context(e: &Map<String, Value>) -> bool {
    lookup(e, "context.authz_explain") == Some(&Value::Bool(true))
}

fn decision_json(r: &pb::CheckResponse, context: bool) -> Value {
    let mut v = Map::new();
    v.insert("decision".into(), Value::Bool(r.allowed));
    if context {
        let reason = pb::Reason::try_from(r.reason)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("REASON_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let mut ctx = Map::new();
        ctx.insert("reason".into(), json!(reason));
        ctx.insert("revision".into(), json!(r.revision));
        ctx.insert("explanation".into(), json!(r.explanation));
        if let Some(g) = &r.grant {
            let source = pb::GrantSource::try_from(g.source)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("GRANT_SOURCE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            ctx.insert(
                "grant".into(),
                json!({
                    "role": g.role,
                    "include_chain": g.include_chain,
                    "scope": g.scope,
                    "source": source,
                    "group_id": g.group_id,
                }),
            );
        }
        if !r.matched_pattern.is_empty() {
            ctx.insert("matched_pattern".into(), json!(r.matched_pattern));
        }
        v.insert("context".into(), Value::Object(ctx));
    }
    Value::Object(v)
}

/// Validates a check as gRPC would, naming AuthZEN's fields in the error: `subject.id`,
/// `action.name`, `resource.id`, `resource.properties.scope`, each after `prefix`
/// (`evaluations[3].`).
fn validate(req: &pb::CheckRequest, tenant: &str, prefix: &str) -> Result<(), HttpError> {
    convert::check_request(req, None, tenant, "")
        .map(|_| ())
        .map_err(|e| {
            let field = match e.field.as_str() {
                "subject_id" => "subject.id",
                "scope" => "resource.properties.scope",
                "permission" | "route.method" | "action" => "action.name",
                "route.path" => "resource.id",
                other => other,
            };
            bad(format!("invalid `{prefix}{field}`: {}", e.error))
        })
}

// ------------------------------------------------------------------- handlers

async fn evaluation(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: Headers,
    bytes: Bytes,
) -> Response {
    respond(
        &app,
        Rpc::Check,
        eval_one(&app, &tenant, &headers, &bytes).await,
    )
}

async fn root_evaluation(State(app): State<App>, headers: Headers, bytes: Bytes) -> Response {
    let r = match default_tenant(&app) {
        Ok(t) => eval_one(&app, &t, &headers, &bytes).await,
        Err(e) => Err(e),
    };
    respond(&app, Rpc::Check, r)
}

fn respond(app: &App, rpc: Rpc, r: Result<Value, HttpError>) -> Response {
    match r {
        Ok(v) => json_ok(v),
        Err(e) => {
            let code = match e.0 {
                StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
                StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
                StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
                StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
                StatusCode::MISDIRECTED_REQUEST => tonic::Code::FailedPrecondition,
                StatusCode::NOT_FOUND => tonic::Code::NotFound,
                _ => tonic::Code::Internal,
            };
            app.service.count_http_error(rpc, code);
            if code == tonic::Code::Internal {
                error!(message = %e.1, "AuthZEN request failed");
            }
            e.into_response()
        }
    }
}

async fn eval_one(
    app: &App,
    tenant: &str,
    headers: &Headers,
    bytes: &Bytes,
) -> Result<Value, HttpError> {
    let (tenant, caller, e) = prologue(app, tenant, headers, bytes)?;
    let (subject_id, _) = subject_of(&e, "", true)?;
    let (action, scope) = action_of(&e, "")?;
    let req = pb::CheckRequest {
        tenant_id: tenant,
        subject_id: subject_id.to_owned(),
        scope,
        action: Some(action),
        min_revision: 0,
    };
    validate(&req, "", "")?;
    let r = app
        .service
        .check_one(caller.as_ref(), req)
        .await
        .map_err(|s| from_status(&s))?;
    Ok(decision_json(&r, wants_context(&e)))
}

async fn evaluations(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: Headers,
    bytes: Bytes,
) -> Response {
    respond(
        &app,
        Rpc::BatchCheck,
        eval_many(&app, &tenant, &headers, &bytes).await,
    )
}

async fn root_evaluations(State(app): State<App>, headers: Headers, bytes: Bytes) -> Response {
    let r = match default_tenant(&app) {
        Ok(t) => eval_many(&app, &t, &headers, &bytes).await,
        Err(e) => Err(e),
    };
    respond(&app, Rpc::BatchCheck, r)
}

/// `evaluations_semantic`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

async fn eval_many(
    app: &App,
    tenant: &str,
    headers: &Headers,
    bytes: &Bytes,
) -> Result<Value, HttpError> {
    let (tenant, caller, top) = prologue(app, tenant, headers, bytes)?;
    let items = match top.get("evaluations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("`evaluations` must be an array")),
    };
    if items.is_empty() {
        // No evaluations: the request is one evaluation, answered as one.
        return eval_one(app, &tenant, headers, bytes).await;
    }
    let semantic = match lookup(&top, "options.evaluations_semantic") {
        None | Some(Value::Null) => Semantic::ExecuteAll,
        Some(Value::String(s)) => match s.as_str() {
            "execute_all" => Semantic::ExecuteAll,
            "deny_on_first_deny" => Semantic::DenyOnFirstDeny,
            "permit_on_first_permit" => Semantic::PermitOnFirstPermit,
            other => {
                return Err(bad(format!(
                    "`options.evaluations_semantic` `{other}` is not one of execute_all, deny_on_first_deny, permit_on_first_permit"
                )));
            }
        },
        Some(_) => return Err(bad("`options.evaluations_semantic` must be a string")),
    };
    // Each item: the top-level subject/action/resource/context as defaults, an item's
    // own key replacing the default whole.
    let mut checks = Vec::with_capacity(items.len());
    let mut problems: Vec<Option<String>> = Vec::with_capacity(items.len());
    let mut contexts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            problems.push(Some(format!("`evaluations[{i}]` must be an object")));
            checks.push(pb::CheckRequest::default());
            contexts.push(false);
            continue;
        };
        let mut merged = Map::new();
        for key in ["subject", "action", "resource", "context"] {
            if let Some(v) = item.get(key).or_else(|| top.get(key)) {
                merged.insert(key.to_owned(), v.clone());
            }
        }
        contexts.push(wants_context(&merged));
        let prefix = format!("evaluations[{i}]");
        let parsed = (|| -> Result<pb::CheckRequest, HttpError> {
            shape(item, &format!("{prefix}."))?;
            let (id, _) = subject_of(&merged, &format!("{prefix}."), true)?;
            let (action, scope) = action_of(&merged, &prefix)?;
            let req = pb::CheckRequest {
                tenant_id: String::new(),
                subject_id: id.to_owned(),
                scope,
                action: Some(action),
                min_revision: 0,
            };
            validate(&req, &tenant, &format!("{prefix}."))?;
            Ok(req)
        })();
        match parsed {
            Ok(c) => {
                checks.push(c);
                problems.push(None);
            }
            Err(e) => {
                checks.push(pb::CheckRequest::default());
                problems.push(Some(e.1));
            }
        }
    }
    // The valid items, decided together on one snapshot.
    let valid: Vec<pb::CheckRequest> = checks
        .into_iter()
        .zip(&problems)
        .filter(|(_, p)| p.is_none())
        .map(|(c, _)| c)
        .collect();
    let answers = if valid.is_empty() {
        Vec::new()
    } else {
        app.service
            .batch_check_many(
                caller.as_ref(),
                pb::BatchCheckRequest {
                    tenant_id: tenant,
                    subject_id: String::new(),
                    checks: valid,
                    min_revision: 0,
                    detail: 0,
                },
            )
            .await
            .map_err(|s| from_status(&s))?
            .results
    };
    let mut answers = answers.into_iter();
    let mut out = Vec::with_capacity(problems.len());
    for (problem, context) in problems.into_iter().zip(contexts) {
        let (v, allowed, failed) = match problem {
            Some(message) => (
                json!({"decision": false, "context": {"error": {"status": 400, "message": message}}}),
                false,
                true,
            ),
            None => match answers.next().and_then(|r| r.result) {
                Some(pb::batch_check_result::Result::Response(r)) => {
                    (decision_json(&r, context), r.allowed, false)
                }
                Some(pb::batch_check_result::Result::Error(e)) => {
                    let status = match tonic::Code::from(e.code) {
                        tonic::Code::InvalidArgument => 400,
                        tonic::Code::PermissionDenied => 403,
                        tonic::Code::Unavailable => 503,
                        tonic::Code::FailedPrecondition => 421,
                        _ => 500,
                    };
                    (
                        json!({"decision": false, "context": {"error": {"status": status, "message": e.message}}}),
                        false,
                        true,
                    )
                }
                None => (
                    json!({"decision": false, "context": {"error": {"status": 500, "message": "no answer"}}}),
                    false,
                    true,
                ),
            },
        };
        out.push(v);
        let stop = match semantic {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => !allowed || failed,
            Semantic::PermitOnFirstPermit => allowed,
        };
        if stop {
            break;
        }
    }
    Ok(json!({ "evaluations": out }))
}

// ------------------------------------------------------------------- search

/// A search page request: `page.token`, `page.limit`.
fn page_of(top: &Map<String, Value>) -> Result<(String, u32), HttpError> {
    let token = match lookup(top, "page.token") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("`page.token` must be a string")),
    };
    let limit = match lookup(top, "page.limit") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n <= crate::policy::lookup::MAX_PAGE as u64 => n as u32,
            _ => {
                return Err(bad(format!(
                    "`page.limit` must be a whole number from 0 to {}",
                    crate::policy::lookup::MAX_PAGE
                )));
            }
        },
        Some(_) => return Err(bad("`page.limit` must be a number")),
    };
    Ok((token, limit))
}

async fn search_subject(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: Headers,
    bytes: Bytes,
) -> Response {
    respond(
        &app,
        Rpc::LookupSubjects,
        subjects(&app, &tenant, &headers, &bytes).await,
    )
}

async fn root_search_subject(State(app): State<App>, headers: Headers, bytes: Bytes) -> Response {
    let r = match default_tenant(&app) {
        Ok(t) => subjects(&app, &t, &headers, &bytes).await,
        Err(e) => Err(e),
    };
    respond(&app, Rpc::LookupSubjects, r)
}

async fn subjects(
    app: &App,
    tenant: &str,
    headers: &Headers,
    bytes: &Bytes,
) -> Result<Value, HttpError> {
    let (tenant, caller, top) = prologue(app, tenant, headers, bytes)?;
    // A subject search names only the type; an id there is ignored.
    let stype = subject_of(&top, "", false)?.1.to_owned();
    let (action, scope) = action_of(&top, "")?;
    let (token, limit) = page_of(&top)?;
    let r = app
        .service
        .lookup(
            caller.as_ref(),
            pb::LookupSubjectsRequest {
                tenant_id: tenant,
                scope,
                action: Some(match action {
                    pb::check_request::Action::Permission(p) => {
                        pb::lookup_subjects_request::Action::Permission(p)
                    }
                    pb::check_request::Action::Route(r) => {
                        pb::lookup_subjects_request::Action::Route(r)
                    }
                }),
                page_size: limit,
                page_token: token,
                min_revision: 0,
            },
        )
        .await
        .map_err(|s| from_status(&s))?;
    let results: Vec<Value> = r
        .subjects
        .iter()
        .map(|s| json!({"type": stype, "id": s.subject_id}))
        .collect();
    Ok(json!({
        "page": {"next_token": r.next_page_token, "count": results.len()},
        "results": results,
    }))
}

/// One page of an action or resource search's `results` (computed whole: they are short),
/// with the AuthZEN pagination of the request's `page`: `limit` (0 or absent: all) and a
/// `token` from the previous page of the same question. The token is the question's key
/// (8 bytes of SHA-256 over the tenant and the request without `page`) and the offset, in
/// lower-case hex; one issued for another question, or not by this server, is a 400.
fn paginate(tenant: &str, top: &Body, results: Vec<Value>) -> Result<Value, HttpError> {
    use sha2::{Digest, Sha256};
    let (token, limit) = page_of(top)?;
    let mut question = top.clone();
    question.remove("page");
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update(b"\0");
    h.update(Value::Object(question).to_string().as_bytes());
    let key: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let offset = if token.is_empty() {
        0
    } else {
        token
            .strip_prefix(&key)
            .filter(|o| {
                o.len() == 8
                    && o.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .and_then(|o| usize::from_str_radix(o, 16).ok())
            .filter(|&o| o <= results.len())
            .ok_or_else(|| {
                bad("`page.token` is not a token this server issued for this question")
            })?
    };
    let end = match limit {
        0 => results.len(),
        n => offset.saturating_add(n as usize).min(results.len()),
    };
    let next_token = if end < results.len() {
        format!("{key}{end:08x}")
    } else {
        String::new()
    };
    let page: Vec<Value> = results
        .into_iter()
        .skip(offset)
        .take(end - offset)
        .collect();
    Ok(json!({"page": {"next_token": next_token, "count": page.len()}, "results": page}))
}

/// Methods an action search tries on a route.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

async fn search_action(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: Headers,
    bytes: Bytes,
) -> Response {
    respond(
        &app,
        Rpc::ListPermissions,
        actions(&app, &tenant, &headers, &bytes).await,
    )
}

async fn root_search_action(State(app): State<App>, headers: Headers, bytes: Bytes) -> Response {
    let r = match default_tenant(&app) {
        Ok(t) => actions(&app, &t, &headers, &bytes).await,
        Err(e) => Err(e),
    };
    respond(&app, Rpc::ListPermissions, r)
}

async fn actions(
    app: &App,
    tenant: &str,
    headers: &Headers,
    bytes: &Bytes,
) -> Result<Value, HttpError> {
    let (tenant, caller, top) = prologue(app, tenant, headers, bytes)?;
    let subject_id = subject_of(&top, "", true)?.0.to_owned();
    let resource =
        object_at(&top, "resource", "resource")?.ok_or_else(|| bad("`resource` is required"))?;
    let rtype = req_str(resource, "type").map_err(|e| rename(e, "resource"))?;
    let rid = req_str(resource, "id").map_err(|e| rename(e, "resource"))?;
    let scope = scope_of(resource, rtype, rid, "resource")?;
    let names: Vec<String> = if rtype == "route" {
        // Every method a route check on this path allows, decided on one snapshot.
        let checks = METHODS
            .iter()
            .map(|m| pb::CheckRequest {
                subject_id: subject_id.clone(),
                scope: scope.clone(),
                action: Some(pb::check_request::Action::Route(pb::HttpRoute {
                    method: (*m).to_owned(),
                    path: rid.to_owned(),
                })),
                ..Default::default()
            })
            .collect();
        let r = app
            .service
            .batch_check_many(
                caller.as_ref(),
                pb::BatchCheckRequest {
                    tenant_id: tenant.clone(),
                    checks,
                    detail: pb::Detail::Decision as i32,
                    ..Default::default()
                },
            )
            .await
            .map_err(|s| from_status(&s))?;
        if let Some(e) = r.results.iter().find_map(|x| match &x.result {
            Some(pb::batch_check_result::Result::Error(e)) => Some(e),
            _ => None,
        }) {
            return Err(bad(format!("`resource.id`: {}", e.message)));
        }
        METHODS
            .iter()
            .zip(&r.results)
            .filter(|(_, x)| {
                matches!(&x.result, Some(pb::batch_check_result::Result::Response(r)) if r.allowed)
            })
            .map(|(m, _)| (*m).to_owned())
            .collect()
    } else {
        let l = app
            .service
            .list(
                caller.as_ref(),
                pb::ListPermissionsRequest {
                    tenant_id: tenant.clone(),
                    subject_id,
                    scope,
                    min_revision: 0,
                },
            )
            .await
            .map_err(|s| from_status(&s))?;
        l.permissions
    };
    let results: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
    paginate(&tenant, &top, results)
}

async fn search_resource(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: Headers,
    bytes: Bytes,
) -> Response {
    respond(
        &app,
        Rpc::ListPermissions,
        resources(&app, &tenant, &headers, &bytes).await,
    )
}

async fn root_search_resource(State(app): State<App>, headers: Headers, bytes: Bytes) -> Response {
    let r = match default_tenant(&app) {
        Ok(t) => resources(&app, &t, &headers, &bytes).await,
        Err(e) => Err(e),
    };
    respond(&app, Rpc::ListPermissions, r)
}

async fn resources(
    app: &App,
    tenant: &str,
    headers: &Headers,
    bytes: &Bytes,
) -> Result<Value, HttpError> {
    let (tenant, caller, top) = prologue(app, tenant, headers, bytes)?;
    let subject_id = subject_of(&top, "", true)?.0.to_owned();
    let action = object_at(&top, "action", "action")?.ok_or_else(|| bad("`action` is required"))?;
    let name = req_str(action, "name")
        .map_err(|e| rename(e, "action"))?
        .to_owned();
    let resource =
        object_at(&top, "resource", "resource")?.ok_or_else(|| bad("`resource` is required"))?;
    let rtype = req_str(resource, "type")
        .map_err(|e| rename(e, "resource"))?
        .to_owned();
    // Both come from one listing at the root, which names the scopes below it where the
    // subject holds roles, and the endpoints and rules of its roles.
    let listing = app
        .service
        .list(
            caller.as_ref(),
            pb::ListPermissionsRequest {
                tenant_id: tenant.clone(),
                subject_id: subject_id.clone(),
                scope: String::new(),
                min_revision: 0,
            },
        )
        .await
        .map_err(|s| from_status(&s))?;
    let results: Vec<Value> = match rtype.as_str() {
        "route" => {
            let method =
                Method::parse(&name).map_err(|e| bad(format!("`action.name`: method {e}")))?;
            let mut paths: Vec<String> = listing
                .endpoints
                .iter()
                .filter(|e| e.methods.iter().any(|m| m == "*" || m == method.as_str()))
                .map(|e| e.path.clone())
                .chain(
                    listing
                        .routes
                        .iter()
                        .filter(|r| r.methods.iter().any(|m| m == "*" || m == method.as_str()))
                        .map(|r| r.path.clone()),
                )
                .collect();
            paths.sort();
            paths.dedup();
            paths
                .iter()
                .map(|p| json!({"type": "route", "id": p}))
                .collect()
        }
        "scope" => {
            // The root and every scope below it where the subject holds roles, at which
            // a check of the permission allows, decided together on one snapshot.
            let mut scopes = vec![String::new()];
            scopes.extend(listing.scopes_below.iter().map(|s| s.scope.clone()));
            let checks = scopes
                .iter()
                .map(|s| pb::CheckRequest {
                    subject_id: subject_id.clone(),
                    scope: s.clone(),
                    action: Some(pb::check_request::Action::Permission(name.clone())),
                    ..Default::default()
                })
                .collect();
            let r = app
                .service
                .batch_check_many(
                    caller.as_ref(),
                    pb::BatchCheckRequest {
                        tenant_id: tenant.clone(),
                        checks,
                        detail: pb::Detail::Decision as i32,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|s| from_status(&s))?;
            if let Some(e) = r.results.iter().find_map(|x| match &x.result {
                Some(pb::batch_check_result::Result::Error(e)) => Some(e),
                _ => None,
            }) {
                return Err(bad(format!("`action.name`: {}", e.message)));
            }
            scopes
                .iter()
                .zip(&r.results)
                .filter(|(_, x)| {
                    matches!(&x.result, Some(pb::batch_check_result::Result::Response(r)) if r.allowed)
                })
                .map(|(s, _)| json!({"type": "scope", "id": s}))
                .collect()
        }
        // Other resource types are not in this model: nothing to find.
        _ => Vec::new(),
    };
    paginate(&tenant, &top, results)
}

// ------------------------------------------------------------------- discovery

async fn discovery(
    State(app): State<App>,
    Path(tenant): Path<String>,
    headers: Headers,
) -> Response {
    let doc = tenant_of(&tenant)
        .and_then(|t| configuration(&app, &headers, &format!("/tenants/{}", encode_segment(&t))));
    match doc {
        Ok(v) => json_ok(v),
        Err(e) => e.into_response(),
    }
}

async fn root_discovery(State(app): State<App>, headers: Headers) -> Response {
    match default_tenant(&app).and_then(|_| configuration(&app, &headers, "")) {
        Ok(v) => json_ok(v),
        Err(e) => e.into_response(),
    }
}

/// A path segment percent-encoded: every byte but RFC 3986's unreserved characters.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a Host header value is a host name or address with an optional port (RFC
/// 3986 `host [":" port]`, reg-name and IP literals only): anything else could steer
/// the discovery document's URLs elsewhere.
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        // A bare IPv6 address (unbracketed colons) is not a valid Host.
        Some((host, _)) if !host.ends_with(']') && host.contains(':') => return false,
        Some((host, port)) => (host, port),
        None => (h, ""),
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    host_ok && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// The discovery document of the PDP at `base` (a path) on the host the client used.
/// 400 without a Host header or with one that is not a plain host and port.
fn configuration(app: &App, headers: &HeaderMap, base: &str) -> Result<Value, HttpError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| bad("discovery needs a `Host` header naming this server"))?;
    if !valid_host(host) {
        return Err(bad(
            "the `Host` header is not a host name or address with an optional port",
        ));
    }
    let scheme = if app.https { "https" } else { "http" };
    let pdp = format!("{scheme}://{host}{base}");
    Ok(json!({
        "policy_decision_point": pdp,
        "access_evaluation_endpoint": format!("{pdp}/access/v1/evaluation"),
        "access_evaluations_endpoint": format!("{pdp}/access/v1/evaluations"),
        "search_subject_endpoint": format!("{pdp}/access/v1/search/subject"),
        "search_action_endpoint": format!("{pdp}/access/v1/search/action"),
        "search_resource_endpoint": format!("{pdp}/access/v1/search/resource"),
    }))
}
