//! Each seed's example policy, held to its expectations file through the library, the
//! gRPC server and the CLI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use authz::store::file;
use common::*;

const SEEDS: [&str; 3] = ["console", "chat-api", "gateway"];

fn library(seed: &str) {
    let e = expectations(&format!("{seed}.expect.yaml"));
    let (policy, _) = file::load(&example(e.policy.as_deref().unwrap()), 1).unwrap();
    let mut failures = Vec::new();
    for case in &e.cases {
        let got = case.explain(&policy).unwrap();
        if let Some(m) = case.mismatch(&Observed::from(&got)) {
            failures.push(m);
        }
    }
    assert_all(seed, failures, e.cases.len());
}

async fn grpc(seed: &str) {
    let e = expectations(&format!("{seed}.expect.yaml"));
    let server = TestServer::start(&example(e.policy.as_deref().unwrap())).await;
    let mut client = server.client.clone();
    let mut failures = Vec::new();
    for case in &e.cases {
        let resp = client.check(case.to_pb()).await.unwrap().into_inner();
        assert_eq!(resp.revision, 1, "every answer carries its revision");
        if let Some(m) = case.mismatch(&Observed::from_pb(&resp)) {
            failures.push(m);
        }
    }
    assert_all(seed, failures, e.cases.len());
    server.stop().await;
}

fn cli(seed: &str) {
    let e = expectations(&format!("{seed}.expect.yaml"));
    let policy = example(e.policy.as_deref().unwrap());
    let mut failures = Vec::new();
    for case in &e.cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
            .arg("check")
            .arg("--policy")
            .arg(&policy)
            .args(case.cli_args())
            .args(["--output", "json"])
            .output()
            .unwrap();
        let code = out.status.code().unwrap();
        assert_eq!(
            code,
            if case.allowed { 0 } else { 3 },
            "case `{}`: exit code; stderr: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(m) = case.mismatch(&Observed::from_json(&v)) {
            failures.push(m);
        }
    }
    assert_all(seed, failures, e.cases.len());
}

#[test]
fn console_library() {
    library(SEEDS[0]);
}
#[test]
fn chat_api_library() {
    library(SEEDS[1]);
}
#[test]
fn gateway_library() {
    library(SEEDS[2]);
}

#[tokio::test]
async fn console_grpc() {
    grpc(SEEDS[0]).await;
}
#[tokio::test]
async fn chat_api_grpc() {
    grpc(SEEDS[1]).await;
}
#[tokio::test]
async fn gateway_grpc() {
    grpc(SEEDS[2]).await;
}

#[test]
fn console_cli() {
    cli(SEEDS[0]);
}
#[test]
fn chat_api_cli() {
    cli(SEEDS[1]);
}
#[test]
fn gateway_cli() {
    cli(SEEDS[2]);
}

/// The same case answered three ways says exactly the same words.
#[tokio::test]
async fn library_grpc_and_cli_explain_identically() {
    let e = expectations("gateway.expect.yaml");
    let server = TestServer::start(&example(e.policy.as_deref().unwrap())).await;
    let mut client = server.client.clone();
    for case in e.cases.iter().take(10) {
        let via_grpc = Observed::from_pb(&client.check(case.to_pb()).await.unwrap().into_inner());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
            .arg("check")
            .arg("--policy")
            .arg(example(e.policy.as_deref().unwrap()))
            .args(case.cli_args())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            via_grpc.explanation,
            "case `{}`",
            case.name
        );
    }
    server.stop().await;
}
