//! Each example policy, applied to PostgreSQL and served from it, answers every case of
//! its expectations file over gRPC exactly as the same policy served from its file does
//! (decision, reason, grant, pattern and the explanation's words).
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
    grpc::ServiceConfig,
    policy::PolicyDocument,
    store::{follow::FollowConfig, sync},
};
use common::{Observed, TestServer, example, expectations, pg::TestDb};

async fn same_answers(seed: &str) {
    let e = expectations(&format!("{seed}.expect.yaml"));
    let path = example(e.policy.as_deref().unwrap());
    let db = TestDb::create(&format!("seed_{seed}")).await;
    let doc = PolicyDocument::read(&path).unwrap();
    let report = sync::apply(&mut db.client().await, &doc, e.policy.as_deref().unwrap())
        .await
        .unwrap();
    let revision = report
        .revision
        .expect("applying to an empty database writes");

    let from_file = TestServer::start(&path).await;
    let mut follow = FollowConfig::new(&db.url);
    follow.poll_interval = Duration::from_millis(200);
    let (from_db, follower) = TestServer::start_db(follow, ServiceConfig::default()).await;
    assert_eq!(from_db.cache.revision(), revision);

    let (mut a, mut b) = (from_file.client.clone(), from_db.client.clone());
    let mut failures = Vec::new();
    for case in &e.cases {
        let file_answer = a.check(case.to_pb()).await.unwrap().into_inner();
        let db_answer = b.check(case.to_pb()).await.unwrap().into_inner();
        let (f, d) = (
            Observed::from_pb(&file_answer),
            Observed::from_pb(&db_answer),
        );
        if f != d {
            failures.push(format!(
                "case `{}`:\n  file: {f:?}\n  db:   {d:?}",
                case.name
            ));
        }
        // And both are right, not merely equal.
        if let Some(m) = case.mismatch(&d) {
            failures.push(m);
        }
    }
    common::assert_all(seed, failures, e.cases.len());
    from_file.stop().await;
    from_db.stop().await;
    drop(follower);
    db.drop_db().await;
}

#[tokio::test]
async fn console_from_postgres_answers_as_from_its_file() {
    same_answers("console").await;
}

#[tokio::test]
async fn chat_api_from_postgres_answers_as_from_its_file() {
    same_answers("chat-api").await;
}

#[tokio::test]
async fn gateway_from_postgres_answers_as_from_its_file() {
    same_answers("gateway").await;
}
