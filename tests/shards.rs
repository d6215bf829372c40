//! Tenant sharding: replicas serving a shard (`--tenant-shard i/n`) or a list of tenants
//! answer for their tenants only, and refuse the others with FAILED_PRECONDITION naming
//! the shard each belongs to, on every API (Check, BatchCheck with mixed tenants,
//! ListPermissions, LookupSubjects, Envoy ext_authz, AuthZEN, the admin API); never with
//! an "unknown tenant" deny. Two replicas on shards 0/2 and 1/2 of a database split a
//! generated tenant set: every tenant served by exactly one of them, loaded only there,
//! and kept current there only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::time::Duration;

use authz::{
    authzen::{self, AuthzenConfig},
    cache::Cache,
    grpc::{
        AuthzService, PolicyAdmin, ServiceConfig,
        auth::{AdminTokens, file_line},
        envoy::http_request,
    },
    pb::{self, policy_admin_service_client::PolicyAdminServiceClient},
    server::ServerConfig,
    shard::{TenantFilter, shard_of},
    store::{admin::AdminStore, file, follow::FollowConfig, postgres},
};
use common::{TestServer, example, pg::TestDb};
use envoy_types::ext_authz::v3::pb::HttpResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request};

fn permission_check(tenant: &str, subject: &str, permission: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        action: Some(pb::check_request::Action::Permission(permission.into())),
        ..Default::default()
    }
}

/// A FAILED_PRECONDITION naming the tenant and the shard it belongs to.
fn assert_wrong_shard(status: &tonic::Status, tenant: &str, home: &str) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let m = status.message();
    assert!(
        m.contains(&format!("`{tenant}`")) && m.contains(home),
        "names the tenant and {home}: {m}"
    );
}

const EVALUATION: &str = r#"{"subject":{"type":"user","id":"carl"},"action":{"name":"chats.read"},"resource":{"type":"tenant","id":"x"}}"#;

/// One AuthZEN evaluation over plain HTTP/1.1: (status, body).
async fn authzen_evaluation(addr: std::net::SocketAddr, tenant: &str) -> (u16, String) {
    authzen_post(
        addr,
        &format!("/tenants/{tenant}/access/v1/evaluation"),
        EVALUATION,
    )
    .await
}

/// One AuthZEN POST over plain HTTP/1.1: (status, body).
async fn authzen_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10s");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_shard_refuses_other_tenants_on_every_query_api() {
    // The chat API example has tenants `acme` and `globex`: shards 1 and 0 of 2.
    assert_eq!((shard_of("acme", 2), shard_of("globex", 2)), (1, 0));
    let (policy, _) = file::load(&example("chat-api.yaml"), 1).unwrap();
    let cache = Cache::with_filter(TenantFilter::parse_shard("1/2").unwrap());
    cache.replace_all(policy, 1);
    assert!(cache.tenant("acme").is_some());
    assert!(
        cache.tenant("globex").is_none(),
        "another shard's tenant is not held"
    );
    let server = TestServer::serve_cache(
        cache.clone(),
        ServerConfig {
            shutdown_grace: Duration::from_secs(5),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut client = server.client.clone();

    // Check: the served tenant is answered; the other refused, naming its shard; a
    // tenant that exists nowhere is still refused here when it hashes to another shard,
    // and is an unknown-tenant deny when it hashes to this one.
    let ok = client
        .check(permission_check("acme", "carl", "chats.read"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.revision, 1);
    let err = client
        .check(permission_check("globex", "erin", "chats.read"))
        .await
        .unwrap_err();
    assert_wrong_shard(&err, "globex", "shard 0/2");
    assert!(
        err.message().contains("this replica serves shard 1/2"),
        "{err:?}"
    );
    // With a min_revision this replica will never reach: refused as another shard's at
    // once, not UNAVAILABLE after the wait (which a client would retry here).
    let err = client
        .check(pb::CheckRequest {
            min_revision: 999,
            ..permission_check("globex", "erin", "chats.read")
        })
        .await
        .unwrap_err();
    assert_wrong_shard(&err, "globex", "shard 0/2");
    let err = client
        .list_permissions(pb::ListPermissionsRequest {
            tenant_id: "globex".into(),
            subject_id: "erin".into(),
            min_revision: 999,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_wrong_shard(&err, "globex", "shard 0/2");
    let nowhere = (0..100)
        .map(|i| format!("nowhere-{i}"))
        .find(|t| shard_of(t, 2) == 1)
        .unwrap();
    let unknown = client
        .check(permission_check(&nowhere, "carl", "chats.read"))
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.allowed);
    assert_eq!(unknown.reason, pb::Reason::UnknownTenant as i32);

    // BatchCheck naming both tenants: each item on its own.
    let batch = client
        .batch_check(pb::BatchCheckRequest {
            checks: vec![
                permission_check("acme", "carl", "chats.read"),
                permission_check("globex", "erin", "chats.read"),
                permission_check("acme", "mia", "chats.read"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = batch
        .results
        .iter()
        .map(|r| match r.result.as_ref().unwrap() {
            pb::batch_check_result::Result::Response(_) => "answer".to_owned(),
            pb::batch_check_result::Result::Error(e) => {
                assert_eq!(e.code, Code::FailedPrecondition as i32, "{e:?}");
                assert!(e.message.contains("shard 0/2"), "{e:?}");
                assert!(e.field.contains("tenant_id"), "{e:?}");
                "refused".to_owned()
            }
        })
        .collect();
    assert_eq!(kinds, ["answer", "refused", "answer"]);

    let err = client
        .list_permissions(pb::ListPermissionsRequest {
            tenant_id: "globex".into(),
            subject_id: "erin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_wrong_shard(&err, "globex", "shard 0/2");
    client
        .list_permissions(pb::ListPermissionsRequest {
            tenant_id: "acme".into(),
            subject_id: "carl".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = client
        .lookup_subjects(pb::LookupSubjectsRequest {
            tenant_id: "globex".into(),
            action: Some(pb::lookup_subjects_request::Action::Permission(
                "chats.read".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_wrong_shard(&err, "globex", "shard 0/2");

    // Envoy: 421 Misdirected Request with `x-authz-reason: wrong_shard`.
    let answer = server
        .envoy_client()
        .check(http_request(
            "GET",
            "/chats/",
            vec![
                ("x-tenant-id".into(), "globex".into()),
                ("x-subject-id".into(), "erin".into()),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status.as_ref().unwrap().code,
        Code::FailedPrecondition as i32
    );
    let Some(HttpResponse::DeniedResponse(denied)) = answer.http_response else {
        panic!("a denial: {answer:?}")
    };
    assert_eq!(denied.status.unwrap().code, 421);
    assert!(denied.body.contains("shard 0/2"), "{}", denied.body);
    assert!(
        denied.headers.iter().any(|h| h
            .header
            .as_ref()
            .is_some_and(|h| h.key == "x-authz-reason" && h.value == "wrong_shard")),
        "{:?}",
        denied.headers
    );
    let allowed = server
        .envoy_client()
        .check(http_request(
            "GET",
            "/chats/",
            vec![
                ("x-tenant-id".into(), "acme".into()),
                ("x-subject-id".into(), "carl".into()),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.status.unwrap().code, Code::Ok as i32);

    // AuthZEN: 421 naming the shard; the served tenant answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(authzen::serve(
        listener,
        AuthzService::new(cache.clone(), ServiceConfig::default()),
        AuthzenConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let (status, body) = authzen_evaluation(addr, "globex").await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("shard 0/2"), "{body}");
    let (status, body) = authzen_evaluation(addr, "acme").await;
    assert_eq!(status, 200, "{body}");
    // Evaluations: each item denied with its error, status 421, never a decision.
    let (status, body) = authzen_post(
        addr,
        "/tenants/globex/access/v1/evaluations",
        &format!(r#"{{"evaluations":[{EVALUATION},{EVALUATION}]}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = v["evaluations"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{body}");
    for item in items {
        assert_eq!(item["decision"], false, "{body}");
        assert_eq!(item["context"]["error"]["status"], 421, "{body}");
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), http).await;
    server.stop().await;
}

#[tokio::test]
async fn a_tenant_list_serves_only_its_tenants() {
    let (policy, _) = file::load(&example("chat-api.yaml"), 1).unwrap();
    let cache = Cache::with_filter(TenantFilter::parse_list("globex").unwrap());
    cache.replace_all(policy, 1);
    assert_eq!(cache.tenant_count(), 1);
    let server = TestServer::serve_cache(cache, ServerConfig::default()).await;
    let err = server
        .client
        .clone()
        .check(permission_check("acme", "carl", "chats.read"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("1 listed tenant") && err.message().contains("another replica"),
        "{err:?}"
    );
    server
        .client
        .clone()
        .check(permission_check("globex", "erin", "chats.read"))
        .await
        .unwrap();
    server.stop().await;
}

const ROOT: &str = "root-secret-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_a_database_with_no_tenant_served_twice_or_missed() {
    const N: usize = 40;
    let db = TestDb::create("shards").await;
    // Generated tenants, each with a member holding a tenant role.
    let mut sql = String::new();
    for i in 0..N {
        let t = format!("tenant-{i:03}");
        sql.push_str(&format!(
            "INSERT INTO tenants VALUES ('{t}');
             INSERT INTO roles (tenant_id, id) VALUES ('{t}', 'reader');
             INSERT INTO role_permissions VALUES ('{t}', 'reader', 'docs.read');
             INSERT INTO subjects (tenant_id, id) VALUES ('{t}', 'alice');
             INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ('{t}', 'alice', 'reader', '');"
        ));
    }
    db.client().await.batch_execute(&sql).await.unwrap();
    let tokens = AdminTokens::parse(&file_line(ROOT, "*", Some("root")), "tokens").unwrap();
    let mut shards = Vec::new();
    for i in 0..2u32 {
        let mut follow = FollowConfig::new(db.url.clone());
        follow.poll_interval = Duration::from_millis(50);
        let admin = PolicyAdmin::new(
            AdminStore::new(postgres::pool(&db.url, 2).unwrap()),
            tokens.clone(),
        );
        let cache = Cache::with_filter(TenantFilter::Shard { index: i, count: 2 });
        let config = ServerConfig {
            service: ServiceConfig {
                revision_wait: Duration::from_secs(10),
                ..ServiceConfig::default()
            },
            shutdown_grace: Duration::from_secs(5),
            admin: Some(admin),
            ..ServerConfig::default()
        };
        shards.push(TestServer::start_db_in(cache, follow, config).await);
    }
    let mut served = [0usize; 2];
    for i in 0..N {
        let t = format!("tenant-{i:03}");
        let home = shard_of(&t, 2) as usize;
        for (s, (server, _)) in shards.iter().enumerate() {
            let held = server.cache.tenant(&t).is_some();
            assert_eq!(held, s == home, "{t} is loaded by shard {home} only");
            let answer = server
                .client
                .clone()
                .check(permission_check(&t, "alice", "docs.read"))
                .await;
            if s == home {
                assert!(answer.unwrap().into_inner().allowed, "{t}");
                served[s] += 1;
            } else {
                assert_wrong_shard(&answer.unwrap_err(), &t, &format!("shard {home}/2"));
            }
        }
    }
    assert_eq!(served[0] + served[1], N, "every tenant served once");
    assert!(
        served[0] > 0 && served[1] > 0,
        "both shards serve some: {served:?}"
    );
    for (server, _) in &shards {
        assert_eq!(
            server.cache.tenant_count(),
            served[shards
                .iter()
                .position(|(s, _)| s.addr == server.addr)
                .unwrap()]
        );
    }

    // A write to each tenant through its own shard's admin API reaches that shard (read
    // your writes); the other shard refuses the write and never loads the tenant.
    for i in 0..N {
        let t = format!("tenant-{i:03}");
        let home = shard_of(&t, 2) as usize;
        let other = 1 - home;
        let mut admin = PolicyAdminServiceClient::new(shards[home].0.channel.clone());
        let mut req = Request::new(pb::RevokeRoleRequest {
            tenant_id: t.clone(),
            assignment: Some(pb::Assignment {
                subject_id: "alice".into(),
                role_id: "reader".into(),
                ..Default::default()
            }),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {ROOT}").parse().unwrap());
        let rev = admin.revoke_role(req).await.unwrap().into_inner().revision;
        let after = shards[home]
            .0
            .client
            .clone()
            .check(pb::CheckRequest {
                min_revision: rev,
                ..permission_check(&t, "alice", "docs.read")
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!after.allowed, "{t}: {after:?}");
        let mut wrong = PolicyAdminServiceClient::new(shards[other].0.channel.clone());
        let mut req = Request::new(pb::RegisterSubjectRequest {
            tenant_id: t.clone(),
            subject_id: "bob".into(),
            disabled: false,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {ROOT}").parse().unwrap());
        let err = wrong.register_subject(req).await.unwrap_err();
        assert_wrong_shard(&err, &t, &format!("shard {home}/2"));
    }
    let last = db.revision().await;
    for (server, _) in &shards {
        server
            .cache
            .wait_for(last, Duration::from_secs(10))
            .await
            .unwrap();
        let mut n = 0;
        server.cache.for_each_tenant(|t| {
            n += 1;
            assert!(server.cache.filter().serves(t), "{t}");
        });
        assert_eq!(n, server.cache.tenant_count());
    }
    // Whole-policy admin operations need a replica serving every tenant.
    let mut admin = PolicyAdminServiceClient::new(shards[0].0.channel.clone());
    let mut req = Request::new(pb::ExportPolicyRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {ROOT}").parse().unwrap());
    let err = admin.export_policy(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("every tenant"), "{err:?}");

    for (server, follower) in shards {
        server.stop().await;
        drop(follower);
    }
    db.drop_db().await;
}
