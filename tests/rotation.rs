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

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<AuthorizationServiceClient<Channel>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(AuthorizationServiceClient::new(channel))
}

#[tokio::test]
async fn a_renewed_certificate_and_client_ca_need_no_restart() {
    use authz::tls::TlsConfig;
    use common::pki::Pki;
    let old = Pki::new("old CA");
    let new = Pki::new("new CA");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key) = old.issue("authzd");
    let cert_file = write("server.pem", &cert);
    let key_file = write("server-key.pem", &key);
    let ca_file = write("client-ca.pem", &old.ca_pem());
    let tls = TlsConfig::load(&cert_file, &key_file, Some(&ca_file)).unwrap();
    let _watch = authz::reload::watch_tls(
        cert_file.clone(),
        key_file.clone(),
        Some(ca_file.clone()),
        tls.clone(),
        Duration::from_millis(50),
    );
    // Query clients are let in by their client certificate's common name.
    let tokens = AdminTokens::parse("cert:app *\n", "query-tokens").unwrap();
    let config = ServerConfig {
        tls: Some(tls),
        query_tokens: Some(tokens),
        ..ServerConfig::default()
    };
    let (compiled, _) = authz::store::file::load(&example("console.yaml"), 1).unwrap();
    let cache = authz::cache::Cache::new();
    cache.replace_all(compiled, 1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(authz::server::run(listener, cache, config, async {
        let _ = stopped.await;
    }));
    let (old_client_cert, old_client_key) = old.issue("app");
    let (new_client_cert, new_client_key) = new.issue("app");
    let old_id = Some((old_client_cert.as_str(), old_client_key.as_str()));
    let new_id = Some((new_client_cert.as_str(), new_client_key.as_str()));
    let ask = |mut c: AuthorizationServiceClient<Channel>| async move {
        c.check(permission("acme"))
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    };
    let mut c = tls_client(addr, &old.ca_pem(), old_id).await.unwrap();
    assert_eq!(ask(c.clone()).await, Ok(()));

    // A bad version (a key that is not the certificate's): the old files stay in use.
    let (_, other_key) = new.issue("authzd");
    std::fs::write(&key_file, &other_key).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ask(tls_client(addr, &old.ca_pem(), old_id).await.unwrap()).await,
        Ok(())
    );

    // Renewed: a certificate from the new CA, and client certificates from the new CA.
    let (cert, key) = new.issue("authzd");
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    std::fs::write(&ca_file, new.ca_pem()).unwrap();
    eventually(
        || async {
            match tls_client(addr, &new.ca_pem(), new_id).await {
                Ok(c) => ask(c).await.is_ok(),
                Err(_) => false,
            }
        },
        "new connections get the renewed certificate and client CA",
    )
    .await;
    // Clients still trusting only the old CA cannot connect any more; a client
    // certificate from the old CA is refused at the handshake.
    assert!(tls_client(addr, &old.ca_pem(), None).await.is_err());
    let refused = match tls_client(addr, &new.ca_pem(), old_id).await {
        Err(_) => true,
        Ok(c) => ask(c).await.is_err(),
    };
    assert!(refused, "a client certificate from the old CA");
    // The connection opened before keeps working.
    assert_eq!(
        c.check(permission("acme"))
            .await
            .map(|_| ())
            .map_err(|s| s.code()),
        Ok(())
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
