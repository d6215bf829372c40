//! The in-memory policy every replica answers from.
//!
//! `DashMap<tenant id, Arc<ArcSwap<TenantSnapshot>>>`: a check finds its tenant's slot
//! (a short shard read lock inside DashMap, released before evaluation) and `load`s the
//! snapshot from the `ArcSwap`, lock-free; it then evaluates on an immutable snapshot no
//! writer will touch. Writers build whole new snapshots and `store` them, so a reader sees
//! a tenant's policy either entirely before or entirely after a change, never half.
//!
//! Why a map of per-tenant slots rather than one swapped map of all tenants: a change to
//! one tenant replaces that tenant's snapshot alone, without copying thousands of others.
//!
//! The revision the cache has applied is published on a `watch` channel, so a request
//! for "at least revision N" waits for it without polling.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, Guard};
use dashmap::DashMap;
use tokio::sync::watch;

use crate::policy::{Policy, TenantSnapshot};

/// Why a request for a minimum revision could not be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FreshnessError {
    /// Nothing has been loaded yet.
    #[error("the policy is not loaded yet")]
    NotLoaded,
    /// The cache has not been confirmed current for longer than allowed.
    #[error("the policy cache is stale: last confirmed current {age:?} ago (allowed: {max:?})")]
    Stale {
        /// Time since the cache was last confirmed current.
        age: Duration,
        /// The configured limit.
        max: Duration,
    },
    /// The revision was not reached in time.
    #[error("revision {wanted} not reached within {waited:?} (at revision {current})")]
    RevisionNotReached {
        /// Asked for.
        wanted: u64,
        /// The cache's revision.
        current: u64,
        /// How long the request waited.
        waited: Duration,
    },
}

/// A cheap, cloneable handle to the shared cache.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tenants: DashMap<Box<str>, Arc<ArcSwap<TenantSnapshot>>, foldhash::fast::RandomState>,
    /// The applied revision; `None` until the first load (an empty database is loaded
    /// at revision 0).
    revision: watch::Sender<Option<u64>>,
    /// Milliseconds after `epoch` when the source last confirmed the cache current.
    confirmed_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new()
    }
}

impl Cache {
    /// An empty cache at revision 0 (not loaded).
    pub fn new() -> Self {
        Cache {
            inner: Arc::new(Inner {
                tenants: DashMap::default(),
                revision: watch::Sender::new(None),
                confirmed_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// A tenant's current snapshot. The guard keeps it alive; it is never mutated.
    pub fn tenant(&self, id: &str) -> Option<Guard<Arc<TenantSnapshot>>> {
        self.inner.tenants.get(id).map(|slot| slot.load())
    }

    /// The revision applied last; 0 before the first load.
    pub fn revision(&self) -> u64 {
        self.inner.revision.borrow().unwrap_or(0)
    }

    /// Whether a policy has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.inner.revision.borrow().is_some()
    }

    /// Records that the source confirmed the cache current (a successful load, reload
    /// or catch-up).
    pub fn confirm(&self) {
        let ms = self.inner.epoch.elapsed().as_millis();
        self.inner
            .confirmed_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Time since the source last confirmed the cache current.
    pub fn staleness(&self) -> Duration {
        let confirmed = Duration::from_millis(self.inner.confirmed_ms.load(Ordering::Relaxed));
        self.inner.epoch.elapsed().saturating_sub(confirmed)
    }

    /// Fails when the cache has not been confirmed current within `max`.
    pub fn check_staleness(&self, max: Duration) -> Result<(), FreshnessError> {
        let age = self.staleness();
        if age > max {
            Err(FreshnessError::Stale { age, max })
        } else {
            Ok(())
        }
    }

    /// Number of tenants.
    pub fn tenant_count(&self) -> usize {
        self.inner.tenants.len()
    }

    /// Replaces the whole policy with `policy` at `revision`: tenants in it are stored
    /// (each atomically), tenants not in it are removed, then the revision is published.
    pub fn replace_all(&self, policy: Policy, revision: u64) {
        let mut keep = std::collections::HashSet::with_capacity(policy.tenants.len());
        for snapshot in policy.tenants {
            keep.insert(snapshot.id.clone());
            self.store(snapshot);
        }
        self.inner.tenants.retain(|id, _| keep.contains(id));
        self.publish(revision);
    }

    /// Stores one tenant's new snapshot.
    pub fn store(&self, snapshot: TenantSnapshot) {
        let snapshot = Arc::new(snapshot);
        if let Some(slot) = self.inner.tenants.get(&*snapshot.id) {
            slot.store(snapshot);
            return;
        }
        self.inner
            .tenants
            .entry(snapshot.id.clone())
            .and_modify(|slot| slot.store(Arc::clone(&snapshot)))
            .or_insert_with(|| Arc::new(ArcSwap::new(Arc::clone(&snapshot))));
    }

    /// Removes a tenant.
    pub fn remove(&self, id: &str) {
        self.inner.tenants.remove(id);
    }

    /// Keeps only the tenants `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.inner.tenants.retain(|id, _| keep(id));
    }

    /// Calls `f` with every tenant id.
    pub fn for_each_tenant(&self, mut f: impl FnMut(&str)) {
        for entry in self.inner.tenants.iter() {
            f(entry.key());
        }
    }

    /// Publishes the applied revision (never moves backwards) and confirms the cache
    /// current. The first publish marks the cache loaded.
    pub fn publish(&self, revision: u64) {
        self.confirm();
        self.inner.revision.send_if_modified(|r| match r {
            Some(current) if *current >= revision => false,
            _ => {
                *r = Some(revision);
                true
            }
        });
    }

    /// Waits until the cache has applied at least `min` (0: only that something is
    /// loaded), for at most `wait`.
    pub async fn wait_for(&self, min: u64, wait: Duration) -> Result<u64, FreshnessError> {
        let current = *self.inner.revision.borrow();
        match current {
            None if min == 0 => return Err(FreshnessError::NotLoaded),
            Some(r) if r >= min => return Ok(r),
            _ => {}
        }
        let mut rx = self.inner.revision.subscribe();
        match tokio::time::timeout(wait, rx.wait_for(|r| r.is_some_and(|r| r >= min))).await {
            Ok(Ok(r)) => Ok(r.unwrap_or(0)),
            _ => Err(FreshnessError::RevisionNotReached {
                wanted: min,
                current: self.revision(),
                waited: wait,
            }),
        }
    }

    /// A receiver of revision changes (`None` until loaded).
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.inner.revision.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyDocument, compile, source::Format};

    fn policy(tenants: &[&str], revision: u64) -> Policy {
        let yaml = format!(
            "version: 1\ntenants:\n{}",
            tenants
                .iter()
                .map(|t| format!("  - id: {t}\n"))
                .collect::<String>()
        );
        let doc = PolicyDocument::parse(&yaml, Format::Yaml, "t").unwrap();
        compile(&doc, "t", revision).unwrap()
    }

    #[tokio::test]
    async fn replace_all_swaps_tenants_and_publishes() {
        let cache = Cache::new();
        assert_eq!(
            cache.wait_for(0, Duration::ZERO).await,
            Err(FreshnessError::NotLoaded)
        );
        cache.replace_all(policy(&["a", "b"], 1), 1);
        let old = cache.tenant("a").unwrap();
        cache.replace_all(policy(&["a"], 2), 2);
        assert_eq!(old.revision, 1, "a loaded snapshot is never mutated");
        assert_eq!(cache.tenant("a").unwrap().revision, 2);
        assert!(cache.tenant("b").is_none());
        assert_eq!(cache.revision(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_a_revision() {
        let cache = Cache::new();
        cache.replace_all(policy(&["a"], 1), 1);
        let err = cache
            .wait_for(2, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            FreshnessError::RevisionNotReached {
                wanted: 2,
                current: 1,
                ..
            }
        ));
        let c2 = cache.clone();
        let waiter = tokio::spawn(async move { c2.wait_for(2, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        cache.replace_all(policy(&["a"], 2), 2);
        assert_eq!(waiter.await.unwrap(), Ok(2));
        cache.publish(1);
        assert_eq!(cache.revision(), 2, "revisions never move backwards");
    }
}
