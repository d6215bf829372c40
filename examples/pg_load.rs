//! Measures a full load from PostgreSQL: wall time, and resident memory per assignment.
//!
//! ```sh
//! authzd gen-dataset --database-url postgres://postgres@127.0.0.1:5432/authz_bench \
//!   --tenants 10000 --assignments-per-tenant 100
//! cargo run --release --example pg_load -- postgres://postgres@127.0.0.1:5432/authz_bench
//! cargo run --release --example pg_load -- postgres://... 0/2   # one tenant shard of 2
//! ```
//!
//! Resident memory is the process's `VmRSS` after the load minus before it (Linux), so it
//! counts everything the loaded cache keeps resident, including allocator overhead.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a measurement tool, not a service"
)]

use std::time::{Duration, Instant};

use authz::{
    cache::Cache,
    store::follow::{FollowConfig, spawn_follower},
};

fn vm(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let url = std::env::args()
        .nth(1)
        .expect("usage: pg_load DATABASE_URL [SHARD i/n]");
    let filter = std::env::args()
        .nth(2)
        .map_or(authz::shard::TenantFilter::All, |s| {
            authz::shard::TenantFilter::parse_shard(&s).unwrap()
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let before = vm("VmRSS:");
        println!("serving           {filter}");
        let cache = Cache::with_filter(filter);
        let started = Instant::now();
        let mut config = FollowConfig::new(url);
        // Keep the consistency check out of the measurement.
        config.consistency_interval = Duration::from_secs(3600);
        let follower = spawn_follower(config, cache.clone());
        let mut loaded = cache.subscribe();
        loaded.wait_for(Option::is_some).await.unwrap();
        let elapsed = started.elapsed();
        let after = vm("VmRSS:");
        let (mut tenants, mut assignments, mut subjects) = (0usize, 0usize, 0usize);
        cache.for_each_tenant(|id| {
            let t = cache.tenant(id).unwrap();
            tenants += 1;
            assignments += t.assignment_count();
            subjects += t.subjects.len();
        });
        let resident = after.saturating_sub(before);
        println!("revision          {}", cache.revision());
        println!("tenants           {tenants}");
        println!("subjects          {subjects}");
        println!("assignments       {assignments}");
        println!("load time         {:.2} s", elapsed.as_secs_f64());
        println!(
            "resident after    {:.1} MiB (peak {:.1} MiB)",
            after as f64 / 1048576.0,
            vm("VmHWM:") as f64 / 1048576.0
        );
        println!("resident growth   {:.1} MiB", resident as f64 / 1048576.0);
        println!(
            "per assignment    {:.0} bytes",
            resident as f64 / assignments.max(1) as f64
        );
        drop(follower);
    });
}
