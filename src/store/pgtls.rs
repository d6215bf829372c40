//! TLS to PostgreSQL through rustls (ring), with libpq's `sslmode` semantics, for every
//! connection authzd makes: the follower, the admin pool, `migrate`, `policy apply` and
//! `policy export`, `gen-dataset`.
//!
//! tokio-postgres understands `sslmode=disable|prefer|require` only, and no certificate
//! files. The database URL (or key-value string) is therefore read here first:
//! `sslmode`, `sslrootcert`, `sslcert` and `sslkey` are taken out, the rest goes to
//! tokio-postgres with the TLS mode it knows (`verify-ca` and `verify-full` become
//! `require`), and the certificate checks are done by the rustls verifier built here:
//!
//! | `sslmode` | TLS | server certificate |
//! | --- | --- | --- |
//! | `disable` | never | |
//! | `prefer` (the default, as in libpq) | if the server offers it | not verified |
//! | `require` | always | not verified; verified like `verify-ca` when `sslrootcert` is given (as libpq does) |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host connected to |
//!
//! `sslcert` and `sslkey` present a client certificate (PostgreSQL's `cert`
//! authentication, or `clientcert=verify-full` in `pg_hba.conf`). Unlike libpq there is
//! no default `~/.postgresql/root.crt`: `verify-ca` and `verify-full` need
//! `sslrootcert`. Channel binding (SCRAM-SHA-256-PLUS) is not offered; SCRAM-SHA-256 is.
//! The files are read at every connect, so a renewed CA or client certificate is used
//! from the next connection on.

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::postgres::StoreError;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS if the server offers it, unverified (the default).
    Prefer,
    /// TLS, unverified (or as `VerifyCa` with a root certificate).
    Require,
    /// TLS, the certificate chains to `sslrootcert`.
    VerifyCa,
    /// TLS, the certificate chains to `sslrootcert` and names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` tries plaintext first; nothing here needs it.
            other => {
                return Err(StoreError::Url(format!(
                    "sslmode `{other}` is not supported (disable, prefer, require, verify-ca, verify-full)"
                )));
            }
        })
    }

    fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS parameters taken out of a database URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode` (default `prefer`).
    pub mode: SslMode,
    /// `sslrootcert`: CA certificates (PEM) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: a client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Decodes `%XX` escapes of a URL query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a key-value connection string into `key=value` words (values may be quoted
/// with `'`, with `\` escapes).
fn kv_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.push(c);
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '\'' => {
                quoted = !quoted;
                word.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn unquote(v: &str) -> String {
    let v = v
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(v);
    v.replace("\\'", "'").replace("\\\\", "\\")
}

/// Takes the TLS parameters out of `url` (a `postgres://` URL or a key-value string)
/// and returns tokio-postgres' configuration for the rest, with its `sslmode` set.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, TlsParams), StoreError> {
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if TLS_KEYS.contains(&k) {
                        found.push((k.to_owned(), percent_decode(v)));
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for word in kv_words(url) {
            match word.split_once('=') {
                Some((k, v)) if TLS_KEYS.contains(&k.trim()) => {
                    found.push((k.trim().to_owned(), unquote(v.trim())));
                }
                _ => kept.push(word),
            }
        }
        kept.join(" ")
    };
    let mut params = TlsParams {
        mode: SslMode::Prefer,
        root_cert: None,
        cert: None,
        key: None,
    };
    for (k, v) in found {
        match k.as_str() {
            "sslmode" => params.mode = SslMode::parse(&v)?,
            "sslrootcert" => params.root_cert = Some(PathBuf::from(v)),
            "sslcert" => params.cert = Some(PathBuf::from(v)),
            _ => params.key = Some(PathBuf::from(v)),
        }
    }
    if matches!(params.mode, SslMode::VerifyCa | SslMode::VerifyFull) && params.root_cert.is_none()
    {
        return Err(StoreError::Url(format!(
            "sslmode `{}` needs `sslrootcert=FILE` (the CA to verify the server against)",
            if params.mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            }
        )));
    }
    if params.cert.is_some() != params.key.is_some() {
        return Err(StoreError::Url(
            "`sslcert` and `sslkey` go together".to_owned(),
        ));
    }
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Url(e.to_string()))?;
    config.ssl_mode(params.mode.for_tokio_postgres());
    Ok((config, params))
}

fn tls_error(file: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Tls(format!("{}: {what}", file.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let pem = std::fs::read(path).map_err(|e| tls_error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no PEM certificate"));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl TlsParams {
    /// The connector for these parameters: reads the certificate files now.
    pub fn connector(&self) -> Result<MakeRustls, StoreError> {
        if self.mode == SslMode::Disable {
            return Ok(MakeRustls { config: None });
        }
        let provider = provider();
        let verify = match (&self.root_cert, self.mode) {
            (_, SslMode::Disable) | (None, SslMode::Prefer | SslMode::Require) => None,
            // Fail closed: verification without anything to verify against.
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(StoreError::Url(
                    "sslmode `verify-ca` and `verify-full` need `sslrootcert=FILE`".to_owned(),
                ));
            }
            (Some(_), SslMode::Prefer) => None,
            (Some(path), mode) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| tls_error(path, e))?;
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| tls_error(path, e))?;
                Some((webpki, mode == SslMode::VerifyFull))
            }
        };
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Some((webpki, check_name)) => Arc::new(Verifier {
                webpki: Some(webpki),
                check_name,
                provider: provider.clone(),
            }),
            None => Arc::new(Verifier {
                webpki: None,
                check_name: false,
                provider: provider.clone(),
            }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let pem = std::fs::read(key).map_err(|e| tls_error(key, e))?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| tls_error(key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| tls_error(cert, e))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(MakeRustls {
            config: Some(Arc::new(config)),
        })
    }
}

/// The server certificate check of an `sslmode`: none (`prefer`, `require`), the chain
/// (`verify-ca`), or the chain and the name (`verify-full`). Handshake signatures are
/// always verified.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres' TLS connector over rustls. `None`: `sslmode=disable` (never asked to
/// connect).
#[derive(Clone, Debug)]
pub struct MakeRustls {
    config: Option<Arc<ClientConfig>>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
#[derive(Debug)]
pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some(config) = self.config else {
                return Err(io::Error::other("TLS is disabled (sslmode=disable)"));
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// A TLS connection to PostgreSQL.
#[derive(Debug)]
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// tokio-postgres' configuration and the TLS connector for a database URL. Without an
/// `application_name` in the URL the connections say `authzd`, so `pg_stat_activity`
/// and the pooler's `SHOW CLIENTS` tell them apart from other clients.
pub fn connect_config(url: &str) -> Result<(tokio_postgres::Config, MakeRustls), StoreError> {
    let (mut config, params) = parse(url)?;
    if config.get_application_name().is_none() {
        config.application_name("authzd");
    }
    Ok((config, params.connector()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_named_authzd_unless_the_url_names_them() {
        let (config, _) = connect_config("postgres://authz@db/authz?sslmode=disable").unwrap();
        assert_eq!(config.get_application_name(), Some("authzd"));
        let (config, _) =
            connect_config("postgres://authz@db/authz?sslmode=disable&application_name=x").unwrap();
        assert_eq!(config.get_application_name(), Some("x"));
    }

    #[test]
    fn tls_parameters_are_taken_out_of_urls_and_key_value_strings() {
        let (config, p) = parse(
            "postgres://authz@db:5432/authz?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );

        let (config, p) = parse(
            "host=db user=authz sslmode=verify-ca sslrootcert='/etc/my ca.pem' sslcert=/c.pem sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(p.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(p.key, Some(PathBuf::from("/k.pem")));
        assert_eq!(config.get_user(), Some("authz"));

        let (config, p) = parse("postgres://authz@db/authz").unwrap();
        assert_eq!(p.mode, SslMode::Prefer, "libpq's default");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let (config, _) = parse("postgres://authz@db/authz?sslmode=disable").unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );

        for bad in [
            "postgres://db/authz?sslmode=verify-full",
            "postgres://db/authz?sslmode=allow",
            "postgres://db/authz?sslmode=require&sslcert=/c.pem",
            "host=db sslmode=verify-ca",
        ] {
            assert!(matches!(parse(bad), Err(StoreError::Url(_))), "{bad}");
        }
    }
}
