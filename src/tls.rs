//! TLS on the gRPC listener (rustls through tonic) and on the AuthZEN HTTP listener
//! (rustls directly, [`TlsConfig::http_server_config`]), with the same certificate and
//! key, and optionally client certificates verified against a CA (mTLS).
//!
//! Files are read and checked when the configuration is loaded, before anything binds;
//! every error names the file. Client certificates are optional at the TLS layer: a
//! connection without one is accepted (query clients need none unless the query service
//! requires credentials), but a certificate that does not chain to the CA fails the
//! handshake. Which verified certificates may do what is decided per request, from the
//! tokens files' `cert:<common name>` lines ([`crate::grpc::auth`]).

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The listeners' TLS settings: PEM text, checked.
#[derive(Clone)]
pub struct TlsConfig {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    /// The HTTP listener's rustls configuration, built once from the same PEM text.
    http: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    // The private key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("client_ca", &self.client_ca.is_some())
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
    /// rustls refused the certificate, key or CA.
    #[error("{files}: {source}")]
    Rejected {
        /// The files involved.
        files: String,
        /// The cause.
        source: tonic::transport::Error,
    },
    /// rustls refused the certificate, key or CA for the HTTP listener.
    #[error("{files}: {source}")]
    RejectedHttp {
        /// The files involved.
        files: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
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
        // Build the rustls configurations now, so a key that does not match its
        // certificate (or any other refusal) stops the server before it binds.
        let mut files = format!("{}, {}", cert.display(), key.display());
        if let Some(ca) = client_ca {
            files.push_str(&format!(", {}", ca.display()));
        }
        let http = http_config(&cert_pem, &key_pem, ca_pem.as_deref()).map_err(|source| {
            TlsError::RejectedHttp {
                files: files.clone(),
                source,
            }
        })?;
        let config = TlsConfig {
            cert: cert_pem,
            key: key_pem,
            client_ca: ca_pem,
            http: Arc::new(http),
        };
        tonic::transport::Server::builder()
            .tls_config(config.server_config())
            .map_err(|source| TlsError::Rejected { files, source })?;
        Ok(config)
    }

    /// The AuthZEN HTTP listener's rustls configuration: the same certificate, key and
    /// client-certificate policy as gRPC, ALPN `http/1.1`.
    pub fn http_server_config(&self) -> Arc<ServerConfig> {
        self.http.clone()
    }

    /// Whether client certificates are requested and verified.
    pub fn verifies_clients(&self) -> bool {
        self.client_ca.is_some()
    }

    /// tonic's server TLS configuration.
    pub fn server_config(&self) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        if let Some(ca) = &self.client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        config
    }
}

/// rustls' server configuration (ring) from PEM text; with a CA, client certificates are
/// requested, optional, and verified against it, as tonic does for gRPC.
fn http_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<ServerConfig, Box<dyn std::error::Error + Send + Sync>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(ca) {
                roots.add(der?)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
