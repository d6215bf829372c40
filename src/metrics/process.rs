//! The standard `process_*` metrics (the names every Prometheus client library exports,
//! so the usual dashboards and alerts work), read from `/proc/self` with the `procfs`
//! crate at scrape time. prometheus-client has no process collector of its own.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `process_cpu_seconds_total` | counter | user and system CPU time |
//! | `process_resident_memory_bytes` | gauge | resident set size |
//! | `process_virtual_memory_bytes` | gauge | virtual memory size |
//! | `process_open_fds` | gauge | open file descriptors |
//! | `process_max_fds` | gauge | the soft limit on open file descriptors |
//! | `process_start_time_seconds` | gauge | Unix time the process started |
//!
//! A value `/proc` cannot give (a hardened kernel, another platform) is left out rather
//! than exported as 0; nothing here can fail a scrape.

use procfs::{
    WithCurrentSystemInfo as _,
    process::{LimitValue, Process},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
};

use super::gauge;

/// Reads `/proc/self` on each scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector {
    /// Clock ticks per second (`utime`, `stime` and `starttime` are in ticks).
    ticks_per_second: f64,
    /// Unix time the system booted (`starttime` counts from it); `None` if unreadable.
    boot_time: Option<u64>,
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        // Read once: neither changes while the process runs.
        let ticks_per_second = as_f64(procfs::ticks_per_second());
        ProcessCollector {
            ticks_per_second: ticks_per_second.max(1.0),
            boot_time: procfs::boot_time_secs().ok(),
        }
    }
}

/// Tick counts and byte sizes are far below 2^52: exact as `f64`.
fn as_f64(n: u64) -> f64 {
    n as f64
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(me) = Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let cpu = ConstCounter::new(as_f64(stat.utime + stat.stime) / self.ticks_per_second);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                as_f64(stat.rss_bytes().get()),
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                as_f64(stat.vsize),
            )?;
            if let Some(boot) = self.boot_time {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    as_f64(boot) + as_f64(stat.starttime) / self.ticks_per_second,
                )?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                i64::try_from(fds).unwrap_or(i64::MAX),
            )?;
        }
        if let Ok(limits) = me.limits()
            && let LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                i64::try_from(max).unwrap_or(i64::MAX),
            )?;
        }
        Ok(())
    }
}
