//! Logging: `tracing-subscriber` to stderr, filtered by `RUST_LOG` (default `info`), as
//! text or one JSON object per line. Tracing (off by default): with an OTLP endpoint,
//! the spans of authz's own code at debug level and above (the gRPC handlers) are
//! exported over OTLP/gRPC to an OpenTelemetry collector, as service `authzd`.
//!
//! The two have separate filters: `RUST_LOG` decides what is logged, not what is traced,
//! so the handlers' spans cost nothing unless tracing (or debug logging) is on.
//!
//! A failed export is logged (opentelemetry's own WARN and ERROR lines, one per failed
//! batch, targets `opentelemetry-otlp` and `opentelemetry_sdk`); spans are lost, requests
//! never wait for the collector.
//!
//! With tracing on, every gRPC request gets a server span that joins the caller's trace
//! through W3C Trace Context metadata ([`crate::grpc::trace`]); the handler spans below
//! it carry `tenant`, and for a decision `allowed` and `reason` ([`record_decision`]).
//! `--otlp-sampling-ratio` (0 to 1, default 1) keeps that share of new traces; a trace
//! the caller sampled (or not) is followed as the caller decided.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What [`init`] set up; dropping it flushes the spans not exported yet.
#[derive(Debug, Default)]
#[must_use = "dropping it shuts tracing down"]
pub struct Telemetry {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer.take()
            && let Err(e) = provider.shutdown()
        {
            // Through the subscriber (still installed), so JSON logs stay JSON.
            tracing::warn!(cause = %e, "cannot flush the last spans; they are lost");
        }
    }
}

/// Whether spans are exported (set once by [`init`]): the request path records span
/// attributes only then, so with tracing off it pays one relaxed load.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether OpenTelemetry tracing is on in this process.
pub fn tracing_on() -> bool {
    TRACING.load(Relaxed)
}

/// Records a request's tenant on the current span (a handler's), when tracing is on.
#[inline]
pub fn record_tenant(tenant: &str) {
    if tracing_on() {
        tracing::Span::current().record("tenant", tenant);
    }
}

/// Records a decision on the current span (a handler's), when tracing is on: `allowed`
/// and `reason` (`granted`, `no_grant`, ... as in SPEC and `x-authz-reason`).
#[inline]
pub fn record_decision(e: &crate::policy::Explanation) {
    if tracing_on() {
        let span = tracing::Span::current();
        span.record("allowed", e.allowed);
        span.record("reason", e.reason.as_str());
    }
}

/// The default share of new traces kept (`--otlp-sampling-ratio`).
pub const DEFAULT_SAMPLING_RATIO: f64 = 1.0;

/// Installs the global subscriber; with `otlp_endpoint`, also the span exporter, keeping
/// `sampling_ratio` (0 to 1; clamped) of the traces that do not come with a caller's
/// sampling decision. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>, sampling_ratio: f64) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, not for log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let (otel, error, tracer) = match otlp_endpoint.map(|e| tracer_provider(e, sampling_ratio)) {
        None => (None, None, None),
        Some(Ok(provider)) => {
            use opentelemetry::trace::TracerProvider as _;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("authzd"))
                .with_filter(Targets::new().with_target("authz", Level::DEBUG));
            (Some(layer), None, Some(provider))
        }
        Some(Err(e)) => (None, Some(e), None),
    };
    let on = otel.is_some();
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    if installed && on {
        TRACING.store(true, Relaxed);
    }
    if let Some(e) = error {
        tracing::error!(cause = %e, "cannot set up OpenTelemetry tracing; not tracing");
    } else if let Some(endpoint) = otlp_endpoint {
        tracing::info!(endpoint, sampling_ratio, "OpenTelemetry tracing on");
    }
    Telemetry { tracer }
}

/// A tracer provider exporting over OTLP/gRPC in batches. tonic needs a Tokio runtime
/// for its connection: the exporter gets a small one of its own on a background thread,
/// so it works for every command and outlives the server's runtime (spans are flushed
/// when [`Telemetry`] drops, after serving ended).
fn tracer_provider(
    endpoint: &str,
    sampling_ratio: f64,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::Sampler;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let handle = rx.recv().map_err(|e| e.to_string())??;
    let _entered = handle.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // W3C Trace Context's sampled flag decides for a request that carries one.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sampling_ratio.clamp(0.0, 1.0),
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("authzd")
                .build(),
        )
        .build())
}
