//! OpenTelemetry tracing: with `--otlp-endpoint`, `authzd serve` exports the gRPC
//! handlers' spans to an OTLP collector (here a fake one in the test) as service
//! `authzd`; the last spans are flushed when the server stops.
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
    sync::{Arc, Mutex},
    time::Duration,
};

use authz::pb::{self, authorization_service_client::AuthorizationServiceClient};
use common::example;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status, transport::Channel};

/// Remembers every span it receives: (service name, span name).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    self.spans
                        .lock()
                        .unwrap()
                        .push((service.clone(), span.name));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn serve_exports_handler_spans_to_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(example("console.yaml"))
        .args(["--otlp-endpoint", &format!("http://{collector_addr}")])
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
    let serving = loop {
        let v = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if v["message"] == "serving" {
            break v;
        }
    };
    let addr = serving["addr"].as_str().unwrap().to_owned();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AuthorizationServiceClient::new(channel);
    client
        .check(pb::CheckRequest {
            tenant_id: "acme".into(),
            subject_id: "uma".into(),
            action: Some(pb::check_request::Action::Permission(
                "workbench.use".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();

    // SIGTERM: the server drains, and the spans not exported yet are flushed on exit.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            exited.code(),
            Some(0),
            "signal {:?}, collected {:?}",
            exited.signal(),
            collector.spans.lock().unwrap()
        );
    }
    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        spans.iter().any(
            |(service, name)| name == "authz.v1.AuthorizationService/Check"
                && service.contains("authzd")
        ),
        "{spans:?}"
    );
    server.abort();
}
