//! Replicas following a standby or a pooler by polling: propagation delay and database
//! load. `scripts/bench-replicas.sh` sets up the servers and runs both; results in
//! `docs/benchmarks.md`.
//!
//! ```text
//! replicas lag PRIMARY_URL FOLLOW_URL INTERVAL_MS WRITES [wait]
//! replicas load FOLLOW_URL STATS_URL POSTMASTER_PID FOLLOWERS SECONDS INTERVAL_MS [PGBOUNCER_PID]
//! ```
//!
//! `lag`: one poll follower on FOLLOW_URL (a standby, or a pooler in front of one);
//! WRITES single-row writes on the primary, each after a random pause of up to one poll
//! interval (so writes fall anywhere in the poll cycle); for each, the time from the
//! primary's commit returning to the follower's cache holding its revision. Prints
//! p50/p90/p99/max. By default it watches the revision passively (propagation); with
//! `wait` it waits as a request with `min_revision` does (`Cache::wait_for`, which has a
//! polling follower look at once: read-your-writes).
//!
//! `load`: FOLLOWERS poll followers on FOLLOW_URL, each with its own connection and
//! cache, polling every INTERVAL_MS for SECONDS with no writes; reports the followed
//! server's committed transactions per second (`pg_stat_database.xact_commit` of the
//! database, read through STATS_URL, a direct connection) and the CPU time of the
//! PostgreSQL server (the postmaster POSTMASTER_PID and its children, from /proc), and of
//! PgBouncer when its pid is given.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement tool, not a service"
)]

use std::time::{Duration, Instant};

use authz::{
    cache::Cache,
    store::follow::{FollowConfig, FollowMode, Follower, spawn_follower},
};
use tokio_postgres::NoTls;

fn follower(url: &str, interval: Duration) -> (Cache, Follower) {
    let cache = Cache::new();
    let mut config = FollowConfig::new(url);
    config.mode = FollowMode::Poll;
    config.poll_interval = interval;
    config.consistency_interval = Duration::from_secs(3600);
    let f = spawn_follower(config, cache.clone());
    (cache, f)
}

async fn loaded(cache: &Cache) {
    let mut rx = cache.subscribe();
    tokio::time::timeout(Duration::from_secs(300), rx.wait_for(Option::is_some))
        .await
        .expect("loaded within 300 s")
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn lag(primary: &str, follow: &str, interval: Duration, writes: usize, wait: bool) {
    let (client, conn) = tokio_postgres::connect(primary, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("INSERT INTO tenants VALUES ('lagbench') ON CONFLICT DO NOTHING")
        .await
        .unwrap();
    let (cache, _f) = follower(follow, interval);
    loaded(&cache).await;
    let lsn0: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let run = std::process::id();
    // A small LCG: the pauses need no more randomness than this.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d ^ u64::from(run);
    let mut delays = Vec::with_capacity(writes);
    for i in 0..writes {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let pause = interval.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
        tokio::time::sleep(pause).await;
        // Autocommit: the write is committed when this returns.
        client
            .execute(
                "INSERT INTO subjects (tenant_id, id) VALUES ('lagbench', $1)",
                &[&format!("lag-{run}-{i}")],
            )
            .await
            .unwrap();
        let committed = Instant::now();
        // The only writer: the revision now is this write's.
        let revision: i64 = client
            .query_one("SELECT revision FROM authz_state", &[])
            .await
            .unwrap()
            .get(0);
        if wait {
            cache
                .wait_for(revision as u64, Duration::from_secs(60))
                .await
                .unwrap();
        } else {
            let mut rx = cache.subscribe();
            rx.wait_for(|r| r.is_some_and(|r| r >= revision as u64))
                .await
                .unwrap();
        }
        delays.push(committed.elapsed());
    }
    // Everything the primary logged meanwhile, per write (the write, its change-log row,
    // the revision bump, and what little else ran).
    let wal: f64 = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
            &[&lsn0],
        )
        .await
        .unwrap()
        .get(0);
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "poll {:>5} ms  {}  writes {writes}  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  WAL {:.0} B/write",
        interval.as_millis(),
        if wait { "min_revision" } else { "propagation" },
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.9)),
        ms(percentile(&delays, 0.99)),
        ms(*delays.last().unwrap()),
        wal / writes as f64,
    );
}

/// CPU time of `pid` and its children, live and exited, in seconds: utime + stime of
/// each, plus the parent's cutime + cstime (children it has reaped; PostgreSQL backends
/// that ended).
fn cpu_seconds(pid: i32) -> f64 {
    let tps = procfs::ticks_per_second() as f64;
    let mut ticks = 0i64;
    for p in procfs::process::all_processes().unwrap().flatten() {
        if let Ok(stat) = p.stat() {
            if stat.pid == pid {
                ticks += (stat.utime + stat.stime) as i64 + stat.cutime + stat.cstime;
            } else if stat.ppid == pid {
                ticks += (stat.utime + stat.stime) as i64;
            }
        }
    }
    ticks as f64 / tps
}

async fn xact_commit(stats: &tokio_postgres::Client) -> i64 {
    stats
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[allow(clippy::too_many_arguments, reason = "a command line")]
async fn load(
    follow: &str,
    stats_url: &str,
    postmaster: i32,
    n: usize,
    seconds: u64,
    interval: Duration,
    pgbouncer: Option<i32>,
) {
    let (stats, conn) = tokio_postgres::connect(stats_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut followers = Vec::new();
    for _ in 0..n {
        followers.push(follower(follow, interval));
    }
    for (cache, _) in &followers {
        loaded(cache).await;
    }
    // Let the initial loads' work settle out of the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // pg_stat_database is updated by backends at most every 500 ms (PGSTAT_MIN_INTERVAL
    // in 15) and read from a snapshot per transaction: a fresh read each time.
    let x0 = xact_commit(&stats).await;
    let c0 = cpu_seconds(postmaster);
    let b0 = pgbouncer.map(cpu_seconds);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let x1 = xact_commit(&stats).await;
    let c1 = cpu_seconds(postmaster);
    let b1 = pgbouncer.map(cpu_seconds);
    let secs = t0.elapsed().as_secs_f64();
    // Our own stats reads are two of the transactions.
    let tps = (x1 - x0 - 1) as f64 / secs;
    let cpu = (c1 - c0) / secs * 100.0;
    print!(
        "followers {n:>3}  poll {} ms  transactions/s {tps:.1} (expected {:.1})  postgres CPU {cpu:.1} % of one core ({:.0} µs per transaction)",
        interval.as_millis(),
        n as f64 * 1000.0 / interval.as_millis() as f64,
        (c1 - c0) / ((x1 - x0).max(1) as f64) * 1e6,
    );
    if let (Some(b0), Some(b1)) = (b0, b1) {
        print!("  pgbouncer CPU {:.1} %", (b1 - b0) / secs * 100.0);
    }
    println!();
    drop(followers);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: replicas lag PRIMARY_URL FOLLOW_URL INTERVAL_MS WRITES [wait]\n       replicas load FOLLOW_URL STATS_URL POSTMASTER_PID FOLLOWERS SECONDS INTERVAL_MS [PGBOUNCER_PID]";
    let ms = |s: &str| Duration::from_millis(s.parse().expect(usage));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("lag") if args.len() == 6 || args.get(6).is_some_and(|a| a == "wait") => {
            rt.block_on(lag(
                &args[2],
                &args[3],
                ms(&args[4]),
                args[5].parse().expect(usage),
                args.len() == 7,
            ))
        }
        Some("load") if args.len() >= 8 => rt.block_on(load(
            &args[2],
            &args[3],
            args[4].parse().expect(usage),
            args[5].parse().expect(usage),
            args[6].parse().expect(usage),
            ms(&args[7]),
            args.get(8).map(|p| p.parse().expect(usage)),
        )),
        _ => {
            eprintln!("{usage}");
            std::process::exit(64);
        }
    }
}
