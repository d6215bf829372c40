//! docs/policy-rules.md is the one written list of policy rules. This test reads it and
//! proves, rule by rule, that the compiler and the database refuse the same things:
//!
//! - every example document is refused by `authzd validate` (exit 65, exactly one
//!   problem, with every `expect:` and `compiler:` fragment);
//! - every SQL example, run in one transaction on a database holding the base policy, is
//!   refused at the statement or at commit (as the rule says) with every `expect:` and
//!   `database:` fragment, and leaves the database exactly as it was (same rows, same
//!   revision, same change log).
//!
//! It also proves the include checks are linear (a diamond of 30 layers, a 5,000-role
//! chain) and that `SET CONSTRAINTS ALL IMMEDIATE` cannot skip a validation. A
//! regression fails on `statement_timeout` rather than hanging.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{future::Future, path::Path, process::Command, time::Duration};

use authz::{
    policy::{PolicyDocument, source::Format},
    store::sync::apply,
};
use common::{
    pg::{self, TestDb},
    repo,
};
use tokio_postgres::Client;

/// Fewer rules than this means the list was emptied or its format broken.
const MIN_RULES: usize = 40;

/// The limits of `authz_limits` and `policy::Limits`.
const LIMITS: [&str; 6] = [
    "max_include_depth",
    "max_roles_per_tenant",
    "max_rules_per_role",
    "max_permissions_per_role",
    "max_endpoints_per_tenant",
    "max_closure_cost",
];

// ------------------------------------------------------------------- the rule list

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    AtStatement,
    AtCommit,
}

#[derive(Debug, Default)]
struct Rule {
    /// `R07 endpoint-conflict`.
    title: String,
    yaml: Vec<String>,
    sql: Vec<String>,
    /// Fragments both sides' messages contain.
    expect: Vec<String>,
    /// Fragments only the compiler's message contains.
    compiler: Vec<String>,
    /// Fragments only the database's message contains.
    database: Vec<String>,
    refused: Option<Refused>,
    /// A limit lowered for this rule: its name and value.
    limit: Option<(String, u32)>,
}

struct RuleList {
    base: String,
    rules: Vec<Rule>,
}

/// Reads docs/policy-rules.md: the base policy (the first `yaml` block of the
/// "Base policy" section) and every `### Rnn name` section.
fn rule_list() -> RuleList {
    let text = std::fs::read_to_string(repo().join("docs/policy-rules.md")).unwrap();
    let mut base = None;
    let mut rules: Vec<Rule> = Vec::new();
    // Where we are: a rule (index), the base section, or elsewhere.
    let mut in_rule = false;
    let mut in_base = false;
    let mut fence: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        if let Some((info, body)) = &mut fence {
            if line.starts_with("```") {
                let block = body.join("\n");
                match info.as_str() {
                    "yaml" if in_base && base.is_none() => base = Some(block),
                    "yaml" if in_rule => rules.last_mut().unwrap().yaml.push(block),
                    "sql" if in_rule => rules.last_mut().unwrap().sql.push(block),
                    _ => {}
                }
                fence = None;
            } else {
                body.push(line);
            }
            continue;
        }
        if let Some(info) = line.strip_prefix("```") {
            fence = Some((info.trim().to_owned(), Vec::new()));
            continue;
        }
        if let Some(title) = line.strip_prefix("### ") {
            in_rule = title.starts_with('R');
            in_base = false;
            if in_rule {
                rules.push(Rule {
                    title: title.trim().to_owned(),
                    ..Rule::default()
                });
            }
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            in_rule = false;
            in_base = title.trim() == "Base policy";
            continue;
        }
        if !in_rule {
            continue;
        }
        let rule = rules.last_mut().unwrap();
        if let Some(f) = line.strip_prefix("expect: ") {
            rule.expect.push(f.to_owned());
        } else if let Some(f) = line.strip_prefix("compiler: ") {
            rule.compiler.push(f.to_owned());
        } else if let Some(f) = line.strip_prefix("database: ") {
            rule.database.push(f.to_owned());
        } else if let Some(r) = line.strip_prefix("refused: ") {
            rule.refused = Some(match r.trim() {
                "at the statement" => Refused::AtStatement,
                "at commit" => Refused::AtCommit,
                other => panic!("{}: unknown `refused: {other}`", rule.title),
            });
        } else if let Some(l) = line.strip_prefix("limit: ") {
            let (name, value) = l
                .split_once(" = ")
                .unwrap_or_else(|| panic!("{}: `limit: NAME = N`, got `{l}`", rule.title));
            rule.limit = Some((name.trim().to_owned(), value.trim().parse().unwrap()));
        }
    }
    assert!(
        fence.is_none(),
        "docs/policy-rules.md: an unclosed code block"
    );
    RuleList {
        base: base.expect("docs/policy-rules.md has a `## Base policy` section with a yaml block"),
        rules,
    }
}

/// Expands `{{repeat N TEXT}}` to TEXT written N times.
fn expand(yaml: &str) -> String {
    let mut out = String::new();
    let mut rest = yaml;
    while let Some(at) = rest.find("{{repeat ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "{{repeat ".len()..];
        let end = after.find("}}").expect("`{{repeat N TEXT}}` is closed");
        let (n, text) = after[..end].split_once(' ').expect("`{{repeat N TEXT}}`");
        out.push_str(&text.repeat(n.parse().unwrap()));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_rule_list_is_complete_and_well_formed() {
    let list = rule_list();
    let rules = &list.rules;
    assert!(
        rules.len() >= MIN_RULES,
        "docs/policy-rules.md lists {} rules, fewer than {MIN_RULES}: was it emptied or its format broken?",
        rules.len()
    );
    let mut ids = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        let (id, name) = r.title.split_once(' ').unwrap_or((&r.title, ""));
        assert_eq!(id, format!("R{:02}", i + 1), "rules are numbered in order");
        assert!(
            !name.is_empty() && !name.contains(' '),
            "{}: `### Rnn name`",
            r.title
        );
        assert!(
            ids.insert(name.to_owned()),
            "{}: a name used twice",
            r.title
        );
        assert!(!r.yaml.is_empty(), "{}: no yaml example", r.title);
        assert!(!r.sql.is_empty(), "{}: no sql example", r.title);
        assert!(!r.expect.is_empty(), "{}: no `expect:` line", r.title);
        assert!(r.expect.iter().all(|e| !e.trim().is_empty()));
        assert!(r.refused.is_some(), "{}: no `refused:` line", r.title);
        if let Some((name, value)) = &r.limit {
            assert!(
                LIMITS.contains(&name.as_str()),
                "{}: unknown limit `{name}`",
                r.title
            );
            // The database side lowers the limit itself, in the same transaction.
            let update = format!("UPDATE authz_limits SET {name} = {value};");
            assert!(
                r.sql.iter().all(|s| s.contains(&update)),
                "{}: every sql example starts with `{update}`",
                r.title
            );
        }
    }
    // Every limit has its rule.
    for name in LIMITS {
        assert!(
            rules
                .iter()
                .any(|r| r.limit.as_ref().is_some_and(|(n, _)| n == name)),
            "no rule for the limit `{name}`"
        );
    }
    // The base policy itself is valid.
    let base = PolicyDocument::parse(&list.base, Format::Yaml, "base").unwrap();
    authz::policy::compile(&base, "base", 0).unwrap();
}

// ------------------------------------------------------------------- the compiler

#[test]
fn every_rule_is_refused_by_the_compiler() {
    let list = rule_list();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut cases = 0;
    for rule in &list.rules {
        for (n, yaml) in rule.yaml.iter().enumerate() {
            cases += 1;
            let file = dir
                .path()
                .join(format!("{}-{n}.yaml", rule.title.replace(' ', "-")));
            std::fs::write(&file, expand(yaml)).unwrap();
            if let Err(e) = compiler_refuses(rule, &file) {
                failures.push(format!("{} (yaml example {}): {e}", rule.title, n + 1));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} examples were not refused as docs/policy-rules.md says:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `authzd validate FILE [--max-... N]` exits 65 with one problem carrying the fragments.
fn compiler_refuses(rule: &Rule, file: &Path) -> Result<(), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authzd"));
    cmd.arg("validate").arg(file);
    if let Some((name, value)) = &rule.limit {
        cmd.arg(format!("--{}", name.replace('_', "-")))
            .arg(value.to_string());
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run authzd: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(65) {
        return Err(format!(
            "`{cmd:?}` exited {:?}, not 65 (invalid policy):\n{stderr}",
            out.status.code()
        ));
    }
    let prefix = format!("{}: ", file.display());
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    if problems.len() != 1 {
        return Err(format!(
            "{} problems, not exactly one (the example must break this rule only):\n{stderr}",
            problems.len()
        ));
    }
    let missing: Vec<&String> = rule
        .expect
        .iter()
        .chain(&rule.compiler)
        .filter(|f| !problems[0].contains(f.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("the message lacks {missing:?}:\n{stderr}"));
    }
    Ok(())
}

// ------------------------------------------------------------------- the database

/// Every test is bounded: a hung database fails it instead of hanging CI.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("the test finished within 120s");
}

/// Drops a test's database when the test panics (a passing test drops it itself).
struct DropOnPanic(String);

impl Drop for DropOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let name = self.0.clone();
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

async fn test_db(tag: &str) -> (TestDb, DropOnPanic, Client) {
    let db = TestDb::create(tag).await;
    let guard = DropOnPanic(db.name.clone());
    let client = db.client().await;
    // A regression to an exponential or quadratic check fails here, never hangs.
    client
        .batch_execute("SET statement_timeout = '20s'")
        .await
        .unwrap();
    (db, guard, client)
}

/// The database's message and detail, as `policy apply` shows them.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

/// Everything a refused write must leave as it was: the revision, the change log and
/// every row of every policy table (and the limits).
async fn state(c: &Client) -> String {
    let tables = [
        "authz_state",
        "authz_limits",
        "tenants",
        "roles",
        "role_includes",
        "role_permissions",
        "role_routes",
        "endpoints",
        "default_roles",
        "subjects",
        "groups",
        "group_members",
        "assignments",
    ];
    let parts: Vec<String> = tables
        .iter()
        .map(|t| {
            format!("SELECT '{t}' || ' ' || md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x")
        })
        .chain(["SELECT 'authz_changes ' || count(*) FROM authz_changes".to_owned()])
        .collect();
    c.query(&parts.join(" UNION ALL "), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `sql` in a transaction and commits: where it was refused, and the message.
async fn write(c: &mut Client, sql: &str) -> Result<(), (Refused, String)> {
    let tx = c.transaction().await.unwrap();
    if let Err(e) = tx.batch_execute(sql).await {
        let message = db_message(&e);
        tx.rollback().await.unwrap();
        return Err((Refused::AtStatement, message));
    }
    tx.commit()
        .await
        .map_err(|e| (Refused::AtCommit, db_message(&e)))
}

#[tokio::test]
async fn every_rule_is_refused_by_the_database() {
    bounded(async {
        let list = rule_list();
        let (db, _guard, mut c) = test_db("rules").await;
        let base = PolicyDocument::parse(&list.base, Format::Yaml, "base").unwrap();
        apply(&mut c, &base, "base").await.unwrap();
        let before = state(&c).await;
        assert!(before.contains("authz_state"), "{before}");
        let mut failures = Vec::new();
        let mut cases = 0;
        for rule in &list.rules {
            let want = rule.refused.unwrap();
            for (n, sql) in rule.sql.iter().enumerate() {
                cases += 1;
                let case = format!("{} (sql example {})", rule.title, n + 1);
                match write(&mut c, sql).await {
                    Ok(()) => failures.push(format!("{case}: committed:\n{sql}")),
                    Err((at, message)) => {
                        let missing: Vec<&String> = rule
                            .expect
                            .iter()
                            .chain(&rule.database)
                            .filter(|f| !message.contains(f.as_str()))
                            .collect();
                        if !missing.is_empty() {
                            failures
                                .push(format!("{case}: the message lacks {missing:?}: {message}"));
                        } else if at != want {
                            failures.push(format!(
                                "{case}: refused {at:?}, the rule says {want:?}: {message}"
                            ));
                        }
                    }
                }
                let after = state(&c).await;
                assert_eq!(
                    after, before,
                    "{case} changed the database although it was refused"
                );
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {cases} examples were not refused as docs/policy-rules.md says:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
        db.drop_db().await;
    })
    .await;
}

// ------------------------------------------------------------------- linear checks

/// A "diamond": `layers` layers of two roles, each including both roles of the layer
/// below. There are 2^(layers-1) include paths from the top, so enumerating paths (as
/// the first cycle check did) never finishes; the depth is `layers - 1`.
fn diamond(tenant: &str, layers: u32) -> String {
    format!(
        "INSERT INTO tenants (id) VALUES ('{tenant}');
         INSERT INTO roles (tenant_id, id)
              SELECT '{tenant}', format('r%s_%s', l, k)
                FROM generate_series(0, {top}) l, generate_series(0, 1) k ORDER BY l DESC, k;
         INSERT INTO role_includes (tenant_id, role_id, included, position)
              SELECT '{tenant}', format('r%s_%s', l, k), format('r%s_%s', l - 1, j), j
                FROM generate_series(1, {top}) l, generate_series(0, 1) k, generate_series(0, 1) j;",
        top = layers - 1
    )
}

/// A chain `c1 -> c2 -> ... -> cN`, depth N - 1.
fn chain(tenant: &str, roles: u32) -> String {
    format!(
        "INSERT INTO tenants (id) VALUES ('{tenant}');
         INSERT INTO roles (tenant_id, id) SELECT '{tenant}', 'c' || i FROM generate_series(1, {roles}) i;
         INSERT INTO role_includes (tenant_id, role_id, included, position)
              SELECT '{tenant}', 'c' || i, 'c' || (i + 1), 1 FROM generate_series(1, {roles} - 1) i;"
    )
}

async fn revision(c: &Client) -> i64 {
    c.query_one("SELECT revision FROM authz_state", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn include_cycle_and_depth_checks_are_linear() {
    bounded(async {
        let (db, _guard, mut c) = test_db("rules_linear").await;

        // A raised limit is a built-in change: captured (followers reload), and every
        // tenant is validated against it.
        let r0 = revision(&c).await;
        write(&mut c, "UPDATE authz_limits SET max_include_depth = 40")
            .await
            .unwrap();
        assert_eq!(revision(&c).await, r0 + 1);
        let (tenant, entity): (String, String) = c
            .query_one(
                "SELECT tenant_id, entity FROM authz_changes ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!((tenant.as_str(), entity.as_str()), ("", "authz_limits"));

        // 30 layers: 2^29 paths from the top role, depth 29. Validated per tenant (the
        // commit touches only this tenant) ...
        write(&mut c, &diamond("diamond", 30)).await.unwrap();
        // ... and every tenant at once.
        c.batch_execute("SELECT authz_validate_tenant('')")
            .await
            .unwrap();
        // Lowering the limit below it is refused, naming the chain.
        let before = state(&c).await;
        let (at, message) = write(&mut c, "UPDATE authz_limits SET max_include_depth = 28")
            .await
            .unwrap_err();
        assert_eq!(at, Refused::AtCommit);
        assert!(
            message.starts_with("tenant `diamond`, role `r29_0`: include chain `r29_0 -> ")
                && message.contains(" is 29 deep, more than the limit max_include_depth = 28"),
            "{message}"
        );
        assert_eq!(state(&c).await, before);
        // So is a diamond deeper than the limit.
        let (at, message) = write(&mut c, &diamond("deeper", 42)).await.unwrap_err();
        assert_eq!(at, Refused::AtCommit);
        assert!(
            message.contains("is 41 deep, more than the limit max_include_depth = 40"),
            "{message}"
        );
        // A cycle closing the diamond at the bottom is named.
        let (_, message) = write(
            &mut c,
            "INSERT INTO role_includes VALUES ('diamond', 'r0_0', 'r29_1', 0)",
        )
        .await
        .unwrap_err();
        assert!(message.contains("include cycle `"), "{message}");
        assert_eq!(state(&c).await, before);

        // A 5,000-role chain, depth 4,999, closed into a cycle: named by a linear walk.
        write(&mut c, "UPDATE authz_limits SET max_include_depth = 10000")
            .await
            .unwrap();
        let before = state(&c).await;
        let (at, message) = write(
            &mut c,
            &format!(
                "{} INSERT INTO role_includes VALUES ('chain', 'c5000', 'c1', 1);",
                chain("chain", 5000)
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(at, Refused::AtCommit);
        assert!(
            message.starts_with("tenant `chain`, role `c1`: include cycle `c1 -> c2 -> ")
                && message.ends_with(" -> c5000 -> c1`"),
            "{}",
            &message[..message.len().min(300)]
        );
        // The chain alone passes the depth limit, but its closures cost 25 million (12.5
        // million entries, each with its one include): refused by max_closure_cost,
        // counting one unit past the limit.
        let (at, message) = write(&mut c, &chain("chain", 5000)).await.unwrap_err();
        assert_eq!(at, Refused::AtCommit);
        assert!(
            message
                .starts_with("tenant `chain`: the roles' include closures cost more than 2000000")
                && message.contains("max_closure_cost = 2000000"),
            "{message}"
        );
        assert_eq!(state(&c).await, before);
        // A 1,400-role chain (980,700 entries, cost 1,960,000) commits, per tenant and
        // for everything.
        write(&mut c, &chain("chain", 1400)).await.unwrap();
        c.batch_execute("SELECT authz_validate_tenant('chain'); SELECT authz_validate_tenant('')")
            .await
            .unwrap();
        db.drop_db().await;
    })
    .await;
}

#[tokio::test]
async fn set_constraints_immediate_does_not_skip_validation() {
    bounded(async {
        let (db, _guard, mut c) = test_db("rules_immediate").await;
        c.batch_execute("INSERT INTO tenants (id) VALUES ('acme')")
            .await
            .unwrap();
        let before = state(&c).await;
        // Validated at the end of each statement: the first include is fine, the
        // second closes a cycle and must be checked too, although the tenant was
        // validated one statement before.
        let (at, message) = write(
            &mut c,
            "SET CONSTRAINTS ALL IMMEDIATE;
             INSERT INTO roles (tenant_id, id) VALUES ('acme', 'a'), ('acme', 'b');
             INSERT INTO role_includes VALUES ('acme', 'a', 'b', 1);
             INSERT INTO role_includes VALUES ('acme', 'b', 'a', 1);",
        )
        .await
        .unwrap_err();
        assert_eq!(at, Refused::AtStatement);
        assert!(
            message.contains("tenant `acme`, role `a`: include cycle `a -> b -> a`"),
            "{message}"
        );
        assert_eq!(state(&c).await, before);
        db.drop_db().await;
    })
    .await;
}

#[tokio::test]
async fn a_row_cannot_move_to_another_tenant() {
    bounded(async {
        let (db, _guard, mut c) = test_db("rules_move").await;
        c.batch_execute(
            "INSERT INTO roles (tenant_id, id) VALUES ('', 'viewer');
             INSERT INTO tenants (id) VALUES ('acme'), ('globex');
             INSERT INTO subjects VALUES ('acme', 'ada', false), ('globex', 'ada', false);
             INSERT INTO roles (tenant_id, id) VALUES ('acme', 'aud');
             INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('acme', 'ada', 'viewer');",
        )
        .await
        .unwrap();
        let before = state(&c).await;
        // Capture and validation follow a row's tenant: a move would change the tenant it
        // leaves without replicas hearing of it.
        for sql in [
            "UPDATE assignments SET tenant_id = 'globex' WHERE tenant_id = 'acme'",
            "UPDATE roles SET tenant_id = 'globex' WHERE tenant_id = 'acme' AND id = 'aud'",
            "UPDATE subjects SET tenant_id = 'globex2' WHERE tenant_id = 'acme'",
            "UPDATE tenants SET id = 'initech' WHERE id = 'globex'",
        ] {
            let (_, message) = write(&mut c, sql).await.unwrap_err();
            assert!(
                message.contains("a row cannot move to another tenant")
                    || message.contains("foreign key"),
                "{sql}: {message}"
            );
        }
        assert_eq!(state(&c).await, before);
        db.drop_db().await;
    })
    .await;
}

#[tokio::test]
async fn a_writer_cannot_mark_its_tenants_validated() {
    bounded(async {
        let (db, _guard, c) = test_db("rules_forge").await;
        let role = format!("authz_test_writer_{}", std::process::id());
        c.batch_execute(&format!(
            "INSERT INTO tenants (id) VALUES ('acme');
             DROP ROLE IF EXISTS {role};
             CREATE ROLE {role} LOGIN;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
             REVOKE ALL ON authz_validated FROM {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        ))
        .await
        .unwrap();
        let before = state(&c).await;
        // A writer without ownership: its own temporary `authz_validated` (or a row in the
        // real one, which it may not write) must not stand in for the validation.
        let url = match db.url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{role}@{host}")
            }
            None => panic!("unexpected database URL {}", db.url),
        };
        let (mut w, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let forged = write(
            &mut w,
            "INSERT INTO roles (tenant_id, id) VALUES ('acme', 'a'), ('acme', 'b');
             INSERT INTO role_includes VALUES ('acme', 'a', 'b', 1), ('acme', 'b', 'a', 1);
             CREATE TEMP TABLE authz_validated (xact xid8, tenant_id text, PRIMARY KEY (xact, tenant_id));
             INSERT INTO pg_temp.authz_validated VALUES (pg_current_xact_id(), ''), (pg_current_xact_id(), 'acme');",
        )
        .await
        .unwrap_err();
        assert!(forged.1.contains("include cycle"), "{}", forged.1);
        let direct = w
            .batch_execute("INSERT INTO public.authz_validated VALUES (pg_current_xact_id(), 'acme')")
            .await
            .unwrap_err();
        assert!(db_message(&direct).contains("permission denied"), "{direct}");
        // Ordinary writes by that role work.
        write(&mut w, "INSERT INTO roles (tenant_id, id) VALUES ('acme', 'ok')")
            .await
            .unwrap();
        drop(w);
        assert_ne!(state(&c).await, before);
        drop(c);
        db.drop_db().await;
        let (admin, conn) = tokio_postgres::connect(&pg::server_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
            .unwrap();
    })
    .await;
}
