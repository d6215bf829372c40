//! Shared integration-test harness: a real server on 127.0.0.1:0, the seed expectation
//! files, and a normalized view of an answer so library, gRPC and CLI answers are held
//! to the same expectations.
#![allow(
    dead_code,
    missing_docs,
    reason = "each test crate uses part of the harness"
)]

pub mod chat;
pub mod cluster;
pub mod pg;
pub mod pki;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use authz::{
    cache::Cache,
    grpc::ServiceConfig,
    metrics::{Freshness, Metrics, PolicySource},
    pb::authorization_service_client::AuthorizationServiceClient,
    server::{self, ServerError},
    store::file::{self, AbortOnDrop, Reloader},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example(name: &str) -> PathBuf {
    repo().join("examples/policies").join(name)
}

/// A running server. Call [`TestServer::stop`] at the end of the test.
pub struct TestServer {
    pub client: AuthorizationServiceClient<Channel>,
    pub channel: Channel,
    pub addr: SocketAddr,
    pub cache: Cache,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
    pub reloader: Option<Reloader>,
    /// Where `/metrics` is served, when started with metrics.
    pub metrics_addr: Option<SocketAddr>,
    _metrics_server: Option<AbortOnDrop>,
}

impl TestServer {
    pub async fn start(policy: &Path) -> Self {
        Self::start_with(policy, ServiceConfig::default(), None).await
    }

    /// Starts a server on `policy`; with `reload`, the file is polled at that interval.
    pub async fn start_with(
        policy: &Path,
        config: ServiceConfig,
        reload: Option<Duration>,
    ) -> Self {
        let (compiled, text) = file::load(policy, 1).unwrap();
        let cache = Cache::new();
        cache.replace_all(compiled, 1);
        let reloader = reload.map(|i| {
            file::spawn_reloader(
                policy.to_owned(),
                cache.clone(),
                i,
                text,
                authz::policy::Limits::default(),
            )
        });
        Self::serve(cache, config, reloader).await
    }

    /// Starts a server following the database, once it has loaded.
    pub async fn start_db(
        follow: authz::store::follow::FollowConfig,
        config: ServiceConfig,
    ) -> (Self, authz::store::follow::Follower) {
        let cache = Cache::new();
        let follower = authz::store::follow::spawn_follower(follow, cache.clone());
        let mut loaded = cache.subscribe();
        tokio::time::timeout(Duration::from_secs(30), loaded.wait_for(Option::is_some))
            .await
            .expect("the follower loaded the database within 30s")
            .unwrap();
        (Self::serve(cache, config, None).await, follower)
    }

    /// Starts a server following the database, once it has loaded, with full server
    /// settings (the admin service, ...).
    pub async fn start_db_configured(
        follow: authz::store::follow::FollowConfig,
        config: server::ServerConfig,
    ) -> (Self, authz::store::follow::Follower) {
        let cache = Cache::new();
        let follower = authz::store::follow::spawn_follower(follow, cache.clone());
        let mut loaded = cache.subscribe();
        tokio::time::timeout(Duration::from_secs(30), loaded.wait_for(Option::is_some))
            .await
            .expect("the follower loaded the database within 30s")
            .unwrap();
        (
            Self::serve_configured(cache, config, None, false).await,
            follower,
        )
    }

    /// Starts a server on `cache` (say, one serving some tenants only) following the
    /// database, once it has loaded, with full server settings.
    pub async fn start_db_in(
        cache: Cache,
        follow: authz::store::follow::FollowConfig,
        config: server::ServerConfig,
    ) -> (Self, authz::store::follow::Follower) {
        let follower = authz::store::follow::spawn_follower(follow, cache.clone());
        let mut loaded = cache.subscribe();
        tokio::time::timeout(Duration::from_secs(30), loaded.wait_for(Option::is_some))
            .await
            .expect("the follower loaded the database within 30s")
            .unwrap();
        (
            Self::serve_configured(cache, config, None, false).await,
            follower,
        )
    }

    /// Serves `cache` (already loaded) with full server settings.
    pub async fn serve_cache(cache: Cache, config: server::ServerConfig) -> Self {
        Self::serve_configured(cache, config, None, false).await
    }

    /// Starts a server on `policy` (not reloaded) with full server settings (Envoy
    /// headers, ...); with `serve_metrics`, also `/metrics` on 127.0.0.1:0.
    pub async fn start_configured(
        policy: &Path,
        config: server::ServerConfig,
        serve_metrics: bool,
    ) -> Self {
        let (compiled, _) = file::load(policy, 1).unwrap();
        let cache = Cache::new();
        cache.replace_all(compiled, 1);
        Self::serve_configured(cache, config, None, serve_metrics).await
    }

    async fn serve(cache: Cache, config: ServiceConfig, reloader: Option<Reloader>) -> Self {
        let config = server::ServerConfig {
            service: config,
            shutdown_grace: Duration::from_secs(5),
            ..server::ServerConfig::default()
        };
        Self::serve_configured(cache, config, reloader, false).await
    }

    async fn serve_configured(
        cache: Cache,
        mut config: server::ServerConfig,
        reloader: Option<Reloader>,
        serve_metrics: bool,
    ) -> Self {
        // Bound before the server task starts: no sleep, no race.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let (metrics_addr, metrics_server) = if serve_metrics {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let metrics_addr = l.local_addr().unwrap();
            let source: Box<dyn PolicySource> = match &reloader {
                Some(r) => Box::new(r.status.clone()),
                None => Box::new(Freshness::default()),
            };
            let m = Metrics::new(cache.clone(), Some(source));
            config.metrics = Some(m.clone());
            (Some(metrics_addr), Some(authz::metrics::http::spawn(l, m)))
        } else {
            (None, None)
        };
        let stop = async {
            let _ = rx.await;
        };
        let handle = tokio::spawn(server::run(listener, cache.clone(), config, stop));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestServer {
            client: AuthorizationServiceClient::new(channel.clone()),
            channel,
            addr,
            cache,
            shutdown: Some(tx),
            handle,
            reloader,
            metrics_addr,
            _metrics_server: metrics_server,
        }
    }

    /// A client of the Envoy authorization service on the same connection.
    pub fn envoy_client(
        &self,
    ) -> envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<Channel>
    {
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            self.channel.clone(),
        )
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .expect("server did not stop within 10s")
            .unwrap()
            .unwrap();
    }
}

/// `GET path` over HTTP/1.1 on a fresh connection: status code, content type, body.
/// Bounded by a timeout.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("HTTP answer within 10s");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("HTTP status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// An expectations file (`examples/policies/*.expect.yaml`), read by the library's
/// parser (the one `authzd test` uses).
#[allow(unused_imports, reason = "each test crate uses part of the harness")]
pub use authz::policy::expect::{Case, ExpectFile as Expectations, Observed};

pub fn expectations(name: &str) -> Expectations {
    let path = example(name);
    let e = Expectations::read(&path).unwrap_or_else(|err| panic!("{err}"));
    assert!(!e.cases.is_empty(), "{name} has no cases");
    e
}

/// What the test harness adds to a case: its `authzd check` arguments.
pub trait CaseExt {
    fn cli_args(&self) -> Vec<String>;
}

impl CaseExt for Case {
    fn cli_args(&self) -> Vec<String> {
        let mut a = vec![
            "--tenant".into(),
            self.tenant.clone(),
            "--subject".into(),
            self.subject.clone(),
            "--scope".into(),
            self.scope.clone(),
        ];
        match (&self.permission, &self.method, &self.path) {
            (Some(p), _, _) => a.extend(["--permission".into(), p.clone()]),
            (None, Some(m), Some(p)) => {
                a.extend(["--method".into(), m.clone(), "--path".into(), p.clone()])
            }
            _ => panic!("case `{}` needs permission or method+path", self.name),
        }
        a
    }
}

/// Asserts every case matched, listing all failures at once.
pub fn assert_all(label: &str, failures: Vec<String>, total: usize) {
    assert!(
        failures.is_empty(),
        "{label}: {} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
