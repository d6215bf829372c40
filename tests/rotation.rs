//! Rotation without a restart: a tokens file that changes is read again (on the polling
//! interval, or on SIGHUP), a bad new version keeps the old one, and requests see the
//! new credentials.
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

use authz::{
    grpc::auth::{AdminTokens, file_line},
    pb::{self, authorization_service_client::AuthorizationServiceClient},
    server::ServerConfig,
};
use common::*;
use tonic::transport::Channel;

fn permission(tenant: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: tenant.into(),
        subject_id: "uma".into(),
        action: Some(pb::check_request::Action::Permission(
            "workbench.use".into(),
        )),
        ..Default::default()
    }
}

async fn check_with(
    client: &mut AuthorizationServiceClient<Channel>,
    token: &str,
) -> Result<(), tonic::Code> {
    let mut req = tonic::Request::new(permission("acme"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.check(req).await.map(|_| ()).map_err(|s| s.code())
}

/// Retries `f` until it returns true, for up to 10 s.
async fn eventually<F, Fut>(mut f: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10s: {what}");
}

#[tokio::test]
async fn a_changed_tokens_file_is_used_and_a_bad_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("query-tokens");
    std::fs::write(&file, file_line("token-a", "*", Some("a"))).unwrap();
    let tokens = AdminTokens::load(&file).unwrap().unwrap();
    let _watch = authz::reload::watch_tokens(
        file.clone(),
        tokens.clone(),
        Duration::from_millis(50),
        "query tokens",
    );
    let config = ServerConfig {
        query_tokens: Some(tokens),
        ..ServerConfig::default()
    };
    let server = TestServer::start_configured(&example("console.yaml"), config, false).await;
    let mut c = server.client.clone();
    assert_eq!(check_with(&mut c, "token-a").await, Ok(()));
    assert_eq!(
        check_with(&mut c, "token-b").await,
        Err(tonic::Code::Unauthenticated)
    );

    // Rotated: b in, a out.
    std::fs::write(&file, file_line("token-b", "*", Some("b"))).unwrap();
    eventually(
        || {
            let mut c = c.clone();
            async move { check_with(&mut c, "token-b").await.is_ok() }
        },
        "the new token is accepted",
    )
    .await;
    assert_eq!(
        check_with(&mut c, "token-a").await,
        Err(tonic::Code::Unauthenticated)
    );

    // A bad version, then no file at all: b stays.
    std::fs::write(&file, "sha256:not-hex *\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check_with(&mut c, "token-b").await, Ok(()));
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check_with(&mut c, "token-b").await, Ok(()));

    // And a good one again: used.
    std::fs::write(&file, file_line("token-c", "acme", Some("c"))).unwrap();
    eventually(
        || {
            let mut c = c.clone();
            async move { check_with(&mut c, "token-c").await.is_ok() }
        },
        "the token after the bad versions is accepted",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn sighup_rereads_the_tokens_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("query-tokens");
    std::fs::write(&file, file_line("token-a", "*", Some("a"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(example("console.yaml"))
        .arg("--query-tokens-file")
        .arg(&file)
        // No polling: only SIGHUP reads the file again.
        .args(["--reload-interval", "0s"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let wait_for = |message: &str| loop {
        let v = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if v["message"] == message {
            return v;
        }
    };
    let serving = wait_for("serving");
    let addr = serving["addr"].as_str().unwrap().to_owned();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = AuthorizationServiceClient::new(channel);
    assert_eq!(check_with(&mut c, "token-a").await, Ok(()));

    std::fs::write(&file, file_line("token-b", "*", Some("b"))).unwrap();
    // Without polling the file is not read again by itself...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check_with(&mut c, "token-a").await, Ok(()));
    // ...but on SIGHUP.
    let kill = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let reloaded = wait_for("reloaded");
    assert_eq!(reloaded["what"], "query tokens", "{reloaded}");
    assert_eq!(check_with(&mut c, "token-b").await, Ok(()));
    assert_eq!(
        check_with(&mut c, "token-a").await,
        Err(tonic::Code::Unauthenticated)
    );
    let _ = child.kill();
    child.wait().unwrap();
}
