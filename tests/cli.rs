//! The `authzd` command line: validate, check and list, their messages and exit codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::process::{Command, Output};

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

#[test]
fn validate_reports_every_problem_with_file_tenant_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nroles:\n  - id: a\n    includes: [b]\n  - id: b\n    includes: [a]\ntenants: []\n",
    )
    .unwrap();
    let out = authzd(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml: role `a`: include cycle `a -> b -> a`"),
        "{err}"
    );

    std::fs::write(
        &bad,
        "version: 1\ntenants:\n  - id: acme\n    roles:\n      - id: r\n        routes: [{methods: [], path: /x/**/y}]\n    assignments:\n      - {subject: ghost, role: r}\n",
    )
    .unwrap();
    let out = authzd(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tenant `acme`, role `r`, rule 1")
                && l.contains("`**` before its last segment")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.contains("tenant `acme`, role `r`, rule 1") && l.contains("empty `methods`")), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tenant `acme`, assignment 1")
                && l.contains("subject `ghost` is not registered")),
        "{err}"
    );

    std::fs::write(
        &bad,
        "version: 1\ntenants:\n  - id: acme\n    subjets: []\n",
    )
    .unwrap();
    let out = authzd(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:4:") && err.contains("unknown field `subjets`"),
        "syntax errors carry line and column: {err}"
    );

    let out = authzd(&[
        "validate",
        dir.path().join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(66));
    assert!(text(&out.stderr).contains("missing.yaml"));
}

#[test]
fn validate_accepts_the_examples() {
    for p in ["console.yaml", "chat-api.yaml", "gateway.yaml"] {
        let out = authzd(&["validate", example(p).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{p}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn check_exit_codes_and_bad_values() {
    let policy = example("chat-api.yaml");
    let p = policy.to_str().unwrap();
    let out = authzd(&[
        "check",
        "--policy",
        p,
        "--tenant",
        "acme",
        "--subject",
        "mia",
        "--method",
        "GET",
        "--path",
        "/chats/",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout)
            .starts_with("allowed, because role `alan-user`, a default role of the tenant")
    );
    let out = authzd(&[
        "check",
        "--policy",
        p,
        "--tenant",
        "acme",
        "--subject",
        "mia",
        "--method",
        "POST",
        "--path",
        "/experts/",
    ]);
    assert_eq!(out.status.code(), Some(3), "a deny is not an error");
    for (args, field) in [
        (vec!["--method", "get", "--path", "/x"], "--method"),
        (vec!["--method", "GET", "--path", "x"], "--path"),
        (vec!["--permission", "a b"], "--permission"),
        (vec!["--scope", "/ws", "--permission", "p"], "--scope"),
    ] {
        let mut a = vec![
            "check",
            "--policy",
            p,
            "--tenant",
            "acme",
            "--subject",
            "mia",
        ];
        a.extend(args);
        let out = authzd(&a);
        assert_eq!(out.status.code(), Some(64), "{a:?}");
        assert!(
            text(&out.stderr).contains(&format!("`{field}`")),
            "{a:?}: {}",
            text(&out.stderr)
        );
    }
    let out = authzd(&["check", "--policy", p, "--tenant", "acme"]);
    assert_eq!(out.status.code(), Some(64), "clap usage errors exit 64");
    let out = authzd(&["serve", "--policy", p, "--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn list_prints_roles_and_survives_a_closed_pipe() {
    let policy = example("console.yaml");
    let out = authzd(&[
        "list",
        "--policy",
        policy.to_str().unwrap(),
        "--tenant",
        "acme",
        "--subject",
        "wendy",
        "--scope",
        "workspaces/ws-1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(
        s.contains("role workspace_admin: direct at `workspaces/ws-1`"),
        "{s}"
    );
    assert!(s.contains("workspace.members.manage"), "{s}");
    // `| head -1`: the reader goes away early; authzd must not panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args([
            "list",
            "--policy",
            policy.to_str().unwrap(),
            "--tenant",
            "acme",
            "--subject",
            "ada",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn validate_refuses_deep_and_large_documents_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    // 100,000 levels in 200 KB: refused by the byte scan, naming file, line and column
    // (the YAML parser took 47 s on this). No timing is asserted: a quadratic parse
    // would only make this test slow, not wrong; scaling.rs counts the work.
    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "version: 1\nroles:\n  - id: r\n    permissions:\n      {}x\n",
            "- ".repeat(100_000)
        ),
    )
    .unwrap();
    let out = authzd(&["validate", deep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    let err = text(&out.stderr);
    assert!(err.contains("deep.yaml:5:127: "), "{err}");
    assert!(err.contains("nested deeper than 64 levels"), "{err}");
    let deep_json = dir.path().join("deep.json");
    std::fs::write(
        &deep_json,
        format!(
            "{{\"version\": 1, \"roles\": {}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        ),
    )
    .unwrap();
    let out = authzd(&["validate", deep_json.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        text(&out.stderr).contains("deep.json:1:"),
        "{}",
        text(&out.stderr)
    );

    // Larger than --max-policy-bytes: refused before it is read.
    let policy = example("console.yaml");
    let out = authzd(&[
        "validate",
        "--max-policy-bytes",
        "100",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65));
    let err = text(&out.stderr);
    assert!(
        err.contains("is more than the limit max_policy_bytes = 100"),
        "{err}"
    );
    let out = authzd(&["validate", policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Runs `authzd` with stdout or stderr a pipe whose reader is already gone (`| head`
/// after it stopped reading): every write to it fails with EPIPE.
fn authzd_with_closed(args: &[&str], stdout: bool) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authzd"));
    cmd.args(args);
    if stdout {
        cmd.stdout(writer).stderr(std::process::Stdio::piped());
    } else {
        cmd.stderr(writer).stdout(std::process::Stdio::piped());
    }
    cmd.output().unwrap()
}

#[test]
fn a_closed_stdout_or_stderr_is_no_panic_and_a_failed_write_is_exit_74() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = example("gateway.yaml");
    let old = gateway.to_str().unwrap();
    let yaml = std::fs::read_to_string(&gateway).unwrap();
    let removed = "      - subject: olga\n        role: orgadmin\n";
    assert!(yaml.contains(removed));
    let new_path = dir.path().join("new.yaml");
    std::fs::write(&new_path, yaml.replacen(removed, "", 1)).unwrap();
    let new = new_path.to_str().unwrap();
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().unwrap();
    let policies = repo().join("examples/policies");
    let policies = policies.to_str().unwrap();
    let console = example("console.yaml");
    let deny = [
        "check",
        "--policy",
        console.to_str().unwrap(),
        "--tenant",
        "acme",
        "--subject",
        "nobody",
        "--permission",
        "api_keys.manage",
    ];

    // `| head -1` cut the reader off: the command's own exit code, no panic.
    for (args, code) in [
        (vec!["diff", old, new], 0),
        (vec!["diff", old, new, "--exit-code"], 1),
        (vec!["diff", old, new, "--output", "json"], 0),
        (vec!["test", policies], 0),
        (deny.to_vec(), 3),
    ] {
        let out = authzd_with_closed(&args, true);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text_of(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", text_of(&out));
    }

    // stderr gone (`2>&-` into a pipe, or its reader stopped): the error's exit code.
    for (args, code) in [
        (vec!["diff", old, missing], 66),
        (vec!["test", missing], 65),
        (vec!["validate", missing], 66),
        (vec!["diff", old, "now"], 64),
    ] {
        let open = authzd(&args);
        assert_eq!(
            open.status.code(),
            Some(code),
            "{args:?}: {}",
            text_of(&open)
        );
        assert!(!open.stderr.is_empty(), "{args:?}: an error is printed");
        let out = authzd_with_closed(&args, false);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
    }

    // A write that fails for another reason (a full disk) is reported: exit 74.
    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
            .args(["diff", old, new])
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(74), "{}", text_of(&out));
        assert!(
            text(&out.stderr).contains("error: cannot write the output"),
            "{}",
            text(&out.stderr)
        );
    }
}

fn text_of(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// YAML aliases cannot make a small file stand for a huge document: `validate`, `diff`
/// and `test` hold the document with its aliases expanded to `--max-policy-bytes` and to
/// 16 times the file's size plus 1 MiB, refusing it (65) with the bound in the message,
/// in bounded time and memory; a list shared through an anchor still works.
#[test]
fn alias_expansion_is_bounded_everywhere_a_document_is_read() {
    let dir = tempfile::tempdir().unwrap();
    // 100 kB anchored once and repeated 20 times: about 2 MB expanded.
    let big = "A".repeat(100_000);
    let aliases: String = (0..20)
        .map(|i| format!("  - id: r{i}\n    description: *d\n"))
        .collect();
    let two_mb = dir.path().join("two-mb.yaml");
    std::fs::write(
        &two_mb,
        format!("version: 1\nroles:\n  - id: a\n    description: &d {big}\n{aliases}"),
    )
    .unwrap();
    let path = two_mb.to_str().unwrap();
    let out = authzd(&["validate", "--max-policy-bytes", "1000000", path]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("with its aliases expanded the document is more than 1000000 bytes"),
        "{}",
        text(&out.stderr)
    );
    // Within the flag's limit and 16x its size plus 1 MiB, it is fine.
    let out = authzd(&["validate", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = authzd(&["diff", path, path, "--max-policy-bytes", "1000000"]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));

    // 10 kB repeated 300 times: 3 MB from a 13 kB file, more than 16x + 1 MiB.
    let small = "B".repeat(10_000);
    let aliases: String = (0..300)
        .map(|i| format!("  - id: r{i}\n    description: *d\n"))
        .collect();
    let bomb = dir.path().join("bomb.yaml");
    std::fs::write(
        &bomb,
        format!("version: 1\nroles:\n  - id: a\n    description: &d {small}\n{aliases}"),
    )
    .unwrap();
    let out = authzd(&["validate", bomb.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("16 times its own size"),
        "{}",
        text(&out.stderr)
    );

    // An expectation file is held to the same bounds.
    let cases: String = (0..300)
        .map(|_| "  - name: *n\n    subject: a\n    permission: x\n    allowed: false\n".to_owned())
        .collect();
    let expect = dir.path().join("p.expect.yaml");
    std::fs::write(
        &expect,
        format!(
            "version: 1\npolicy: {}\ncases:\n  - name: &n {small}\n    subject: a\n    permission: x\n    allowed: false\n{cases}",
            common_policy(dir.path())
        ),
    )
    .unwrap();
    let out = authzd(&["test", expect.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stdout));

    // A routes list shared through an anchor.
    let shared = dir.path().join("shared.yaml");
    std::fs::write(
        &shared,
        "version: 1\nroles:\n  - id: a\n    routes: &r\n      - methods: [GET]\n        path: /x\n  - id: b\n    routes: *r\n",
    )
    .unwrap();
    let out = authzd(&["validate", shared.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A small policy file for expectation files to name.
fn common_policy(dir: &std::path::Path) -> String {
    let p = dir.join("p.yaml");
    std::fs::write(
        &p,
        "version: 1\ntenants:\n  - id: t\n    roles:\n      - id: r\n        permissions: [x]\n    subjects:\n      - id: a\n",
    )
    .unwrap();
    p.display().to_string()
}
