//! Every row of the chat API seed's endpoint table (transcribed independently into
//! `tests/data/chat-endpoints.tsv`), for a member holding each combination of roles, an
//! unknown subject and an anonymous request: through the library and over BatchCheck.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::collections::BTreeSet;

use authz::{
    model::{self, Method},
    pb,
    policy::{Action, Query, compile},
};
use common::{chat::*, *};

#[test]
fn every_row_for_every_role_combination_library() {
    let policy = compile(&matrix_document(), "chat-api.yaml+matrix", 1).unwrap();
    let tenant = policy.tenants.iter().find(|t| &*t.id == "matrix").unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in rows() {
        for (subject, held) in subjects() {
            let q = Query {
                subject: &subject,
                scope: "",
                action: Action::Route {
                    method: Method::parse(&row.method).unwrap(),
                    path: model::request_path(&row.request_path).unwrap(),
                },
            };
            let got = Observed::from(&tenant.explain(&q, &tenant.check(&q)));
            let (allowed, reason) = expected(&row, held.as_ref());
            checked += 1;
            let resolved_ok = reason == "unknown_subject" || got.pattern == row.pattern;
            if got.allowed != allowed || got.reason != reason || !resolved_ok {
                failures.push(format!(
                    "{} {} ({}) as `{subject}`: want {allowed}/{reason} via `{}`, got {}/{} via `{}`",
                    row.method, row.request_path, row.pattern, row.pattern, got.allowed, got.reason, got.pattern
                ));
            }
            if reason == "no_grant" {
                let want: BTreeSet<String> = row.roles.clone();
                let got_roles: BTreeSet<String> = got.required_roles.iter().cloned().collect();
                if want != got_roles {
                    failures.push(format!(
                        "{} {}: required roles {want:?}, got {got_roles:?}",
                        row.method, row.request_path
                    ));
                }
            }
        }
    }
    assert_eq!(checked, 89 * 10);
    assert_all("chat endpoint table", failures, checked);
}

#[tokio::test]
async fn every_row_for_every_role_combination_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("matrix.yaml");
    // The server serves the same document, written out as YAML and read back.
    let doc = matrix_document();
    std::fs::write(&path, doc.to_yaml().unwrap()).unwrap();

    let server = TestServer::start(&path).await;
    let mut client = server.client.clone();
    let rows = rows();
    let mut failures = Vec::new();
    for (subject, held) in subjects() {
        let checks = rows
            .iter()
            .map(|row| pb::CheckRequest {
                action: Some(pb::check_request::Action::Route(pb::HttpRoute {
                    method: row.method.clone(),
                    path: row.request_path.clone(),
                })),
                ..Default::default()
            })
            .collect();
        let resp = client
            .batch_check(pb::BatchCheckRequest {
                tenant_id: "matrix".into(),
                subject_id: subject.clone(),
                checks,
                min_revision: 0,
                detail: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.results.len(),
            rows.len(),
            "one result per check, in order"
        );
        for (row, result) in rows.iter().zip(&resp.results) {
            let Some(pb::batch_check_result::Result::Response(r)) = &result.result else {
                panic!(
                    "{} {}: item failed: {result:?}",
                    row.method, row.request_path
                );
            };
            let got = Observed::from_pb(r);
            let (allowed, reason) = expected(row, held.as_ref());
            let resolved_ok = reason == "unknown_subject" || got.pattern == row.pattern;
            if got.allowed != allowed || got.reason != reason || !resolved_ok {
                failures.push(format!(
                    "{} {} as `{subject}`: want {allowed}/{reason} via `{}`, got {}/{} via `{}`",
                    row.method, row.request_path, row.pattern, got.allowed, got.reason, got.pattern
                ));
            }
        }
    }
    assert_all("chat endpoint table over gRPC", failures, rows.len() * 10);
    server.stop().await;
}
