//! `--query-tokens-file`: the query service answers only callers with a listed token (or
//! client certificate, see tests/tls.rs), about the tenants each may ask about; health
//! and reflection stay open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use authz::{
    grpc::auth::{AdminTokens, file_line},
    pb,
    server::ServerConfig,
};
use common::{TestServer, example};
use tonic::{Code, Request};

const ALL: &str = "query-all-secret";
const ACME: &str = "query-acme-secret";

fn check(tenant: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.into(),
        subject_id: "uma".into(),
        scope: String::new(),
        action: Some(pb::check_request::Action::Permission(
            "workbench.use".into(),
        )),
        min_revision: 0,
    }
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn query_service_requires_a_token_when_configured() {
    let tokens = AdminTokens::parse(
        &format!(
            "{}\n{}\n",
            file_line(ALL, "*", Some("gateway")),
            file_line(ACME, "acme", Some("acme-app"))
        ),
        "query-tokens",
    )
    .unwrap();
    let config = ServerConfig {
        query_tokens: Some(tokens),
        ..ServerConfig::default()
    };
    let server = TestServer::start_configured(&example("console.yaml"), config, false).await;
    let mut c = server.client.clone();

    // Missing, malformed and unknown tokens.
    let e = c.check(check("acme")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut bad = Request::new(check("acme"));
    bad.metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(
        c.check(bad).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let e = c.check(authed("wrong", check("acme"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        !e.message().contains("wrong"),
        "the token is not echoed: {e:?}"
    );

    // Valid tokens.
    assert!(
        c.check(authed(ALL, check("acme")))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        c.check(authed(ACME, check("acme")))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // Tenant-limited token on another tenant.
    let e = c.check(authed(ACME, check("globex"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("globex"), "{e:?}");

    // ListPermissions: the same rules.
    let list = |tenant: &str| pb::ListPermissionsRequest {
        tenant_id: tenant.into(),
        subject_id: "uma".into(),
        scope: String::new(),
        ..Default::default()
    };
    let e = c.list_permissions(list("acme")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    c.list_permissions(authed(ACME, list("acme")))
        .await
        .unwrap();
    let e = c
        .list_permissions(authed(ACME, list("globex")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // BatchCheck: no token refuses the batch; another tenant fails only its items.
    let batch = pb::BatchCheckRequest {
        tenant_id: String::new(),
        subject_id: String::new(),
        checks: vec![check("acme"), check("globex"), check("acme")],
        min_revision: 0,
        detail: 0,
    };
    let e = c.batch_check(batch.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let results = c
        .batch_check(authed(ACME, batch.clone()))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    for i in [0, 2] {
        match &results[i].result {
            Some(pb::batch_check_result::Result::Response(r)) => assert!(r.allowed),
            other => panic!("item {i}: {other:?}"),
        }
    }
    match &results[1].result {
        Some(pb::batch_check_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::PermissionDenied as i32, "{e:?}");
            assert_eq!(e.field, "checks[1].tenant_id");
        }
        other => panic!("item 1: {other:?}"),
    }
    let results = c
        .batch_check(authed(ALL, batch))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        results
            .iter()
            .all(|r| matches!(r.result, Some(pb::batch_check_result::Result::Response(_))))
    );

    // Health stays open.
    let health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}
