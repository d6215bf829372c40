//! Measures how long a committed write takes to become visible to Check: from the moment
//! the writer's COMMIT returns to the moment the cache has applied that revision.
//!
//! ```sh
//! cargo run --release --example propagation -- postgres://postgres@127.0.0.1:5432/authz_prop 500
//! ```
//!
//! The database is migrated and seeded with one tenant; each round commits one
//! assignment (in its own transaction) and waits for it. The follower's poll interval is
//! set to an hour, so only NOTIFY delivers changes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a measurement tool, not a service"
)]

use std::time::{Duration, Instant};

use authz::{
    cache::Cache,
    store::{
        follow::{FollowConfig, spawn_follower},
        postgres,
    },
};

fn main() {
    let url = std::env::args()
        .nth(1)
        .expect("usage: propagation DATABASE_URL [ROUNDS]");
    let rounds: usize = std::env::args().nth(2).map_or(500, |n| n.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        postgres::migrate(&url).await.unwrap();
        let (mut writer, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        writer
            .batch_execute(
                "DELETE FROM tenants WHERE id = 'prop';
                 INSERT INTO roles (tenant_id, id) VALUES ('', 'prop-viewer') ON CONFLICT DO NOTHING;
                 INSERT INTO tenants VALUES ('prop');",
            )
            .await
            .unwrap();
        let cache = Cache::new();
        let mut config = FollowConfig::new(url.clone());
        config.poll_interval = Duration::from_secs(3600);
        let _follower = spawn_follower(config, cache.clone());
        let mut rx = cache.subscribe();
        rx.wait_for(Option::is_some).await.unwrap();
        let mut latencies = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let tx = writer.transaction().await.unwrap();
            tx.execute("INSERT INTO subjects VALUES ('prop', $1, false)", &[&format!("s{i}")])
                .await
                .unwrap();
            tx.execute(
                "INSERT INTO assignments (tenant_id, subject_id, role_id) VALUES ('prop', $1, 'prop-viewer')",
                &[&format!("s{i}")],
            )
            .await
            .unwrap();
            let revision = tx.query_one("SELECT revision FROM authz_state", &[]).await.unwrap().get::<_, i64>(0) as u64;
            tx.commit().await.unwrap();
            let committed = Instant::now();
            rx.wait_for(|r| r.is_some_and(|r| r >= revision)).await.unwrap();
            latencies.push(committed.elapsed());
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
        println!("rounds {rounds}");
        println!("p50  {:?}", pct(0.50));
        println!("p90  {:?}", pct(0.90));
        println!("p99  {:?}", pct(0.99));
        println!("max  {:?}", latencies.last().unwrap());
    });
}
