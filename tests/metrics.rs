//! Metrics end to end: a server with `/metrics` on 127.0.0.1:0 answers Checks over
//! gRPC, and a scrape over HTTP shows the counters moved under the right labels.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use authz::{grpc::envoy::http_request, pb, server::ServerConfig};
use common::*;

fn route(tenant: &str, subject: &str, method: &str, path: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        action: Some(pb::check_request::Action::Route(pb::HttpRoute {
            method: method.into(),
            path: path.into(),
        })),
        ..Default::default()
    }
}

/// The value of one series in a scrape; `None` if the series is absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn checks_move_the_counters_a_scrape_shows() {
    let server =
        TestServer::start_configured(&example("chat-api.yaml"), ServerConfig::default(), true)
            .await;
    let metrics = server.metrics_addr.unwrap();
    let mut c = server.client.clone();

    let (status, content_type, before) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let granted = "authz_decisions_total{rpc=\"check\",result=\"allowed\",reason=\"granted\"}";
    assert_eq!(sample(&before, granted), Some(0.0), "{before}");

    // Two grants, a public allow, a deny, an invalid request.
    for _ in 0..2 {
        let r = c.check(route("acme", "erin", "PUT", "/experts/e-1")).await;
        assert!(r.unwrap().into_inner().allowed);
    }
    c.check(route("acme", "", "GET", "/health/")).await.unwrap();
    c.check(route("acme", "adam", "POST", "/experts/"))
        .await
        .unwrap();
    let err = c
        .check(route("acme", "erin", "PUT", "experts"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A batch of two decisions and a bad item.
    c.batch_check(pb::BatchCheckRequest {
        tenant_id: "acme".into(),
        subject_id: "mia".into(),
        checks: vec![
            route("", "", "GET", "/chats/"),
            route("", "", "DELETE", "/experts/e-1"),
            route("", "", "GET", ""),
        ],
        min_revision: 0,
        detail: 0,
    })
    .await
    .unwrap();
    // One unknown tenant through Envoy.
    server
        .envoy_client()
        .check(http_request(
            "GET",
            "/chats/",
            [("x-tenant-id".to_owned(), "nope".to_owned())],
        ))
        .await
        .unwrap();

    let (status, _, text) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    for (series, want) in [
        (granted, 2.0),
        (
            "authz_decisions_total{rpc=\"check\",result=\"allowed\",reason=\"public\"}",
            1.0,
        ),
        (
            "authz_decisions_total{rpc=\"check\",result=\"denied\",reason=\"no_grant\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"check\",code=\"invalid_argument\"}",
            1.0,
        ),
        (
            "authz_decisions_total{rpc=\"batch_check\",result=\"allowed\",reason=\"granted\"}",
            1.0,
        ),
        (
            "authz_decisions_total{rpc=\"batch_check\",result=\"denied\",reason=\"no_grant\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"batch_check\",code=\"invalid_argument\"}",
            1.0,
        ),
        (
            "authz_decisions_total{rpc=\"envoy_check\",result=\"denied\",reason=\"unknown_tenant\"}",
            1.0,
        ),
        (
            "authz_decisions_total{rpc=\"check\",result=\"denied\",reason=\"unknown_tenant\"}",
            0.0,
        ),
        ("authz_request_duration_seconds_count{rpc=\"check\"}", 5.0),
        (
            "authz_request_duration_seconds_count{rpc=\"batch_check\"}",
            1.0,
        ),
        (
            "authz_request_duration_seconds_count{rpc=\"envoy_check\"}",
            1.0,
        ),
        (
            "authz_request_duration_seconds_bucket{le=\"+Inf\",rpc=\"check\"}",
            5.0,
        ),
        ("authz_requests_in_flight{rpc=\"check\"}", 0.0),
        ("authz_policy_revision", 1.0),
        ("authz_policy_tenants", 2.0),
        ("authz_policy_reload_failures_total", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    let staleness = sample(&text, "authz_policy_staleness_seconds").unwrap();
    assert!((0.0..60.0).contains(&staleness), "{staleness}");
    assert!(
        !text.contains("authz_db_connected"),
        "no database, no connection gauge"
    );
    assert!(text.ends_with("# EOF\n"));

    let (status, _, _) = http_get(metrics, "/other").await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn refused_callers_are_counted_by_their_own_code() {
    use authz::grpc::auth::{AdminTokens, file_line};
    let tokens = AdminTokens::parse(&file_line("globex-token", "globex", Some("g")), "q").unwrap();
    let config = ServerConfig {
        query_tokens: Some(tokens),
        ..ServerConfig::default()
    };
    let server = TestServer::start_configured(&example("chat-api.yaml"), config, true).await;
    let metrics = server.metrics_addr.unwrap();
    let mut c = server.client.clone();

    // No credentials: UNAUTHENTICATED.
    let err = c
        .check(route("acme", "erin", "PUT", "/experts/e-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // A token limited to another tenant: PERMISSION_DENIED.
    let mut req = tonic::Request::new(route("acme", "erin", "PUT", "/experts/e-1"));
    req.metadata_mut()
        .insert("authorization", "Bearer globex-token".parse().unwrap());
    let err = c.check(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let (_, _, text) = http_get(metrics, "/metrics").await;
    for (series, want) in [
        (
            "authz_request_errors_total{rpc=\"check\",code=\"unauthenticated\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"check\",code=\"permission_denied\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"check\",code=\"internal\"}",
            0.0,
        ),
        (
            "authz_request_errors_total{rpc=\"list_permissions\",code=\"resource_exhausted\"}",
            0.0,
        ),
        // No admin API in this server.
        ("authz_admin_api_enabled", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    let build = format!(
        "authz_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &build), Some(1.0), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    server.stop().await;
}

/// A `CheckRequest` as raw wire fields: `tenant_id` (field 1) as bytes, so a test can
/// send one that is not UTF-8, or as a varint, the wrong wire type.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCheck {
    #[prost(bytes = "vec", optional, tag = "1")]
    tenant_bytes: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VarintCheck {
    #[prost(uint64, tag = "1")]
    tenant_number: u64,
}

async fn raw_check<M: prost::Message + Send + Sync + 'static>(
    channel: tonic::transport::Channel,
    m: M,
) -> tonic::Status {
    raw_call::<M, pb::CheckResponse>(channel, "/authz.v1.AuthorizationService/Check", m).await
}

/// Sends `m` to the method at `path`; the call must fail.
async fn raw_call<M, R>(
    channel: tonic::transport::Channel,
    path: &'static str,
    m: M,
) -> tonic::Status
where
    M: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static + std::fmt::Debug,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(m);
    // The admin API authenticates before it decodes.
    request
        .metadata_mut()
        .insert("authorization", "Bearer root-token".parse().unwrap());
    grpc.unary::<M, R, _>(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn undecodable_and_oversized_requests_get_client_codes_and_are_counted() {
    let mut config = ServerConfig::default();
    config.service.max_message_bytes = 4096;
    // The admin API on a database that is never reached: refused requests never get
    // to a handler.
    config.admin = Some(authz::grpc::PolicyAdmin::new(
        authz::store::admin::AdminStore::new(
            authz::store::postgres::pool("postgres://nobody@127.0.0.1:1/none", 1).unwrap(),
        ),
        authz::grpc::auth::AdminTokens::parse(
            &authz::grpc::auth::file_line("root-token", "*", None),
            "tokens",
        )
        .unwrap(),
    ));
    let server = TestServer::start_configured(&example("chat-api.yaml"), config, true).await;

    // Not UTF-8 in a string field: INVALID_ARGUMENT naming the field, not INTERNAL.
    let s = raw_check(
        server.channel.clone(),
        RawCheck {
            tenant_bytes: Some(vec![b'a', 0xff, 0xfe]),
        },
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with(
            "the request does not decode: CheckRequest.tenant_id: invalid string value"
        ),
        "{}",
        s.message()
    );
    // The wrong wire type.
    let s = raw_check(server.channel.clone(), VarintCheck { tenant_number: 7 }).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("CheckRequest.tenant_id"),
        "{}",
        s.message()
    );
    // Over the message limit: RESOURCE_EXHAUSTED, not OUT_OF_RANGE.
    let mut c = server.client.clone();
    let mut big = route("acme", "erin", "GET", "/chats/");
    big.subject_id = "x".repeat(5000);
    let s = c.check(big).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("the limit is"), "{}", s.message());
    // The connection is still good.
    assert!(
        c.check(route("acme", "erin", "PUT", "/experts/e-1"))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // LookupSubjects and the admin API are counted too (the admin API under "admin").
    let s = raw_call::<_, pb::LookupSubjectsResponse>(
        server.channel.clone(),
        "/authz.v1.AuthorizationService/LookupSubjects",
        RawCheck {
            tenant_bytes: Some(vec![0xc3]),
        },
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let s = raw_call::<_, pb::CreateRoleResponse>(
        server.channel.clone(),
        "/authz.v1.PolicyAdminService/CreateRole",
        RawCheck {
            tenant_bytes: Some(vec![b'a', 0xff]),
        },
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("CreateRoleRequest.tenant_id"),
        "{}",
        s.message()
    );
    let s = raw_call::<_, pb::CreateRoleResponse>(
        server.channel.clone(),
        "/authz.v1.PolicyAdminService/CreateRole",
        RawCheck {
            tenant_bytes: Some(vec![b'a'; 5000]),
        },
    )
    .await;
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");

    let (_, _, text) = http_get(server.metrics_addr.unwrap(), "/metrics").await;
    for (series, want) in [
        (
            "authz_request_errors_total{rpc=\"check\",code=\"invalid_argument\"}",
            2.0,
        ),
        (
            "authz_request_errors_total{rpc=\"lookup_subjects\",code=\"invalid_argument\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"admin\",code=\"invalid_argument\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"admin\",code=\"resource_exhausted\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"check\",code=\"resource_exhausted\"}",
            1.0,
        ),
        (
            "authz_request_errors_total{rpc=\"check\",code=\"internal\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    server.stop().await;
}
