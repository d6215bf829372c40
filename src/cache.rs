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
//!
//! # Which revision an answer claims
//! Every answer is computed on one snapshot and names the revision it holds for
//! ([`Cache::resolve`]). The reader reads the applied revision R first, then loads the
//! tenant's slot. Writers store every tenant's new state before they publish a revision,
//! so a current snapshot loaded after reading R reflects every change up to R: the
//! answer holds at `max(R, snapshot.revision)`. A tenant whose source no longer compiles
//! is [`TenantState::Stale`]: it answers from its last good snapshot at that snapshot's
//! own revision, never a newer one, and fails a `min_revision` beyond it. A removed
//! tenant leaves a [`TenantState::Removed`] marker, so "unknown tenant" is claimed only
//! at or after the revision that removed it.

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

use crate::{
    policy::{Policy, TenantSnapshot},
    shard::TenantFilter,
};

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
    /// The tenant's policy in the source does not compile: it answers from its last good
    /// snapshot, which is older than asked for (or there is none, or it has been stale
    /// for longer than allowed).
    #[error("tenant `{tenant}` cannot be served at the requested revision: {why}")]
    TenantStale {
        /// The tenant.
        tenant: String,
        /// What is wrong, with the compile error.
        why: String,
    },
    /// This replica does not serve the tenant (`--tenants`, `--tenant-shard`): the
    /// request was routed to the wrong replica set. Never "unknown tenant", which would
    /// be a wrong answer.
    #[error(
        "tenant `{tenant}` is not served here (this replica serves {served}); it belongs to {home}"
    )]
    NotServed {
        /// The tenant asked about.
        tenant: String,
        /// What this replica serves (`shard 0/2`, `3 listed tenants`).
        served: String,
        /// Where the tenant is served (`shard 1/2`, or `another replica`).
        home: String,
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

/// What the cache holds for one tenant.
#[derive(Debug)]
pub enum TenantState {
    /// Compiled from the source's current state of the tenant.
    Current(Arc<TenantSnapshot>),
    /// The source's state of the tenant does not compile.
    Stale(Stale),
    /// Removed from the source at `revision`.
    Removed {
        /// The revision that removed it.
        revision: u64,
    },
}

/// A tenant whose source state does not compile (a row written by an older version, a
/// hand-edited row the database's checks did not catch). See [`TenantState::Stale`].
#[derive(Debug)]
pub struct Stale {
    /// The last snapshot that compiled, if any; answers come from it at its revision.
    pub last_good: Option<Arc<TenantSnapshot>>,
    /// The first revision at which the tenant did not compile.
    pub since_revision: u64,
    /// When that was noticed.
    pub since: Instant,
    /// The compile error.
    pub cause: Arc<str>,
}

impl TenantState {
    /// The snapshot answers come from: the current one, or a stale tenant's last good one.
    pub fn snapshot(&self) -> Option<&Arc<TenantSnapshot>> {
        match self {
            TenantState::Current(s) => Some(s),
            TenantState::Stale(st) => st.last_good.as_ref(),
            TenantState::Removed { .. } => None,
        }
    }
}

/// The snapshot a request is answered from, and the revision the answer claims (see the
/// module documentation). Holding it keeps the snapshot alive; it is never mutated.
#[derive(Debug)]
pub struct Resolved {
    state: Option<Guard<Arc<TenantState>>>,
    /// The revision the answer holds at.
    pub revision: u64,
}

impl Resolved {
    /// Whether the answer comes from a stale tenant's last good snapshot (at that
    /// snapshot's own revision, which may be older than the cache's).
    pub fn is_stale(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| matches!(***s, TenantState::Stale(_)))
    }

    /// The tenant's snapshot; `None` for a tenant that does not exist at [`Self::revision`].
    #[inline]
    pub fn snapshot(&self) -> Option<&TenantSnapshot> {
        self.state.as_ref()?.snapshot().map(|s| &**s)
    }
}

/// `Inner::applied` before the first load.
const NOT_LOADED: u64 = u64::MAX;

/// A cheap, cloneable handle to the shared cache.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The tenants this replica serves; requests for others are refused.
    filter: TenantFilter,
    tenants: DashMap<Box<str>, Arc<ArcSwap<TenantState>>, foldhash::fast::RandomState>,
    /// The applied revision; `None` until the first load (an empty database is loaded
    /// at revision 0).
    revision: watch::Sender<Option<u64>>,
    /// The same revision for readers on the request path (a watch borrow takes a lock);
    /// `u64::MAX` until the first load. Written, with Release, only after every tenant of
    /// that revision is stored.
    applied: AtomicU64,
    /// The revision the latest waiting request asked for (0: none yet), sent at every
    /// wait: a polling source looks for it at once instead of at its next poll.
    wanted: watch::Sender<u64>,
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
    /// An empty cache at revision 0 (not loaded), serving every tenant.
    pub fn new() -> Self {
        Cache::with_filter(TenantFilter::All)
    }

    /// An empty cache serving only the tenants `filter` accepts: a source loads only
    /// those, and [`Cache::resolve`] refuses the others ([`FreshnessError::NotServed`]).
    pub fn with_filter(filter: TenantFilter) -> Self {
        Cache {
            inner: Arc::new(Inner {
                filter,
                tenants: DashMap::default(),
                revision: watch::Sender::new(None),
                wanted: watch::Sender::new(0),
                applied: AtomicU64::new(NOT_LOADED),
                confirmed_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// The tenants this replica serves.
    pub fn filter(&self) -> &TenantFilter {
        &self.inner.filter
    }

    /// A tenant's state as stored now (lock-free load of its slot).
    #[inline]
    pub fn lookup(&self, id: &str) -> Option<Guard<Arc<TenantState>>> {
        self.inner.tenants.get(id).map(|slot| slot.load())
    }

    /// A tenant's snapshot to answer from (current, or a stale tenant's last good one);
    /// `None` for an unknown or removed tenant. For tools and tests: requests use
    /// [`Cache::resolve`], which also says which revision the answer claims.
    pub fn tenant(&self, id: &str) -> Option<Arc<TenantSnapshot>> {
        self.lookup(id)?.snapshot().cloned()
    }

    /// The snapshot to answer a request about `tenant` from, and the revision the answer
    /// claims (module documentation, "Which revision an answer claims").
    ///
    /// Errors ([`FreshnessError::TenantStale`], UNAVAILABLE): the tenant's source does not
    /// compile and it has no good snapshot, `min_revision` is beyond its last good one,
    /// or it has been stale for longer than `max_staleness`.
    #[inline]
    pub fn resolve(
        &self,
        tenant: &str,
        min_revision: u64,
        max_staleness: Option<Duration>,
    ) -> Result<Resolved, FreshnessError> {
        if !self.inner.filter.serves(tenant) {
            return Err(self.not_served(tenant));
        }
        // INVARIANT: read before the slot is loaded (see the module documentation).
        let read = self.revision();
        let Some(state) = self.lookup(tenant) else {
            return Ok(Resolved {
                state: None,
                revision: read,
            });
        };
        let revision = match &**state {
            TenantState::Current(s) => s.revision.max(read),
            TenantState::Removed { revision } => {
                return Ok(Resolved {
                    state: None,
                    revision: (*revision).max(read),
                });
            }
            TenantState::Stale(st) => {
                let stale = |why: String| FreshnessError::TenantStale {
                    tenant: tenant.to_owned(),
                    why: format!(
                        "{why}; its policy does not compile since revision {}: {}",
                        st.since_revision, st.cause
                    ),
                };
                let Some(good) = &st.last_good else {
                    return Err(stale("it has no policy that compiles".into()));
                };
                if let Some(max) = max_staleness
                    && st.since.elapsed() > max
                {
                    return Err(stale(format!(
                        "stale for {:?}, longer than the allowed {max:?}",
                        st.since.elapsed()
                    )));
                }
                if min_revision > good.revision {
                    return Err(stale(format!(
                        "revision {min_revision} asked for, its last good policy is at revision {}",
                        good.revision
                    )));
                }
                good.revision
            }
        };
        Ok(Resolved {
            state: Some(state),
            revision,
        })
    }

    /// The error refusing a tenant this replica does not serve.
    #[cold]
    pub fn not_served(&self, tenant: &str) -> FreshnessError {
        FreshnessError::NotServed {
            tenant: tenant.to_owned(),
            served: self.inner.filter.to_string(),
            home: self.inner.filter.home_of(tenant),
        }
    }

    /// The tenants that are stale, with how long each has been.
    pub fn stale_tenants(&self) -> Vec<(String, Duration)> {
        self.inner
            .tenants
            .iter()
            .filter_map(|e| match &**e.value().load() {
                TenantState::Stale(st) => Some((e.key().to_string(), st.since.elapsed())),
                _ => None,
            })
            .collect()
    }

    /// The revision applied last; 0 before the first load.
    #[inline]
    pub fn revision(&self) -> u64 {
        match self.inner.applied.load(Ordering::Acquire) {
            NOT_LOADED => 0,
            r => r,
        }
    }

    /// Whether a policy has been loaded.
    #[inline]
    pub fn is_loaded(&self) -> bool {
        self.inner.applied.load(Ordering::Acquire) != NOT_LOADED
    }

    /// Records that the source confirmed the cache current (a successful load, reload
    /// or catch-up).
    pub fn confirm(&self) {
        let ms = self.inner.epoch.elapsed().as_millis();
        self.inner
            .confirmed_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Records that the source confirmed the cache current as of `lag` ago: a standby
    /// that has replayed the primary's commits up to `lag` ago (its replay lag).
    pub fn confirm_lagging(&self, lag: Duration) {
        let at = self.inner.epoch.elapsed().saturating_sub(lag).as_millis();
        self.inner
            .confirmed_ms
            .store(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Relaxed);
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

    /// Number of tenants served (current or stale; not removed ones).
    pub fn tenant_count(&self) -> usize {
        self.inner
            .tenants
            .iter()
            .filter(|e| !matches!(**e.value().load(), TenantState::Removed { .. }))
            .count()
    }

    /// Replaces the whole policy with `policy` at `revision`: tenants in it (that this
    /// replica serves) are stored
    /// (each atomically), tenants not in it are removed at `revision`, then the revision
    /// is published.
    pub fn replace_all(&self, policy: Policy, revision: u64) {
        let mut keep = std::collections::HashSet::with_capacity(policy.tenants.len());
        // Tenants this replica does not serve are not kept.
        for snapshot in policy
            .tenants
            .into_iter()
            .filter(|t| self.inner.filter.serves(&t.id))
        {
            keep.insert(snapshot.id.clone());
            self.store(snapshot);
        }
        self.retain(|id| keep.contains(id), revision);
        self.publish(revision);
    }

    /// Stores one tenant's new snapshot (the tenant is current again if it was stale).
    pub fn store(&self, snapshot: TenantSnapshot) {
        let id = snapshot.id.clone();
        self.set(&id, TenantState::Current(Arc::new(snapshot)));
    }

    /// Marks a tenant stale: its state at `revision` does not compile (`cause`). It keeps
    /// answering from its last good snapshot at that snapshot's revision. A tenant already
    /// stale keeps the revision and time it became so.
    pub fn mark_stale(&self, id: &str, revision: u64, cause: &str) {
        let state = match self.lookup(id).as_deref().map(|s| &**s) {
            Some(TenantState::Stale(st)) => TenantState::Stale(Stale {
                last_good: st.last_good.clone(),
                since_revision: st.since_revision,
                since: st.since,
                cause: cause.into(),
            }),
            other => TenantState::Stale(Stale {
                last_good: match other {
                    Some(TenantState::Current(s)) => Some(Arc::clone(s)),
                    _ => None,
                },
                since_revision: revision,
                since: Instant::now(),
                cause: cause.into(),
            }),
        };
        self.set(id, state);
    }

    /// Whether the tenant is stale.
    pub fn is_stale(&self, id: &str) -> bool {
        self.lookup(id)
            .is_some_and(|s| matches!(**s, TenantState::Stale(_)))
    }

    fn set(&self, id: &str, state: TenantState) {
        let state = Arc::new(state);
        if let Some(slot) = self.inner.tenants.get(id) {
            slot.store(state);
            return;
        }
        self.inner
            .tenants
            .entry(id.into())
            .and_modify(|slot| slot.store(Arc::clone(&state)))
            .or_insert_with(|| Arc::new(ArcSwap::new(Arc::clone(&state))));
    }

    /// Removes a tenant at `revision` (a marker stays, so that "unknown tenant" is never
    /// claimed for a revision at which it still existed).
    pub fn remove(&self, id: &str, revision: u64) {
        if self.inner.tenants.contains_key(id) {
            self.set(id, TenantState::Removed { revision });
        }
    }

    /// Removes, at `revision`, every tenant `keep` refuses.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool, revision: u64) {
        let mut gone = Vec::new();
        for e in self.inner.tenants.iter() {
            if !keep(e.key()) && !matches!(**e.value().load(), TenantState::Removed { .. }) {
                gone.push(e.key().clone());
            }
        }
        for id in gone {
            self.set(&id, TenantState::Removed { revision });
        }
    }

    /// Calls `f` with every tenant id served (current or stale).
    pub fn for_each_tenant(&self, mut f: impl FnMut(&str)) {
        for entry in self.inner.tenants.iter() {
            if !matches!(**entry.value().load(), TenantState::Removed { .. }) {
                f(entry.key());
            }
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
                // Under the channel's lock, so the two never disagree for long and the
                // atomic never moves backwards.
                self.inner.applied.store(revision, Ordering::Release);
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
        if min > 0 {
            // The latest request, not the highest: one request for a revision that never
            // comes must not hide the ones after it.
            self.inner.wanted.send_replace(min);
        }
        match tokio::time::timeout(wait, rx.wait_for(|r| r.is_some_and(|r| r >= min))).await {
            Ok(Ok(r)) => Ok(r.unwrap_or(0)),
            _ => Err(FreshnessError::RevisionNotReached {
                wanted: min,
                current: self.revision(),
                waited: wait,
            }),
        }
    }

    /// A receiver of the revision the latest waiting request asked for
    /// ([`Cache::wait_for`]); it changes at every wait.
    pub fn wanted(&self) -> watch::Receiver<u64> {
        self.inner.wanted.subscribe()
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
