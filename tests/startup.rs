//! Start-up modes and secrets: no command prints the database password (`--help` or
//! logs), a configured admin tokens file that does not exist stops the server unless it
//! is marked optional, and switches set by environment take the usual forms.
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
    time::{Duration, Instant},
};

use common::pg::TestDb;

const PASSWORD: &str = "Pa55-w0rd-never-printed";

fn authzd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_authzd"));
    c.env_remove("AUTHZ_DATABASE_URL")
        .env_remove("AUTHZ_ADMIN_TOKENS_FILE")
        .env_remove("AUTHZ_ADMIN_TOKENS_OPTIONAL")
        .env_remove("AUTHZ_MIGRATE");
    c
}

/// `url` with [`PASSWORD`] as the password of its user.
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    let user = user.split(':').next().unwrap();
    format!("{scheme}://{user}:{PASSWORD}@{host}")
}

/// Runs `authzd --log-format json serve --listen 127.0.0.1:0 ARGS` with `env`, and
/// returns its log lines until one has `message` (then stops it), or with its exit code
/// if it exits first. Bounded by 30 s.
fn serve_until(
    args: &[&str],
    env: &[(&str, &str)],
    message: &str,
) -> (Vec<serde_json::Value>, Option<i32>) {
    let mut child = authzd()
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                assert!(
                    !line.contains(PASSWORD),
                    "a log line holds the password: {line}"
                );
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let found = v["message"] == message;
                lines.push(v);
                if found {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return (lines, None);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                return (lines, status.code());
            }
        }
    }
}

#[test]
fn help_never_shows_the_database_password() {
    let url = format!("postgres://authz:{PASSWORD}@db.internal:5432/authz");
    for args in [
        &["serve", "--help"][..],
        &["migrate", "--help"],
        &["policy", "apply", "--help"],
        &["policy", "export", "--help"],
        &["gen-dataset", "--help"],
    ] {
        let out = authzd()
            .args(args)
            .env("AUTHZ_DATABASE_URL", &url)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("AUTHZ_DATABASE_URL"), "{args:?}: {text}");
        assert!(
            !text.contains(PASSWORD),
            "{args:?} prints the password:\n{text}"
        );
    }
}

#[tokio::test]
async fn logs_never_show_the_database_password() {
    let db = TestDb::create("startup_secret").await;
    // PostgreSQL's trust authentication ignores the password; the logs must not show it.
    let url = with_password(&db.url);
    let (lines, code) = serve_until(&["--database-url", &url], &[], "serving");
    assert_eq!(code, None, "{lines:?}");
    let source = lines
        .iter()
        .find(|l| l["message"] == "policy source: database")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        source["database"].as_str().unwrap().contains(":***@"),
        "{source}"
    );

    // An unreachable database: the retries log their cause, never the password.
    let unreachable = format!("postgres://authz:{PASSWORD}@127.0.0.1:1/authz");
    let (lines, code) = serve_until(
        &["--database-url", &unreachable],
        &[],
        "cannot load from the database yet; not serving until the first load",
    );
    assert_eq!(code, None, "{lines:?}");
    for args in [
        &["migrate", "--database-url", &unreachable][..],
        &["policy", "export", "--database-url", &unreachable],
    ] {
        let out = authzd().args(args).output().unwrap();
        assert_ne!(out.status.code(), Some(0));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(PASSWORD), "{args:?}: {text}");
    }
    db.drop_db().await;
}

#[test]
fn a_configured_admin_tokens_file_that_is_missing_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("admin-tokens");
    let missing = missing.to_str().unwrap();
    let policy = common::example("console.yaml");
    let policy = policy.to_str().unwrap();

    let (lines, code) = serve_until(
        &["--policy", policy, "--admin-tokens-file", missing],
        &[],
        "serving",
    );
    assert_eq!(code, Some(64), "{lines:?}");
    let err = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(err["file"], missing, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("--admin-tokens-optional"),
        "{err}"
    );

    // Marked optional, by flag or by variable (any boolean spelling): a WARN line.
    for (args, env) in [
        (&["--admin-tokens-optional"][..], &[][..]),
        (&[], &[("AUTHZ_ADMIN_TOKENS_OPTIONAL", "yes")]),
        (&[], &[("AUTHZ_ADMIN_TOKENS_OPTIONAL", "1")]),
        (&[], &[("AUTHZ_ADMIN_TOKENS_OPTIONAL", "ON")]),
    ] {
        let mut all = vec!["--policy", policy, "--admin-tokens-file", missing];
        all.extend_from_slice(args);
        let (lines, code) = serve_until(&all, env, "serving");
        assert_eq!(code, None, "{args:?} {env:?}: {lines:?}");
        assert!(
            lines.iter().any(|l| l["level"] == "WARN"
                && l["message"] == "admin API off: the tokens file does not exist"
                && l["file"] == missing),
            "{lines:?}"
        );
    }
    // A negative spelling keeps it required; a value that is no boolean is refused.
    for value in ["off", "no", "false", "0"] {
        let (lines, code) = serve_until(
            &["--policy", policy, "--admin-tokens-file", missing],
            &[("AUTHZ_ADMIN_TOKENS_OPTIONAL", value)],
            "serving",
        );
        assert_eq!(code, Some(64), "{value}: {lines:?}");
    }
    let out = authzd()
        .args(["serve", "--policy", policy])
        .env("AUTHZ_ADMIN_TOKENS_OPTIONAL", "perhaps")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn migrate_switch_takes_the_usual_boolean_forms() {
    for (i, value) in ["1", "true", "yes", "on", "TRUE"].into_iter().enumerate() {
        let db = TestDb::create_bare(&format!("startup_migrate_{i}")).await;
        let (lines, code) = serve_until(
            &["--database-url", &db.url],
            &[("AUTHZ_MIGRATE", value)],
            "serving",
        );
        assert_eq!(code, None, "{value}: {lines:?}");
        assert!(
            lines.iter().any(|l| l["message"] == "schema migrated"),
            "{value}: {lines:?}"
        );
        db.drop_db().await;
    }
}
