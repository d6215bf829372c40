//! Heavy work stays off the request runtime: while ApplyPolicy parses and compiles a
//! large document (and the follower compiles what it committed), Checks of another
//! tenant keep being answered. Proven by counting, never by timing: the test runs on a
//! current-thread runtime (server, follower and client share one thread), so a parse or
//! compile on that thread would answer no Check until it finished; instead N Checks are
//! answered while a compile is provably still running (`store::compiles_running`).
//! Its own test binary: the count of running compiles is process-wide.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{fmt::Write as _, time::Duration};

use authz::{
    grpc::{
        PolicyAdmin, ServiceConfig,
        auth::{AdminTokens, file_line},
    },
    pb::{self, policy_admin_service_client::PolicyAdminServiceClient},
    server::ServerConfig,
    store::{admin::AdminStore, compiles_running, follow::FollowConfig, postgres},
};
use common::{TestServer, pg::TestDb};
use tonic::Request;

const ROOT: &str = "root-secret-token";

/// A document with one large tenant: `roles` custom roles, each with permissions and
/// route rules, in a chain of includes no deeper than the limit.
fn large_document(roles: usize) -> String {
    let mut y = String::from(
        "version: 1\nroles:\n  - id: viewer\n    permissions: [docs.read]\ntenants:\n  - id: acme\n    subjects: [{id: alice}]\n    assignments: [{subject: alice, role: viewer}]\n  - id: big\n    roles:\n",
    );
    for i in 0..roles {
        let _ = writeln!(y, "      - id: r{i}");
        if i % 16 != 0 {
            let _ = writeln!(y, "        includes: [r{}]", i - 1);
        }
        let _ = writeln!(
            y,
            "        permissions: [p{i}.a, p{i}.b, p{i}.c]\n        routes:\n          - {{methods: [GET], path: \"/r/{i}/*/x\"}}\n          - {{methods: [PUT], path: \"/r/{i}/**\"}}"
        );
    }
    y
}

#[tokio::test]
async fn checks_are_answered_while_a_large_policy_compiles() {
    let db = TestDb::create("blocking").await;
    let tokens = AdminTokens::parse(
        &format!("{}\n", file_line(ROOT, "*", Some("root"))),
        "tokens",
    )
    .unwrap();
    let admin = PolicyAdmin::new(AdminStore::new(postgres::pool(&db.url, 4).unwrap()), tokens);
    let config = ServerConfig {
        service: ServiceConfig {
            max_message_bytes: 64 * 1024 * 1024,
            revision_wait: Duration::from_secs(30),
            ..ServiceConfig::default()
        },
        shutdown_grace: Duration::from_secs(5),
        admin: Some(admin),
        ..ServerConfig::default()
    };
    let mut follow = FollowConfig::new(db.url.clone());
    follow.poll_interval = Duration::from_millis(100);
    let (server, _follower) = TestServer::start_db_configured(follow, config).await;
    let mut admin = PolicyAdminServiceClient::new(server.channel.clone())
        .max_encoding_message_size(64 * 1024 * 1024);
    let apply = |document: String| {
        let mut r = Request::new(pb::ApplyPolicyRequest {
            document,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {ROOT}").parse().unwrap());
        r
    };
    // A small policy first, so tenant `acme` answers.
    let small = large_document(1);
    let rev = admin
        .apply_policy(apply(small))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let check = pb::CheckRequest {
        tenant_id: "acme".into(),
        subject_id: "alice".into(),
        action: Some(pb::check_request::Action::Permission("docs.read".into())),
        min_revision: rev,
        ..Default::default()
    };
    let mut client = server.client.clone();
    assert!(
        client
            .check(check.clone())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // Now a large one, on its own task of this same thread.
    const CHECKS: usize = 20;
    let mut overlapped = false;
    for roles in [4000, 8000, 10_000] {
        let apply_task = tokio::spawn({
            let mut admin = admin.clone();
            let doc = large_document(roles);
            async move { admin.apply_policy(apply(doc)).await }
        });
        // Wait (bounded) until a parse or compile is running on a blocking thread.
        let mut waited = 0;
        while compiles_running() == 0 && !apply_task.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
            assert!(waited < 60_000, "a compile started within a minute");
        }
        let mut answered = 0;
        while compiles_running() > 0 && answered < CHECKS {
            let r = tokio::time::timeout(Duration::from_secs(10), client.check(check.clone()))
                .await
                .expect("a Check is answered during the compile")
                .unwrap();
            assert!(r.into_inner().allowed);
            answered += 1;
        }
        // Every Check was answered while the compile was still running.
        overlapped = answered == CHECKS && compiles_running() > 0;
        tokio::time::timeout(Duration::from_secs(300), apply_task)
            .await
            .expect("the large apply finished")
            .unwrap()
            .unwrap();
        if overlapped {
            break;
        }
        // The compile was faster than the Checks (a fast machine): a larger document.
    }
    assert!(overlapped, "{CHECKS} Checks answered while a compile ran");
    server.stop().await;
    db.drop_db().await;
}
