//! Migrations in a rollout: `serve` refuses a missing or older schema (or waits for it
//! with `--wait-for-schema`), serves a newer one, and migrators started at once take
//! turns.
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
    process::{Child, Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use common::pg::TestDb;

fn authzd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_authzd"));
    c.env_remove("AUTHZ_DATABASE_URL")
        .env_remove("AUTHZ_MIGRATE")
        .env_remove("AUTHZ_WAIT_FOR_SCHEMA");
    c
}

/// `authzd serve` on `url` with JSON logs, and its log lines as they come.
fn serve(url: &str, extra: &[&str]) -> (Child, Receiver<serde_json::Value>) {
    let mut child = authzd()
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--database-url", url])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads log lines until one has `message` (true) or the process's log ends (false).
fn wait_for(
    rx: &Receiver<serde_json::Value>,
    message: &str,
    seen: &mut Vec<serde_json::Value>,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(v) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let found = v["message"] == message;
        seen.push(v);
        if found {
            return true;
        }
    }
    false
}

fn stop(mut child: Child) -> Option<i32> {
    let _ = child.kill();
    child.wait().unwrap().code()
}

#[tokio::test]
async fn serve_refuses_a_missing_or_older_schema() {
    let db = TestDb::create_bare("schema_missing").await;
    let (child, rx) = serve(&db.url, &[]);
    let mut seen = Vec::new();
    assert!(!wait_for(&rx, "serving", &mut seen), "{seen:?}");
    let mut child = child;
    assert_eq!(child.wait().unwrap().code(), Some(69), "{seen:?}");
    let err = seen.iter().find(|l| l["level"] == "ERROR").unwrap();
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("the database schema is missing"), "{err}");
    assert!(message.contains("run `authzd migrate`"), "{err}");

    // Older: the newest migration is not applied.
    authz::store::postgres::migrate(&db.url).await.unwrap();
    let expected = authz::store::postgres::expected_schema_version();
    db.client()
        .await
        .execute(
            "DELETE FROM refinery_schema_history WHERE version = $1::int8",
            &[&expected],
        )
        .await
        .unwrap();
    let (mut child, rx) = serve(&db.url, &[]);
    let mut seen = Vec::new();
    assert!(!wait_for(&rx, "serving", &mut seen), "{seen:?}");
    assert_eq!(child.wait().unwrap().code(), Some(69), "{seen:?}");
    let err = seen.iter().find(|l| l["level"] == "ERROR").unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("older than this binary's; run `authzd migrate`"),
        "{err}"
    );
    assert_eq!(err["applied"], expected - 1, "{err}");
    assert_eq!(err["expected"], expected, "{err}");
    db.drop_db().await;
}

#[tokio::test]
async fn serve_waits_for_the_schema_when_asked() {
    let db = TestDb::create_bare("schema_wait").await;
    let (child, rx) = serve(&db.url, &["--wait-for-schema"]);
    let mut seen = Vec::new();
    assert!(
        wait_for(
            &rx,
            "waiting for `authzd migrate` to bring the schema up to date (--wait-for-schema)",
            &mut seen
        ),
        "{seen:?}"
    );
    let out = authzd()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(wait_for(&rx, "serving", &mut seen), "{seen:?}");
    assert_eq!(stop(child), None, "killed while serving");
    db.drop_db().await;
}

#[tokio::test]
async fn serve_accepts_a_newer_schema() {
    let db = TestDb::create("schema_newer").await;
    db.client()
        .await
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (9999, 'from_a_newer_release', '2026-11-29T00:00:00Z', '0')",
            &[],
        )
        .await
        .unwrap();
    let (child, rx) = serve(&db.url, &[]);
    let mut seen = Vec::new();
    assert!(wait_for(&rx, "serving", &mut seen), "{seen:?}");
    assert!(
        seen.iter().any(|l| l["level"] == "WARN"
            && l["message"] == "the database schema is newer than this binary's; serving it"
            && l["applied"] == 9999),
        "{seen:?}"
    );
    stop(child);
    // An older binary's migrate (a rollback, an old pod's init container) has nothing
    // to do: exit 0, not a failed init container.
    let out = authzd()
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("newer than this binary's"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        authz::store::postgres::migrate(&db.url)
            .await
            .unwrap()
            .is_empty()
    );
    db.drop_db().await;
}

/// A role without the rights: the database's own words, and a refused write is the
/// configuration's fault (65), not an internal failure (70).
#[tokio::test]
async fn a_role_without_rights_is_told_why() {
    let db = TestDb::create_bare("schema_rights").await;
    let c = db.client().await;
    let role = format!("{}_nopriv", db.name);
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
    ))
    .await
    .unwrap();
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test URL names user postgres");
    let out = authzd()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("permission denied"), "{err}");

    // Migrated by the owner; the role may read but not write.
    authz::store::postgres::migrate(&db.url).await.unwrap();
    c.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    ))
    .await
    .unwrap();
    let out = authzd()
        .args(["policy", "apply", "--database-url", &url])
        .arg(common::example("console.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("may not do this"),
        "{err}"
    );
    drop(c);
    db.drop_db().await;
    let (admin, conn) = tokio_postgres::connect(&common::pg::server_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .unwrap();
}

#[test]
fn a_database_url_that_cannot_work_is_refused_before_anything_connects() {
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["migrate"],
        &["policy", "export"],
    ] {
        let out = authzd()
            .args(args)
            .args([
                "--database-url",
                "postgres://u:s3cret@127.0.0.1:1/db?sslmode=bogus",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("sslmode"), "{args:?}: {err}");
        assert!(!err.contains("s3cret"), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn concurrent_migrators_take_turns() {
    let db = TestDb::create_bare("schema_concurrent").await;
    let children: Vec<Child> = (0..3)
        .map(|_| {
            authzd()
                .args(["migrate", "--database-url", &db.url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        applied.extend(
            stdout
                .lines()
                .filter(|l| l.starts_with("applied "))
                .map(str::to_owned),
        );
    }
    // Each migration applied exactly once, by whichever migrator held the lock.
    applied.sort();
    assert_eq!(
        applied,
        [
            "applied V1__schema",
            "applied V2__audit",
            "applied V3__validation",
            "applied V4__closure_limit",
            "applied V5__origin",
            "applied V6__deletions"
        ],
        "{applied:?}"
    );
    let client = db.client().await;
    let state = authz::store::postgres::schema_state(&client).await.unwrap();
    assert_eq!(state, authz::store::postgres::SchemaState::Current);
    db.drop_db().await;
}

#[test]
fn migrate_without_a_database_url_only_when_allowed() {
    let out = authzd()
        .args(["migrate", "--if-configured"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no database configured; nothing to migrate"
    );
    let out = authzd().args(["migrate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}
