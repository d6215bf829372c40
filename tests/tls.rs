//! TLS on the gRPC listener and on the AuthZEN HTTP listener, with certificates
//! generated at test time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{net::SocketAddr, time::Duration};

use authz::{
    authzen::{self, AuthzenConfig},
    cache::Cache,
    grpc::{AuthzService, ServiceConfig, auth::AdminTokens},
    pb::{self, authorization_service_client::AuthorizationServiceClient},
    server::{self, ServerConfig, ServerError},
    store::file,
    tls::TlsConfig,
};
use common::example;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA and PEM files written for the server.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate and key signed by this CA: for `localhost` and 127.0.0.1, with
    /// `cn` as the subject's common name.
    fn issue(&self, cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The server's TLS configuration, read from files as `authzd serve` reads them.
    fn server_tls(&self, client_ca: bool) -> TlsConfig {
        let (cert, key) = self.issue("authzd");
        let cert = self.write("server.pem", &cert);
        let key = self.write("server-key.pem", &key);
        let ca = client_ca.then(|| self.write("ca.pem", &self.ca_pem()));
        TlsConfig::load(&cert, &key, ca.as_deref()).unwrap()
    }
}

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ServerError>>,
}

async fn start(config: ServerConfig) -> Running {
    let (compiled, _) = file::load(&example("console.yaml"), 1).unwrap();
    let cache = Cache::new();
    cache.replace_all(compiled, 1);
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

async fn tls_channel(
    addr: SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn uma_uses_workbench() -> pb::CheckRequest {
    pb::CheckRequest {
        tenant_id: "acme".into(),
        subject_id: "uma".into(),
        scope: String::new(),
        action: Some(pb::check_request::Action::Permission(
            "workbench.use".into(),
        )),
        min_revision: 0,
    }
}

#[tokio::test]
async fn tls_clients_get_answers_and_plaintext_clients_fail() {
    let pki = Pki::new("test CA");
    let server = start(ServerConfig {
        tls: Some(pki.server_tls(false)),
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::default()
    })
    .await;

    let channel = tls_channel(server.addr, &pki.ca_pem(), None).await.unwrap();
    let answer = AuthorizationServiceClient::new(channel.clone())
        .check(uma_uses_workbench())
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed);
    // Health answers over TLS too.
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A plaintext client gets no answer.
    let plaintext = async {
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        AuthorizationServiceClient::new(channel)
            .check(uma_uses_workbench())
            .await
            .map_err(|e| e.to_string())
    };
    let got = tokio::time::timeout(Duration::from_secs(10), plaintext)
        .await
        .expect("the plaintext attempt ends");
    assert!(got.is_err(), "a plaintext client was answered: {got:?}");

    // A client that does not trust the server's CA fails the handshake.
    let other = Pki::new("other CA");
    let untrusted = async {
        let channel = tls_channel(server.addr, &other.ca_pem(), None)
            .await
            .map_err(|e| e.to_string())?;
        AuthorizationServiceClient::new(channel)
            .check(uma_uses_workbench())
            .await
            .map_err(|e| e.to_string())
    };
    assert!(untrusted.await.is_err());
    server.stop().await;
}

#[test]
fn bad_tls_files_are_named() {
    let pki = Pki::new("test CA");
    let (cert, key) = pki.issue("authzd");
    let cert_path = pki.write("cert.pem", &cert);
    let key_path = pki.write("key.pem", &key);
    let missing = pki.dir.path().join("missing.pem");
    let (_, other_key) = pki.issue("other");
    let other_key = pki.write("other-key.pem", &other_key);

    let err = |cert: &std::path::Path, key: &std::path::Path| {
        TlsConfig::load(cert, key, None).unwrap_err().to_string()
    };
    let e = err(&missing, &key_path);
    assert!(e.contains("missing.pem"), "{e}");
    let e = err(&key_path, &key_path);
    assert!(
        e.contains("key.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = err(&cert_path, &cert_path);
    assert!(
        e.contains("cert.pem") && e.contains("no PEM private key"),
        "{e}"
    );
    let e = err(&cert_path, &other_key);
    assert!(
        e.contains("other-key.pem") && e.contains("KeyMismatch"),
        "a key that is not the certificate's, named as such: {e}"
    );
    let e = TlsConfig::load(&cert_path, &key_path, Some(&key_path))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    assert!(TlsConfig::load(&cert_path, &key_path, None).is_ok());
}

mod admin {
    use authz::{
        grpc::{PolicyAdmin, auth::AdminTokens},
        pb::policy_admin_service_client::PolicyAdminServiceClient,
        store::{admin::AdminStore, postgres},
    };
    use common::pg::TestDb;
    use tonic::Code;

    use super::*;

    async fn list_roles(channel: Channel, tenant: &str) -> Result<(), tonic::Status> {
        PolicyAdminServiceClient::new(channel)
            .list_roles(pb::ListRolesRequest {
                tenant_id: tenant.into(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn client_certificates_authenticate_admin_callers() {
        let db = TestDb::create("tls_admin").await;
        db.client()
            .await
            .batch_execute("INSERT INTO tenants VALUES ('acme'), ('globex');")
            .await
            .unwrap();
        let tokens =
            AdminTokens::parse("cert:ops *\ncert:acme-client acme acme-ops\n", "tokens").unwrap();
        let admin = PolicyAdmin::new(AdminStore::new(postgres::pool(&db.url, 4).unwrap()), tokens);
        let pki = Pki::new("test CA");
        let server = start(ServerConfig {
            tls: Some(pki.server_tls(true)),
            admin: Some(admin),
            shutdown_grace: Duration::from_secs(5),
            ..ServerConfig::default()
        })
        .await;
        let ca = pki.ca_pem();
        let client = |cn: &str| pki.issue(cn);

        // A listed certificate: allowed, on every tenant for `*`.
        let (cert, key) = client("ops");
        let ops = tls_channel(server.addr, &ca, Some((&cert, &key)))
            .await
            .unwrap();
        list_roles(ops.clone(), "acme").await.unwrap();
        list_roles(ops, "globex").await.unwrap();

        // Tenant-limited: its tenant, not another.
        let (cert, key) = client("acme-client");
        let acme = tls_channel(server.addr, &ca, Some((&cert, &key)))
            .await
            .unwrap();
        list_roles(acme.clone(), "acme").await.unwrap();
        let e = list_roles(acme, "globex").await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        // Verified, but its common name is not listed.
        let (cert, key) = client("stranger");
        let stranger = tls_channel(server.addr, &ca, Some((&cert, &key)))
            .await
            .unwrap();
        let e = list_roles(stranger, "acme").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("stranger"), "{e:?}");

        // No certificate: the query service answers, the admin API refuses.
        let anonymous = tls_channel(server.addr, &ca, None).await.unwrap();
        assert!(
            AuthorizationServiceClient::new(anonymous.clone())
                .check(uma_uses_workbench())
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
        let e = list_roles(anonymous, "acme").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

        // A certificate from another CA, even with a listed name, fails the handshake.
        let other = Pki::new("other CA");
        let (cert, key) = other.issue("ops");
        let forged = async {
            let channel = tls_channel(server.addr, &ca, Some((&cert, &key)))
                .await
                .map_err(|e| e.to_string())?;
            list_roles(channel, "acme").await.map_err(|e| e.to_string())
        };
        let got = tokio::time::timeout(Duration::from_secs(10), forged)
            .await
            .expect("the handshake ends");
        let e = got.unwrap_err();
        assert!(
            !e.contains("Unauthenticated") && !e.contains("PermissionDenied"),
            "refused by TLS, not by the admin service: {e}"
        );

        server.stop().await;
        db.drop_db().await;
    }
}

#[tokio::test]
async fn query_service_takes_listed_client_certificates() {
    use tonic::Code;

    let pki = Pki::new("test CA");
    let server = start(ServerConfig {
        tls: Some(pki.server_tls(true)),
        query_tokens: Some(AdminTokens::parse("cert:acme-app acme\n", "query-tokens").unwrap()),
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::default()
    })
    .await;
    let ca = pki.ca_pem();
    let (cert, key) = pki.issue("acme-app");
    let app = tls_channel(server.addr, &ca, Some((&cert, &key)))
        .await
        .unwrap();
    let mut c = AuthorizationServiceClient::new(app);
    assert!(
        c.check(uma_uses_workbench())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let mut other_tenant = uma_uses_workbench();
    other_tenant.tenant_id = "globex".into();
    let e = c.check(other_tenant).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let anonymous = tls_channel(server.addr, &ca, None).await.unwrap();
    let e = AuthorizationServiceClient::new(anonymous)
        .check(uma_uses_workbench())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    server.stop().await;
}

/// `authzd serve` with `extra`: its exit code and stderr, or `None` if it still runs
/// after 20 s (then killed).
fn serve_exit(extra: &[&str]) -> (Option<i32>, String) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--policy"])
        .arg(example("console.yaml"))
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (code, stderr)
}

#[test]
fn serve_refuses_bad_tls_and_query_token_files_before_binding() {
    let pki = Pki::new("test CA");
    let (cert, key) = pki.issue("authzd");
    let cert = pki.write("cert.pem", &cert);
    let key = pki.write("key.pem", &key);
    let missing = pki.dir.path().join("missing-cert.pem");

    let (code, stderr) = serve_exit(&[
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("missing-cert.pem"), "{stderr}");

    // Only one of the pair: a usage error from the command line.
    let (code, stderr) = serve_exit(&["--tls-cert", cert.to_str().unwrap()]);
    assert!(code.is_some_and(|c| c != 0), "{stderr}");

    // A missing query tokens file fails closed.
    let (code, stderr) = serve_exit(&[
        "--query-tokens-file",
        pki.dir.path().join("no-tokens").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("no-tokens"), "{stderr}");
}

/// An AuthZEN HTTPS listener over the console example; stops when the sender is dropped.
async fn start_authzen(
    tls: TlsConfig,
    tokens: Option<AdminTokens>,
) -> (SocketAddr, oneshot::Sender<()>) {
    let (compiled, _) = file::load(&example("console.yaml"), 1).unwrap();
    let cache = Cache::new();
    cache.replace_all(compiled, 1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = AuthzService::new(cache, ServiceConfig::default()).with_tokens(tokens);
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        authzen::serve_tls(listener, service, AuthzenConfig::default(), &tls, async {
            let _ = rx.await;
        })
        .await
    });
    (addr, stop)
}

/// A rustls client trusting `ca`, presenting `identity` when given.
fn https_client(ca: &str, identity: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// uma may use the workbench in acme, asked over AuthZEN.
const UMA_EVALUATION: &str = r#"{"subject": {"type": "user", "id": "uma"}, "action": {"name": "workbench.use"}, "resource": {"type": "tenant", "id": "acme"}}"#;

fn evaluation_request(addr: SocketAddr, headers: &str) -> String {
    format!(
        "POST /tenants/acme/access/v1/evaluation HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{UMA_EVALUATION}",
        UMA_EVALUATION.len()
    )
}

/// One HTTP/1.1 exchange over TLS: the response's status line and body, or the error.
async fn https_evaluation(
    addr: SocketAddr,
    client: &tokio_rustls::TlsConnector,
) -> Result<(String, String), String> {
    https_evaluation_with(addr, client, "").await
}

/// [`https_evaluation`] with extra header lines (each ending in CRLF).
async fn https_evaluation_with(
    addr: SocketAddr,
    client: &tokio_rustls::TlsConnector,
    headers: &str,
) -> Result<(String, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = client
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(evaluation_request(addr, headers).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        Ok((head.lines().next().unwrap().to_owned(), body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the exchange ends")
}

#[tokio::test]
async fn authzen_serves_https_and_refuses_plaintext_and_untrusted_clients() {
    let pki = Pki::new("test CA");
    let (addr, _stop) = start_authzen(pki.server_tls(false), None).await;

    let (status, body) = https_evaluation(addr, &https_client(&pki.ca_pem(), None))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"decision": true})
    );

    // A plaintext request to the TLS port gets no HTTP answer.
    let plaintext = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(evaluation_request(addr, "").as_bytes())
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = tcp.read_to_end(&mut response).await;
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), plaintext)
        .await
        .expect("the plaintext attempt ends");
    assert!(
        !response.starts_with(b"HTTP/"),
        "a plaintext request was answered: {}",
        String::from_utf8_lossy(&response)
    );

    // A client that does not trust the server's CA fails the handshake.
    let other = Pki::new("other CA");
    let untrusted = https_evaluation(addr, &https_client(&other.ca_pem(), None)).await;
    let err = untrusted.unwrap_err();
    assert!(err.starts_with("handshake:"), "{err}");
}

#[tokio::test]
async fn authzen_https_with_client_ca_takes_clients_with_and_without_certificates() {
    let pki = Pki::new("test CA");
    let (addr, _stop) = start_authzen(pki.server_tls(true), None).await;

    // Client certificates are optional, as on gRPC.
    let (status, _) = https_evaluation(addr, &https_client(&pki.ca_pem(), None))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (cert, key) = pki.issue("ops-client");
    let (status, body) = https_evaluation(addr, &https_client(&pki.ca_pem(), Some((&cert, &key))))
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", r#"{"decision":true}"#)
    );

    // A certificate from another CA fails the handshake (TLS 1.3 reports it on the
    // first read).
    let other = Pki::new("other CA");
    let (cert, key) = other.issue("ops-client");
    let refused = https_evaluation(addr, &https_client(&pki.ca_pem(), Some((&cert, &key)))).await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn authzen_https_takes_listed_client_certificates_and_bearer_tokens() {
    let pki = Pki::new("test CA");
    let token = "t0ken-for-the-portal";
    let tokens = AdminTokens::parse(
        &format!(
            "cert:ops-client acme\n{}\n",
            authz::grpc::auth::file_line(token, "*", Some("portal"))
        ),
        "tokens",
    )
    .unwrap();
    let (addr, _stop) = start_authzen(pki.server_tls(true), Some(tokens)).await;
    let ok = (
        "HTTP/1.1 200 OK".to_owned(),
        r#"{"decision":true}"#.to_owned(),
    );

    // A listed certificate without a token is let in, as on gRPC.
    let (cert, key) = pki.issue("ops-client");
    let listed = https_client(&pki.ca_pem(), Some((&cert, &key)));
    assert_eq!(https_evaluation(addr, &listed).await.unwrap(), ok);
    // A token is judged by itself, whatever the certificate.
    let bad_token = https_evaluation_with(addr, &listed, "Authorization: Bearer nope\r\n")
        .await
        .unwrap();
    assert_eq!(bad_token.0, "HTTP/1.1 401 Unauthorized");
    // A verified certificate that is not listed: 401.
    let (cert, key) = pki.issue("stranger");
    let unlisted = https_client(&pki.ca_pem(), Some((&cert, &key)));
    let (status, body) = https_evaluation(addr, &unlisted).await.unwrap();
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    assert!(body.contains("`stranger`"), "{body}");
    // No certificate, no token: 401; a bearer token: 200.
    let anonymous = https_client(&pki.ca_pem(), None);
    assert_eq!(
        https_evaluation(addr, &anonymous).await.unwrap().0,
        "HTTP/1.1 401 Unauthorized"
    );
    let header = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(
        https_evaluation_with(addr, &anonymous, &header)
            .await
            .unwrap(),
        ok
    );
}
