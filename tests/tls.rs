//! TLS on the gRPC listener, with certificates generated at test time.
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
    cache::Cache,
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
        e.contains("other-key.pem"),
        "a key that is not the certificate's: {e}"
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
    use authz::grpc::auth::AdminTokens;
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
