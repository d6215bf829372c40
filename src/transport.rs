//! Transport settings every listener shares: accepted sockets and HTTP/2.
//!
//! - **TCP_NODELAY on every accepted socket.** Without it, Nagle's algorithm holds the
//!   last small segment of a response until the peer's delayed ACK (about 40 ms on
//!   Linux): a 100-item BatchCheck that takes 1 ms of CPU answered after 44 ms. An
//!   authorization answer is latency-bound and written in whole frames, so there is
//!   nothing to coalesce.
//! - **TCP keepalive** ([`TCP_KEEPALIVE`]) on accepted sockets, so connections whose peer
//!   vanished without a FIN (a node gone, a NAT entry expired) are found and closed.
//! - **HTTP/2 keepalive pings** every [`HTTP2_KEEPALIVE_INTERVAL`], a connection closed
//!   when one is not acknowledged within [`HTTP2_KEEPALIVE_TIMEOUT`]: the same, above TLS
//!   and proxies that keep the TCP connection alive.
//! - **HTTP/2 flow-control windows** of [`STREAM_WINDOW`] per stream and
//!   [`CONNECTION_WINDOW`] per connection (the protocol's default is 64 KiB): a large
//!   BatchCheck request (up to the 4 MiB message limit) is sent without waiting a round
//!   trip for window updates every 64 KiB. Memory is bounded by the message limit and
//!   the concurrent streams, not by the window.
//!
//! Used by the gRPC listener (query, admin, Envoy, health, reflection) and the metrics
//! listener; `tests/transport.rs` reads the options back from accepted sockets.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

/// Idle time before TCP keepalive probes start on an accepted socket.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How often the server pings an HTTP/2 connection.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 receive window per stream, in bytes.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 receive window per connection, in bytes.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// The gRPC listener's accepted connections, with TCP_NODELAY and TCP keepalive set on
/// each.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
}

/// The HTTP/2 settings of the gRPC server (module documentation).
pub fn configure(builder: tonic::transport::Server) -> tonic::transport::Server {
    builder
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
}

/// Sets TCP_NODELAY on a socket an HTTP listener (axum) accepted. A failure is logged,
/// not fatal: the connection still works, only slower.
pub fn tune_accepted(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(cause = %e, "cannot set TCP_NODELAY on an accepted connection");
    }
}
