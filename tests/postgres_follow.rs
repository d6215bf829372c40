//! The server following a real PostgreSQL: load, every kind of change seen live at the
//! revision the write returned, notifications lost while the listener's connection is
//! killed, concurrent writers, bad rows, and failing closed past `--max-staleness`.
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
    pb,
    policy::compile,
    store::{
        follow::{FollowConfig, Follower},
        postgres::{Tenants, read_document},
    },
};
use common::{TestServer, pg::TestDb};
use tonic::Code;

const SEED: &str = "
INSERT INTO roles (tenant_id, id) VALUES ('', 'viewer'), ('', 'editor');
INSERT INTO role_permissions VALUES ('', 'viewer', 'docs.read'), ('', 'editor', 'docs.write');
INSERT INTO role_includes VALUES ('', 'editor', 'viewer', 0);
INSERT INTO tenants VALUES ('acme');
INSERT INTO subjects VALUES ('acme', 'alice', false), ('acme', 'bob', false), ('acme', 'carol', false);
INSERT INTO groups (tenant_id, id) VALUES ('acme', 'writers');
INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ('acme', 'alice', 'editor', 'workspaces/ws-1');
";

fn fast(url: &str) -> FollowConfig {
    let mut c = FollowConfig::new(url);
    c.poll_interval = Duration::from_millis(100);
    c.max_backoff = Duration::from_millis(200);
    c
}

fn service() -> ServiceConfig {
    ServiceConfig {
        revision_wait: Duration::from_secs(10),
        ..ServiceConfig::default()
    }
}

/// Runs SQL in one transaction; returns the revision it committed.
async fn write(db: &TestDb, sql: &str) -> u64 {
    let c = db.client().await;
    c.batch_execute(&format!("BEGIN; {sql}; COMMIT;"))
        .await
        .unwrap();
    db.revision().await
}

async fn check(
    server: &TestServer,
    subject: &str,
    scope: &str,
    permission: &str,
    min_revision: u64,
) -> pb::CheckResponse {
    server
        .client
        .clone()
        .check(pb::CheckRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            scope: scope.into(),
            action: Some(pb::check_request::Action::Permission(permission.into())),
            min_revision,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn route(
    server: &TestServer,
    tenant: &str,
    subject: &str,
    method: &str,
    path: &str,
    min_revision: u64,
) -> pb::CheckResponse {
    server
        .client
        .clone()
        .check(pb::CheckRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
            scope: String::new(),
            action: Some(pb::check_request::Action::Route(pb::HttpRoute {
                method: method.into(),
                path: path.into(),
            })),
            min_revision,
        })
        .await
        .unwrap()
        .into_inner()
}

fn reason(r: &pb::CheckResponse) -> pb::Reason {
    pb::Reason::try_from(r.reason).unwrap()
}

/// The cache holds exactly what the database holds: every subject's listing at every
/// scope it has assignments at agrees with a fresh compile of the database.
async fn assert_cache_equals_db(db: &TestDb, server: &TestServer) {
    let mut client = db.client().await;
    let (revision, doc) = read_document(&mut client, Tenants::All).await.unwrap();
    let mut rx = server.cache.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|r| r.is_some_and(|r| r >= revision)),
    )
    .await
    .expect("the cache reached the database's revision")
    .unwrap();
    let fresh = compile(&doc, "db", revision).unwrap();
    let mut tenants_in_cache = Vec::new();
    server
        .cache
        .for_each_tenant(|t| tenants_in_cache.push(t.to_owned()));
    tenants_in_cache.sort();
    let mut tenants_in_db: Vec<String> = fresh.tenants.iter().map(|t| t.id.to_string()).collect();
    tenants_in_db.sort();
    assert_eq!(tenants_in_cache, tenants_in_db);
    for want in &fresh.tenants {
        let got = server.cache.tenant(&want.id).unwrap();
        assert_eq!(
            got.subjects.len(),
            want.subjects.len(),
            "tenant {}",
            want.id
        );
        assert_eq!(
            got.assignment_count(),
            want.assignment_count(),
            "tenant {}",
            want.id
        );
        let scopes: Vec<&str> = want
            .scopes
            .iter()
            .map(|s| &**s)
            .chain(["", "elsewhere"])
            .collect();
        for subject in want.subjects.keys() {
            for scope in &scopes {
                let (mut a, mut b) = (got.list(subject, scope), want.list(subject, scope));
                a.revision = 0;
                b.revision = 0;
                assert_eq!(a, b, "tenant {} subject {subject} scope `{scope}`", want.id);
            }
        }
    }
}

#[tokio::test]
async fn follows_every_kind_of_change_at_the_revision_the_write_returned() {
    let db = TestDb::create("follow").await;
    write(&db, SEED).await;
    let (server, follower): (TestServer, Follower) =
        TestServer::start_db(fast(&db.url), service()).await;
    assert!(
        check(&server, "alice", "workspaces/ws-1", "docs.write", 0)
            .await
            .allowed
    );
    assert!(!check(&server, "bob", "", "docs.read", 0).await.allowed);

    // A grant: incremental, the tenant is not reloaded.
    let reloads = follower.status.borrow().tenant_reloads;
    let rev = write(
        &db,
        "INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'bob', 'viewer')",
    )
    .await;
    let r = check(&server, "bob", "", "docs.read", rev).await;
    assert!(r.allowed, "{r:?}");
    assert!(r.revision >= rev);
    assert_eq!(
        follower.status.borrow().tenant_reloads,
        reloads,
        "a grant does not reload the tenant"
    );
    assert!(follower.status.borrow().incremental_changes > 0);

    // A revoke.
    let rev = write(&db, "DELETE FROM assignments WHERE subject_id = 'bob'").await;
    assert_eq!(
        reason(&check(&server, "bob", "", "docs.read", rev).await),
        pb::Reason::NoGrant
    );

    // Group membership, then a grant to the group, then leaving the group.
    let rev = write(&db, "INSERT INTO group_members VALUES ('acme', 'writers', 'carol'); INSERT INTO assignments (tenant_id, group_id, role_id) VALUES ('acme', 'writers', 'editor')").await;
    let r = check(&server, "carol", "", "docs.write", rev).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.grant.unwrap().group_id, "writers");
    let rev = write(&db, "DELETE FROM group_members WHERE subject_id = 'carol'").await;
    assert!(!check(&server, "carol", "", "docs.write", rev).await.allowed);

    // A new subject, then disabled.
    let rev = write(&db, "INSERT INTO subjects VALUES ('acme', 'dave', false); INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'dave', 'viewer')").await;
    assert!(check(&server, "dave", "", "docs.read", rev).await.allowed);
    let rev = write(&db, "UPDATE subjects SET disabled = true WHERE id = 'dave'").await;
    assert_eq!(
        reason(&check(&server, "dave", "", "docs.read", rev).await),
        pb::Reason::SubjectDisabled
    );

    // A subject removed (its assignments cascade).
    let rev = write(&db, "DELETE FROM subjects WHERE id = 'dave'").await;
    assert_eq!(
        reason(&check(&server, "dave", "", "docs.read", rev).await),
        pb::Reason::UnknownSubject
    );

    // A custom role created and assigned in one transaction (a tenant reload).
    let rev = write(
        &db,
        "INSERT INTO roles (tenant_id, id) VALUES ('acme', 'auditor');
         INSERT INTO role_permissions VALUES ('acme', 'auditor', 'audit.read');
         INSERT INTO role_includes VALUES ('acme', 'auditor', 'viewer', 0);
         INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'bob', 'auditor')",
    )
    .await;
    let r = check(&server, "bob", "", "docs.read", rev).await;
    assert!(r.allowed);
    assert_eq!(r.grant.unwrap().include_chain, ["auditor", "viewer"]);
    // A role's permissions changed.
    let rev = write(
        &db,
        "DELETE FROM role_permissions WHERE role_id = 'auditor'",
    )
    .await;
    assert!(!check(&server, "bob", "", "audit.read", rev).await.allowed);
    // A built-in role changed: every tenant sees it.
    let rev = write(
        &db,
        "INSERT INTO role_permissions VALUES ('', 'viewer', 'docs.comment')",
    )
    .await;
    assert!(check(&server, "bob", "", "docs.comment", rev).await.allowed);
    // Default roles.
    let rev = write(
        &db,
        "INSERT INTO default_roles VALUES ('acme', 'viewer', 0)",
    )
    .await;
    assert!(check(&server, "carol", "", "docs.read", rev).await.allowed);
    // An endpoint entry of the tenant.
    let rev = write(&db, "INSERT INTO endpoints (tenant_id, position, path, methods, roles) VALUES ('acme', 0, '/docs/{id}', '{GET}', '{viewer}')").await;
    let r = route(&server, "acme", "carol", "GET", "/docs/7", rev).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.matched_pattern, "/docs/{id}");
    // A new tenant, then removed.
    let rev = write(&db, "INSERT INTO tenants VALUES ('globex'); INSERT INTO endpoints (tenant_id, position, path, methods, public) VALUES ('globex', 0, '/health', '{GET}', true)").await;
    assert_eq!(
        reason(&route(&server, "globex", "", "GET", "/health", rev).await),
        pb::Reason::Public
    );
    let rev = write(&db, "DELETE FROM tenants WHERE id = 'globex'").await;
    assert_eq!(
        reason(&route(&server, "globex", "", "GET", "/health", rev).await),
        pb::Reason::UnknownTenant
    );

    assert_cache_equals_db(&db, &server).await;
    server.stop().await;
    drop(follower);
    db.drop_db().await;
}

#[tokio::test]
async fn killing_the_listener_connection_loses_nothing() {
    let db = TestDb::create("kill").await;
    write(&db, SEED).await;
    let (server, follower) = TestServer::start_db(fast(&db.url), service()).await;

    // Writes keep committing while the listener's backend is killed, twice.
    let writer = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for i in 0..150 {
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO subjects VALUES ('acme', 'u{i}', false);
                     INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ('acme', 'u{i}', 'viewer', 'workspaces/w{}');
                     COMMIT;",
                    i % 7
                ))
                .await
                .unwrap();
                if i % 3 == 0 {
                    c.batch_execute(&format!(
                        "DELETE FROM assignments WHERE subject_id = 'u{}'",
                        i / 2
                    ))
                    .await
                    .unwrap();
                }
            }
        })
    };
    let killer = db.client().await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let killed: i64 = killer
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'authzd') t",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed <= 1);
    }
    writer.await.unwrap();
    assert_cache_equals_db(&db, &server).await;
    assert!(follower.status.borrow().connected || follower.status.borrow().last_error.is_some());
    server.stop().await;
    drop(follower);
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_writers_commit_distinct_revisions_and_all_arrive() {
    let db = TestDb::create("concurrent").await;
    write(&db, SEED).await;
    let start = db.revision().await;
    let (server, follower) = TestServer::start_db(fast(&db.url), service()).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut revisions = Vec::new();
            for i in 0..40 {
                let tx = c.transaction().await.unwrap();
                tx.execute(
                    "INSERT INTO subjects VALUES ('acme', $1, false)",
                    &[&format!("w{w}-{i}")],
                )
                .await
                .unwrap();
                // The transaction's own revision, as its first write bumped it.
                let row = tx
                    .query_one("SELECT revision FROM authz_state", &[])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                revisions.push(row.get::<_, i64>(0) as u64);
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 160, "every transaction got its own revision");
    assert_eq!(db.revision().await, start + 160);
    assert_cache_equals_db(&db, &server).await;
    server.stop().await;
    drop(follower);
    db.drop_db().await;
}

#[tokio::test]
async fn bad_rows_are_rejected_before_commit_with_clear_errors() {
    let db = TestDb::create("bad").await;
    write(&db, SEED).await;
    let before = db.revision().await;
    let c = db.client().await;
    let cases = [
        (
            "INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'alice', 'nope')",
            "role `nope` is not defined",
        ),
        (
            "INSERT INTO role_includes VALUES ('', 'viewer', 'editor', 1)",
            "include cycle `",
        ),
        (
            "INSERT INTO roles (tenant_id, id) VALUES ('acme', 'viewer')",
            "reuses the id of a built-in role",
        ),
        (
            "INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'ghost', 'viewer')",
            "subject `ghost` is not registered",
        ),
        (
            "INSERT INTO assignments (tenant_id, subject_id, role_id, scope) VALUES ('acme', 'alice', 'viewer', '/ws')",
            "scope",
        ),
        (
            "INSERT INTO subjects VALUES ('acme', 'alice', false)",
            "duplicate key",
        ),
        (
            "DELETE FROM roles WHERE tenant_id = '' AND id = 'editor'",
            "role `editor` is not defined",
        ),
    ];
    for (sql, want) in cases {
        let err = c.batch_execute(sql).await.expect_err(sql);
        let msg = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_else(|| err.to_string());
        let full = format!("{msg} {err:?}");
        assert!(full.contains(want), "{sql}: {msg}");
    }
    assert_eq!(
        db.revision().await,
        before,
        "nothing rejected bumped the revision"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn an_outage_keeps_answering_until_max_staleness_then_fails_closed() {
    let db = TestDb::create("outage").await;
    write(&db, SEED).await;
    let mut follow = fast(&db.url);
    follow.poll_interval = Duration::from_millis(50);
    let config = ServiceConfig {
        max_staleness: Some(Duration::from_millis(600)),
        ..service()
    };
    let (server, follower) = TestServer::start_db(follow, config).await;
    assert!(
        check(&server, "alice", "workspaces/ws-1", "docs.write", 0)
            .await
            .allowed
    );

    // Cut the database off: no new connections, and the listener's killed.
    let admin = tokio_postgres::connect(&common::pg::server_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(admin.1);
    let admin = admin.0;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            db.name
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            db.name
        ))
        .await
        .unwrap();
    let mut status = follower.status.clone();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    // Still answering from the cache while younger than max-staleness...
    // ...then failing closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        match server
            .client
            .clone()
            .check(pb::CheckRequest {
                tenant_id: "acme".into(),
                subject_id: "alice".into(),
                scope: "workspaces/ws-1".into(),
                action: Some(pb::check_request::Action::Permission("docs.write".into())),
                min_revision: 0,
            })
            .await
        {
            Ok(r) => assert!(
                r.into_inner().allowed,
                "answers from the cache are the cached answers"
            ),
            Err(e) => break e,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("stale"), "{}", err.message());
    assert!(server.cache.staleness() >= Duration::from_millis(600));

    // The database comes back: the follower reconnects, catches up, answers again.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), status.wait_for(|s| s.connected))
        .await
        .expect("reconnected within 15s")
        .unwrap();
    let rev = write(
        &db,
        "INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'bob', 'viewer')",
    )
    .await;
    assert!(check(&server, "bob", "", "docs.read", rev).await.allowed);
    server.stop().await;
    drop(follower);
    db.drop_db().await;
}

#[tokio::test]
async fn the_consistency_check_repairs_a_write_the_change_log_never_saw() {
    let db = TestDb::create("consistency").await;
    write(&db, SEED).await;
    let mut follow = fast(&db.url);
    follow.consistency_interval = Duration::from_millis(300);
    let (server, follower) = TestServer::start_db(follow, service()).await;
    assert!(!check(&server, "bob", "", "docs.read", 0).await.allowed);

    // Behind the follower's back: with triggers off there is no change row, no NOTIFY.
    let c = db.client().await;
    c.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'bob', 'viewer');",
    )
    .await
    .unwrap();
    let mut status = follower.status.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.inconsistencies > 0),
    )
    .await
    .expect("the consistency check found the difference")
    .unwrap();
    assert!(
        check(&server, "bob", "", "docs.read", 0).await.allowed,
        "the tenant was rebuilt from the database"
    );
    server.stop().await;
    drop(follower);
    db.drop_db().await;
}
