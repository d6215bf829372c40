//! Policy documents ↔ a real PostgreSQL: `migrate`, `policy apply` (a row diff in one
//! transaction, idempotent), `policy export` (a document that applies cleanly and decides
//! like the original), refusals (invalid documents, the database's validation), the CLI
//! and its exit codes, and `gen-dataset`.
//!
//! Each test works in its own database (`common::pg::TestDb`) and fails, never skips,
//! when PostgreSQL is unreachable.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{collections::BTreeMap, future::Future, path::Path, process::Output, time::Duration};

use authz::{
    cli::dataset::{DatasetError, DatasetOptions, generate},
    policy::{
        PolicyDocument, compile,
        source::{AssignmentDoc, Format, RoleDoc},
    },
    store::{
        postgres::{connect, migrate},
        sync::{ApplyReport, SyncError, apply, export},
    },
};
use common::{
    example, expectations,
    pg::{self, TestDb},
};
use tokio_postgres::Client;

/// Every test is bounded: a hung database or command fails it instead of hanging CI.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("the test finished within 120s");
}

/// Drops a test's database when the test panics; a passing test drops it itself with
/// `TestDb::drop_db`, so failures leave nothing behind either.
struct DropOnPanic(String);

impl Drop for DropOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let name = self.0.clone();
        // Off the test's runtime, which is unwinding.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(&pg::server_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A migrated database of the test's own, and its clean-up guard.
async fn test_db(tag: &str) -> (TestDb, DropOnPanic) {
    let db = TestDb::create(tag).await;
    let guard = DropOnPanic(db.name.clone());
    (db, guard)
}

/// A database without the schema (for `migrate` itself).
async fn bare_db(tag: &str) -> (TestDb, DropOnPanic) {
    let (db, guard) = test_db(tag).await;
    let client = db.client().await;
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .await
        .unwrap();
    (db, guard)
}

fn read(path: &Path) -> PolicyDocument {
    PolicyDocument::read(path).unwrap()
}

fn parse(yaml: &str) -> PolicyDocument {
    PolicyDocument::parse(yaml, Format::Yaml, "test.yaml").unwrap()
}

async fn client(db: &TestDb) -> Client {
    connect(&db.url).await.unwrap()
}

/// Change-log rows after `revision`, counted by (revision, table, op).
async fn changes_after(c: &Client, revision: u64) -> BTreeMap<(i64, String, String), i64> {
    c.query(
        "SELECT revision, entity, op, count(*) FROM authz_changes WHERE revision > $1 \
         GROUP BY 1, 2, 3",
        &[&(revision as i64)],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
    .collect()
}

/// `compile(got)` answers every case of `seed`'s expectations exactly as
/// `compile(want)` does (decision, reason, grant and wording).
fn same_decisions(seed: &str, want: &PolicyDocument, got: &PolicyDocument) {
    let e = expectations(&format!("{seed}.expect.yaml"));
    let want = compile(want, "original", 1).unwrap();
    let got = compile(got, "exported", 1).unwrap();
    let mut failures = Vec::new();
    for case in &e.cases {
        let (w, g) = (case.explain(&want).unwrap(), case.explain(&got).unwrap());
        if w != g {
            failures.push(format!("case `{}`:\n  want {w:?}\n  got  {g:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{seed}: {} of {} cases differ:\n{}",
        failures.len(),
        e.cases.len(),
        failures.join("\n")
    );
}

fn assert_unchanged(r: &ApplyReport, before: u64) {
    assert_eq!(r.revision, None, "{r:?}");
    assert_eq!(r.previous_revision, before);
    assert_eq!(r.total().total(), 0, "{r:?}");
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    bounded(async {
        let (db, _guard) = bare_db("sync_migrate").await;
        assert_eq!(
            migrate(&db.url).await.unwrap(),
            vec![
                "V1__schema".to_owned(),
                "V2__audit".to_owned(),
                "V3__validation".to_owned(),
                "V4__closure_limit".to_owned(),
                "V5__origin".to_owned(),
                "V6__deletions".to_owned()
            ]
        );
        assert_eq!(migrate(&db.url).await.unwrap(), Vec::<String>::new());
        assert_eq!(db.revision().await, 0);
        db.drop_db().await;
    })
    .await;
}

/// Apply an example, export it: the export compiles, applies without a change, and
/// decides every expectation case like the original. Applying the file again changes
/// nothing either.
async fn round_trip(seed: &str) {
    let (db, _guard) = test_db(&format!("sync_rt_{seed}")).await;
    let mut c = client(&db).await;
    let file = example(&format!("{seed}.yaml"));
    let original = read(&file);

    let first = apply(&mut c, &original, seed).await.unwrap();
    assert_eq!(first.revision, Some(1), "{first:?}");
    assert_eq!(
        first.table("tenants").inserted,
        original.tenants.len() as u64
    );
    assert_eq!(
        first.table("assignments").inserted,
        original
            .tenants
            .iter()
            .map(|t| t.assignments.len() as u64)
            .sum::<u64>()
    );

    let again = apply(&mut c, &original, seed).await.unwrap();
    assert_unchanged(&again, 1);

    let (revision, exported) = export(&mut c, None).await.unwrap();
    assert_eq!(revision, 1);
    compile(&exported, "exported", 1).unwrap();
    let reapplied = apply(&mut c, &exported, "exported").await.unwrap();
    assert_unchanged(&reapplied, 1);
    same_decisions(seed, &original, &exported);

    // Through YAML text, as the CLI writes it.
    let text = exported.to_yaml().unwrap();
    let reparsed = PolicyDocument::parse(&text, Format::Yaml, "exported.yaml").unwrap();
    assert_eq!(reparsed, exported);

    assert_eq!(db.revision().await, 1, "no revision bumped after the first");
    assert!(changes_after(&c, 1).await.is_empty());
    db.drop_db().await;
}

#[tokio::test]
async fn round_trip_console() {
    bounded(round_trip("console")).await;
}

#[tokio::test]
async fn round_trip_chat_api() {
    bounded(round_trip("chat-api")).await;
}

#[tokio::test]
async fn round_trip_gateway() {
    bounded(round_trip("gateway")).await;
}

#[tokio::test]
async fn a_changed_document_applies_as_a_diff_in_one_revision() {
    bounded(async {
        let (db, _guard) = test_db("sync_diff").await;
        let mut c = client(&db).await;
        let original = read(&example("console.yaml"));
        apply(&mut c, &original, "console").await.unwrap();
        let ids_before: Vec<i64> = c
            .query(
                "SELECT id FROM assignments WHERE tenant_id = 'acme' ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();

        // Remove the built-in role claude_code_user with its assignment (carl's), add an
        // assignment, disable a subject.
        let mut changed = original.clone();
        changed.roles.retain(|r| r.id != "claude_code_user");
        let acme = &mut changed.tenants[0];
        assert_eq!(acme.id, "acme");
        acme.assignments.retain(|a| a.role != "claude_code_user");
        acme.assignments.push(AssignmentDoc {
            subject: Some("nora".into()),
            group: None,
            role: "developer".into(),
            scope: "workspaces/ws-2".into(),
        });
        acme.subjects
            .iter_mut()
            .find(|s| s.id == "uma")
            .unwrap()
            .disabled = true;

        let r = apply(&mut c, &changed, "changed").await.unwrap();
        assert_eq!(r.previous_revision, 1);
        assert_eq!(r.revision, Some(2), "{r:?}");
        let counts: Vec<(&str, u64, u64, u64)> = r
            .tables
            .iter()
            .filter(|(_, n)| n.total() > 0)
            .map(|(t, n)| (*t, n.inserted, n.updated, n.deleted))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("roles", 0, 0, 1),
                ("role_includes", 0, 0, 1),
                ("role_permissions", 0, 0, 2),
                ("subjects", 0, 1, 0),
                ("assignments", 1, 0, 1),
            ]
        );
        // Exactly one revision, with a change row for exactly what changed.
        let key = |e: &str, op: &str| (2i64, e.to_owned(), op.to_owned());
        assert_eq!(
            changes_after(&c, 1).await,
            BTreeMap::from([
                (key("roles", "DELETE"), 1),
                (key("role_includes", "DELETE"), 1),
                (key("role_permissions", "DELETE"), 2),
                (key("subjects", "UPDATE"), 1),
                (key("assignments", "DELETE"), 1),
                (key("assignments", "INSERT"), 1),
            ])
        );
        assert_eq!(db.revision().await, 2);

        // Unchanged assignments keep their ids; the new one comes last.
        let ids_after: Vec<i64> = c
            .query(
                "SELECT id FROM assignments WHERE tenant_id = 'acme' ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids_after.len(), ids_before.len());
        let kept = &ids_after[..ids_after.len() - 1];
        assert!(kept.iter().all(|id| ids_before.contains(id)));
        assert!(ids_after.last() > ids_before.last());

        // The database now decides like the changed document; applying it is a no-op.
        let (_, exported) = export(&mut c, None).await.unwrap();
        same_decisions("console", &changed, &exported);
        assert_unchanged(&apply(&mut c, &changed, "changed").await.unwrap(), 2);

        // Tenants the document does not name are left alone: change globex only.
        let mut only_globex = changed.clone();
        only_globex.tenants.retain(|t| t.id == "globex");
        only_globex.tenants[0].subjects[0].disabled = true;
        let r = apply(&mut c, &only_globex, "globex").await.unwrap();
        assert_eq!(r.revision, Some(3));
        assert_eq!(r.total().total(), 1, "{r:?}");
        let (_, after) = export(&mut c, Some(&["acme".to_owned()])).await.unwrap();
        assert_eq!(after.tenants.len(), 1);
        same_decisions(
            "console",
            &PolicyDocument {
                tenants: vec![changed.tenants[0].clone()],
                ..changed.clone()
            },
            &after,
        );
        db.drop_db().await;
    })
    .await;
}

#[tokio::test]
async fn list_order_changes_are_position_updates() {
    bounded(async {
        let (db, _guard) = test_db("sync_order").await;
        let mut c = client(&db).await;
        let doc = parse(
            "version: 1\nroles:\n  - {id: a}\n  - {id: b}\n  - id: c\n    includes: [a, b]\n\
             \x20   routes: [{methods: [GET], path: /x}, {methods: [PUT], path: /y}]\n\
             endpoints:\n  - {path: /h, methods: [GET], public: true}\n  - {path: /i, methods: [GET], roles: [a]}\n\
             tenants:\n  - id: t\n    default_roles: [a, b]\n",
        );
        apply(&mut c, &doc, "order").await.unwrap();
        let mut reordered = doc.clone();
        reordered.roles[2].includes.reverse();
        reordered.roles[2].routes.reverse();
        reordered.endpoints.reverse();
        reordered.tenants[0].default_roles.reverse();
        reordered.roles[0].description = "now described".into();
        let r = apply(&mut c, &reordered, "reordered").await.unwrap();
        assert_eq!(r.total().inserted + r.total().deleted, 0, "{r:?}");
        assert_eq!(r.table("role_includes").updated, 2);
        assert_eq!(r.table("role_routes").updated, 2);
        assert_eq!(r.table("endpoints").updated, 2);
        assert_eq!(r.table("default_roles").updated, 2);
        assert_eq!(r.table("roles").updated, 1);
        let (_, exported) = export(&mut c, None).await.unwrap();
        assert_eq!(exported, reordered, "order is kept through positions");
        db.drop_db().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_serialize() {
    bounded(async {
        let (db, _guard) = test_db("sync_concurrent").await;
        let console = read(&example("console.yaml"));
        // Four writers race to apply the same document: the `authz_state` lock makes
        // them take turns, so one writes and the others find nothing to do.
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (url, doc) = (db.url.clone(), console.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = connect(&url).await.unwrap();
                apply(&mut c, &doc, &format!("writer {i}")).await.unwrap()
            }));
        }
        let mut revisions = Vec::new();
        for t in tasks {
            revisions.push(t.await.unwrap().revision);
        }
        revisions.sort();
        assert_eq!(revisions, [None, None, None, Some(1)]);
        assert_eq!(db.revision().await, 1);
        db.drop_db().await;
    })
    .await;
}

#[tokio::test]
async fn an_invalid_document_is_refused_before_any_write() {
    bounded(async {
        let (db, _guard) = test_db("sync_invalid").await;
        let mut c = client(&db).await;
        let doc = parse(
            "version: 1\nroles: [{id: viewer}]\ntenants:\n  - id: acme\n    subjects: [{id: a}]\n\
             \x20   assignments: [{subject: a, role: nope}]\n",
        );
        let err = apply(&mut c, &doc, "bad.yaml").await.unwrap_err();
        let SyncError::Invalid(e) = &err else {
            panic!("want Invalid, got {err:?}")
        };
        assert!(
            err.to_string()
                .contains("bad.yaml: tenant `acme`, assignment 1 (role `nope`)"),
            "{e}"
        );
        assert_eq!(db.revision().await, 0);
        let (_, exported) = export(&mut c, None).await.unwrap();
        assert!(exported.roles.is_empty() && exported.tenants.is_empty());
        assert!(changes_after(&c, 0).await.is_empty());
        db.drop_db().await;
    })
    .await;
}

/// `policy apply` holds a document to the database's limits (authz_limits), not to the
/// compiled-in defaults: the CLI leaves a document over the default limits only to the
/// database's, and the library compiles against them.
#[tokio::test]
async fn a_document_is_held_to_the_databases_limits() {
    bounded(async {
        let (db, _guard) = test_db("sync_db_limits").await;
        let mut c = client(&db).await;
        // A chain of 35 roles: depth 34, over the default 32.
        let mut text = String::from("version: 1\ntenants:\n  - id: acme\n    roles:\n");
        for i in 0..35 {
            if i + 1 < 35 {
                text.push_str(&format!("      - {{id: c{i}, includes: [c{}]}}\n", i + 1));
            } else {
                text.push_str(&format!("      - {{id: c{i}}}\n"));
            }
        }
        let err = apply(&mut c, &parse(&text), "chain.yaml")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("max_include_depth = 32"), "{err}");
        c.batch_execute("UPDATE authz_limits SET max_include_depth = 40")
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chain.yaml");
        std::fs::write(&file, &text).unwrap();
        let o = authzd(
            &["policy", "apply", file.to_str().unwrap()],
            Some(db.url.as_str()),
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        db.drop_db().await;
    })
    .await;
}

#[tokio::test]
async fn the_database_refusal_carries_its_message() {
    bounded(async {
        let (db, _guard) = test_db("sync_rejected").await;
        let mut c = client(&db).await;
        let console = read(&example("console.yaml"));
        apply(&mut c, &console, "console").await.unwrap();

        // Replacing the built-in roles while acme (not named) still uses them: the
        // deferred validation refuses at commit, and nothing of it stays.
        let other = parse("version: 1\nroles: [{id: other}]\n");
        let err = apply(&mut c, &other, "other.yaml").await.unwrap_err();
        let SyncError::Rejected { message } = &err else {
            panic!("want Rejected, got {err:?}")
        };
        assert!(
            message.contains("tenant `acme`") && message.contains("is not defined"),
            "{message}"
        );
        assert!(
            err.to_string()
                .starts_with("the database rejected the change: tenant `acme`"),
            "{err}"
        );
        assert_eq!(db.revision().await, 1);
        let (_, now) = export(&mut c, None).await.unwrap();
        assert_eq!(now.roles.len(), console.roles.len());

        // A custom role written behind the document's back clashes with a built-in role
        // the document adds.
        c.batch_execute("INSERT INTO roles (tenant_id, id) VALUES ('acme', 'auditor')")
            .await
            .unwrap();
        let mut with_auditor = console.clone();
        with_auditor.tenants.retain(|t| t.id == "globex");
        with_auditor.roles.push(RoleDoc {
            id: "auditor".into(),
            ..RoleDoc::default()
        });
        let err = apply(&mut c, &with_auditor, "auditor.yaml")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "tenant `acme`, role `auditor`: custom role reuses the id of a built-in role"
            ),
            "{err}"
        );
        assert_eq!(db.revision().await, 2, "only the raw insert");
        db.drop_db().await;
    })
    .await;
}

#[tokio::test]
async fn gen_dataset_writes_a_valid_dataset_in_one_revision() {
    bounded(async {
        let (db, _guard) = test_db("sync_dataset").await;
        let mut c = client(&db).await;
        let opts = DatasetOptions {
            tenants: 1_234,
            assignments_per_tenant: 7,
            seed: 42,
        };
        let r = generate(&mut c, &opts).await.unwrap();
        assert_eq!(r.revision, 1);
        assert_eq!(r.rows("tenants"), 1_234);
        assert_eq!(r.rows("assignments"), 1_234 * 7);
        assert_eq!(
            r.rows("roles"),
            10 + c_count(&c, "roles WHERE tenant_id <> ''").await
        );
        assert_eq!(db.revision().await, 1);

        // One change row per tenant, plus the captured built-in rows, all at revision 1.
        let changes = changes_after(&c, 0).await;
        assert!(changes.keys().all(|(rev, _, _)| *rev == 1));
        assert_eq!(changes[&(1, "tenants".into(), "INSERT".into())], 1_234);
        assert_eq!(changes[&(1, "roles".into(), "INSERT".into())], 10);
        assert!(!changes.contains_key(&(1, "assignments".into(), "INSERT".into())));

        // The data compiles, and is exactly what `policy apply` would have written.
        let (_, exported) = export(&mut c, None).await.unwrap();
        compile(&exported, "exported", 1).unwrap();
        assert_eq!(
            exported
                .tenants
                .iter()
                .map(|t| t.assignments.len())
                .sum::<usize>(),
            1_234 * 7
        );
        assert_unchanged(&apply(&mut c, &exported, "exported").await.unwrap(), 1);

        let again = generate(&mut c, &opts).await.unwrap_err();
        assert!(matches!(again, DatasetError::NotEmpty), "{again:?}");
        db.drop_db().await;
    })
    .await;
}

async fn c_count(c: &Client, from: &str) -> u64 {
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {from}"), &[])
        .await
        .unwrap()
        .get(0);
    n as u64
}

// ------------------------------------------------------------------------------ CLI

/// Runs `authzd` with `args` (off the async runtime, bounded by the test's timeout).
async fn authzd(args: &[&str], env_url: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let env_url = env_url.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"));
        cmd.args(&args).env_remove("AUTHZ_DATABASE_URL");
        if let Some(u) = env_url {
            cmd.env("AUTHZ_DATABASE_URL", u);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_migrate_apply_export_and_exit_codes() {
    bounded(async {
        let (db, _guard) = bare_db("sync_cli").await;
        let url = db.url.as_str();

        let o = authzd(&["migrate", "--database-url", url], None).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(
            stdout(&o),
            "applied V1__schema\napplied V2__audit\napplied V3__validation\napplied V4__closure_limit\napplied V5__origin\napplied V6__deletions\n"
        );
        let o = authzd(&["migrate"], Some(url)).await;
        assert_eq!(stdout(&o), "schema up to date\n");

        let console = example("console.yaml");
        let console = console.to_str().unwrap();
        let o = authzd(&["policy", "apply", console, "--database-url", url], None).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.starts_with(&format!("applied {console}: revision 1 ("))
                && out.ends_with(" rows inserted, 0 updated, 0 deleted)\n"),
            "{out}"
        );
        let o = authzd(&["policy", "apply", console], Some(url)).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("{console}: no changes (revision 1)\n"));

        // Export: YAML to stdout, JSON by flag or by file name, one tenant.
        let o = authzd(&["policy", "export", "--database-url", url], None).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let yaml = stdout(&o);
        assert!(yaml.starts_with("# exported by `authzd policy export` at revision 1\n"));
        let doc = PolicyDocument::parse(&yaml, Format::Yaml, "stdout").unwrap();
        compile(&doc, "stdout", 1).unwrap();
        let o = authzd(
            &["policy", "export", "--format", "json", "--tenant", "globex"],
            Some(url),
        )
        .await;
        let doc = PolicyDocument::parse(&stdout(&o), Format::Json, "stdout").unwrap();
        assert_eq!(
            doc.tenants
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            ["globex"]
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("exported.json");
        let o = authzd(
            &["policy", "export", "--output", out.to_str().unwrap()],
            Some(url),
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            stdout(&o).starts_with("exported revision 1 to "),
            "{}",
            stdout(&o)
        );
        let o = authzd(&["policy", "apply", out.to_str().unwrap()], Some(url)).await;
        assert!(
            stdout(&o).ends_with(": no changes (revision 1)\n"),
            "{}",
            stdout(&o)
        );
        let o = authzd(&["policy", "export", "--tenant", "nope"], Some(url)).await;
        assert!(stderr(&o).contains("tenant `nope` does not exist"));

        // An invalid document: 65, before the database (even an unreachable one).
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "version: 1\nroles: [{id: a, includes: [b]}]\n").unwrap();
        let bad = bad.to_str().unwrap();
        let o = authzd(
            &[
                "policy",
                "apply",
                bad,
                "--database-url",
                "postgres://postgres@127.0.0.1:1/x",
            ],
            None,
        )
        .await;
        assert_eq!(o.status.code(), Some(65));
        assert!(stderr(&o).contains("includes `b`"), "{}", stderr(&o));
        // Over --max-policy-bytes: 65 naming the limit, before it is read or parsed.
        let o = authzd(
            &[
                "policy",
                "apply",
                bad,
                "--max-policy-bytes",
                "16",
                "--database-url",
                "postgres://postgres@127.0.0.1:1/x",
            ],
            None,
        )
        .await;
        assert_eq!(o.status.code(), Some(65));
        assert!(
            stderr(&o).contains("more than the limit max_policy_bytes = 16"),
            "{}",
            stderr(&o)
        );
        let o = authzd(&["policy", "apply", "/nonexistent.yaml"], Some(url)).await;
        assert_eq!(o.status.code(), Some(66));

        // The database refuses: 65 with its message.
        let other = dir.path().join("other.yaml");
        std::fs::write(&other, "version: 1\nroles: [{id: other}]\n").unwrap();
        let other = other.to_str().unwrap();
        let o = authzd(&["policy", "apply", other], Some(url)).await;
        assert_eq!(o.status.code(), Some(65));
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!(
                "{other}: the database rejected the change: tenant `acme`"
            )) && err.contains("is not defined"),
            "{err}"
        );

        // Unreachable: 69.
        let down = "postgres://postgres@127.0.0.1:1/x";
        for args in [
            &["migrate", "--database-url", down][..],
            &["policy", "apply", console, "--database-url", down],
            &["policy", "export", "--database-url", down],
            &["gen-dataset", "--tenants", "1", "--database-url", down],
        ] {
            let o = authzd(args, None).await;
            assert_eq!(o.status.code(), Some(69), "{args:?}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("database unavailable"),
                "{}",
                stderr(&o)
            );
        }

        // gen-dataset refuses a database with data in it.
        let o = authzd(&["gen-dataset", "--tenants", "2"], Some(url)).await;
        assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
        assert!(stderr(&o).contains("already holds policy data"));
        db.drop_db().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_gen_dataset_prints_counts_and_times() {
    bounded(async {
        let (db, _guard) = test_db("sync_cli_dataset").await;
        let o = authzd(
            &[
                "gen-dataset",
                "--tenants",
                "30",
                "--assignments-per-tenant",
                "20",
                "--seed",
                "3",
            ],
            Some(&db.url),
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.starts_with("generated 30 tenants and 600 assignments at revision 1 in "),
            "{out}"
        );
        assert!(
            out.contains("  assignments              600 rows\n"),
            "{out}"
        );
        assert!(out.contains("vacuum analyze"), "{out}");
        db.drop_db().await;
    })
    .await;
}
