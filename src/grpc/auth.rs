//! Caller authentication: bearer tokens, stored as SHA-256 hashes, and verified TLS
//! client certificates, named by their subject's common name.
//!
//! The tokens file has one credential a line, `sha256:<64 hex digits> [TENANTS] [NAME]`
//! for a token or `cert:<common name> [TENANTS] [NAME]` for a client certificate (mTLS,
//! verified by the TLS layer against `--tls-client-ca`; the name then defaults to
//! `cert:<common name>`): TENANTS is `*` (every tenant, the default) or a comma-separated list of tenant ids;
//! NAME (default: the hash's first 12 hex digits) is what the audit log and the logs
//! record. Blank lines and lines starting with `#` are skipped. Several lines allow
//! rotation: add the new token, move callers over, remove the old one.
//!
//! The presented token is hashed and compared with every stored hash in constant time,
//! without stopping at a match, so neither the token nor which line matched leaks through
//! timing. The secret is never logged: refusals log the token's name, or for an unknown
//! token the first 12 hex digits of its hash.

use std::{fmt::Write as _, path::Path, sync::Arc};

use arc_swap::ArcSwap;

use sha2::{Digest, Sha256};
use tonic::{Request, Status, service::Interceptor};
use tracing::warn;

/// Which tenants a token may manage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantLimit {
    /// Every tenant, and whole-policy operations.
    All,
    /// Only these tenants.
    Only(Vec<String>),
}

/// An authenticated admin caller, put in the request's extensions by [`AdminAuth`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    /// The token's name, recorded as the audit log's actor.
    pub name: String,
    /// What it may manage.
    pub tenants: TenantLimit,
}

impl Admin {
    /// Whether the caller may manage `tenant`.
    pub fn may(&self, tenant: &str) -> bool {
        match &self.tenants {
            TenantLimit::All => true,
            TenantLimit::Only(list) => list.iter().any(|t| t == tenant),
        }
    }

    /// Whether the caller may manage every tenant.
    pub fn is_unlimited(&self) -> bool {
        self.tenants == TenantLimit::All
    }
}

/// A stored token.
#[derive(Clone, Debug)]
struct Token {
    hash: [u8; 32],
    admin: Admin,
}

/// A client certificate's common name that is let in.
#[derive(Clone, Debug)]
struct CertName {
    common_name: String,
    admin: Admin,
}

/// One version of a tokens file: tokens and client-certificate names.
#[derive(Debug)]
struct TokenList {
    tokens: Vec<Token>,
    certs: Vec<CertName>,
}

/// The configured credentials: tokens and client-certificate names. A cheap handle:
/// clones share one current version, which [`AdminTokens::replace`] swaps whole (a file
/// reloaded while serving), so a request sees either the old or the new file, never a
/// mix.
#[derive(Clone, Debug)]
pub struct AdminTokens {
    list: Arc<ArcSwap<TokenList>>,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file exists but cannot be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{file}:{line}: {message}")]
    Line {
        /// The file.
        file: String,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file has no token.
    #[error("{file}: no tokens")]
    Empty {
        /// The file.
        file: String,
    },
}

/// SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The tokens-file line for `token`: `sha256:<hex> TENANTS [NAME]`.
pub fn file_line(token: &str, tenants: &str, name: Option<&str>) -> String {
    let mut line = format!("sha256:{} {tenants}", hex(&hash(token)));
    if let Some(name) = name {
        line.push(' ');
        line.push_str(name);
    }
    line
}

/// A new random token: 32 bytes from the operating system, base64url.
pub fn generate() -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "authz_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Equal in time independent of where the bytes differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hexits = s.strip_prefix("sha256:")?;
    if hexits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hexits.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

impl AdminTokens {
    /// Parses a tokens file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, TokenFileError> {
        let mut tokens = Vec::new();
        let mut certs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| TokenFileError::Line {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or_default();
            let credential = match first.strip_prefix("cert:") {
                Some("") => return Err(bad("expected a common name after `cert:`".to_owned())),
                Some(cn) => Err(cn.to_owned()),
                None => Ok(parse_hash(first).ok_or_else(|| {
                    bad("expected `sha256:` and 64 hex digits, or `cert:<common name>`".to_owned())
                })?),
            };
            let tenants = match fields.next() {
                None | Some("*") => TenantLimit::All,
                Some(list) => {
                    let mut ids = Vec::new();
                    for t in list.split(',') {
                        crate::model::tenant_id(t)
                            .map_err(|e| bad(format!("tenant id `{t}` {e}")))?;
                        ids.push(t.to_owned());
                    }
                    TenantLimit::Only(ids)
                }
            };
            let name = match (fields.next(), &credential) {
                (Some(n), _) => n.to_owned(),
                (None, Ok(hash)) => format!("sha256:{}", hex(hash.get(..6).unwrap_or_default())),
                (None, Err(cn)) => format!("cert:{cn}"),
            };
            if fields.next().is_some() {
                return Err(bad(
                    "expected `sha256:<hex> [TENANTS] [NAME]`; the name has no spaces".to_owned(),
                ));
            }
            let admin = Admin { name, tenants };
            match credential {
                Ok(hash) => tokens.push(Token { hash, admin }),
                Err(common_name) => certs.push(CertName { common_name, admin }),
            }
        }
        if tokens.is_empty() && certs.is_empty() {
            return Err(TokenFileError::Empty {
                file: file.to_owned(),
            });
        }
        Ok(AdminTokens {
            list: Arc::new(ArcSwap::from_pointee(TokenList { tokens, certs })),
        })
    }

    /// Makes every clone of this handle use `new`'s credentials from now on.
    pub fn replace(&self, new: &AdminTokens) {
        self.list.store(new.list.load_full());
    }

    /// How many tokens and certificate names the current version holds.
    pub fn len(&self) -> usize {
        let list = self.list.load();
        list.tokens.len() + list.certs.len()
    }

    /// Whether the current version holds no credential (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a tokens file; `Ok(None)` when it does not exist (the admin API is then
    /// off: a deployment may mount an optional Secret).
    pub fn load(path: &Path) -> Result<Option<Self>, TokenFileError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &file).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TokenFileError::Io { file, source }),
        }
    }

    /// The caller a token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<Admin> {
        let presented = hash(token);
        let list = self.list.load();
        let mut found = None;
        // Every hash is compared, match or not.
        for t in &list.tokens {
            if ct_eq(&t.hash, &presented) && found.is_none() {
                found = Some(&t.admin);
            }
        }
        found.cloned()
    }

    /// The caller a verified client certificate's common name belongs to, if any.
    pub fn authenticate_cert(&self, common_name: &str) -> Option<Admin> {
        self.list
            .load()
            .certs
            .iter()
            .find(|c| c.common_name == common_name)
            .map(|c| c.admin.clone())
    }

    /// The caller presenting `req`'s credentials: its bearer token when it sends one,
    /// otherwise its verified client certificate. `service` names what is refused in
    /// messages and logs (`admin`, `query`).
    pub fn caller<T>(&self, req: &Request<T>, service: &str) -> Result<Admin, Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return self.caller_by_cert(req, service);
        };
        let token = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
        });
        let Some(token) = token else {
            warn!(
                reason = "malformed authorization header",
                service, "request refused"
            );
            return Err(Status::unauthenticated(
                "malformed `authorization` header; expected `Bearer <token>`",
            ));
        };
        match self.authenticate(token) {
            Some(admin) => Ok(admin),
            None => {
                let prefix = hex(hash(token).get(..6).unwrap_or_default());
                warn!(reason = "unknown token", token_sha256_prefix = %prefix, service, "request refused");
                Err(Status::unauthenticated(format!("invalid {service} token")))
            }
        }
    }

    fn caller_by_cert<T>(&self, req: &Request<T>, service: &str) -> Result<Admin, Status> {
        // Present only when the TLS layer verified the chain against the client CA.
        let leaf = req.peer_certs().and_then(|certs| certs.first().cloned());
        let Some(leaf) = leaf else {
            warn!(reason = "no credentials", service, "request refused");
            return Err(Status::unauthenticated(format!(
                "the {service} API needs an `authorization: Bearer <token>` header or a client certificate"
            )));
        };
        let Some(cn) = common_name(&leaf) else {
            warn!(
                reason = "client certificate without a common name",
                service, "request refused"
            );
            return Err(Status::unauthenticated(
                "the client certificate has no subject common name",
            ));
        };
        match self.authenticate_cert(&cn) {
            Some(admin) => Ok(admin),
            None => {
                warn!(reason = "unlisted client certificate", common_name = %cn, service, "request refused");
                Err(Status::unauthenticated(format!(
                    "client certificate `{cn}` may not call the {service} API"
                )))
            }
        }
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The admin service's interceptor: authenticates `authorization: Bearer <token>` and
/// puts the [`Admin`] in the request's extensions, or refuses with UNAUTHENTICATED.
/// Tenant limits are checked by the service, which knows the tenant.
#[derive(Clone, Debug)]
pub struct AdminAuth {
    tokens: Arc<AdminTokens>,
}

impl AdminAuth {
    /// An interceptor accepting `tokens`.
    pub fn new(tokens: Arc<AdminTokens>) -> Self {
        AdminAuth { tokens }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let admin = self.tokens.caller(&req, "admin")?;
        req.extensions_mut().insert(admin);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_authenticates() {
        let a = file_line("secret-a", "*", Some("ops"));
        let b = file_line("secret-b", "acme,globex", None);
        let text = format!("# admins\n\n{a}\n{b}\n");
        let tokens = AdminTokens::parse(&text, "t").unwrap();
        let ops = tokens.authenticate("secret-a").unwrap();
        assert_eq!(ops.name, "ops");
        assert!(ops.is_unlimited());
        let limited = tokens.authenticate("secret-b").unwrap();
        assert!(limited.name.starts_with("sha256:"));
        assert!(limited.may("acme") && limited.may("globex") && !limited.may("initech"));
        assert!(tokens.authenticate("secret-c").is_none());
        assert!(tokens.authenticate("").is_none());
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, want) in [
            ("sha256:abc\n", "t:1: expected"),
            ("\nmd5:00 *\n", "t:2: expected"),
            (
                &format!("sha256:{} a b c\n", "0".repeat(64)),
                "the name has no spaces",
            ),
            (&format!("sha256:{} acme,,x\n", "0".repeat(64)), "tenant id"),
            ("# nothing\n", "no tokens"),
            ("cert: *\n", "t:1: expected a common name"),
        ] {
            let e = AdminTokens::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn certificate_lines() {
        let text = format!(
            "cert:ops-client\ncert:acme-client acme acme-ops\n{}\n",
            file_line("secret", "*", None)
        );
        let tokens = AdminTokens::parse(&text, "t").unwrap();
        let ops = tokens.authenticate_cert("ops-client").unwrap();
        assert_eq!(ops.name, "cert:ops-client");
        assert!(ops.is_unlimited());
        let acme = tokens.authenticate_cert("acme-client").unwrap();
        assert_eq!(acme.name, "acme-ops");
        assert!(acme.may("acme") && !acme.may("globex"));
        assert!(tokens.authenticate_cert("other").is_none());
        assert!(tokens.authenticate("secret").is_some());
        // A certificate line is no token.
        assert!(tokens.authenticate("cert:ops-client").is_none());
    }

    #[test]
    fn generated_tokens_differ_and_hash_to_their_line() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(a.len() > 40);
        let tokens = AdminTokens::parse(&file_line(&a, "*", None), "t").unwrap();
        assert!(tokens.authenticate(&a).is_some());
        assert!(tokens.authenticate(&b).is_none());
    }
}
