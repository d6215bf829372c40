//! No transport stalls: every listener's accepted sockets have TCP_NODELAY (and the gRPC
//! listener's TCP keepalive), read back from the kernel with getsockopt, on sockets
//! accepted through the same code the server uses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn grpc_listener_sets_nodelay_and_keepalive_on_accepted_sockets() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = authz::transport::grpc_incoming(listener);
    let client = TcpStream::connect(addr).await.unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("accepted within 10s")
        .unwrap()
        .unwrap();
    // The kernel's word, not ours: TCP_NODELAY and SO_KEEPALIVE via getsockopt.
    assert!(
        accepted.nodelay().unwrap(),
        "TCP_NODELAY on the accepted socket"
    );
    let sock = socket2::SockRef::from(&accepted);
    assert!(
        sock.keepalive().unwrap(),
        "SO_KEEPALIVE on the accepted socket"
    );
    assert_eq!(
        sock.tcp_keepalive_time().unwrap(),
        authz::transport::TCP_KEEPALIVE
    );
    // A plain client socket does not have it: the check can fail.
    assert!(!client.nodelay().unwrap());
}

#[tokio::test]
async fn http_listener_sets_nodelay_on_accepted_sockets() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tapped = listener.tap_io(authz::transport::tune_accepted);
    let _client = TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = tokio::time::timeout(Duration::from_secs(10), tapped.accept())
        .await
        .expect("accepted within 10s");
    assert!(
        accepted.nodelay().unwrap(),
        "TCP_NODELAY on the accepted socket"
    );
}

#[tokio::test]
async fn the_server_with_these_settings_answers_a_batch() {
    // The whole server over the tuned listener still answers (settings accepted by hyper).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "version: 1\nroles: [{id: r, permissions: [p]}]\ntenants: [{id: t, subjects: [{id: s}], assignments: [{subject: s, role: r}]}]\n",
    )
    .unwrap();
    let (compiled, _) = authz::store::file::load(&path, 1).unwrap();
    let cache = authz::cache::Cache::new();
    cache.replace_all(compiled, 1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(authz::server::run(
        listener,
        cache,
        authz::server::ServerConfig::default(),
        async {
            let _ = rx.await;
        },
    ));
    let mut client = authz::pb::authorization_service_client::AuthorizationServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let items = vec![
        authz::pb::CheckRequest {
            action: Some(authz::pb::check_request::Action::Permission("p".into())),
            ..Default::default()
        };
        100
    ];
    let r = client
        .batch_check(authz::pb::BatchCheckRequest {
            tenant_id: "t".into(),
            subject_id: "s".into(),
            checks: items,
            min_revision: 0,
            detail: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 100);
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
