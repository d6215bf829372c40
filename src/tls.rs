//! TLS on the gRPC listener (rustls through tonic), and optionally client certificates
//! verified against a CA (mTLS).
//!
//! Files are read and checked when the configuration is loaded, before anything binds;
//! every error names the file. The configuration is a handle whose clones share one
//! current version: [`TlsConfig::replace`] swaps in a new certificate, key and client CA
//! (read again when the files change, [`crate::reload`]), used by every connection
//! accepted from then on; open connections keep the one they were accepted with. The
//! handshake is done by our own accept loop ([`incoming`]) with rustls (ring), so that
//! the configuration can change while serving. Client certificates are optional at the TLS layer: a
//! connection without one is accepted (query clients need none unless the query service
//! requires credentials), but a certificate that does not chain to the CA fails the
//! handshake. Which verified certificates may do what is decided per request, from the
//! tokens files' `cert:<common name>` lines ([`crate::grpc::auth`]).

use std::{path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use futures_util::StreamExt as _;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{debug, warn};

use crate::store::file::AbortOnDrop;

/// One version of the TLS files: PEM text, checked, and the rustls configuration built
/// from it.
struct Loaded {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    rustls: Arc<ServerConfig>,
    /// The same for the AuthZEN HTTP listener: HTTP/1.1 by ALPN.
    http: Arc<ServerConfig>,
}

/// The listener's TLS settings. A cheap handle: clones share the current version.
#[derive(Clone)]
pub struct TlsConfig {
    current: Arc<ArcSwap<Loaded>>,
}

impl std::fmt::Debug for TlsConfig {
    // The private key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("client_ca", &self.verifies_clients())
            .finish_non_exhaustive()
    }
}

/// Why the TLS files were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{file}: {message}")]
    Content {
        /// The file.
        file: String,
        /// What is wrong.
        message: &'static str,
    },
    /// rustls refused the certificate, key or CA (our own handshake configuration).
    #[error("{files}: {message}")]
    Invalid {
        /// The files involved.
        files: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("{files}: {source}")]
    Rejected {
        /// The files involved.
        files: String,
        /// The cause.
        source: tonic::transport::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        file: path.display().to_string(),
        source,
    })
}

fn holds(pem: &[u8], label: &str) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(label))
}

impl TlsConfig {
    /// Reads and checks the server certificate chain, its private key and, for mTLS,
    /// the CA that client certificates must chain to.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let content = |path: &Path, message| TlsError::Content {
            file: path.display().to_string(),
            message,
        };
        let cert_pem = read(cert)?;
        if !holds(&cert_pem, "CERTIFICATE-----") {
            return Err(content(cert, "no PEM certificate"));
        }
        let key_pem = read(key)?;
        if !holds(&key_pem, "PRIVATE KEY-----") {
            return Err(content(key, "no PEM private key"));
        }
        let ca_pem = match client_ca {
            Some(path) => {
                let pem = read(path)?;
                if !holds(&pem, "CERTIFICATE-----") {
                    return Err(content(path, "no PEM certificate"));
                }
                Some(pem)
            }
            None => None,
        };
        // Build the configurations now, so a key that does not match its certificate
        // (or any other refusal) stops the server before it binds.
        let mut files = format!("{}, {}", cert.display(), key.display());
        if let Some(ca) = client_ca {
            files.push_str(&format!(", {}", ca.display()));
        }
        // rustls first: its refusal names the cause (a key that does not match the
        // certificate ...), where tonic's says only "transport error".
        let rustls = rustls_config(&cert_pem, &key_pem, ca_pem.as_deref()).map_err(|message| {
            TlsError::Invalid {
                files: files.clone(),
                message,
            }
        })?;
        tonic::transport::Server::builder()
            .tls_config(tonic_config(&cert_pem, &key_pem, ca_pem.as_deref()))
            .map_err(|source| TlsError::Rejected {
                files: files.clone(),
                source,
            })?;
        let mut http = (*rustls).clone();
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            current: Arc::new(ArcSwap::from_pointee(Loaded {
                cert: cert_pem,
                key: key_pem,
                client_ca: ca_pem,
                rustls,
                http: Arc::new(http),
            })),
        })
    }

    /// Makes every clone use `new`'s certificate, key and client CA for the connections
    /// accepted from now on.
    pub fn replace(&self, new: &TlsConfig) {
        self.current.store(new.current.load_full());
    }

    /// The AuthZEN HTTP listener's rustls configuration for the current version (the
    /// same certificate, key and client CA; ALPN `http/1.1`), so a rotated certificate
    /// applies there too.
    pub fn http_server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.load().http)
    }

    /// Whether client certificates are requested and verified.
    pub fn verifies_clients(&self) -> bool {
        self.current.load().client_ca.is_some()
    }

    /// tonic's server TLS configuration for the current version.
    pub fn server_config(&self) -> ServerTlsConfig {
        let c = self.current.load();
        tonic_config(&c.cert, &c.key, c.client_ca.as_deref())
    }
}

fn tonic_config(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> ServerTlsConfig {
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true);
    }
    config
}

/// The rustls server configuration tonic would build: the certificate chain and key,
/// optional client certificates verified against the CA, HTTP/2 by ALPN.
fn rustls_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots
                    .add(c.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC listener's connections, TLS done with `tls`'s version current at each
/// accept. Handshakes run concurrently, each on its own task, so a slow client delays
/// no other; a failed handshake is logged at debug and dropped. The returned task
/// accepts; dropping it stops accepting.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: TlsConfig,
) -> (
    impl futures_util::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>>,
    AbortOnDrop,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let mut tcp = crate::transport::grpc_incoming(listener);
        while let Some(conn) = tcp.next().await {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    warn!(cause = %e, "cannot accept a connection");
                    continue;
                }
            };
            let acceptor = TlsAcceptor::from(tls.current.load().rustls.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => debug!(cause = %e, "TLS handshake failed"),
                    Err(_) => debug!("TLS handshake timed out"),
                }
            });
        }
    });
    (
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        AbortOnDrop(task),
    )
}
