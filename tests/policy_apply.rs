//! Reviewing a change before it is applied, against a real PostgreSQL: the admin API's
//! DiffPolicy (the same diff as `authzd diff now FILE`), and `authzd policy apply
//! --dry-run`, which writes nothing.
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
    grpc::{
        PolicyAdmin, ServiceConfig,
        auth::{AdminTokens, file_line},
    },
    pb::{self, policy_admin_service_client::PolicyAdminServiceClient},
    policy::{
        PolicyDocument, compile,
        diff::{Side, after_apply, diff},
    },
    server::ServerConfig,
    store::{admin::AdminStore, follow::FollowConfig, postgres, sync},
};
use common::{TestServer, example, pg::TestDb};
use tonic::{Code, Request};

const ROOT: &str = "root-secret-token";
const ACME: &str = "acme-secret-token";

/// Runs `authzd ARGS` on a blocking thread, so the test's runtime keeps serving.
async fn authzd(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `parts` as owned arguments.
fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The gateway example with a reviewer-worthy change: role `user` may deploy to prod,
/// and olga is no longer orgadmin.
fn changed_gateway() -> String {
    let text = std::fs::read_to_string(example("gateway.yaml")).unwrap();
    let removed = "      - subject: olga\n        role: orgadmin\n";
    assert!(text.contains(removed));
    let text = text.replacen(removed, "", 1);
    let anchor = "  - id: user\n";
    assert!(text.contains(anchor));
    // A rule added at the top of the `user` role's rules.
    let doc: PolicyDocument = serde_yaml_ng::from_str(&text).unwrap();
    let mut doc = doc;
    let user = doc.roles.iter_mut().find(|r| r.id == "user").unwrap();
    user.routes.push(authz::policy::source::RouteDoc {
        methods: vec!["PUT".into()],
        path: "/environments/prod/applications/*/revisions/*/deployments".into(),
    });
    doc.to_yaml().unwrap()
}

#[tokio::test]
async fn diff_policy_returns_the_library_diff_and_writes_nothing() {
    let db = TestDb::create("diff_policy").await;
    let original = PolicyDocument::read(&example("gateway.yaml")).unwrap();
    sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap();
    let tokens = AdminTokens::parse(
        &format!(
            "{}\n{}\n",
            file_line(ROOT, "*", Some("root")),
            file_line(ACME, "acme", Some("acme-admin"))
        ),
        "tokens",
    )
    .unwrap();
    let admin = PolicyAdmin::new(AdminStore::new(postgres::pool(&db.url, 2).unwrap()), tokens);
    let mut follow = FollowConfig::new(db.url.clone());
    follow.poll_interval = Duration::from_millis(100);
    let config = ServerConfig {
        service: ServiceConfig::default(),
        shutdown_grace: Duration::from_secs(5),
        admin: Some(admin),
        ..ServerConfig::default()
    };
    let (server, _follower) = TestServer::start_db_configured(follow, config).await;
    let mut client = PolicyAdminServiceClient::new(server.channel.clone());
    let before = db.revision().await;

    let document = changed_gateway();
    let resp = client
        .diff_policy(authed(
            ROOT,
            pb::DiffPolicyRequest {
                document: document.clone(),
                format: pb::DocumentFormat::Yaml as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.revision, before);
    assert!(resp.access_changed);

    // Exactly the library's diff of the database's document and the applied result.
    let (_, current, _) = sync::export_current(&mut db.client().await).await.unwrap();
    let new = after_apply(&current, &serde_yaml_ng::from_str(&document).unwrap());
    let (op, np) = (
        compile(&current, "db", 1).unwrap(),
        compile(&new, "doc", 1).unwrap(),
    );
    let want = diff(
        Side {
            label: "db",
            doc: &current,
            policy: &op,
        },
        Side {
            label: "doc",
            doc: &new,
            policy: &np,
        },
    )
    .unwrap();
    assert_eq!(resp, authz::grpc::convert::diff_to_pb(&want, before));

    // What a reviewer reads in it.
    let acme = resp.access.iter().find(|t| t.tenant_id == "acme").unwrap();
    let olga = acme
        .subjects
        .iter()
        .find(|s| s.subject_id == "olga")
        .unwrap();
    let set = |s: &pb::SubjectAccessDiff| &acme.change_sets[s.changes[0].change_set as usize];
    let route = |r: &u32| &acme.route_changes[*r as usize];
    assert!(
        set(olga)
            .routes
            .iter()
            .all(|r| route(r).change == pb::AccessDirection::Lost as i32)
    );
    assert!(
        olga.causes
            .iter()
            .any(|c| c.kind == "assignment_removed" && c.detail == "orgadmin at the root")
    );
    let ulli = acme
        .subjects
        .iter()
        .find(|s| s.subject_id == "ulli")
        .unwrap();
    assert!(set(ulli).routes.iter().map(route).any(|r| {
        r.change == pb::AccessDirection::Gained as i32
            && r.via.as_ref().unwrap().role_id == "user"
            && r.requests
                .iter()
                .all(|q| acme.methods[q.method_index as usize] == "PUT")
    }));
    let structure = resp.structure.unwrap();
    assert_eq!(
        structure.builtin_roles[0].routes.as_ref().unwrap().added,
        ["PUT /environments/prod/applications/*/revisions/*/deployments"]
    );

    // Nothing was written.
    assert_eq!(db.revision().await, before);

    // A row written through SQL that the document does not have: DiffPolicy names it as
    // a row ApplyPolicy would refuse to delete without `force`.
    db.client()
        .await
        .batch_execute("INSERT INTO subjects (tenant_id, id) VALUES ('acme', 'sqlonly')")
        .await
        .unwrap();
    let with_sql = client
        .diff_policy(authed(
            ROOT,
            pb::DiffPolicyRequest {
                document: document.clone(),
                format: pb::DocumentFormat::Yaml as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        with_sql.protected_rows,
        ["subjects (tenant_id=acme, id=sqlonly)"]
    );
    assert!(resp.protected_rows.is_empty());
    db.client()
        .await
        .batch_execute("DELETE FROM subjects WHERE tenant_id = 'acme' AND id = 'sqlonly'")
        .await
        .unwrap();
    let before = db.revision().await;

    // Two revisions instead of a document: the library's diff of the two states, each
    // rebuilt from the change log (an empty database at revision 0).
    let resp = client
        .diff_policy(authed(
            ROOT,
            pb::DiffPolicyRequest {
                old_revision: Some(0),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.revision, resp.new_revision), (0, before));
    let (empty, _) = postgres::export_at(&mut db.client().await, 0)
        .await
        .unwrap();
    let ep = compile(&empty, "old", 1).unwrap();
    let want = diff(
        Side {
            label: "old",
            doc: &empty,
            policy: &ep,
        },
        Side {
            label: "new",
            doc: &current,
            policy: &op,
        },
    )
    .unwrap();
    let mut want = authz::grpc::convert::diff_to_pb(&want, 0);
    want.new_revision = before;
    assert_eq!(resp, want);
    assert!(resp.access_changed);
    // A revision the database does not have yet is OUT_OF_RANGE; a document with
    // revisions, or a new revision alone, is INVALID_ARGUMENT naming the field.
    let err = client
        .diff_policy(authed(
            ROOT,
            pb::DiffPolicyRequest {
                old_revision: Some(0),
                new_revision: Some(before + 1),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("newer than"), "{}", err.message());
    for (req, field) in [
        (
            pb::DiffPolicyRequest {
                document: document.clone(),
                old_revision: Some(0),
                ..Default::default()
            },
            "document",
        ),
        (
            pb::DiffPolicyRequest {
                document: document.clone(),
                new_revision: Some(0),
                ..Default::default()
            },
            "old_revision",
        ),
    ] {
        let err = client.diff_policy(authed(ROOT, req)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
    }

    // A token for one tenant may not ask (the document speaks for every tenant's
    // built-in roles); a bad document is INVALID_ARGUMENT naming `document`.
    let err = client
        .diff_policy(authed(
            ACME,
            pb::DiffPolicyRequest {
                document: document.clone(),
                format: 0,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for bad in [
        "version: 1\nroles:\n  - id: a\n    includes: [a]\n",
        "version: 1\nrolez: []\n",
    ] {
        let err = client
            .diff_policy(authed(
                ROOT,
                pb::DiffPolicyRequest {
                    document: bad.into(),
                    format: 0,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("document"), "{}", err.message());
    }
    // The same document as the database's: nothing changes.
    let resp = client
        .diff_policy(authed(
            ROOT,
            pb::DiffPolicyRequest {
                document: std::fs::read_to_string(example("gateway.yaml")).unwrap(),
                format: 0,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.access_changed && resp.access.is_empty());
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn apply_dry_run_prints_the_diff_and_writes_nothing() {
    let db = TestDb::create("apply_dry_run").await;
    let original = PolicyDocument::read(&example("gateway.yaml")).unwrap();
    sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap();
    let before = db.revision().await;
    let (_, exported_before) = sync::export(&mut db.client().await, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("changed.yaml");
    std::fs::write(&file, changed_gateway()).unwrap();
    let path = file.display().to_string();
    let run = |extra: &[&str]| {
        let mut a = args(&[
            "policy",
            "apply",
            "--dry-run",
            "--database-url",
            &db.url,
            &path,
        ]);
        a.extend(args(extra));
        authzd(a)
    };
    let out = run(&[]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("subject `olga`"), "{stdout}");
    assert!(
        stdout.contains("because assignment_removed: orgadmin at the root"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+rules PUT /environments/prod/applications/*/revisions/*/deployments"),
        "{stdout}"
    );
    assert!(stderr.contains("dry run: nothing written"), "{stderr}");
    let out = run(&["--output", "json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["access"][0]["tenant"], "acme");

    assert!(!stderr.contains("without --force"), "{stderr}");

    // Nothing changed in the database: same revision, same document.
    assert_eq!(db.revision().await, before);
    let (_, exported_after) = sync::export(&mut db.client().await, None).await.unwrap();
    assert_eq!(exported_before, exported_after);

    // A row written by SQL that the apply would delete: the dry run says the apply will
    // need --force, and still writes nothing.
    db.client()
        .await
        .batch_execute("INSERT INTO subjects (tenant_id, id) VALUES ('acme', 'sqlonly')")
        .await
        .unwrap();
    let before = db.revision().await;
    let out = run(&[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The dry run exits as the apply would: refused (65), and says so in the report.
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refused without --force: 1 rows")
            && stdout.contains("subjects (tenant_id=acme, id=sqlonly)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("without --force the apply will be refused")
            && stderr.contains("subjects (tenant_id=acme, id=sqlonly)"),
        "{stderr}"
    );
    // In JSON, the same rows beside the diff; with --force, a note and exit 0.
    let out = run(&["--output", "json"]).await;
    assert_eq!(out.status.code(), Some(65));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["protected_rows"],
        serde_json::json!(["subjects (tenant_id=acme, id=sqlonly)"])
    );
    let out = run(&["--force"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("with --force the apply will delete"),
        "{stderr}"
    );
    assert_eq!(db.revision().await, before);
    db.client()
        .await
        .batch_execute("DELETE FROM subjects WHERE tenant_id = 'acme' AND id = 'sqlonly'")
        .await
        .unwrap();
    // The real apply then writes exactly what was announced.
    let doc: PolicyDocument = serde_yaml_ng::from_str(&changed_gateway()).unwrap();
    let report = sync::apply(&mut db.client().await, &doc, "changed.yaml")
        .await
        .unwrap();
    assert!(report.revision.is_some());
    db.drop_db().await;
}

/// An apply never silently erases what was written through the admin API: a document
/// that no longer has such a row is refused (naming it, nothing written) unless forced;
/// rows a document wrote are deleted as before.
#[tokio::test]
async fn apply_refuses_to_delete_admin_api_rows_unless_forced() {
    let db = TestDb::create("apply_force").await;
    let original = PolicyDocument::read(&example("gateway.yaml")).unwrap();
    sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap();
    // Written through the admin API: a grant and a new subject.
    let store = AdminStore::new(postgres::pool(&db.url, 2).unwrap());
    store
        .register_subject("root", "acme", "zoe", false)
        .await
        .unwrap();
    store
        .grant(
            "root",
            "acme",
            &authz::policy::source::AssignmentDoc {
                subject: Some("zoe".into()),
                group: None,
                role: "user".into(),
                scope: "environments/test".into(),
            },
        )
        .await
        .unwrap();
    let origins: Vec<(String, String)> = db
        .client()
        .await
        .query("SELECT subject_id, origin FROM assignments WHERE tenant_id = 'acme' AND subject_id IN ('zoe', 'olga') ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        origins,
        [
            ("olga".into(), "document".into()),
            ("zoe".into(), "api".into())
        ]
    );
    let before = db.revision().await;

    // The original document does not have them: refused, naming both rows.
    let err = sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, sync::SyncError::Protected { .. }), "{msg}");
    assert!(msg.contains("subjects (tenant_id=acme, id=zoe)"), "{msg}");
    assert!(msg.contains("assignments (tenant_id=acme"), "{msg}");
    assert!(msg.contains("--force"), "{msg}");
    assert_eq!(db.revision().await, before, "nothing written");

    // The CLI says the same and exits 65; with --force it deletes them.
    let file = example("gateway.yaml").display().to_string();
    let cli = |force: bool| {
        let mut a = args(&["policy", "apply", "--database-url", &db.url, &file]);
        if force {
            a.push("--force".to_owned());
        }
        authzd(a)
    };
    let out = cli(false).await;
    assert_eq!(out.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("written through the admin API") && stderr.contains("zoe"),
        "{stderr}"
    );
    assert_eq!(db.revision().await, before, "nothing written");
    let out = cli(true).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, now) = sync::export(&mut db.client().await, Some(&["acme".into()]))
        .await
        .unwrap();
    let acme = now.tenants.iter().find(|t| t.id == "acme").unwrap();
    assert!(!acme.subjects.iter().any(|s| s.id == "zoe"));

    // Rows a document wrote are deleted without --force, as before.
    let mut smaller = original.clone();
    let acme = smaller.tenants.iter_mut().find(|t| t.id == "acme").unwrap();
    acme.assignments
        .retain(|a| !(a.subject.as_deref() == Some("olga") && a.role == "orgadmin"));
    let report = sync::apply(&mut db.client().await, &smaller, "smaller.yaml")
        .await
        .unwrap();
    assert!(report.revision.is_some());
    // Through ApplyPolicy (admin store), the same refusal, and `force` deletes.
    store
        .register_subject("root", "acme", "zed", false)
        .await
        .unwrap();
    let err = store
        .apply_policy("root", smaller.clone(), false)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("subjects (tenant_id=acme, id=zed)"),
        "{err}"
    );
    store
        .apply_policy("root", smaller.clone(), true)
        .await
        .unwrap();

    // Overwriting what the admin API wrote is refused too: a subject it disabled is not
    // silently enabled again by a document that has it enabled.
    let subject = smaller
        .tenants
        .iter()
        .find(|t| t.id == "acme")
        .and_then(|t| t.subjects.iter().find(|s| !s.disabled))
        .map(|s| s.id.clone())
        .unwrap();
    db.client()
        .await
        .execute(
            "UPDATE subjects SET disabled = true WHERE tenant_id = 'acme' AND id = $1",
            &[&subject],
        )
        .await
        .unwrap();
    let before = db.revision().await;
    let err = sync::apply(&mut db.client().await, &smaller, "smaller.yaml")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, sync::SyncError::Protected { .. }), "{msg}");
    assert!(
        msg.contains(&format!("subjects (tenant_id=acme, id={subject})")),
        "{msg}"
    );
    assert_eq!(db.revision().await, before, "nothing written");
    db.drop_db().await;
}

/// A deletion through the admin API is a write too: an apply of a document that still
/// has the row refuses to re-create it (naming it and the revision of the deletion)
/// unless forced; a document that drops the row too applies cleanly; a row re-created
/// by anyone is no longer protected. Changing a rule through the admin API is protected
/// like a subject it disabled.
#[tokio::test]
async fn apply_refuses_to_recreate_rows_the_admin_api_deleted_unless_forced() {
    let db = TestDb::create("apply_recreate").await;
    let original = PolicyDocument::read(&example("gateway.yaml")).unwrap();
    sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap();
    let store = AdminStore::new(postgres::pool(&db.url, 2).unwrap());
    let olga = authz::policy::source::AssignmentDoc {
        subject: Some("olga".into()),
        group: None,
        role: "orgadmin".into(),
        scope: String::new(),
    };
    // An incident response: olga's grant revoked and gus removed, through the API.
    let revoked_at = store.revoke("root", "acme", &olga).await.unwrap();
    store.delete_subject("root", "acme", "gus").await.unwrap();
    let before = db.revision().await;

    let err = sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, sync::SyncError::Protected { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "assignments (tenant_id=acme, subject_id=olga, role_id=orgadmin, scope=\"\"): deleted at revision {revoked_at}"
        )),
        "{msg}"
    );
    // The cascade of the subject's deletion is the API's too.
    assert!(
        msg.contains("subjects (tenant_id=acme, id=gus): deleted at revision"),
        "{msg}"
    );
    assert!(
        msg.contains("group_members (tenant_id=acme, group_id=prod-deployers, subject_id=gus): deleted at revision"),
        "{msg}"
    );
    assert!(
        msg.contains("assignments (tenant_id=acme, subject_id=gus, role_id=user, scope=\"\")"),
        "{msg}"
    );
    assert_eq!(db.revision().await, before, "nothing written");
    // Rows that grant access are listed first: assignments before subjects.
    let (assignments, subjects) = (
        msg.find("assignments (").expect("an assignment is listed"),
        msg.find("subjects (").expect("a subject is listed"),
    );
    assert!(assignments < subjects, "{msg}");

    // The dry run says so beforehand.
    let gateway = example("gateway.yaml").display().to_string();
    let out = authzd(args(&[
        "policy",
        "apply",
        "--dry-run",
        "--database-url",
        &db.url,
        &gateway,
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("without --force the apply will be refused")
            && stderr.contains(
                "assignments (tenant_id=acme, subject_id=olga, role_id=orgadmin, scope=\"\"): deleted at revision"
            ),
        "{stderr}"
    );
    assert_eq!(db.revision().await, before, "nothing written");

    // A document that keeps the revocation (and gus's removal) applies without force.
    let mut kept = original.clone();
    let acme = kept.tenants.iter_mut().find(|t| t.id == "acme").unwrap();
    acme.assignments.retain(|a| {
        !(a.subject.as_deref() == Some("olga") && a.role == "orgadmin")
            && a.subject.as_deref() != Some("gus")
    });
    acme.subjects.retain(|s| s.id != "gus");
    for g in &mut acme.groups {
        g.members.retain(|m| m != "gus");
    }
    sync::apply(&mut db.client().await, &kept, "kept.yaml")
        .await
        .unwrap();

    // Re-granted through the API: nothing is protected any more for olga's grant, and
    // the apply has nothing to write for it.
    store.grant("root", "acme", &olga).await.unwrap();
    let err = sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains("olga"), "{msg}");
    assert!(msg.contains("subjects (tenant_id=acme, id=gus)"), "{msg}");

    // Forced, the apply re-creates gus; afterwards the same document applies cleanly.
    let report = sync::apply_with(&mut db.client().await, &original, "gateway.yaml", true)
        .await
        .unwrap();
    assert!(report.revision.is_some());
    let report = sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap();
    assert_eq!(report.revision, None, "nothing left to write");
    let left: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM authz_deleted WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "every deleted row exists again");

    // The admin API rewriting a role with the same content is no change an apply must
    // refuse (its list rows are numbered as a document's); the apply takes the rewritten
    // rows back as the document's.
    let same = original
        .tenants
        .iter()
        .find(|t| t.id == "acme")
        .unwrap()
        .roles
        .iter()
        .find(|r| !r.routes.is_empty())
        .unwrap()
        .clone();
    let at = db.revision().await;
    store.update_role("root", "acme", &same).await.unwrap();
    assert_eq!(
        db.revision().await,
        at,
        "an update with the same content writes nothing"
    );
    let api_rows: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM role_routes WHERE tenant_id = 'acme' AND origin = 'api'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(api_rows, 0);
    let report = sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap();
    assert_eq!(report.revision, None);

    // A grant made through the API and then written into the document is the document's
    // from that apply on: a later document without it revokes it unforced.
    let zoe_grant = authz::policy::source::AssignmentDoc {
        subject: Some("olga".into()),
        group: None,
        role: "user".into(),
        scope: "environments/test".into(),
    };
    store.grant("root", "acme", &zoe_grant).await.unwrap();
    let mut with_grant = original.clone();
    with_grant
        .tenants
        .iter_mut()
        .find(|t| t.id == "acme")
        .unwrap()
        .assignments
        .push(zoe_grant.clone());
    let report = sync::apply(&mut db.client().await, &with_grant, "with-grant.yaml")
        .await
        .unwrap();
    assert_eq!(report.table("assignments").adopted, 1, "{report:?}");
    sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap();

    // A forced ApplyPolicy records what it overrode in the audit log.
    store.revoke("root", "acme", &olga).await.unwrap();
    let report = store
        .apply_policy("root", original.clone(), true)
        .await
        .unwrap();
    assert_eq!(report.overridden.len(), 1, "{:?}", report.overridden);
    let audit = store.list_audit(None, i64::MAX, 1).await.unwrap();
    let detail: serde_json::Value = serde_json::from_str(&audit.items[0].detail).unwrap();
    assert_eq!(detail["force"], true, "{detail}");
    assert_eq!(detail["overridden_count"], 1, "{detail}");
    assert!(
        detail["overridden"][0]
            .as_str()
            .unwrap()
            .starts_with("assignments (tenant_id=acme, subject_id=olga, role_id=orgadmin"),
        "{detail}"
    );

    // A rule the admin API changed is not silently changed back.
    let mut role = original
        .tenants
        .iter()
        .find(|t| t.id == "acme")
        .unwrap()
        .roles[0]
        .clone();
    let first = role.routes.first_mut().unwrap();
    first.methods = vec!["GET".into()];
    first.path = "/only/this".into();
    store.update_role("root", "acme", &role).await.unwrap();
    let err = sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "role_routes (tenant_id=acme, role_id={}, position=1)",
            role.id
        )),
        "{msg}"
    );
    db.drop_db().await;
}

/// `authzd diff rev:N ...` compares past database revisions, rebuilt from the change log:
/// an API revocation between two revisions reads as the subject losing access; a
/// revision the database cannot rebuild is a bad argument (exit 64) that says why.
#[tokio::test]
async fn diff_compares_past_revisions_rebuilt_from_the_change_log() {
    let db = TestDb::create("diff_revisions").await;
    let original = PolicyDocument::read(&example("gateway.yaml")).unwrap();
    let applied = sync::apply(&mut db.client().await, &original, "gateway.yaml")
        .await
        .unwrap()
        .revision
        .unwrap();
    let store = AdminStore::new(postgres::pool(&db.url, 2).unwrap());
    let revoked = store
        .revoke(
            "root",
            "acme",
            &authz::policy::source::AssignmentDoc {
                subject: Some("olga".into()),
                group: None,
                role: "orgadmin".into(),
                scope: String::new(),
            },
        )
        .await
        .unwrap();
    assert!(revoked > applied);
    let run = |sides: Vec<String>| {
        let mut a = vec!["diff".to_owned()];
        a.extend(sides);
        a.extend(args(&["--database-url", &db.url]));
        authzd(a)
    };
    let rev = |r: u64| format!("rev:{r}");

    // The applied revision is the document itself: no difference.
    let out = run(vec![
        rev(applied),
        example("gateway.yaml").display().to_string(),
        "--exit-code".into(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Before and after the revocation: olga loses, and the structural part names it.
    let out = run(vec![
        rev(applied),
        rev(revoked),
        "--output".into(),
        "json".into(),
        "--exit-code".into(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["old"], format!("database revision {applied}"));
    let acme = v["access"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "acme")
        .unwrap();
    let subjects: Vec<&str> = acme["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["olga"]);
    assert!(v["structural"].to_string().contains("olga"), "{v}");
    // The current revision is `now`.
    let out = run(vec![rev(revoked), "now".into(), "--exit-code".into()]).await;
    assert_eq!(out.status.code(), Some(0));
    // Revision 0: before anything was written, every tenant is new.
    let out = run(vec![rev(0), rev(applied), "--output".into(), "json".into()]).await;
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["structural"].to_string().contains("acme"), "{v}");

    // Beyond the database's revision, a malformed revision, or older than the retained
    // log: 64, saying why.
    let out = run(vec![rev(revoked + 5), "now".into()]).await;
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("newer than the database's"), "{stderr}");
    let out = run(vec!["rev:-1".into(), "now".into()]).await;
    assert_eq!(out.status.code(), Some(64));
    db.client()
        .await
        .execute(
            "DELETE FROM authz_changes WHERE revision <= $1",
            &[&i64::try_from(applied).unwrap()],
        )
        .await
        .unwrap();
    let out = run(vec![rev(applied - 1), "now".into()]).await;
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("older than the retained change log"),
        "{stderr}"
    );
    // TRUNCATE would bypass the change log: refused.
    let err = db
        .client()
        .await
        .batch_execute("TRUNCATE assignments CASCADE")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("it bypasses the change log"),
        "{err:?}"
    );
    // The revision the pruned log still reaches back to works.
    let out = run(vec![rev(applied), rev(revoked), "--exit-code".into()]).await;
    assert_eq!(out.status.code(), Some(1));
    db.drop_db().await;
}
