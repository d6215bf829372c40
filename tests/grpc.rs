//! The query service over real gRPC: bad input, batch isolation, limits, revisions and
//! read-your-writes on reload, health, listings.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::time::Duration;

use authz::{grpc::ServiceConfig, pb};
use common::*;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn perm(tenant: &str, subject: &str, scope: &str, p: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        scope: scope.into(),
        action: Some(pb::check_request::Action::Permission(p.into())),
        min_revision: 0,
    }
}

fn route(tenant: &str, subject: &str, method: &str, path: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        scope: String::new(),
        action: Some(pb::check_request::Action::Route(pb::HttpRoute {
            method: method.into(),
            path: path.into(),
        })),
        min_revision: 0,
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = TestServer::start(&example("console.yaml")).await;
    let mut c = server.client.clone();
    let long = "x".repeat(300);
    let cases: Vec<(pb::CheckRequest, &str)> = vec![
        (perm("", "dana", "", "api_keys.manage"), "tenant_id"),
        (perm("a b", "dana", "", "api_keys.manage"), "tenant_id"),
        (perm(&long, "dana", "", "api_keys.manage"), "tenant_id"),
        (perm("acme", &long, "", "api_keys.manage"), "subject_id"),
        (perm("acme", "da na", "", "api_keys.manage"), "subject_id"),
        (
            perm("acme", "dana", "/workspaces/ws-1", "api_keys.manage"),
            "scope",
        ),
        (
            perm("acme", "dana", "workspaces//ws-1", "api_keys.manage"),
            "scope",
        ),
        (
            perm("acme", "dana", "workspaces/../x", "api_keys.manage"),
            "scope",
        ),
        (perm("acme", "dana", "", ""), "permission"),
        (perm("acme", "dana", "", "api keys"), "permission"),
        (route("acme", "dana", "get", "/x"), "route.method"),
        (route("acme", "dana", "", "/x"), "route.method"),
        (route("acme", "dana", "GET", "x"), "route.path"),
        (route("acme", "dana", "GET", "/a//b"), "route.path"),
        (route("acme", "dana", "GET", "/a/../b"), "route.path"),
        (
            route("acme", "dana", "GET", &format!("/{}", "a".repeat(5000))),
            "route.path",
        ),
        (
            pb::CheckRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            },
            "action",
        ),
    ];
    for (req, field) in cases {
        let err = c
            .check(req.clone())
            .await
            .expect_err(&format!("{req:?} must fail"));
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert!(
            err.message().contains(&format!("`{field}`")),
            "{field}: {}",
            err.message()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn batch_items_fail_alone_and_keep_order() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let mut c = server.client.clone();
    let checks = vec![
        route("", "", "GET", "/chats/"),
        route("", "", "GET", "no-slash"),
        route("", "", "POST", "/experts/"),
        route("other", "", "GET", "/health/"),
        route("", "erin", "POST", "/experts/"),
        route("", "", "get", "/chats/"),
    ];
    let resp = c
        .batch_check(pb::BatchCheckRequest {
            tenant_id: "acme".into(),
            subject_id: "mia".into(),
            checks,
            min_revision: 0,
            detail: 0,
        })
        .await
        .unwrap()
        .into_inner();
    use pb::batch_check_result::Result as R;
    let r: Vec<_> = resp
        .results
        .iter()
        .map(|r| r.result.clone().unwrap())
        .collect();
    assert_eq!(r.len(), 6);
    assert!(matches!(&r[0], R::Response(x) if x.allowed), "{:?}", r[0]);
    assert!(
        matches!(&r[1], R::Error(e) if e.field == "checks[1].route.path" && e.code == Code::InvalidArgument as i32),
        "{:?}",
        r[1]
    );
    assert!(
        matches!(&r[2], R::Response(x) if !x.allowed && x.reason == pb::Reason::NoGrant as i32),
        "{:?}",
        r[2]
    );
    assert!(
        matches!(&r[3], R::Response(x) if !x.allowed && x.reason == pb::Reason::UnknownTenant as i32),
        "item tenant overrides the batch's: {:?}",
        r[3]
    );
    assert!(
        matches!(&r[4], R::Response(x) if x.allowed),
        "item subject overrides the batch's: {:?}",
        r[4]
    );
    assert!(
        matches!(&r[5], R::Error(e) if e.field == "checks[5].route.method"),
        "{:?}",
        r[5]
    );
    assert_eq!(resp.revision, 1);

    // A batch over the limit fails as a whole, naming the field.
    let too_many = vec![route("acme", "mia", "GET", "/chats/"); 1001];
    let err = c
        .batch_check(pb::BatchCheckRequest {
            checks: too_many,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`checks`") && err.message().contains("1000"),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let config = ServiceConfig {
        max_message_bytes: 4096,
        ..ServiceConfig::default()
    };
    let server = TestServer::start_with(&example("chat-api.yaml"), config, None).await;
    let mut c = server.client.clone();
    let checks = vec![route("acme", "mia", "GET", "/chats/"); 200];
    let err = c
        .batch_check(pb::BatchCheckRequest {
            checks,
            ..Default::default()
        })
        .await
        .unwrap_err();
    // Refused before decoding, as the client's fault (tonic's own code is OUT_OF_RANGE).
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("the limit is: 4096 bytes"),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_tenant_is_a_deny_even_for_public_endpoints() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let mut c = server.client.clone();
    let r = c
        .check(route("nope", "", "GET", "/health/"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed);
    assert_eq!(r.reason, pb::Reason::UnknownTenant as i32);
    let r = c
        .check(route("acme", "", "GET", "/health/"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed);
    assert_eq!(r.reason, pb::Reason::Public as i32);
    server.stop().await;
}

#[tokio::test]
async fn hot_reload_publishes_new_revisions_and_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let v1 = "version: 1\nroles:\n  - id: r\n    permissions: [a]\ntenants:\n  - id: t\n    subjects: [{id: s}]\n    assignments: [{subject: s, role: r}]\n";
    std::fs::write(&path, v1).unwrap();
    let config = ServiceConfig {
        revision_wait: Duration::from_secs(10),
        ..ServiceConfig::default()
    };
    let server = TestServer::start_with(&path, config, Some(Duration::from_millis(20))).await;
    let mut c = server.client.clone();
    let r = c.check(perm("t", "s", "", "b")).await.unwrap().into_inner();
    assert!(!r.allowed);
    assert_eq!(r.revision, 1);

    // Read-your-writes: ask for revision 2 and the server waits for the reload.
    std::fs::write(&path, v1.replace("[a]", "[a, b]")).unwrap();
    let mut req = perm("t", "s", "", "b");
    req.min_revision = 2;
    let r = c.check(req).await.unwrap().into_inner();
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.revision, 2);

    // A broken file is never published: the last good policy keeps answering, and the
    // reloader reports why.
    std::fs::write(&path, "version: 1\nroles:\n  - id: r\n    includes: [r]\n").unwrap();
    let mut status = server.reloader.as_ref().unwrap().status.clone();
    let rejected = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .expect("the reloader processed the broken file")
    .unwrap()
    .clone();
    assert!(
        rejected
            .last_error
            .unwrap()
            .contains("include cycle `r -> r`")
    );
    let r = c.check(perm("t", "s", "", "b")).await.unwrap().into_inner();
    assert!(r.allowed);
    assert_eq!(r.revision, 2, "still the last good revision");
    server.stop().await;
}

#[tokio::test]
async fn min_revision_not_reached_is_unavailable() {
    let config = ServiceConfig {
        revision_wait: Duration::from_millis(50),
        ..ServiceConfig::default()
    };
    let server = TestServer::start_with(&example("console.yaml"), config, None).await;
    let mut c = server.client.clone();
    let mut req = perm("acme", "dana", "", "api_keys.manage");
    req.min_revision = 1;
    assert!(c.check(req.clone()).await.unwrap().into_inner().allowed);
    req.min_revision = 7;
    let err = c.check(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("revision 7"), "{}", err.message());
    server.stop().await;
}

#[tokio::test]
async fn health_is_serving_once_loaded() {
    let server = TestServer::start(&example("console.yaml")).await;
    let mut h = HealthClient::new(server.channel.clone());
    for service in ["", "authz.v1.AuthorizationService"] {
        let mut status = 0;
        // Readiness is set by a task that saw the load; allow it to run.
        for _ in 0..100 {
            status = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(status, ServingStatus::Serving as i32, "service `{service}`");
    }
    server.stop().await;
}

#[tokio::test]
async fn list_permissions_tells_a_ui_what_to_show() {
    let server = TestServer::start(&example("console.yaml")).await;
    let mut c = server.client.clone();
    let list = |tenant: &str, subject: &str, scope: &str| pb::ListPermissionsRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        scope: scope.into(),
        min_revision: 0,
    };
    let r = c
        .list_permissions(list("acme", "wendy", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason, pb::Reason::Granted as i32);
    let mut sorted = r.permissions.clone();
    sorted.sort();
    assert_eq!(r.permissions, sorted, "permissions are sorted");
    assert!(
        r.scopes_below.iter().any(
            |s| s.scope == "workspaces/ws-1" && s.roles.contains(&"workspace_admin".to_owned())
        ),
        "{r:?}"
    );
    let at_ws1 = c
        .list_permissions(list("acme", "wendy", "workspaces/ws-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        at_ws1.roles.iter().any(|e| e.role == "workspace_admin"),
        "{at_ws1:?}"
    );
    assert!(at_ws1.permissions.len() > r.permissions.len());
    let r = c
        .list_permissions(list("nope", "wendy", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason, pb::Reason::UnknownTenant as i32);
    let err = c
        .list_permissions(list("acme", "wendy", "/x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`scope`"));
    server.stop().await;
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_both_answer() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::{v1, v1alpha};
    let server = TestServer::start(&example("console.yaml")).await;

    let mut c1 = v1::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = c1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("{resp:?}")
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "authz.v1.AuthorizationService"),
        "{list:?}"
    );
    // Only what is served: no admin API here, so it is not listed.
    let mut names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "authz.v1.AuthorizationService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
        "{list:?}"
    );

    let mut c0 =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "authz.v1.AuthorizationService".into(),
            ),
        ),
    };
    let mut stream = c0
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(
            resp.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{resp:?}"
    );
    server.stop().await;
}
