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

/// One exported span.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Remembers every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
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
                .map(|kv| value(&kv.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    self.spans.lock().unwrap().push(Exported {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value(&kv.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A fake collector on 127.0.0.1:0.
async fn collector() -> (Collector, std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let collector = collector.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        }
    });
    (collector, addr, server)
}

/// `authzd serve` on the console example, exporting to `collector`; returns the process
/// and a connected client.
async fn authzd(
    collector: std::net::SocketAddr,
    extra: &[&str],
) -> (
    std::process::Child,
    AuthorizationServiceClient<Channel>,
    String,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(example("console.yaml"))
        .args(["--otlp-endpoint", &format!("http://{collector}")])
        .args(extra)
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
    (
        child,
        AuthorizationServiceClient::new(channel),
        format!("http://{addr}"),
    )
}

/// SIGTERM: the server drains, and the spans not exported yet are flushed on exit.
async fn stop(child: std::process::Child, collector: &Collector) {
    let mut child = child;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        exited.code(),
        Some(0),
        "signal {:?}, collected {:?}",
        exited.signal(),
        collector.spans.lock().unwrap()
    );
}

fn uma_check(traceparent: Option<&str>) -> Request<pb::CheckRequest> {
    let mut r = Request::new(pb::CheckRequest {
        tenant_id: "acme".into(),
        subject_id: "uma".into(),
        action: Some(pb::check_request::Action::Permission(
            "workbench.use".into(),
        )),
        ..Default::default()
    });
    if let Some(tp) = traceparent {
        r.metadata_mut().insert("traceparent", tp.parse().unwrap());
    }
    r
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn serve_exports_spans_in_the_callers_trace_with_the_decision() {
    let (collector, collector_addr, server) = collector().await;
    let (child, mut client, client_addr) = authzd(collector_addr, &[]).await;
    let response = client
        .check(uma_check(Some(&format!("00-{TRACE}-{PARENT}-01"))))
        .await
        .unwrap()
        .into_inner();
    // And one without a caller's trace: a new trace.
    client.check(uma_check(None)).await.unwrap();
    // Every service of the listener gets request spans (health here; Envoy and admin
    // pass through the same layer).
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(client_addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    stop(child, &collector).await;

    let spans = collector.spans.lock().unwrap().clone();
    let name = "authz.v1.AuthorizationService/Check";
    // The request's server span, child of the caller's span, in the caller's trace ...
    let request = spans
        .iter()
        .find(|s| s.name == name && s.trace_id == TRACE && s.parent_span_id == PARENT)
        .unwrap_or_else(|| panic!("no request span in the caller's trace: {spans:#?}"));
    assert!(request.service.contains("authzd"), "{request:?}");
    assert_eq!(request.attr("rpc.system"), Some("grpc"), "{request:?}");
    assert_eq!(
        request.attr("rpc.service"),
        Some("authz.v1.AuthorizationService")
    );
    assert_eq!(request.attr("rpc.method"), Some("Check"));
    // ... and the handler's span below it, with the tenant and the decision.
    let handler = spans
        .iter()
        .find(|s| s.trace_id == TRACE && s.parent_span_id == request.span_id)
        .unwrap_or_else(|| panic!("no handler span under the request span: {spans:#?}"));
    assert_eq!(handler.attr("tenant"), Some("acme"), "{handler:?}");
    assert_eq!(
        handler.attr("allowed"),
        Some(response.allowed.to_string().as_str())
    );
    assert_eq!(handler.attr("reason"), Some("granted"), "{handler:?}");
    // The request without traceparent started a trace of its own.
    assert!(
        spans
            .iter()
            .any(|s| s.name == name && s.trace_id != TRACE && s.parent_span_id.is_empty()),
        "{spans:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "grpc.health.v1.Health/Check"),
        "{spans:#?}"
    );
    server.abort();
}

#[tokio::test]
async fn the_sampling_ratio_applies_to_new_traces_and_a_callers_decision_is_followed() {
    let (collector, collector_addr, server) = collector().await;
    let (child, mut client, _) = authzd(collector_addr, &["--otlp-sampling-ratio", "0"]).await;
    // New traces: none kept at ratio 0.
    for _ in 0..5 {
        client.check(uma_check(None)).await.unwrap();
    }
    // The caller sampled this trace: kept. The caller did not sample this one: dropped.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    client
        .check(uma_check(Some(&format!("00-{TRACE}-{PARENT}-01"))))
        .await
        .unwrap();
    client
        .check(uma_check(Some(&format!("00-{unsampled}-{PARENT}-00"))))
        .await
        .unwrap();
    stop(child, &collector).await;
    let spans = collector.spans.lock().unwrap().clone();
    assert!(!spans.is_empty(), "the sampled trace was exported");
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "only the caller's sampled trace is kept: {spans:#?}"
    );
    server.abort();
}

#[test]
fn a_sampling_ratio_outside_0_to_1_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["--otlp-sampling-ratio", "1.5", "validate"])
        .arg(example("console.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--otlp-sampling-ratio") && err.contains("from 0 to 1"),
        "{err}"
    );
}
