//! The metrics endpoint: plain HTTP/1.1 on its own listener, so scrapes never compete
//! with gRPC traffic for a port and the port can be left closed (the default).
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | 200, every metric in the OpenMetrics text format (`application/openmetrics-text`), which Prometheus scrapes natively |
//! | anything else | 404 |

use std::future::Future;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use tokio::net::TcpListener;
use tracing::{error, info};

use super::Metrics;
use crate::store::file::AbortOnDrop;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics");
    }
    axum::serve(listener.tap_io(crate::transport::tune_accepted), app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `/metrics` in a background task that stops when the handle drops. The
/// endpoint stays up while the gRPC server drains, so the drain can be watched.
pub fn spawn(listener: TcpListener, metrics: Metrics) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = serve(listener, metrics, std::future::pending()).await {
            error!(cause = %e, "the metrics endpoint failed");
        }
    }))
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            error!(cause = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
