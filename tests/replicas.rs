//! Replicas that follow PostgreSQL without a session on the primary, against real
//! components started here: a primary (initdb), a streaming standby of it
//! (`pg_basebackup -R`), PgBouncer in transaction mode in front of the standby and
//! another in front of the primary. Writes go through the admin API of a replica on the
//! primary; replicas following the standby (auto: it polls there), the standby's pooler
//! and the primary's pooler (poll) see every write, read-your-writes with `min_revision`
//! holds across primary → standby → replica, and after the standby is restarted and the
//! pooler killed mid-run, what each replica serves equals what the primary holds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use authz::{
    cache::Cache,
    grpc::{
        PolicyAdmin, ServiceConfig,
        auth::{AdminTokens, file_line},
    },
    pb::{self, policy_admin_service_client::PolicyAdminServiceClient},
    policy::{Action, Query},
    server::ServerConfig,
    store::{
        admin::AdminStore,
        follow::{FollowConfig, FollowMode, Follower},
        postgres::{self, Tenants},
    },
};
use common::{
    TestServer,
    cluster::{Bouncer, Pg, pgbouncer_or_skip, wait_replayed},
};
use tonic::{Code, Request, transport::Channel};

const ROOT: &str = "root-secret-token";
const TENANTS: usize = 8;
const PERMISSIONS: [&str; 2] = ["docs.read", "docs.write"];

fn seed() -> String {
    let mut sql = String::from(
        "INSERT INTO roles (tenant_id, id) VALUES ('', 'viewer'), ('', 'editor');
         INSERT INTO role_permissions VALUES ('', 'viewer', 'docs.read'), ('', 'editor', 'docs.write');
         INSERT INTO role_includes VALUES ('', 'editor', 'viewer', 0);",
    );
    for t in 0..TENANTS {
        sql.push_str(&format!("INSERT INTO tenants VALUES ('t{t}');"));
    }
    sql
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ROOT}").parse().unwrap());
    r
}

fn tenant_of(i: usize) -> String {
    format!("t{}", i % TENANTS)
}

fn assignment(subject: &str, role: &str) -> Option<pb::Assignment> {
    Some(pb::Assignment {
        subject_id: subject.into(),
        role_id: role.into(),
        ..Default::default()
    })
}

/// One write step `i` through the admin API; returns the revision of its last write.
/// Registers `u{i}` with `viewer`; every third step revokes `viewer` from `u{i-3}`,
/// every fifth grants `editor` to `u{i-1}`: inserts, deletes and several entities.
async fn write_step(admin: &mut PolicyAdminServiceClient<Channel>, i: usize) -> u64 {
    let (t, u) = (tenant_of(i), format!("u{i}"));
    admin
        .register_subject(authed(pb::RegisterSubjectRequest {
            tenant_id: t.clone(),
            subject_id: u.clone(),
            disabled: false,
        }))
        .await
        .unwrap();
    let mut rev = admin
        .grant_role(authed(pb::GrantRoleRequest {
            tenant_id: t,
            assignment: assignment(&u, "viewer"),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    if i >= 3 && i.is_multiple_of(3) {
        rev = admin
            .revoke_role(authed(pb::RevokeRoleRequest {
                tenant_id: tenant_of(i - 3),
                assignment: assignment(&format!("u{}", i - 3), "viewer"),
            }))
            .await
            .unwrap()
            .into_inner()
            .revision;
    }
    if i >= 1 && i.is_multiple_of(5) {
        rev = admin
            .grant_role(authed(pb::GrantRoleRequest {
                tenant_id: tenant_of(i - 1),
                assignment: assignment(&format!("u{}", i - 1), "editor"),
            }))
            .await
            .unwrap()
            .into_inner()
            .revision;
    }
    rev
}

struct Replica {
    name: &'static str,
    server: TestServer,
    follower: Follower,
}

async fn replica(name: &'static str, url: String, mode: FollowMode) -> Replica {
    replica_polling(name, url, mode, Duration::from_millis(50)).await
}

async fn replica_polling(
    name: &'static str,
    url: String,
    mode: FollowMode,
    interval: Duration,
) -> Replica {
    let mut follow = FollowConfig::new(url);
    follow.mode = mode;
    follow.poll_interval = interval;
    follow.max_backoff = Duration::from_millis(300);
    let config = ServerConfig {
        service: ServiceConfig {
            revision_wait: Duration::from_secs(3),
            ..ServiceConfig::default()
        },
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let (server, follower) = TestServer::start_db_in(Cache::new(), follow, config).await;
    Replica {
        name,
        server,
        follower,
    }
}

impl Replica {
    async fn check(
        &self,
        tenant: &str,
        subject: &str,
        permission: &str,
        min_revision: u64,
    ) -> Result<pb::CheckResponse, tonic::Status> {
        self.server
            .client
            .clone()
            .check(pb::CheckRequest {
                tenant_id: tenant.into(),
                subject_id: subject.into(),
                scope: String::new(),
                action: Some(pb::check_request::Action::Permission(permission.into())),
                min_revision,
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Every tenant the primary holds at `revision`, compiled afresh, against what `r`
/// serves: the same subjects and assignments, and the same decision and reason for
/// every subject written (`u0..u{subjects}`) and permission.
async fn assert_same_as_primary(r: &Replica, primary_url: &str, revision: u64, subjects: usize) {
    let mut client = postgres::connect(primary_url).await.unwrap();
    let (at, doc) = postgres::read_document(&mut client, Tenants::All)
        .await
        .unwrap();
    assert_eq!(at, revision, "no write after the last one");
    let truth = authz::policy::compile(&doc, "primary", at).unwrap();
    assert_eq!(truth.tenants.len(), TENANTS);
    assert_eq!(r.server.cache.tenant_count(), TENANTS, "{}", r.name);
    for want in &truth.tenants {
        let got = r
            .server
            .cache
            .tenant(&want.id)
            .unwrap_or_else(|| panic!("{}: tenant {} missing", r.name, want.id));
        assert_eq!(
            got.subjects.len(),
            want.subjects.len(),
            "{}: {}",
            r.name,
            want.id
        );
        assert_eq!(
            got.assignment_count(),
            want.assignment_count(),
            "{}: {}",
            r.name,
            want.id
        );
        for i in 0..subjects {
            let subject = format!("u{i}");
            for p in PERMISSIONS {
                let q = Query {
                    subject: &subject,
                    scope: "",
                    action: Action::Permission(p),
                };
                assert_eq!(
                    got.check(&q).reason,
                    want.check(&q).reason,
                    "{}: {} {subject} {p}",
                    r.name,
                    want.id
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_a_standby_and_poolers_see_every_write_through_restarts() {
    let Some(pgbouncer) = pgbouncer_or_skip("replicas_on_a_standby_and_poolers") else {
        return;
    };
    let primary = Pg::primary();
    primary
        .client("postgres")
        .await
        .batch_execute("CREATE DATABASE authz")
        .await
        .unwrap();
    postgres::migrate(&primary.url("authz")).await.unwrap();
    primary
        .client("authz")
        .await
        .batch_execute(&seed())
        .await
        .unwrap();
    let standby = Pg::standby_of(&primary);
    let mut standby_pooler = Bouncer::start(pgbouncer.clone(), standby.port, "authz");
    let primary_pooler = Bouncer::start(pgbouncer, primary.port, "authz");

    // The writer: a replica on the primary with the admin API.
    let tokens = AdminTokens::parse(&file_line(ROOT, "*", Some("root")), "tokens").unwrap();
    let admin_svc = PolicyAdmin::new(
        AdminStore::new(postgres::pool(&primary.url("authz"), 4).unwrap()),
        tokens,
    );
    let (writer, _writer_follower) = TestServer::start_db_configured(
        FollowConfig::new(primary.url("authz")),
        ServerConfig {
            shutdown_grace: Duration::from_secs(5),
            admin: Some(admin_svc),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut admin = PolicyAdminServiceClient::new(writer.channel.clone());

    let on_standby = replica("standby", standby.url("authz"), FollowMode::Auto).await;
    let via_standby_pooler = replica(
        "standby pooler",
        standby_pooler.url("authz"),
        FollowMode::Poll,
    )
    .await;
    let via_primary_pooler = replica(
        "primary pooler",
        primary_pooler.url("authz"),
        FollowMode::Poll,
    )
    .await;
    let replicas = [&on_standby, &via_standby_pooler, &via_primary_pooler];
    // Polls once a minute: only a request waiting for a revision makes it look sooner.
    let slow = replica_polling(
        "slow poll",
        standby_pooler.url("authz"),
        FollowMode::Poll,
        Duration::from_secs(60),
    )
    .await;
    {
        let s = on_standby.follower.status.borrow();
        assert!(s.standby && !s.listening, "auto polls on a standby: {s:?}");
        let s = via_standby_pooler.follower.status.borrow();
        assert!(s.standby && !s.listening, "{s:?}");
        let s = via_primary_pooler.follower.status.borrow();
        assert!(!s.standby && !s.listening, "{s:?}");
    }

    // A request for a revision that never comes: UNAVAILABLE, and it does not keep the
    // slow replica from looking early for the requests after it.
    let far = writer.cache.revision() + 1000;
    let err = slow.check("t0", "u0", "docs.read", far).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // Read-your-writes across primary → standby → replica: a check asking for the
    // revision a write returned waits for it, on every replica.
    let mut next = 0;
    while next < 12 {
        let rev = write_step(&mut admin, next).await;
        for r in replicas.iter().copied().chain([&slow]) {
            let resp = r
                .check(&tenant_of(next), &format!("u{next}"), "docs.read", rev)
                .await
                .unwrap_or_else(|e| panic!("{}: revision {rev}: {e}", r.name));
            assert!(resp.allowed, "{}: {resp:?}", r.name);
            assert!(resp.revision >= rev, "{}: {resp:?} for {rev}", r.name);
        }
        next += 1;
    }
    // Without a request waiting, the slow replica stays where it was.
    let before = slow.server.cache.revision();
    let rev = write_step(&mut admin, next).await;
    next += 1;
    wait_replayed(
        &primary.client("authz").await,
        &standby.client("authz").await,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slow.server.cache.revision(),
        before,
        "no poll before its minute"
    );
    assert!(
        slow.check(
            &tenant_of(next - 1),
            &format!("u{}", next - 1),
            "docs.read",
            rev
        )
        .await
        .unwrap()
        .allowed
    );
    slow.server.stop().await;
    drop(slow.follower);
    // The admin API needs the primary: on a standby a write is a clear precondition.
    let on_standby_store = AdminStore::new(postgres::pool(&standby.url("authz"), 1).unwrap());
    match on_standby_store
        .register_subject("root", "t0", "nobody", false)
        .await
    {
        Err(authz::store::admin::AdminError::Precondition(m)) => {
            assert!(m.contains("primary"), "{m}")
        }
        other => panic!("a write to a standby: {other:?}"),
    }
    // Beyond what the primary has: waits, then UNAVAILABLE, never an answer.
    let far = writer.cache.revision() + 1000;
    let err = on_standby
        .check("t0", "u0", "docs.read", far)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Writes keep coming while the standby restarts and the standby's pooler is killed
    // (and started again a moment later).
    let stop = Arc::new(AtomicBool::new(false));
    let writes = {
        let (stop, mut admin) = (stop.clone(), admin.clone());
        tokio::spawn(async move {
            let mut i = next;
            while !stop.load(Ordering::Relaxed) {
                write_step(&mut admin, i).await;
                i += 1;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let standby = tokio::task::spawn_blocking(move || {
        standby.restart();
        standby
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    standby_pooler.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    standby_pooler.restart();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    assert!(written > next + 5, "writes went on meanwhile ({written})");

    // Everything the primary committed arrives, and equals the primary's state.
    let final_revision = writer.cache.revision().max(
        primary
            .client("authz")
            .await
            .query_one("SELECT revision FROM authz_state", &[])
            .await
            .unwrap()
            .get::<_, i64>(0) as u64,
    );
    wait_replayed(
        &primary.client("authz").await,
        &standby.client("authz").await,
        Duration::from_secs(30),
    )
    .await;
    for r in replicas {
        r.server
            .cache
            .wait_for(final_revision, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\nstandby log:\n{}", r.name, standby.log()));
        assert_same_as_primary(r, &primary.url("authz"), final_revision, written).await;
        let s = r.follower.status.borrow().clone();
        assert!(s.connected, "{}: {s:?}", r.name);
        assert_eq!(
            s.full_loads, 1,
            "{}: caught up from the change log: {s:?}",
            r.name
        );
    }
    let s = on_standby.follower.status.borrow().clone();
    assert!(s.failures >= 1, "the standby's restart was noticed: {s:?}");
    let s = via_standby_pooler.follower.status.borrow().clone();
    assert!(s.failures >= 1, "the pooler's death was noticed: {s:?}");
    // A streaming standby that has replayed everything: current, no lag to speak of.
    for r in [&on_standby, &via_standby_pooler] {
        let lag = r.follower.status.borrow().replay_lag;
        assert!(
            lag.is_some_and(|l| l < Duration::from_secs(5)),
            "{}: {lag:?}",
            r.name
        );
        assert!(
            r.server.cache.staleness() < Duration::from_secs(5),
            "{}",
            r.name
        );
    }

    // The primary goes away: the standby stops streaming, and a replica on it ages by
    // the time since the last commit it replayed (not by its own successful polls).
    let primary = tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let lag = on_standby.follower.status.borrow().replay_lag;
        if lag.is_some_and(|l| l > Duration::from_secs(1)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replay lag after the primary stopped: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        on_standby.server.cache.staleness() > Duration::from_secs(1),
        "{:?}",
        on_standby.server.cache.staleness()
    );
    // It keeps answering from what it has.
    on_standby.check("t0", "u0", "docs.read", 0).await.unwrap();

    for r in [on_standby, via_standby_pooler, via_primary_pooler] {
        r.server.stop().await;
    }
    writer.stop().await;
    drop(standby);
    drop(primary);
}
