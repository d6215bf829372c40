//! `authzd test`: the example policies' expectation files run through the binary (JUnit
//! output, parsed as XML), a wrong expectation fails with exit 1, an invalid file is
//! exit 65 naming file:line, load-error expectations, and a run against PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{
    path::Path,
    process::{Command, Output},
};

use common::*;

fn authzd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses JUnit XML with Python's XML parser (a real parser, not string matching) and
/// returns, per test suite, (name, tests attribute, failures attribute, test cases,
/// failure elements).
fn parse_junit(xml: &str) -> Vec<(String, usize, usize, usize, usize)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.xml");
    std::fs::write(&file, xml).unwrap();
    let script = r#"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
for s in root.findall("testsuite"):
    cases = s.findall("testcase")
    fails = sum(len(c.findall("failure")) for c in cases)
    print("\t".join([s.get("name"), s.get("tests"), s.get("failures"), str(len(cases)), str(fails)]))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("python3 runs (it parses the JUnit XML)");
    assert!(
        out.status.success(),
        "not valid JUnit XML: {}\n{xml}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn example_expectations_pass_with_junit_output() {
    let dir = repo().join("examples/policies");
    let out = authzd(&["test", dir.to_str().unwrap(), "--output", "junit"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let suites = parse_junit(&text(&out.stdout));
    assert_eq!(suites.len(), 3, "{suites:?}");
    for seed in ["chat-api", "console", "gateway"] {
        let e = expectations(&format!("{seed}.expect.yaml"));
        let want = e.cases.len() + e.lists.len();
        let (_, tests, failures, cases, fails) = suites
            .iter()
            .find(|s| s.0.ends_with(&format!("{seed}.expect.yaml")))
            .unwrap_or_else(|| panic!("no suite for {seed}: {suites:?}"));
        assert_eq!((*tests, *cases), (want, want), "{seed}");
        assert_eq!((*failures, *fails), (0, 0), "{seed}");
    }
    // The console file has list cases too; they ran.
    assert!(!expectations("console.expect.yaml").lists.is_empty());
}

/// A copy of the gateway example with one expectation turned around.
fn wrong_gateway(dir: &Path) -> std::path::PathBuf {
    std::fs::copy(example("gateway.yaml"), dir.join("gateway.yaml")).unwrap();
    let original = std::fs::read_to_string(example("gateway.expect.yaml")).unwrap();
    let needle = "  - name: opsadmin may deploy to prod\n";
    let at = original.find(needle).unwrap();
    let line = original[..at].lines().count() + 1;
    // The case's first `allowed: true` (and its reason) after its name.
    let rest = &original[at..];
    let wrong = rest.replacen(
        "    allowed: true\n    reason: granted\n",
        "    allowed: false\n    reason: no_grant\n",
        1,
    );
    let file = dir.join("gateway.expect.yaml");
    std::fs::write(&file, format!("{}{wrong}", &original[..at])).unwrap();
    assert!(line > 1);
    file
}

#[test]
fn a_wrong_expectation_fails_with_exit_1_naming_file_line_and_case() {
    let dir = tempfile::tempdir().unwrap();
    let file = wrong_gateway(dir.path());
    let out = authzd(&["test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let fail: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fail.len(), 1, "{stdout}");
    assert!(
        fail[0].contains("gateway.expect.yaml:")
            && fail[0].contains("opsadmin may deploy to prod")
            && fail[0].contains("allowed: want false got true"),
        "{stdout}"
    );
    // JUnit says the same: one failure, in the right suite.
    let out = authzd(&["test", file.to_str().unwrap(), "--output", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let suites = parse_junit(&text(&out.stdout));
    assert_eq!(suites.len(), 1);
    assert_eq!((suites[0].2, suites[0].4), (1, 1), "{suites:?}");
    // JSON too.
    let out = authzd(&["test", file.to_str().unwrap(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], 1);
    let failed: Vec<&serde_json::Value> = v["files"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("failure").is_some())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["name"], "opsadmin may deploy to prod");
}

#[test]
fn policy_files_find_their_expectations_next_to_them() {
    let out = authzd(&["test", example("console.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("console.expect.yaml: 73 passed, 0 failed"));
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("lonely.yaml");
    std::fs::write(&lonely, "version: 1\n").unwrap();
    let out = authzd(&["test", lonely.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        text(&out.stderr).contains("no expectation file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_invalid_expectation_file_is_exit_65_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example("gateway.yaml"), dir.path().join("gateway.yaml")).unwrap();
    let file = dir.path().join("bad.expect.yaml");
    for (body, line, what) in [
        (
            "policy: gateway.yaml\ncases:\n  - name: ok\n    tenant: acme\n    subject: olga\n    permission: x\n    allowed: false\n    reason: no_grant\n  - name: bad method\n    tenant: acme\n    method: get\n    path: /x\n    allowed: false\n    reason: no_grant\n",
            9,
            "invalid `method`",
        ),
        (
            "policy: gateway.yaml\ncases:\n  - name: typo\n    tenant: acme\n    permision: x\n",
            5,
            "unknown field `permision`",
        ),
        (
            "version: 7\npolicy: gateway.yaml\ncases: []\n",
            1,
            "unsupported `version: 7`",
        ),
    ] {
        std::fs::write(&file, body).unwrap();
        let out = authzd(&["test", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(65), "{body}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("bad.expect.yaml:{line}: ")) && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn load_error_expectations_pass_only_on_that_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cycle.yaml"),
        "version: 1\nroles:\n  - id: a\n    includes: [b]\n  - id: b\n    includes: [a]\n",
    )
    .unwrap();
    let file = dir.path().join("cycle.expect.yaml");
    std::fs::write(
        &file,
        "version: 1\npolicy: cycle.yaml\nload_error: include cycle `a -> b -> a`\n",
    )
    .unwrap();
    let out = authzd(&["test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    std::fs::write(
        &file,
        "version: 1\npolicy: cycle.yaml\nload_error: unknown role\n",
    )
    .unwrap();
    let out = authzd(&["test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("include cycle"));
    // A policy that must load but does not fails every run, saying why.
    std::fs::write(
        &file,
        "policy: cycle.yaml\ncases:\n  - {name: x, tenant: t, permission: p, allowed: false, reason: unknown_tenant}\n",
    )
    .unwrap();
    let out = authzd(&["test", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("the policy does not load"));
}

#[tokio::test]
async fn expectations_run_against_the_database() {
    let db = pg::TestDb::create("policy_test").await;
    let doc = authz::policy::PolicyDocument::read(&example("console.yaml")).unwrap();
    authz::store::sync::apply(&mut db.client().await, &doc, "console.yaml")
        .await
        .unwrap();
    let file = example("console.expect.yaml");
    let url = db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        authzd(&["test", file.to_str().unwrap(), "--database-url", &url])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("policy database (revision"),
        "{}",
        text(&out.stdout)
    );
    // The gateway's expectations do not hold for the console policy.
    let file = example("gateway.expect.yaml");
    let url = db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        authzd(&["test", file.to_str().unwrap(), "--database-url", &url])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    db.drop_db().await;
}
