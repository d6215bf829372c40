//! The `authzd` command line: every `serve` flag can also be set by an `AUTHZ_*`
//! environment variable. Values are typed (addresses, durations), so a bad value is
//! reported before anything binds.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{policy::Limits, shard::TenantFilter, store::follow::FollowMode, telemetry::LogFormat};

/// authzd: role-based authorization decisions with reasons, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "authzd", version, about, long_about = None)]
pub struct Cli {
    /// Log line format (logs go to stderr; `RUST_LOG` sets levels, default `info`).
    #[arg(long, global = true, env = "AUTHZ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OpenTelemetry: export the gRPC handlers' spans over OTLP/gRPC to this collector,
    /// e.g. `http://otel-collector:4317` (off unless set).
    /// Only `http://` (the OTLP exporter is built without TLS: run a collector next to
    /// authzd, or in the cluster, and let it forward over TLS); empty means off.
    #[arg(long, global = true, env = "AUTHZ_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// OpenTelemetry: the share of new traces kept, 0 to 1. A request carrying W3C
    /// `traceparent` metadata is traced as its caller decided (parent-based sampling).
    #[arg(long, global = true, env = "AUTHZ_OTLP_SAMPLING_RATIO", default_value_t = crate::telemetry::DEFAULT_SAMPLING_RATIO, value_parser = sampling_ratio)]
    pub otlp_sampling_ratio: f64,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (query service, Envoy ext_authz, health, reflection).
    Serve(Box<ServeArgs>),
    /// Check policy files and report every problem.
    Validate(ValidateArgs),
    /// Decide one request offline against a policy file, as the server would.
    Check(CheckArgs),
    /// List what a subject may do at a scope, offline, as ListPermissions would.
    List(ListArgs),
    /// Bring the PostgreSQL schema up to date.
    Migrate(crate::cli::migrate::MigrateArgs),
    /// Policy documents in PostgreSQL: apply one, export them.
    #[command(subcommand)]
    Policy(crate::cli::policy::PolicyCommand),
    /// Fill an empty database with a large synthetic policy (load tests; needs a superuser).
    GenDataset(crate::cli::dataset::GenDatasetArgs),
    /// Generate an admin API token and its line for the tokens file.
    AdminToken(AdminTokenArgs),
    /// Ask a server's gRPC health service (plaintext or TLS); exit 0 only when SERVING.
    Health(crate::cli::health::HealthArgs),
    /// Run expectation files (`*.expect.yaml`) against their policies; exit 1 on a failure.
    Test(crate::cli::test::TestArgs),
    /// Show who gains and who loses which access between two policies, and why.
    Diff(crate::cli::diff::DiffArgs),
}

/// `authzd admin-token`.
#[derive(Clone, Debug, Args)]
pub struct AdminTokenArgs {
    /// Tenants the token may manage: `*` (all, and whole-policy operations) or a
    /// comma-separated list.
    #[arg(long, default_value = "*")]
    pub tenants: String,
    /// Name of the token, recorded in the audit log (no spaces).
    #[arg(long)]
    pub name: Option<String>,
}

/// `authzd serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Policy file (YAML or JSON) to serve; reloaded when it changes. The default source:
    /// with `--database-url` as well, the database is served and this is ignored.
    #[arg(long, env = "AUTHZ_POLICY", required_unless_present = "database_url")]
    pub policy: Option<PathBuf>,
    /// PostgreSQL URL to load the policy from and follow (takes precedence over
    /// `--policy`), e.g. `postgres://authz@db:5432/authz`.
    #[arg(long, env = "AUTHZ_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Admin API bearer tokens, one `sha256:<hex> [TENANTS] [NAME]` a line; needs
    /// `--database-url`. The admin API is off without it. A file that does not exist is
    /// a start-up error, unless `--admin-tokens-optional`.
    // Not a clap `requires`: deploy/kubernetes sets the variable for an optional Secret
    // whether or not a database is configured.
    #[arg(long, env = "AUTHZ_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,
    /// The admin tokens file may be missing (an optional Secret): the admin API is then
    /// off, with a warning and `authz_admin_api_enabled 0`.
    #[arg(long, env = "AUTHZ_ADMIN_TOKENS_OPTIONAL", value_parser = switch)]
    pub admin_tokens_optional: bool,
    /// TLS: the server's certificate chain (PEM); needs `--tls-key`. Without it the
    /// listener speaks plaintext.
    #[arg(long, env = "AUTHZ_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM) of `--tls-cert`.
    #[arg(long, env = "AUTHZ_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// mTLS: request client certificates and verify them against this CA (PEM); needs
    /// `--tls-cert`. Connections without a certificate are still accepted; `cert:<CN>`
    /// lines in a tokens file let verified certificates in.
    #[arg(long, env = "AUTHZ_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Query service credentials, one `sha256:<hex> [TENANTS] [NAME]` or
    /// `cert:<common name> [TENANTS] [NAME]` a line: Check, BatchCheck and
    /// ListPermissions then need one of them. Unset: anyone may ask.
    #[arg(long, env = "AUTHZ_QUERY_TOKENS_FILE")]
    pub query_tokens_file: Option<PathBuf>,
    /// Run schema migrations at start (with `--database-url`).
    #[arg(long, env = "AUTHZ_MIGRATE", value_parser = switch)]
    pub migrate: bool,
    /// With a database whose schema is missing or older than this binary's: wait (and
    /// say so) until `authzd migrate` has run, instead of exiting with 69.
    #[arg(long, env = "AUTHZ_WAIT_FOR_SCHEMA", value_parser = switch)]
    pub wait_for_schema: bool,
    /// With a database: how the follower learns of changes. `listen`: LISTEN for
    /// notifications (a primary, on a connection of its own); `poll`: read the change log
    /// every `--poll-interval` (a hot standby, PgBouncer in transaction mode); `auto`:
    /// LISTEN on a primary, poll on a standby.
    #[arg(long, env = "AUTHZ_FOLLOW", default_value = "auto", value_parser = parse_follow)]
    pub follow: FollowMode,
    /// With a database: how often to look for changes without a notification (when
    /// polling, the only way; under LISTEN, a safety net). From 10ms to 1h: thousands of
    /// replicas polling faster would load the database for nothing.
    #[arg(long, env = "AUTHZ_POLL_INTERVAL", default_value = "200ms", value_parser = poll_interval)]
    pub poll_interval: Duration,
    /// Serve only these tenants (comma-separated ids); requests about others fail with
    /// FAILED_PRECONDITION. Only they are loaded.
    #[arg(long, env = "AUTHZ_TENANTS", value_parser = parse_tenant_list, conflicts_with = "tenant_shard")]
    pub tenants: Option<TenantFilter>,
    /// Serve only shard `i` of `n` of the tenant space: the tenants whose FNV-1a 64-bit
    /// hash of the id, mod n, is i (docs/operations.md). Requests about others fail with
    /// FAILED_PRECONDITION naming their shard. Only they are loaded.
    #[arg(long, env = "AUTHZ_TENANT_SHARD", value_parser = parse_tenant_shard)]
    pub tenant_shard: Option<TenantFilter>,
    /// With a database: how often to compare the cache with the database, tenant by tenant.
    #[arg(long, env = "AUTHZ_CONSISTENCY_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub consistency_interval: Duration,
    /// Fail closed (UNAVAILABLE) when the source has not confirmed the cache current for
    /// longer than this (`0s`: never; answer from the cache however old).
    #[arg(long, env = "AUTHZ_MAX_STALENESS", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_staleness: Duration,
    /// Address to listen on for gRPC.
    #[arg(long, env = "AUTHZ_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// How often to look for policy file changes (`0s` disables polling; SIGHUP always
    /// reloads).
    #[arg(long, env = "AUTHZ_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
    /// Per-tenant limits a policy file is held to (a database uses its `authz_limits`).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// How long a request with `min_revision` waits for that revision.
    #[arg(long, env = "AUTHZ_REVISION_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub revision_wait: Duration,
    /// Most checks in one BatchCheck.
    #[arg(long, env = "AUTHZ_MAX_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "AUTHZ_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..=256 * 1024 * 1024))]
    pub max_message_bytes: u32,
    /// Close client connections older than this (`0s`: never), so clients balancing
    /// over a headless Service re-resolve and spread onto new replicas.
    #[arg(long, env = "AUTHZ_MAX_CONNECTION_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[arg(long, env = "AUTHZ_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Address to serve Prometheus metrics on, over HTTP at `/metrics` (off unless set).
    #[arg(long, env = "AUTHZ_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve the AuthZEN 1.0 Authorization API on, over HTTP/JSON (off unless
    /// set; docs/authzen.md). Query credentials apply as on gRPC (bearer tokens, and
    /// client certificates over TLS); with --tls-cert set it serves HTTPS with the same
    /// certificate, key and client CA.
    #[arg(long, env = "AUTHZ_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// AuthZEN: the tenant the root paths (`/access/v1/...`,
    /// `/.well-known/authzen-configuration`) serve; without it they answer 404 and each
    /// tenant is its own PDP at `/tenants/{tenant}`.
    #[arg(long, env = "AUTHZ_HTTP_DEFAULT_TENANT")]
    pub http_default_tenant: Option<String>,
    /// Envoy ext_authz: the request header naming the tenant.
    #[arg(long, env = "AUTHZ_ENVOY_TENANT_HEADER", default_value = "x-tenant-id", value_parser = header_name)]
    pub envoy_tenant_header: String,
    /// Envoy ext_authz: the request header naming the subject (absent: anonymous). Not
    /// read when `--envoy-jwt-payload-header` is set.
    #[arg(long, env = "AUTHZ_ENVOY_SUBJECT_HEADER", default_value = "x-subject-id", value_parser = header_name)]
    pub envoy_subject_header: String,
    /// Envoy ext_authz: the header in which Envoy's jwt_authn forwards the verified JWT
    /// payload (base64url JSON); tenant and subject then come from its claims.
    #[arg(long, env = "AUTHZ_ENVOY_JWT_PAYLOAD_HEADER", value_parser = header_name)]
    pub envoy_jwt_payload_header: Option<String>,
    /// Envoy ext_authz: the JWT claim naming the tenant (empty: the tenant header does).
    #[arg(long, env = "AUTHZ_ENVOY_TENANT_CLAIM", default_value = "tenant")]
    pub envoy_tenant_claim: String,
    /// Envoy ext_authz: the JWT claim naming the subject.
    #[arg(long, env = "AUTHZ_ENVOY_SUBJECT_CLAIM", default_value = "sub", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub envoy_subject_claim: String,
}

impl ServeArgs {
    /// The tenants this replica serves (`--tenants`, `--tenant-shard`, else all).
    pub fn tenant_filter(&self) -> TenantFilter {
        self.tenants
            .clone()
            .or_else(|| self.tenant_shard.clone())
            .unwrap_or_default()
    }
}

fn parse_follow(s: &str) -> Result<FollowMode, String> {
    s.parse()
}

/// A switch's value (from its environment variable): `1`, `true`, `yes`, `on`, `y`, `t`
/// or `0`, `false`, `no`, `off`, `n`, `f`, in any case; empty is off.
fn switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        "0" | "false" | "no" | "off" | "n" | "f" | "" => Ok(false),
        _ => Err(format!(
            "`{s}` is not a switch value: use 1, true, yes or on (or 0, false, no, off)"
        )),
    }
}

/// A poll interval: 10 ms to 1 h.
fn poll_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}` is outside 10ms to 1h"));
    }
    Ok(d)
}

fn parse_tenant_list(s: &str) -> Result<TenantFilter, String> {
    TenantFilter::parse_list(s).map_err(|e| e.to_string())
}

fn parse_tenant_shard(s: &str) -> Result<TenantFilter, String> {
    TenantFilter::parse_shard(s).map_err(|e| e.to_string())
}

/// An HTTP header name (an RFC 9110 token), lower-cased as Envoy passes headers.
fn header_name(s: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if s.is_empty() || !s.bytes().all(token) {
        return Err(format!("`{s}` is not an HTTP header name"));
    }
    Ok(s.to_ascii_lowercase())
}

/// `authzd validate`.
#[derive(Clone, Debug, Args)]
pub struct ValidateArgs {
    /// Policy files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Per-tenant limits the files are held to.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Per-tenant limits on a policy (docs/policy-rules.md). A policy file is held to these;
/// a database is held to its `authz_limits` row instead, which its validation triggers
/// and every replica following it share.
#[derive(Clone, Copy, Debug, Args)]
pub struct LimitArgs {
    /// Longest chain of role `includes` (edges) from any role.
    #[arg(long, env = "AUTHZ_MAX_INCLUDE_DEPTH", default_value_t = Limits::default().include_depth)]
    pub max_include_depth: u32,
    /// Most custom roles in one tenant (and built-in roles in the document).
    #[arg(long, env = "AUTHZ_MAX_ROLES_PER_TENANT", default_value_t = Limits::default().roles_per_tenant)]
    pub max_roles_per_tenant: u32,
    /// Most route rules in one role.
    #[arg(long, env = "AUTHZ_MAX_RULES_PER_ROLE", default_value_t = Limits::default().rules_per_role)]
    pub max_rules_per_role: u32,
    /// Most named permissions in one role.
    #[arg(long, env = "AUTHZ_MAX_PERMISSIONS_PER_ROLE", default_value_t = Limits::default().permissions_per_role)]
    pub max_permissions_per_role: u32,
    /// Most endpoint entries in one tenant's table (and in the table for all tenants).
    #[arg(long, env = "AUTHZ_MAX_ENDPOINTS_PER_TENANT", default_value_t = Limits::default().endpoints_per_tenant)]
    pub max_endpoints_per_tenant: u32,
    /// Largest cost of one tenant's include closures: every role each role reaches
    /// through includes (itself too) costs 1 plus its own includes (built-in roles: the
    /// same limit).
    #[arg(long, env = "AUTHZ_MAX_CLOSURE_COST", default_value_t = Limits::default().closure_cost_per_tenant)]
    pub max_closure_cost: u64,
    /// Largest policy file, in bytes (checked before it is read).
    #[arg(long, env = "AUTHZ_MAX_POLICY_BYTES", default_value_t = Limits::default().document_bytes)]
    pub max_policy_bytes: u64,
}

impl LimitArgs {
    /// The limits.
    pub fn limits(&self) -> Limits {
        Limits {
            include_depth: self.max_include_depth,
            roles_per_tenant: self.max_roles_per_tenant,
            rules_per_role: self.max_rules_per_role,
            permissions_per_role: self.max_permissions_per_role,
            endpoints_per_tenant: self.max_endpoints_per_tenant,
            closure_cost_per_tenant: self.max_closure_cost,
            document_bytes: self.max_policy_bytes,
        }
    }
}

/// What `check` and `list` print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line for people.
    #[default]
    Text,
    /// The full answer as JSON.
    Json,
}

/// The policy, tenant, subject and scope that `check` and `list` ask about.
#[derive(Clone, Debug, Args)]
pub struct Target {
    /// Policy file.
    #[arg(long, env = "AUTHZ_POLICY")]
    pub policy: PathBuf,
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Subject id (omit for an anonymous request).
    #[arg(long, default_value = "")]
    pub subject: String,
    /// Scope ("" is the tenant root).
    #[arg(long, default_value = "")]
    pub scope: String,
}

/// `authzd check`.
#[derive(Clone, Debug, Args)]
pub struct CheckArgs {
    /// Policy, tenant, subject, scope.
    #[command(flatten)]
    pub target: Target,
    /// A named permission to check.
    #[arg(long, conflicts_with_all = ["method", "path"], required_unless_present = "path")]
    pub permission: Option<String>,
    /// HTTP method of a route check.
    #[arg(long, requires = "path")]
    pub method: Option<String>,
    /// HTTP path of a route check.
    #[arg(long, requires = "method")]
    pub path: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `authzd list`.
#[derive(Clone, Debug, Args)]
pub struct ListArgs {
    /// Policy, tenant, subject, scope.
    #[command(flatten)]
    pub target: Target,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Parses an OTLP collector endpoint: `http://host:port` (a path is allowed), or empty
/// for off.
fn otlp_endpoint(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    let uri: tonic::codegen::http::Uri =
        s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(s.to_owned()),
        Some("http") => Err(format!("`{s}` names no host")),
        Some("https") => Err(format!(
            "`{s}`: https collectors are not supported (the exporter is built without TLS); \
             use http:// to a collector next to authzd or in the cluster"
        )),
        Some(other) => Err(format!("`{s}`: the scheme must be http, not {other}")),
        None => Err(format!("`{s}` has no scheme; write http://{s}")),
    }
}

/// Parses a sampling ratio: a number from 0 to 1.
fn sampling_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_take_the_usual_forms_and_name_them_when_wrong() {
        for on in ["1", "true", "YES", "on", "y", "T"] {
            assert_eq!(switch(on), Ok(true), "{on}");
        }
        for off in ["0", "false", "No", "off", "n", "f", ""] {
            assert_eq!(switch(off), Ok(false), "{off}");
        }
        let e = switch("maybe").unwrap_err();
        assert!(
            e.contains("`maybe`") && e.contains("1, true, yes or on"),
            "{e}"
        );
        // As flags: present means on, absent off.
        let cli =
            Cli::try_parse_from(["authzd", "serve", "--policy", "p.yaml", "--migrate"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!()
        };
        assert!(a.migrate && !a.wait_for_schema);
    }

    #[test]
    fn serve_defaults_and_flags() {
        let cli = Cli::try_parse_from(["authzd", "serve", "--policy", "p.yaml"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(a.reload_interval, Duration::from_secs(2));
        assert_eq!(a.max_batch, 1000);
        let cli = Cli::try_parse_from([
            "authzd",
            "--log-format",
            "json",
            "serve",
            "--policy",
            "p.yaml",
            "--listen",
            "0.0.0.0:1",
            "--reload-interval",
            "250ms",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Serve(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.reload_interval, Duration::from_millis(250));
    }

    #[test]
    fn a_database_and_a_policy_file_may_both_be_given() {
        // One manifest serves either: the database when its (optional) URL is set, the
        // file otherwise; `serve` logs that the file is ignored.
        let cli = Cli::try_parse_from([
            "authzd",
            "serve",
            "--policy",
            "p",
            "--database-url",
            "postgres://x",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.database_url.as_deref(), Some("postgres://x"));
    }

    #[test]
    fn bad_values_are_rejected_before_anything_runs() {
        for args in [
            &["authzd", "serve", "--policy", "p", "--listen", "nope"][..],
            &[
                "authzd",
                "serve",
                "--policy",
                "p",
                "--reload-interval",
                "soon",
            ],
            &["authzd", "serve", "--policy", "p", "--max-batch", "0"],
            &["authzd", "serve"],
            &[
                "authzd", "check", "--policy", "p", "--tenant", "t", "--method", "GET",
            ],
            &["authzd", "check", "--policy", "p", "--tenant", "t"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn follow_and_shard_flags() {
        let serve = |extra: &[&str]| {
            let mut args = vec!["authzd", "serve", "--database-url", "postgres://x"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Command::Serve(a) => a,
                _ => panic!(),
            })
        };
        let a = serve(&[]).unwrap();
        assert_eq!(a.follow, FollowMode::Auto);
        assert_eq!(a.poll_interval, Duration::from_millis(200));
        assert_eq!(a.tenant_filter(), TenantFilter::All);
        let a = serve(&[
            "--follow",
            "poll",
            "--poll-interval",
            "50ms",
            "--tenant-shard",
            "1/4",
        ])
        .unwrap();
        assert_eq!(a.follow, FollowMode::Poll);
        assert_eq!(a.poll_interval, Duration::from_millis(50));
        assert_eq!(
            a.tenant_filter(),
            TenantFilter::Shard { index: 1, count: 4 }
        );
        let a = serve(&["--tenants", "acme,globex"]).unwrap();
        assert!(a.tenant_filter().serves("globex") && !a.tenant_filter().serves("initech"));
        for bad in [
            &["--follow", "notify"][..],
            &["--poll-interval", "0s"],
            &["--poll-interval", "1ns"],
            &["--poll-interval", "2h"],
            &["--tenant-shard", "2/2"],
            &["--tenant-shard", "x"],
            &["--tenants", ""],
            &["--tenants", "a b"],
            &["--tenants", "a", "--tenant-shard", "0/2"],
        ] {
            let err = serve(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                err.to_string().contains(bad[0]),
                "{bad:?}: the message names the flag: {err}"
            );
        }
    }

    #[test]
    fn metrics_and_envoy_flags() {
        let serve = |extra: &[&str]| {
            let mut args = vec!["authzd", "serve", "--policy", "p"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Command::Serve(a) => a,
                _ => panic!(),
            })
        };
        let a = serve(&[]).unwrap();
        assert_eq!(a.metrics_listen, None);
        assert_eq!(a.envoy_tenant_header, "x-tenant-id");
        assert_eq!(a.envoy_subject_header, "x-subject-id");
        assert_eq!(a.envoy_jwt_payload_header, None);
        assert_eq!(
            (&*a.envoy_tenant_claim, &*a.envoy_subject_claim),
            ("tenant", "sub")
        );
        let a = serve(&[
            "--metrics-listen",
            "127.0.0.1:9090",
            "--envoy-tenant-header",
            "X-Org",
            "--envoy-jwt-payload-header",
            "x-jwt-payload",
            "--envoy-tenant-claim",
            "",
        ])
        .unwrap();
        assert_eq!(a.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            a.envoy_tenant_header, "x-org",
            "lower-cased as Envoy sends it"
        );
        assert_eq!(a.envoy_jwt_payload_header.as_deref(), Some("x-jwt-payload"));
        assert_eq!(a.envoy_tenant_claim, "");
        let a = serve(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(a.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(a.tls_key, Some(PathBuf::from("k.pem")));
        for bad in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--tls-client-ca", "ca.pem"],
            &["--metrics-listen", "9090"],
            &["--envoy-tenant-header", "x tenant"],
            &["--envoy-subject-header", ""],
            &["--envoy-subject-claim", ""],
        ] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
    }
}
