//! The Envoy external authorization service (`envoy.service.auth.v3.Authorization`)
//! over gRPC with the envoy-types client, on a real server on 127.0.0.1:0: every row of
//! the chat API endpoint table for every role combination, and the header contract for
//! allow, deny, public and malformed requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::collections::HashMap;

use authz::{
    grpc::{EnvoyConfig, envoy::http_request},
    server::ServerConfig,
};
use base64::Engine as _;
use common::{chat::*, *};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};

/// What Envoy would do with an answer.
#[derive(Debug)]
struct Answer {
    /// `CheckResponse.status.code`.
    code: tonic::Code,
    /// HTTP status of a denial; `None` when the request goes upstream.
    http: Option<i32>,
    /// Headers added to the upstream request (allow) or the denial.
    headers: HashMap<String, String>,
    /// Headers removed from the upstream request.
    removed: Vec<String>,
    body: String,
}

impl From<CheckResponse> for Answer {
    fn from(r: CheckResponse) -> Self {
        let code = tonic::Code::from(r.status.expect("a status").code);
        let (http, headers, removed, body) = match r.http_response.expect("an HTTP response") {
            HttpResponse::OkResponse(ok) => (None, ok.headers, ok.headers_to_remove, String::new()),
            HttpResponse::DeniedResponse(d) => (
                Some(d.status.expect("a denial has an HTTP status").code),
                d.headers,
                Vec::new(),
                d.body,
            ),
            HttpResponse::ErrorResponse(e) => {
                panic!("error_response honours failure_mode_allow; never sent: {e:?}")
            }
        };
        let headers = headers
            .into_iter()
            .map(|h| {
                let h = h.header.unwrap();
                (h.key, h.value)
            })
            .collect();
        Answer {
            code,
            http,
            headers,
            removed,
            body,
        }
    }
}

async fn ask(server: &TestServer, req: CheckRequest) -> Answer {
    server
        .envoy_client()
        .check(req)
        .await
        .expect("the Envoy service answers every request with a CheckResponse")
        .into_inner()
        .into()
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn every_row_of_the_chat_table_for_every_role_combination() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("matrix.yaml");
    std::fs::write(&path, matrix_document().to_yaml().unwrap()).unwrap();
    let server = TestServer::start(&path).await;
    let rows = rows();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (subject, held) in subjects() {
        for row in &rows {
            let mut h = vec![("x-tenant-id".to_owned(), "matrix".to_owned())];
            if !subject.is_empty() {
                h.push(("x-subject-id".to_owned(), subject.clone()));
            }
            let got = ask(&server, http_request(&row.method, &row.request_path, h)).await;
            checked += 1;
            let (allowed, reason) = expected(row, held.as_ref());
            let reason_header = got.headers.get("x-authz-reason").map(String::as_str);
            let ok = if allowed {
                got.code == tonic::Code::Ok && got.http.is_none()
            } else {
                got.code == tonic::Code::PermissionDenied && got.http == Some(403)
            };
            if !ok || reason_header != Some(reason) {
                failures.push(format!(
                    "{} {} ({}) as `{subject}`: want {allowed}/{reason}, got {:?} http {:?} reason {reason_header:?}",
                    row.method, row.request_path, row.pattern, got.code, got.http
                ));
            }
        }
    }
    assert_eq!(checked, rows.len() * 10);
    assert_all(
        "chat endpoint table over Envoy ext_authz",
        failures,
        checked,
    );
    server.stop().await;
}

#[tokio::test]
async fn allow_deny_public_and_malformed() {
    let server = TestServer::start(&example("chat-api.yaml")).await;

    // Allowed: the decision goes upstream in headers, replacing any the client sent.
    let got = ask(
        &server,
        http_request(
            "PUT",
            "/experts/e-1?draft=true",
            headers(&[("x-tenant-id", "acme"), ("x-subject-id", "erin")]),
        ),
    )
    .await;
    assert_eq!(got.code, tonic::Code::Ok, "{got:?}");
    assert_eq!(got.http, None);
    assert_eq!(got.headers["x-authz-reason"], "granted");
    assert_eq!(got.headers["x-authz-role"], "alan-editor");
    assert_eq!(got.headers["x-authz-revision"], "1");

    // Denied: 403 with the reason, in a header and the body.
    let got = ask(
        &server,
        http_request(
            "POST",
            "/experts/",
            headers(&[("x-tenant-id", "acme"), ("x-subject-id", "adam")]),
        ),
    )
    .await;
    assert_eq!(got.code, tonic::Code::PermissionDenied);
    assert_eq!(got.http, Some(403));
    assert_eq!(got.headers["x-authz-reason"], "no_grant");
    assert_eq!(got.headers["x-authz-revision"], "1");
    assert_eq!(got.body, "denied: no_grant\n");
    assert!(!got.headers.contains_key("x-authz-role"));

    // Unknown tenant, disabled subject, anonymous: denied.
    for (h, reason) in [
        (
            headers(&[("x-tenant-id", "nope"), ("x-subject-id", "erin")]),
            "unknown_tenant",
        ),
        (
            headers(&[("x-tenant-id", "acme"), ("x-subject-id", "dora")]),
            "subject_disabled",
        ),
        (headers(&[("x-tenant-id", "acme")]), "unknown_subject"),
    ] {
        let got = ask(&server, http_request("GET", "/chats/", h)).await;
        assert_eq!(
            (got.code, got.http),
            (tonic::Code::PermissionDenied, Some(403))
        );
        assert_eq!(got.headers["x-authz-reason"], reason);
    }

    // Public: allowed without a subject; no role, and a client-sent role header is
    // removed.
    let got = ask(
        &server,
        http_request("GET", "/health/", headers(&[("x-tenant-id", "acme")])),
    )
    .await;
    assert_eq!(got.code, tonic::Code::Ok);
    assert_eq!(got.headers["x-authz-reason"], "public");
    assert!(!got.headers.contains_key("x-authz-role"));
    assert_eq!(got.removed, ["x-authz-role"]);

    // Malformed: 400, naming what is wrong.
    for (method, path, h, names) in [
        ("GET", "/chats/", headers(&[]), "x-tenant-id"),
        (
            "GET",
            "/chats/",
            headers(&[("x-tenant-id", "")]),
            "x-tenant-id",
        ),
        (
            "GET",
            "/chats/",
            headers(&[("x-tenant-id", "ac me")]),
            "x-tenant-id",
        ),
        (
            "GET",
            "/chats/",
            headers(&[("x-tenant-id", "acme"), ("x-subject-id", "e\trin")]),
            "x-subject-id",
        ),
        (
            "GET",
            "/chats/../admin",
            headers(&[("x-tenant-id", "acme")]),
            "path",
        ),
        ("GET", "chats", headers(&[("x-tenant-id", "acme")]), "path"),
        (
            "get",
            "/chats/",
            headers(&[("x-tenant-id", "acme")]),
            "method",
        ),
    ] {
        let got = ask(&server, http_request(method, path, h)).await;
        assert_eq!(
            (got.code, got.http),
            (tonic::Code::InvalidArgument, Some(400)),
            "{method} {path}: {got:?}"
        );
        assert_eq!(got.headers["x-authz-reason"], "invalid_argument");
        assert!(got.body.contains(names), "{method} {path}: {}", got.body);
    }

    // A check request without HTTP attributes (say, from a network filter): 400.
    let got = ask(&server, CheckRequest::default()).await;
    assert_eq!(
        (got.code, got.http),
        (tonic::Code::InvalidArgument, Some(400))
    );
    server.stop().await;
}

#[tokio::test]
async fn configured_headers_and_jwt_payload() {
    let b64 = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let config = ServerConfig {
        envoy: EnvoyConfig {
            tenant_header: "x-org".into(),
            jwt_payload_header: Some("x-jwt-payload".into()),
            ..EnvoyConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_configured(&example("chat-api.yaml"), config, false).await;

    // Subject and tenant from the verified payload; the subject header is ignored.
    let got = ask(
        &server,
        http_request(
            "PUT",
            "/experts/e-1",
            headers(&[
                ("x-jwt-payload", &b64(r#"{"sub":"erin","tenant":"acme"}"#)),
                ("x-subject-id", "adam"),
            ]),
        ),
    )
    .await;
    assert_eq!(got.code, tonic::Code::Ok, "{got:?}");
    assert_eq!(got.headers["x-authz-role"], "alan-editor");
    let got = ask(
        &server,
        http_request(
            "PUT",
            "/experts/e-1",
            headers(&[
                ("x-jwt-payload", &b64(r#"{"sub":"adam","tenant":"acme"}"#)),
                ("x-subject-id", "erin"),
            ]),
        ),
    )
    .await;
    assert_eq!(got.code, tonic::Code::PermissionDenied, "{got:?}");

    // No token: anonymous in the tenant the tenant header names; the subject header
    // cannot stand in for a token.
    let got = ask(
        &server,
        http_request(
            "GET",
            "/chats/",
            headers(&[("x-org", "acme"), ("x-subject-id", "erin")]),
        ),
    )
    .await;
    assert_eq!(got.headers["x-authz-reason"], "unknown_subject");
    let got = ask(
        &server,
        http_request("GET", "/health/", headers(&[("x-org", "acme")])),
    )
    .await;
    assert_eq!(got.code, tonic::Code::Ok);

    // Bad payloads are 400, naming the header or claim.
    for (payload, names) in [
        ("not base64!".to_owned(), "x-jwt-payload"),
        (b64("[1, 2]"), "x-jwt-payload"),
        (b64(r#"{"sub":"erin"}"#), "x-jwt-payload.tenant"),
        (b64(r#"{"tenant":"acme"}"#), "x-jwt-payload.sub"),
        (b64(r#"{"sub":7,"tenant":"acme"}"#), "x-jwt-payload.sub"),
    ] {
        let got = ask(
            &server,
            http_request("GET", "/chats/", headers(&[("x-jwt-payload", &payload)])),
        )
        .await;
        assert_eq!(
            (got.code, got.http),
            (tonic::Code::InvalidArgument, Some(400)),
            "{payload}: {got:?}"
        );
        assert!(got.body.contains(names), "{payload}: {}", got.body);
    }
    server.stop().await;
}

#[tokio::test]
async fn health_reports_the_envoy_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let mut health = HealthClient::new(server.channel.clone());
    // Readiness is set by a task that saw the load: watch for it, bounded.
    let mut updates = health
        .watch(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(update) = updates.message().await.unwrap() {
            if update.status == ServingStatus::Serving as i32 {
                return true;
            }
        }
        false
    })
    .await
    .expect("SERVING within 10s");
    assert!(serving);
    drop(updates);
    server.stop().await;
}
