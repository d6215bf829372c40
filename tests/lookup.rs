//! LookupSubjects answers "who may do this" exactly as Check would: for every example
//! policy, tenant, scope and action (every permission and endpoint entry and rule
//! pattern, made concrete, with several methods), the pages concatenated are exactly the
//! registered subjects Check allows; and over gRPC, against a Check per subject.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use authz::{
    model::{self, Method},
    pb,
    policy::{
        Action, Policy, Query, TenantSnapshot,
        pattern::{Pattern, Segment},
    },
    store::file,
};
use common::{TestServer, example};

/// A concrete path the pattern matches.
fn concrete(p: &Pattern) -> String {
    let mut s = String::new();
    for seg in p.segments() {
        s.push('/');
        match seg {
            Segment::Literal(l) => s.push_str(l),
            Segment::Wildcard => s.push_str("x1"),
            Segment::Rest => s.push_str("a/b"),
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Every action worth asking about in a tenant.
fn actions(t: &TenantSnapshot) -> (Vec<String>, Vec<(String, String)>) {
    let mut permissions: Vec<String> = Vec::new();
    let mut paths: Vec<String> = vec!["/nothing/here".into()];
    for i in 0..t.role_count() {
        let r = t.role(i as u32).unwrap();
        permissions.extend(r.permissions.iter().map(|p| p.to_string()));
        paths.extend(r.rules.iter().map(|rule| concrete(&rule.pattern)));
    }
    paths.extend(t.endpoints.iter().map(|e| concrete(&e.pattern)));
    permissions.push("no.such.permission".into());
    permissions.sort();
    permissions.dedup();
    paths.sort();
    paths.dedup();
    let mut routes = Vec::new();
    for p in paths {
        for m in ["GET", "PUT", "POST", "DELETE", "HEAD"] {
            routes.push((m.to_owned(), p.clone()));
        }
    }
    (permissions, routes)
}

fn scopes(t: &TenantSnapshot) -> Vec<String> {
    let mut out = vec![String::new()];
    for s in t.scopes.iter().filter(|s| !s.is_empty()) {
        out.push(s.to_string());
        out.push(format!("{s}/child"));
    }
    out
}

/// Every page of a lookup, concatenated.
fn all_pages(t: &TenantSnapshot, scope: &str, action: Action<'_>, page: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (items, more) = t.lookup_subjects(scope, action, &after, page);
        out.extend(items.iter().map(|a| a.subject.to_owned()));
        if !more {
            return out;
        }
        after = out.last().cloned().unwrap();
    }
}

fn brute_force(t: &TenantSnapshot, scope: &str, action: Action<'_>) -> Vec<String> {
    t.subjects
        .keys()
        .filter(|id| {
            t.check(&Query {
                subject: id,
                scope,
                action,
            })
            .allowed()
        })
        .map(str::to_owned)
        .collect()
}

fn compare(policy: &Policy) -> usize {
    let mut compared = 0;
    for t in &policy.tenants {
        let (permissions, routes) = actions(t);
        for scope in scopes(t) {
            let mut asks: Vec<Action<'_>> = permissions
                .iter()
                .map(|p| Action::Permission(p.as_str()))
                .collect();
            for (m, p) in &routes {
                asks.push(Action::Route {
                    method: Method::parse(m).unwrap(),
                    path: model::request_path(p).unwrap(),
                });
            }
            for action in asks {
                let want = brute_force(t, &scope, action);
                for page in [1, 3, 1000] {
                    let got = all_pages(t, &scope, action, page);
                    assert_eq!(
                        got, want,
                        "tenant {} scope {scope:?} {action:?} page {page}",
                        t.id
                    );
                }
                compared += 1;
            }
        }
    }
    compared
}

#[test]
fn lookup_agrees_with_check_on_every_example_policy() {
    let mut total = 0;
    for name in ["chat-api.yaml", "console.yaml", "gateway.yaml"] {
        let (policy, _) = file::load(&example(name), 1).unwrap();
        let n = compare(&policy);
        assert!(n > 50, "{name}: only {n} lookups compared");
        total += n;
    }
    assert!(total > 500, "{total}");
}

#[tokio::test]
async fn lookup_subjects_over_grpc_pages_and_agrees_with_check() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let mut c = server.client.clone();
    let subjects: Vec<String> = server
        .cache
        .tenant("acme")
        .unwrap()
        .subjects
        .keys()
        .map(str::to_owned)
        .collect();
    for (method, path) in [
        ("PUT", "/experts/e-1"),
        ("POST", "/experts/"),
        ("GET", "/groups/"),
        ("GET", "/health/"),
        ("DELETE", "/nothing"),
    ] {
        let route = pb::HttpRoute {
            method: method.into(),
            path: path.into(),
        };
        let mut got = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .lookup_subjects(pb::LookupSubjectsRequest {
                    tenant_id: "acme".into(),
                    action: Some(pb::lookup_subjects_request::Action::Route(route.clone())),
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.subjects.len() <= 2);
            assert_eq!(page.revision, 1);
            for s in &page.subjects {
                if s.reason == pb::Reason::Granted as i32 {
                    assert!(!s.grant.as_ref().unwrap().role.is_empty());
                }
            }
            got.extend(page.subjects.into_iter().map(|s| s.subject_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let mut want = Vec::new();
        for s in &subjects {
            let r = c
                .check(pb::CheckRequest {
                    tenant_id: "acme".into(),
                    subject_id: s.clone(),
                    action: Some(pb::check_request::Action::Route(route.clone())),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if r.allowed {
                want.push(s.clone());
            }
        }
        assert_eq!(got, want, "{method} {path}");
    }
    // Bad input names the field; an unknown tenant has nobody.
    for (req, field) in [
        (
            pb::LookupSubjectsRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            },
            "action",
        ),
        (
            pb::LookupSubjectsRequest {
                tenant_id: "acme".into(),
                action: Some(pb::lookup_subjects_request::Action::Permission("x".into())),
                page_token: "zz".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::LookupSubjectsRequest {
                tenant_id: "acme".into(),
                action: Some(pb::lookup_subjects_request::Action::Permission("x".into())),
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::LookupSubjectsRequest {
                tenant_id: "acme".into(),
                scope: "/bad".into(),
                action: Some(pb::lookup_subjects_request::Action::Permission("x".into())),
                ..Default::default()
            },
            "scope",
        ),
    ] {
        let err = c.lookup_subjects(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    let none = c
        .lookup_subjects(pb::LookupSubjectsRequest {
            tenant_id: "nope".into(),
            action: Some(pb::lookup_subjects_request::Action::Permission("x".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.subjects.is_empty());
    server.stop().await;
}
