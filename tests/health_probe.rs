//! `authzd health` against real servers: plaintext and TLS (with and without a client
//! certificate), SERVING and NOT_SERVING, and the one-line reasons it prints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{net::SocketAddr, process::Command, time::Duration};

use authz::{
    cache::Cache,
    server::{self, ServerConfig, ServerError},
    store::file,
    tls::TlsConfig,
};
use common::{example, pki::Pki};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ServerError>>,
}

/// A server on 127.0.0.1:0; `loaded`: with the console policy (SERVING), else with
/// nothing loaded (NOT_SERVING).
async fn start(config: ServerConfig, loaded: bool) -> Running {
    let cache = Cache::new();
    if loaded {
        let (compiled, _) = file::load(&example("console.yaml"), 1).unwrap();
        cache.replace_all(compiled, 1);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server::run(listener, cache, config, async {
        let _ = rx.await;
    }));
    Running { addr, stop, handle }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Runs `authzd health ARGS` off the runtime; returns the exit code and stdout.
async fn health(args: Vec<String>) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
            .arg("health")
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
        (out.status.code(), stdout.trim_end().to_owned())
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn plaintext_serving_and_not_serving() {
    let server = start(ServerConfig::default(), true).await;
    let addr = server.addr.to_string();
    assert_eq!(
        health(args(&["--addr", &addr])).await,
        (Some(0), "SERVING".to_owned())
    );
    assert_eq!(
        health(args(&[
            "--addr",
            &format!("http://{addr}"),
            "--service",
            "authz.v1.AuthorizationService"
        ]))
        .await,
        (Some(0), "SERVING".to_owned())
    );
    let (code, line) = health(args(&["--addr", &addr, "--service", "nope.Service"])).await;
    assert_eq!(code, Some(1));
    assert!(line.contains("`nope.Service` is unknown"), "{line}");
    server.stop().await;

    // Nothing loaded yet: NOT_SERVING.
    let server = start(ServerConfig::default(), false).await;
    let addr = server.addr.to_string();
    let (code, line) = health(args(&[
        "--addr",
        &addr,
        "--service",
        "authz.v1.AuthorizationService",
    ]))
    .await;
    assert_eq!(code, Some(1));
    assert!(line.starts_with("NOT_SERVING"), "{line}");
    server.stop().await;

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, line) = health(args(&["--addr", &addr, "--timeout", "1s"])).await;
    assert_eq!(code, Some(1));
    assert!(line.starts_with("unhealthy: cannot connect"), "{line}");
}

#[tokio::test]
async fn over_tls_with_the_right_ca_only() {
    let pki = Pki::new("authz test CA");
    let (cert, key) = pki.issue("authzd");
    let cert = pki.write("server.pem", &cert);
    let key = pki.write("server-key.pem", &key);
    let ca = pki.write("ca.pem", &pki.ca_pem());
    let tls = TlsConfig::load(&cert, &key, Some(&ca)).unwrap();
    let server = start(
        ServerConfig {
            tls: Some(tls),
            ..ServerConfig::default()
        },
        true,
    )
    .await;
    let addr = server.addr.to_string();
    let ca = ca.to_str().unwrap();

    for extra in [
        &["--tls-server-name", "localhost"][..],
        // Without a name, the address's host (127.0.0.1, in the certificate too).
        &[],
    ] {
        let mut a = args(&["--addr", &addr, "--tls-ca", ca]);
        a.extend(args(extra));
        assert_eq!(
            health(a).await,
            (Some(0), "SERVING".to_owned()),
            "{extra:?}"
        );
    }
    // With a client certificate the server's CA signed.
    let (client_cert, client_key) = pki.issue("probe");
    let client_cert = pki.write("client.pem", &client_cert);
    let client_key = pki.write("client-key.pem", &client_key);
    assert_eq!(
        health(args(&[
            "--addr",
            &addr,
            "--tls-ca",
            ca,
            "--tls-cert",
            client_cert.to_str().unwrap(),
            "--tls-key",
            client_key.to_str().unwrap(),
            "--service",
            "authz.v1.AuthorizationService",
        ]))
        .await,
        (Some(0), "SERVING".to_owned())
    );

    // Another CA, a wrong name, plaintext: refused, with the reason.
    let other = Pki::new("another CA");
    let other_ca = other.write("other-ca.pem", &other.ca_pem());
    let (code, line) = health(args(&[
        "--addr",
        &addr,
        "--tls-ca",
        other_ca.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, Some(1));
    assert!(line.contains("cannot connect"), "{line}");
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    let (code, line) = health(args(&[
        "--addr",
        &addr,
        "--tls-ca",
        ca,
        "--tls-server-name",
        "elsewhere.example",
    ]))
    .await;
    assert_eq!(code, Some(1));
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    let (code, line) = health(args(&["--addr", &addr, "--timeout", "2s"])).await;
    assert_eq!(code, Some(1), "plaintext to a TLS port: {line}");
    // A CA file that is not there: the probe's own configuration (66), not an outage.
    let (code, line) = health(args(&["--addr", &addr, "--tls-ca", "/nonexistent/ca.pem"])).await;
    assert_eq!(code, Some(66));
    assert!(line.contains("/nonexistent/ca.pem"), "{line}");
    server.stop().await;
}
