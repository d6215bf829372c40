//! Every answer is computed on one committed policy state and names its revision: the
//! four ways this was once broken, each reproduced.
//!
//! 1. A tenant whose committed rows do not compile keeps answering from its last good
//!    snapshot, at that snapshot's revision; a newer `min_revision` and a replica without
//!    a good snapshot get UNAVAILABLE, never an answer claiming the newer revision.
//! 2. A BatchCheck decides all items of a tenant on one snapshot while the policy flips.
//! 3. ListPermissions grows linearly with the include depth.
//! 4. SIGHUP reloads the policy file with `--reload-interval 0s`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use authz::{
    grpc::ServiceConfig,
    pb,
    policy::{PolicyDocument, compile, source::Format},
    store::follow::FollowConfig,
};
use common::{TestServer, pg::TestDb};
use tonic::Code;

const SEED: &str = "
INSERT INTO roles (tenant_id, id) VALUES ('', 'viewer');
INSERT INTO role_permissions VALUES ('', 'viewer', 'docs.read');
INSERT INTO tenants VALUES ('acme'), ('other');
INSERT INTO roles (tenant_id, id) VALUES ('acme', 'writer');
INSERT INTO role_permissions VALUES ('acme', 'writer', 'docs.write');
INSERT INTO subjects VALUES ('acme', 'alice', false), ('other', 'olga', false);
INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES
    ('acme', 'alice', 'writer', ''), ('other', 'olga', 'viewer', '');
";

/// Stands in for rows that an older version, or a hand edit, let in: the database's
/// validation triggers (all but change capture) are switched off, so a write the
/// compiler refuses commits.
const NO_VALIDATION: &str = "DO $$ DECLARE r record; BEGIN
    FOR r IN SELECT tgrelid::regclass AS tbl, tgname FROM pg_trigger
              WHERE NOT tgisinternal AND tgname NOT LIKE '%\\_capture' LOOP
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', r.tbl, r.tgname);
    END LOOP;
END $$";

fn fast(url: &str) -> FollowConfig {
    let mut c = FollowConfig::new(url);
    c.poll_interval = Duration::from_millis(100);
    c.max_backoff = Duration::from_millis(200);
    c
}

fn service() -> ServiceConfig {
    ServiceConfig {
        revision_wait: Duration::from_secs(5),
        ..ServiceConfig::default()
    }
}

async fn write(db: &TestDb, sql: &str) -> u64 {
    let c = db.client().await;
    c.batch_execute(&format!("BEGIN; {sql}; COMMIT;"))
        .await
        .unwrap();
    db.revision().await
}

async fn check(
    server: &TestServer,
    tenant: &str,
    subject: &str,
    permission: &str,
    min_revision: u64,
) -> Result<pb::CheckResponse, tonic::Status> {
    server
        .client
        .clone()
        .check(pb::CheckRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
            scope: String::new(),
            action: Some(pb::check_request::Action::Permission(permission.into())),
            min_revision,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the server's cache has applied `revision`.
async fn applied(server: &TestServer, revision: u64) {
    let mut rx = server.cache.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|r| r.is_some_and(|r| r >= revision)),
    )
    .await
    .expect("the follower applied the revision within 10s")
    .unwrap();
}

#[tokio::test]
async fn a_committed_state_that_does_not_compile_is_never_claimed() {
    let db = TestDb::create("consistency_stale").await;
    let good = write(&db, SEED).await;
    let (server, _follower) = TestServer::start_db(fast(&db.url), service()).await;
    let before = check(&server, "acme", "alice", "docs.write", good)
        .await
        .unwrap();
    assert!(before.allowed);
    assert_eq!(before.revision, good);

    // One transaction revokes alice's only grant and adds a rule the compiler refuses.
    write(&db, NO_VALIDATION).await;
    let bad = write(
        &db,
        "DELETE FROM assignments WHERE tenant_id = 'acme' AND subject_id = 'alice';
         INSERT INTO role_routes VALUES ('acme', 'writer', 1, '{GET}', '/a/**/b')",
    )
    .await;
    assert!(bad > good);
    applied(&server, bad).await;

    // Asking for the new revision: UNAVAILABLE naming the tenant, never the old allow.
    let err = check(&server, "acme", "alice", "docs.write", bad)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("`acme`"), "{}", err.message());
    assert!(err.message().contains("/a/**/b"), "{}", err.message());
    // Without min_revision: the last good snapshot, at its own revision.
    let old = check(&server, "acme", "alice", "docs.write", 0)
        .await
        .unwrap();
    assert!(old.allowed);
    assert_eq!(
        old.revision, good,
        "the answer names the state it came from"
    );
    // Other tenants are current at the new revision.
    let other = check(&server, "other", "olga", "docs.read", bad)
        .await
        .unwrap();
    assert!(other.allowed);
    assert!(other.revision >= bad);
    // A batch: the stale tenant's item fails, the other's is answered.
    let batch = server
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest {
            tenant_id: "acme".into(),
            subject_id: String::new(),
            checks: vec![
                pb::CheckRequest {
                    subject_id: "alice".into(),
                    action: Some(pb::check_request::Action::Permission("docs.write".into())),
                    ..Default::default()
                },
                pb::CheckRequest {
                    tenant_id: "other".into(),
                    subject_id: "olga".into(),
                    action: Some(pb::check_request::Action::Permission("docs.read".into())),
                    ..Default::default()
                },
            ],
            min_revision: bad,
            detail: 0,
        })
        .await
        .unwrap()
        .into_inner();
    match &batch.results[0].result {
        Some(pb::batch_check_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::Unavailable as i32, "{e:?}")
        }
        other => panic!("expected an error item, got {other:?}"),
    }
    match &batch.results[1].result {
        Some(pb::batch_check_result::Result::Response(r)) => assert!(r.allowed),
        other => panic!("expected an answer, got {other:?}"),
    }
    // The metrics' view: one stale tenant.
    assert_eq!(server.cache.stale_tenants().len(), 1);

    // A replica started now has no good snapshot of acme: UNAVAILABLE, not unknown tenant.
    let (fresh, _f2) = TestServer::start_db(fast(&db.url), service()).await;
    let err = check(&fresh, "acme", "alice", "docs.write", 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let other = check(&fresh, "other", "olga", "docs.read", 0)
        .await
        .unwrap();
    assert!(other.allowed);

    // Repaired: both replicas agree on the newest state (alice revoked).
    let fixed = write(&db, "DELETE FROM role_routes WHERE tenant_id = 'acme'").await;
    for s in [&server, &fresh] {
        applied(s, fixed).await;
        let now = check(s, "acme", "alice", "docs.write", fixed)
            .await
            .unwrap();
        assert!(!now.allowed);
        assert!(now.revision >= fixed);
    }
    assert!(server.cache.stale_tenants().is_empty());
    server.stop().await;
    fresh.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn member_changes_after_a_stale_revision_are_not_applied_to_the_old_snapshot() {
    let db = TestDb::create("consistency_stale_members").await;
    let good = write(&db, SEED).await;
    let (server, _follower) = TestServer::start_db(fast(&db.url), service()).await;
    applied(&server, good).await;
    write(&db, NO_VALIDATION).await;
    // The role-level change that breaks the tenant, then a member-only change.
    let bad = write(
        &db,
        "INSERT INTO role_routes VALUES ('acme', 'writer', 1, '{get}', '/x')",
    )
    .await;
    applied(&server, bad).await;
    let later = write(&db, "INSERT INTO subjects VALUES ('acme', 'bob', false)").await;
    applied(&server, later).await;
    let err = check(&server, "acme", "bob", "docs.write", later)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let old = check(&server, "acme", "alice", "docs.write", 0)
        .await
        .unwrap();
    assert_eq!(old.revision, good);
    server.stop().await;
    db.drop_db().await;
}

fn policy(grant: bool) -> authz::policy::Policy {
    let yaml = format!(
        "version: 1
roles:
  - id: root
    permissions: [everything]
tenants:
  - id: acme
    subjects: [{{id: alice}}]
    assignments: [{}]
",
        if grant {
            "{subject: alice, role: root}"
        } else {
            ""
        }
    );
    let doc = PolicyDocument::parse(&yaml, Format::Yaml, "flip.yaml").unwrap();
    compile(&doc, "flip.yaml", 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_decided_on_one_snapshot_while_the_policy_flips() {
    let server = TestServer::start(&common::example("console.yaml")).await;
    // Odd revisions grant, even ones revoke.
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let cache = server.cache.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (grant, deny) = (policy(true), policy(false));
            let mut revision = 2u64;
            while !stop.load(Ordering::Relaxed) {
                revision += 1;
                let p = if revision % 2 == 1 { &grant } else { &deny };
                for t in &p.tenants {
                    // Same compiled data, restamped: a new snapshot per revision.
                    let s = authz::policy::TenantSnapshot {
                        id: t.id.clone(),
                        revision,
                        builtins: Arc::clone(&t.builtins),
                        custom: Arc::clone(&t.custom),
                        role_index: Arc::clone(&t.role_index),
                        permission_holders: Arc::clone(&t.permission_holders),
                        endpoints: Arc::clone(&t.endpoints),
                        endpoint_matcher: Arc::clone(&t.endpoint_matcher),
                        default_roles: Arc::clone(&t.default_roles),
                        subjects: t.subjects.clone(),
                        groups: t.groups.clone(),
                        scopes: t.scopes.clone(),
                        holders: Default::default(),
                    };
                    cache.store(s);
                }
                cache.publish(revision);
            }
        })
    };
    let item = pb::CheckRequest {
        action: Some(pb::check_request::Action::Permission("everything".into())),
        ..Default::default()
    };
    let mut mixed = 0;
    let mut checked = 0;
    for _ in 0..150 {
        let r = server
            .client
            .clone()
            .batch_check(pb::BatchCheckRequest {
                tenant_id: "acme".into(),
                subject_id: "alice".into(),
                checks: vec![item.clone(); 1000],
                min_revision: 0,
                detail: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let answers: Vec<&pb::CheckResponse> = r
            .results
            .iter()
            .map(|x| match &x.result {
                Some(pb::batch_check_result::Result::Response(r)) => r,
                other => panic!("{other:?}"),
            })
            .collect();
        let first = answers[0];
        if answers
            .iter()
            .any(|a| a.allowed != first.allowed || a.revision != first.revision)
        {
            mixed += 1;
        }
        assert_eq!(r.revision, first.revision, "the batch names its snapshot");
        if r.revision >= 3 {
            assert_eq!(
                first.allowed,
                r.revision % 2 == 1,
                "revision {} answers as its state",
                r.revision
            );
            checked += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(mixed, 0, "batches mixing policy states");
    assert!(checked > 100, "only {checked} batches ran during flips");
    server.stop().await;
}

#[tokio::test]
async fn list_permissions_grows_linearly_with_include_depth() {
    // A chain of 32 roles (the default depth limit) each including the next.
    let depth = 32;
    let mut yaml = String::from("version: 1\ntenants:\n  - id: acme\n    roles:\n");
    for i in 0..=depth {
        let inc = if i < depth {
            format!("[r{}]", i + 1)
        } else {
            "[]".into()
        };
        yaml.push_str(&format!(
            "      - {{id: r{i}, includes: {inc}, permissions: [p{i}]}}\n"
        ));
    }
    yaml.push_str("    subjects: [{id: ann}]\n    assignments: [{subject: ann, role: r0}]\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let server = TestServer::start(&path).await;
    let l = server
        .client
        .clone()
        .list_permissions(pb::ListPermissionsRequest {
            tenant_id: "acme".into(),
            subject_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.roles.len(), depth + 1);
    let names: usize = l
        .roles
        .iter()
        .map(|r| r.grant.as_ref().unwrap().include_chain.len())
        .sum();
    assert!(
        names <= 2 * (depth + 1),
        "{names} chain names for {} roles",
        depth + 1
    );
    // The chain comes back by following `included_through`.
    let mut chain = vec!["r32".to_owned()];
    loop {
        let r = l.roles.iter().find(|r| r.role == chain[0]).unwrap();
        if r.included_through.is_empty() {
            break;
        }
        chain.insert(0, r.included_through.clone());
    }
    assert_eq!(chain.len(), depth + 1);
    assert_eq!(chain[0], "r0");
    server.stop().await;

    // One more link is refused, naming the limit.
    let deeper = yaml
        .replace(
            "includes: [], permissions: [p32]",
            "includes: [r33], permissions: [p32]",
        )
        .replace(
            "    subjects:",
            "      - {id: r33, permissions: [p33]}\n    subjects:",
        );
    std::fs::write(&path, &deeper).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_include_depth = 32"), "{err}");
    assert!(err.contains("role `r0`"), "{err}");
}

#[cfg(unix)]
#[test]
fn sighup_reloads_with_polling_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let yaml = |subject: &str| {
        format!(
            "version: 1\nroles: [{{id: r, permissions: [p]}}]\ntenants:\n  - id: acme\n    subjects: [{{id: {subject}}}]\n    assignments: [{{subject: {subject}, role: r}}]\n"
        )
    };
    std::fs::write(&path, yaml("ann")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--reload-interval", "0s", "--policy"])
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str| loop {
        let line = match logs.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("authzd exited (its log closed) before logging `{what}`")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("authzd did not log `{what}` within 30s")
            }
        };
        if line.contains(what) {
            break line;
        }
    };
    let serving = wait_for("\"serving\"");
    let v: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let addr = v["addr"].as_str().unwrap().to_owned();

    for subject in ["cy", "bob"] {
        std::fs::write(&path, yaml(subject)).unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_for("policy reloaded");
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not end the server"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let allowed = rt.block_on(async {
        let mut c = pb::authorization_service_client::AuthorizationServiceClient::connect(format!(
            "http://{addr}"
        ))
        .await
        .unwrap();
        c.check(pb::CheckRequest {
            tenant_id: "acme".into(),
            subject_id: "bob".into(),
            action: Some(pb::check_request::Action::Permission("p".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    });
    assert!(allowed.allowed, "the reloaded policy answers");
    assert_eq!(allowed.revision, 3, "two reloads after the first load");
    child.kill().unwrap();
    child.wait().unwrap();
}
