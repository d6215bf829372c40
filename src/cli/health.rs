//! `authzd health`: asks a server's `grpc.health.v1.Health` service, over plaintext or
//! TLS, and exits 0 only when the answer is SERVING. Built into the binary so that the
//! image (`FROM scratch`: no shell, no `grpc_health_probe`) can run it as a Kubernetes exec
//! probe where the kubelet's own gRPC probe cannot go: over TLS.
//!
//! It prints one line: `SERVING`, or why not (`NOT_SERVING`, a refused connection, a
//! certificate the CA does not sign, ...), which the kubelet keeps in the probe's event.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{Exit, migrate::block_on};

/// `authzd health`.
#[derive(Clone, Debug, Args)]
pub struct HealthArgs {
    /// The server: `HOST:PORT`, or a URL (`http://...`, `https://...`).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// The health service to ask about (`""`: the server as a whole;
    /// `authz.v1.AuthorizationService`: the policy is loaded).
    #[arg(long, default_value = "")]
    pub service: String,
    /// TLS: verify the server's certificate against this CA (PEM). Turns TLS on.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// TLS: the name the server's certificate must hold (default: the host of `--addr`).
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// mTLS: a client certificate (PEM) to present; needs `--tls-key`.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// mTLS: the private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How long the whole probe may take, connecting included.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs the probe: 0 when SERVING, 1 otherwise, with one line saying which.
pub fn run(args: &HealthArgs) -> Exit {
    // A TLS file that cannot be read is the probe's own configuration error (66), not an
    // unhealthy server (1): a probe that can never pass should not look like an outage.
    for path in [&args.tls_ca, &args.tls_cert, &args.tls_key]
        .into_iter()
        .flatten()
    {
        if let Err(e) = read(path) {
            super::say!("error: {e}");
            return Exit::NoInput;
        }
    }
    block_on(async {
        let outcome = match tokio::time::timeout(args.timeout, probe(args)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no answer from {} within {}",
                args.addr,
                humantime::format_duration(args.timeout)
            )),
        };
        match outcome {
            Ok(ServingStatus::Serving) => {
                super::say!("SERVING");
                Exit::Ok
            }
            Ok(status) => {
                super::say!(
                    "{}: service `{}` at {}",
                    status.as_str_name(),
                    args.service,
                    args.addr
                );
                Exit::Unhealthy
            }
            Err(why) => {
                super::say!("unhealthy: {why}");
                Exit::Unhealthy
            }
        }
    })
}

/// The error and its causes, joined with `: ` (tonic's transport errors say little at
/// the top).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

async fn probe(args: &HealthArgs) -> Result<ServingStatus, String> {
    let scheme = if args.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("{scheme}://{}", args.addr)
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("invalid address `{}`: {}", args.addr, chain(&e)))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if let Some(ca) = &args.tls_ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some(name) = &args.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS: {}", chain(&e)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {uri}: {}", chain(&e)))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => format!("service `{}` is unknown to the server", args.service),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                if s.message().contains("Timeout") =>
            {
                format!(
                    "no answer from {uri} within {}",
                    humantime::format_duration(args.timeout)
                )
            }
            // A plaintext probe against a TLS listener reads the TLS handshake as HTTP/2.
            tonic::Code::Internal | tonic::Code::Unknown
                if args.tls_ca.is_none() && s.message().contains("h2 protocol error") =>
            {
                format!(
                    "{:?}: {}; does the server serve TLS? then pass --tls-ca",
                    s.code(),
                    s.message()
                )
            }
            code => format!("{code:?}: {}", s.message()),
        })?;
    Ok(answer.into_inner().status())
}
