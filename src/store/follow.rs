//! Following PostgreSQL: load everything, then keep the cache current from the change
//! log.
//!
//! One background task owns one connection. How it learns of changes ([`FollowMode`]):
//! - **listen**: it LISTENs on `authz_changes`; a notification, or the poll interval as
//!   a safety net, triggers a catch-up. Needs the primary and a session of its own.
//! - **poll**: it looks at the change log every poll interval and nothing else: no
//!   LISTEN, no session state, no named prepared statement (every read is an unnamed,
//!   typed statement inside one short read-only transaction), so it works against a hot
//!   standby and through PgBouncer in transaction mode, where the server connection is
//!   held only for the length of each poll's transaction.
//! - **auto** (the default): asks `pg_is_in_recovery()` at every connect: LISTEN on a
//!   primary, poll on a standby. (Through a transaction pooler in front of a primary it
//!   cannot tell; LISTEN there never hears a notification, so say `poll`.)
//!
//! Either way it catches up from the change log: after the first connection by a full
//! load, after every reconnect from the last applied revision (NOTIFYs sent while
//! disconnected are lost, the change log is not). Each catch-up reads the revision and
//! the changes after the cache's from one snapshot (REPEATABLE READ, read only), so a
//! pooler or balancer handing consecutive reads to different servers cannot make it skip
//! a change; a server behind what was already applied (a standby restarting, or another
//! standby) is never taken for current, nor loaded from, until it catches up.
//!
//! Changes are applied in revision order, each exactly once: member
//! changes (subjects, memberships, assignments) incrementally on a copy of the tenant's
//! member data; anything touching roles, endpoints, default roles or groups by reloading
//! that tenant; built-in roles by reloading everything. A periodic consistency check
//! compares per-tenant counts with the database and reloads any tenant that differs.
//!
//! Only the tenants the cache serves ([`crate::shard::TenantFilter`]) are loaded; changes
//! to other tenants are skipped (built-in roles and global endpoints concern every shard).
//!
//! Staleness ([`crate::cache::Cache::staleness`]) is the time since the source last
//! confirmed the cache current: on a primary, the last catch-up that found nothing newer;
//! on a standby, that moment minus the standby's replay lag: zero while it streams and
//! has replayed everything it received, else the time since the last replayed commit
//! (`pg_last_xact_replay_timestamp()`). A standby cut off from its primary thus ages
//! like a lost connection. During an outage the cache keeps answering; staleness grows
//! and, with `--max-staleness`, checks fail closed past it. Reconnects back off
//! exponentially. A tenant whose rows do not compile is never published: the last good
//! snapshot stays, and the error is logged and kept in [`FollowStatus`].

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, types::Type};
use tracing::{error, info, warn};

use super::{
    file::AbortOnDrop,
    postgres::{
        CHANNEL, StoreError, Tenants, read_document_in, read_limits, read_revision,
        snapshot_transaction, tenant_ids,
    },
};
use crate::{
    cache::Cache,
    policy::{
        compile::{Shared, compile_shared_with, compile_tenant},
        update::{AssignmentChange, MemberChange},
    },
    store::off_runtime,
};

/// How the follower learns of changes (module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FollowMode {
    /// LISTEN for notifications, polling as a safety net (a primary only).
    Listen,
    /// Poll the change log (a standby, a transaction pooler, or a primary).
    Poll,
    /// LISTEN on a primary, poll on a standby (`pg_is_in_recovery()`, at every connect).
    #[default]
    Auto,
}

impl std::str::FromStr for FollowMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "listen" => Ok(FollowMode::Listen),
            "poll" => Ok(FollowMode::Poll),
            "auto" => Ok(FollowMode::Auto),
            _ => Err(format!("`{s}` is not one of `poll`, `listen`, `auto`")),
        }
    }
}

/// How the follower talks to the database.
#[derive(Clone)]
pub struct FollowConfig {
    /// The database URL: a primary, a standby, or a pooler in front of either.
    pub url: String,
    /// LISTEN, poll, or choose by the server's role.
    pub mode: FollowMode,
    /// How often to look for changes without a notification (safety net, and the clock
    /// staleness is measured against).
    pub poll_interval: Duration,
    /// How often to compare per-tenant counts with the database.
    pub consistency_interval: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
}

impl std::fmt::Debug for FollowConfig {
    // The URL's password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowConfig")
            .field("url", &super::postgres::redact_url(&self.url))
            .field("mode", &self.mode)
            .field("poll_interval", &self.poll_interval)
            .field("consistency_interval", &self.consistency_interval)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl FollowConfig {
    /// Defaults for a URL.
    pub fn new(url: impl Into<String>) -> Self {
        FollowConfig {
            url: url.into(),
            mode: FollowMode::Auto,
            poll_interval: Duration::from_millis(200),
            consistency_interval: Duration::from_secs(300),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What the follower is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowStatus {
    /// Whether the connection is up.
    pub connected: bool,
    /// Whether it LISTENs (else it polls).
    pub listening: bool,
    /// Whether the server is a standby (in recovery).
    pub standby: bool,
    /// A standby's replay lag at the last catch-up (module documentation).
    pub replay_lag: Option<Duration>,
    /// Full loads done.
    pub full_loads: u64,
    /// Single-tenant reloads done.
    pub tenant_reloads: u64,
    /// Changes applied incrementally.
    pub incremental_changes: u64,
    /// Tenants found different by the consistency check (and reloaded).
    pub inconsistencies: u64,
    /// The last error (connection or data), if the last attempt failed.
    pub last_error: Option<String>,
    /// When a change from the database was last applied (the first load included).
    pub applied_at: Option<std::time::SystemTime>,
    /// Lost connections, failed loads and tenants that did not compile.
    pub failures: u64,
}

/// The running follower; dropping it stops it.
#[derive(Debug)]
pub struct Follower {
    _task: AbortOnDrop,
    /// Status updates.
    pub status: watch::Receiver<FollowStatus>,
}

/// Starts following the database into `cache`.
pub fn spawn_follower(config: FollowConfig, cache: Cache) -> Follower {
    let (tx, status) = watch::channel(FollowStatus::default());
    let task = tokio::spawn(async move {
        let mut f = Follow {
            config,
            cache,
            status: tx,
            shared: None,
            shared_revision: 0,
            standby: false,
            said_behind: false,
        };
        f.run().await;
    });
    Follower {
        _task: AbortOnDrop(task),
        status,
    }
}

struct Follow {
    config: FollowConfig,
    cache: Cache,
    status: watch::Sender<FollowStatus>,
    /// Compiled built-in roles and global endpoints, once loaded (shared with the
    /// blocking threads tenants are compiled on).
    shared: Option<Arc<Shared>>,
    /// The revision `shared` was read at: a tenant rebuilt later is compiled against it
    /// only while no built-in change has committed since.
    shared_revision: u64,
    /// Whether this session's server is a standby (replay lag measured at catch-ups).
    standby: bool,
    /// Whether "the server is behind" was logged since the last catch-up that was not.
    said_behind: bool,
}

enum Event {
    Notify,
    Closed(String),
}

/// A row of `authz_changes`.
struct Change {
    revision: u64,
    tenant: String,
    entity: String,
    op: String,
    old: Option<Value>,
    new: Option<Value>,
}

const MEMBER_ENTITIES: [&str; 3] = ["subjects", "group_members", "assignments"];

/// The pause before the second early poll for a waiting request; it doubles while it
/// is shorter than the poll interval.
const EARLY_POLL_FIRST: Duration = Duration::from_millis(10);

impl Follow {
    async fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            let Err(e) = self.session().await;
            self.status.send_modify(|s| {
                s.connected = false;
                s.failures += 1;
                s.last_error = Some(e.to_string());
            });
            // A session that ran a while was healthy: start backing off afresh.
            if started.elapsed() > self.config.max_backoff {
                backoff = Duration::from_millis(100);
            }
            let staleness = self.cache.staleness();
            if !self.cache.is_loaded() {
                warn!(cause = %e, retry_in = ?backoff, "cannot load from the database yet; not serving until the first load");
            } else if e.is_retryable() {
                warn!(cause = %e, retry_in = ?backoff, ?staleness, "database connection lost; answering from the cache");
            } else {
                error!(cause = %e, retry_in = ?backoff, ?staleness, "cannot load from the database; answering from the cache");
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// One connection's life: returns only with the error that ended it.
    async fn session(&mut self) -> Result<Infallible, StoreError> {
        // The TLS files are read at every connect: a renewed CA is used from the next on.
        let (mut pg, tls) = super::pgtls::connect_config(&self.config.url)?;
        // So operators can find the listener in pg_stat_activity.
        if pg.get_application_name().is_none() {
            pg.application_name("authzd");
        }
        let (mut client, mut connection) = pg.connect(tls).await?;
        let (tx, mut events) = mpsc::unbounded_channel();
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = tx.send(Event::Notify);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Event::Closed(e.to_string()));
                        return;
                    }
                }
            }
            let _ = tx.send(Event::Closed("connection closed".into()));
        }));
        self.standby = client
            .query_typed_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        let listen = match self.config.mode {
            FollowMode::Listen => true,
            FollowMode::Poll => false,
            FollowMode::Auto => !self.standby,
        };
        if listen {
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        }
        // Listening first, then catching up: nothing committed after this point can be
        // missed, and anything before it is in the change log.
        match self.shared {
            None => self.full_load(&mut client).await?,
            Some(_) => self.catch_up(&mut client).await?,
        }
        let standby = self.standby;
        self.status.send_modify(|s| {
            s.connected = true;
            s.listening = listen;
            s.standby = standby;
            s.last_error = None;
        });
        info!(
            revision = self.cache.revision(),
            tenants = self.cache.tenant_count(),
            serving = %self.cache.filter(),
            how = if listen { "listen" } else { "poll" },
            standby,
            poll_interval = ?self.config.poll_interval,
            "following the database"
        );
        let mut poll = tokio::time::interval(self.config.poll_interval);
        let mut consistency = tokio::time::interval(self.config.consistency_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        consistency.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        consistency.tick().await;
        // Polling: a request waiting for a newer revision (`min_revision`) has the cache
        // look at once, and again after 10 ms, 20 ms, ... while the pause is shorter
        // than the poll interval, until it has that revision, rather than at the next
        // tick: read-your-writes then waits for the standby's replay, not for the
        // interval. A request for a revision that never comes costs a few polls, not a
        // faster poll rate. Under LISTEN the notification does this.
        let mut wanted = self.cache.wanted();
        wanted.mark_unchanged();
        let mut early: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            let early_at = early.map_or_else(tokio::time::Instant::now, |(at, _)| at);
            tokio::select! {
                Ok(()) = wanted.changed(), if !listen => {
                    if *wanted.borrow_and_update() > self.cache.revision() && early.is_none() {
                        early = Some((tokio::time::Instant::now(), EARLY_POLL_FIRST));
                    }
                }
                _ = tokio::time::sleep_until(early_at), if early.is_some() => {
                    self.catch_up(&mut client).await?;
                    early = match early {
                        Some((_, wait))
                            if wait < self.config.poll_interval
                                && *wanted.borrow() > self.cache.revision() =>
                        {
                            Some((tokio::time::Instant::now() + wait, wait * 2))
                        }
                        _ => None,
                    };
                }
                event = events.recv() => match event {
                    Some(Event::Notify) => {
                        // Several notifications may be queued: one catch-up covers them.
                        while let Ok(Event::Notify) = events.try_recv() {}
                        self.catch_up(&mut client).await?;
                    }
                    Some(Event::Closed(why)) => return Err(closed(why)),
                    None => return Err(closed("connection task ended".into())),
                },
                _ = poll.tick() => self.catch_up(&mut client).await?,
                _ = consistency.tick() => self.consistency_check(&mut client).await?,
            }
        }
    }

    /// Loads every tenant and publishes the revision read with them. Tenants are read in
    /// batches from one snapshot, and each batch compiled before the next is read, so only
    /// one batch's rows are ever held as a document.
    async fn full_load(&mut self, client: &mut Client) -> Result<(), StoreError> {
        const BATCH: usize = 250;
        let started = std::time::Instant::now();
        let tx = snapshot_transaction(client).await?;
        let revision = read_revision(&tx).await?;
        self.not_behind(revision)?;
        let filter = self.cache.filter().clone();
        let mut ids = tenant_ids(&tx).await?;
        ids.retain(|id| filter.serves(id));
        let none: [String; 0] = [];
        let shared_doc = read_document_in(&tx, Tenants::Only(&none)).await?;
        let limits = read_limits(&tx).await?;
        // Compiling is CPU work: on blocking threads (`store::off_runtime`), never on the
        // runtime that answers Checks.
        let shared = Arc::new(
            off_runtime(move || {
                compile_shared_with(&shared_doc.roles, &shared_doc.endpoints, "database", limits)
            })
            .await??,
        );
        let mut failed = 0usize;
        for batch in ids.chunks(BATCH) {
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                continue;
            };
            // A range scan for a contiguous batch of all tenants; a shard's batch is
            // scattered over the id space, so it is named.
            let doc = if filter.is_all() {
                read_document_in(&tx, Tenants::Between(first, last)).await?
            } else {
                read_document_in(&tx, Tenants::Only(batch)).await?
            };
            let compiled = {
                let shared = Arc::clone(&shared);
                off_runtime(move || {
                    doc.tenants
                        .iter()
                        .map(|t| {
                            compile_tenant(&shared, t, "database", revision)
                                .map_err(|e| (t.id.clone(), e))
                        })
                        .collect::<Vec<_>>()
                })
                .await?
            };
            for result in compiled {
                match result {
                    Ok(s) => self.cache.store(s),
                    Err((id, e)) => {
                        failed += 1;
                        self.tenant_failed(&id, revision, &e);
                    }
                }
            }
        }
        tx.commit().await?;
        let seen: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.cache.retain(|id| seen.contains(id), revision);
        self.shared = Some(shared);
        self.shared_revision = revision;
        self.cache.publish(revision);
        self.status.send_modify(|s| {
            s.full_loads += 1;
            s.applied_at = Some(std::time::SystemTime::now());
        });
        info!(revision, tenants = ids.len(), failed, elapsed = ?started.elapsed(), "loaded from the database");
        Ok(())
    }

    /// Rebuilds one tenant from the database (or removes it, if it is gone), from one
    /// snapshot. Returns true if it loaded everything instead: when a built-in change
    /// has committed since the built-in roles were compiled, the tenant's rows at this
    /// snapshot must not be compiled against the older built-ins (the snapshot would
    /// claim a revision whose built-in roles it does not have).
    async fn reload_tenant(
        &mut self,
        client: &mut Client,
        tenant: &str,
    ) -> Result<bool, StoreError> {
        if self.shared.is_none() {
            self.full_load(client).await?;
            return Ok(true);
        }
        let tx = snapshot_transaction(client).await?;
        let revision = read_revision(&tx).await?;
        self.not_behind(revision)?;
        let builtins_changed: bool = tx
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM authz_changes WHERE tenant_id = '' AND revision > $1)",
                &[(&to_i64(self.shared_revision), Type::INT8)],
            )
            .await?
            .get(0);
        if builtins_changed {
            tx.commit().await?;
            info!(
                tenant,
                "built-in roles changed since they were loaded; reloading everything"
            );
            self.full_load(client).await?;
            return Ok(true);
        }
        let only = [tenant.to_owned()];
        let doc = read_document_in(&tx, Tenants::Only(&only)).await?;
        tx.commit().await?;
        let Some(shared) = self.shared.clone() else {
            self.full_load(client).await?;
            return Ok(true);
        };
        let Some(t) = doc.tenants.into_iter().find(|t| t.id == tenant) else {
            self.cache.remove(tenant, revision);
            self.status.send_modify(|s| s.tenant_reloads += 1);
            return Ok(false);
        };
        let compiled =
            off_runtime(move || compile_tenant(&shared, &t, "database", revision)).await?;
        match compiled {
            Ok(s) => {
                if self.cache.is_stale(tenant) {
                    info!(
                        tenant,
                        revision, "tenant compiles again; serving it current"
                    );
                }
                self.cache.store(s)
            }
            Err(e) => self.tenant_failed(tenant, revision, &e),
        }
        self.status.send_modify(|s| s.tenant_reloads += 1);
        Ok(false)
    }

    /// A tenant's rows at `revision` do not compile: it goes stale (answers from its last
    /// good snapshot at that snapshot's revision, or UNAVAILABLE without one); logged,
    /// counted, and kept in the status.
    fn tenant_failed(&mut self, tenant: &str, revision: u64, e: &crate::policy::CompileError) {
        let last_good = self.cache.tenant(tenant).map(|s| s.revision);
        error!(
            tenant, revision, ?last_good, cause = %e,
            "tenant does not compile; serving its last good policy at its own revision (UNAVAILABLE for newer min_revision, or without one)"
        );
        self.cache.mark_stale(tenant, revision, &e.to_string());
        self.status.send_modify(|s| {
            s.failures += 1;
            s.last_error = Some(e.to_string());
        });
    }

    /// Refuses to load from a server whose snapshot is older than what the cache has
    /// applied (a standby restarting, or a balancer switching to a standby further
    /// behind): its rows would undo changes already served. Retried after a backoff.
    fn not_behind(&self, revision: u64) -> Result<(), StoreError> {
        let applied = self.cache.revision();
        if self.cache.is_loaded() && revision < applied {
            return Err(StoreError::Behind { revision, applied });
        }
        Ok(())
    }

    /// Applies every change after the cache's revision, in order, then publishes. Each
    /// round reads the revision and the changes up to it from one snapshot.
    async fn catch_up(&mut self, client: &mut Client) -> Result<(), StoreError> {
        // A database (or pooler) that stops answering mid-session would otherwise hold
        // the poll forever, with the connection still counted as up: the position read
        // (one short query) gets at most this long, then the follower reconnects.
        let answer_within = (self.config.poll_interval * 5).max(Duration::from_secs(10));
        loop {
            let from = self.cache.revision();
            let position = tokio::time::timeout(answer_within, async {
                let tx = snapshot_transaction(client).await?;
                let position = read_position(&tx, self.standby).await?;
                Ok::<_, StoreError>((tx, position))
            })
            .await
            .map_err(|_| {
                closed(format!(
                    "no answer from the database within {}; reconnecting",
                    humantime::format_duration(answer_within)
                ))
            })?;
            let (tx, (target, lag)) = position?;
            if target < from {
                tx.commit().await?;
                // Not current: nothing is confirmed until the server catches up.
                if !self.said_behind {
                    warn!(
                        server = target,
                        applied = from,
                        "the database is behind the revision already applied (a standby restarting?); waiting for it"
                    );
                    self.said_behind = true;
                }
                return Ok(());
            }
            self.said_behind = false;
            if target == from {
                tx.commit().await?;
                match lag {
                    Some(lag) => self.cache.confirm_lagging(lag),
                    None => self.cache.confirm(),
                }
                if self.standby {
                    self.status.send_if_modified(|s| {
                        let changed = s.replay_lag != lag;
                        s.replay_lag = lag;
                        changed
                    });
                }
                return Ok(());
            }
            // The change log may have been pruned past what this replica has applied.
            if !super::postgres::log_reaches_back(super::postgres::oldest_change(&tx).await?, from)
            {
                tx.commit().await?;
                warn!(
                    from,
                    target,
                    "the change log no longer reaches back to the cache's revision; reloading everything"
                );
                return self.full_load(client).await;
            }
            // Bounded batches: a long outage does not become one huge result.
            let upto = target.min(from + 500);
            let rows = tx
                .query_typed(
                    "SELECT revision, tenant_id, entity, op, old, new FROM authz_changes
                      WHERE revision > $1 AND revision <= $2 ORDER BY revision, seq",
                    &[(&to_i64(from), Type::INT8), (&to_i64(upto), Type::INT8)],
                )
                .await?;
            tx.commit().await?;
            let filter = self.cache.filter();
            let changes: Vec<Change> = rows
                .iter()
                .map(|r| Change {
                    revision: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                    tenant: r.get(1),
                    entity: r.get(2),
                    op: r.get(3),
                    old: r.get(4),
                    new: r.get(5),
                })
                // Another shard's tenants are not held here; the built-in roles ('')
                // concern every tenant.
                .filter(|c| c.tenant.is_empty() || filter.serves(&c.tenant))
                .collect();
            if self.apply(client, &changes).await? {
                // Everything was reloaded at a newer revision.
                continue;
            }
            self.cache.publish(upto);
            self.status
                .send_modify(|s| s.applied_at = Some(std::time::SystemTime::now()));
        }
    }

    /// Applies a batch; returns true if it did a full load instead.
    async fn apply(&mut self, client: &mut Client, changes: &[Change]) -> Result<bool, StoreError> {
        if changes.iter().any(|c| c.tenant.is_empty()) {
            info!("built-in roles or global endpoints changed; reloading everything");
            self.full_load(client).await?;
            return Ok(true);
        }
        // Per tenant, in order of first appearance.
        let mut order: Vec<&str> = Vec::new();
        let mut by_tenant: HashMap<&str, Vec<&Change>> = HashMap::new();
        for c in changes {
            by_tenant
                .entry(&c.tenant)
                .or_insert_with(|| {
                    order.push(&c.tenant);
                    Vec::new()
                })
                .push(c);
        }
        for tenant in order {
            let list = by_tenant.remove(tenant).unwrap_or_default();
            // Only a current tenant takes incremental changes: a stale one's last good
            // snapshot misses the change that broke it, so it is rebuilt from the database.
            let current = self.cache.lookup(tenant).and_then(|st| match &**st {
                crate::cache::TenantState::Current(s) => Some(std::sync::Arc::clone(s)),
                _ => None,
            });
            // Skip what the tenant's snapshot already reflects (it may have been reloaded
            // at a newer revision than this batch).
            let applied = current.as_ref().map_or(0, |s| s.revision);
            let pending: Vec<&Change> = list.into_iter().filter(|c| c.revision > applied).collect();
            let Some(last) = pending.last().map(|c| c.revision) else {
                continue;
            };
            // An UPDATE of an assignment or membership moves it; applied as revoke + grant
            // it would land after rows it precedes in a fresh load (and explanations name
            // the first grant found), so such a change rebuilds the tenant.
            let member_only = pending.iter().all(|c| {
                MEMBER_ENTITIES.contains(&c.entity.as_str())
                    && (c.op != "UPDATE" || c.entity == "subjects")
            });
            let updated = match (&current, member_only) {
                (Some(snapshot), true) => {
                    let member_changes: Vec<MemberChange> =
                        pending.iter().flat_map(|c| member_changes(c)).collect();
                    match snapshot.with_member_changes(&member_changes, last) {
                        Ok(s) => {
                            self.status.send_modify(|st| {
                                st.incremental_changes += member_changes.len() as u64
                            });
                            Some(s)
                        }
                        Err(e) => {
                            info!(tenant, cause = %e, "reloading the tenant");
                            None
                        }
                    }
                }
                _ => None,
            };
            match updated {
                Some(s) => self.cache.store(s),
                None => {
                    drop(current);
                    if self.reload_tenant(client, tenant).await? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Compares per-tenant counts with the database at the cache's revision; reloads
    /// tenants that differ.
    async fn consistency_check(&mut self, client: &mut Client) -> Result<(), StoreError> {
        self.catch_up(client).await?;
        let tx = snapshot_transaction(client).await?;
        let revision = to_i64(read_revision(&tx).await?);
        if u64::try_from(revision).unwrap_or(0) != self.cache.revision() {
            // A write landed since the catch-up; check again next time.
            return Ok(());
        }
        let rows = tx
            .query_typed(
                "SELECT t.id,
                        (SELECT count(*) FROM subjects s WHERE s.tenant_id = t.id),
                        (SELECT count(*) FROM assignments a WHERE a.tenant_id = t.id),
                        (SELECT count(*) FROM groups g WHERE g.tenant_id = t.id),
                        (SELECT count(*) FROM roles r WHERE r.tenant_id = t.id)
                   FROM tenants t WHERE t.id <> ''",
                &[],
            )
            .await?;
        tx.commit().await?;
        let mut differ: Vec<String> = Vec::new();
        let mut in_db = std::collections::HashSet::new();
        let filter = self.cache.filter().clone();
        for r in &rows {
            let id: String = r.get(0);
            if !filter.serves(&id) {
                continue;
            }
            let counts: [i64; 4] = [r.get(1), r.get(2), r.get(3), r.get(4)];
            let same = self.cache.tenant(&id).is_some_and(|s| {
                let mine = [
                    s.subjects.len(),
                    s.assignment_count(),
                    s.groups.len(),
                    s.custom.len(),
                ];
                mine.iter().zip(counts).all(|(&m, d)| to_i64(m as u64) == d)
            });
            if !same {
                differ.push(id.clone());
            }
            in_db.insert(id);
        }
        let mut gone = Vec::new();
        self.cache.for_each_tenant(|id| {
            if !in_db.contains(id) {
                gone.push(id.to_owned());
            }
        });
        let at = u64::try_from(revision).unwrap_or(0);
        for id in &gone {
            warn!(tenant = %id, "consistency check: tenant is gone from the database; removing it");
            self.cache.remove(id, at);
        }
        for id in &differ {
            warn!(tenant = %id, "consistency check: cache differs from the database; reloading the tenant");
            if self.reload_tenant(client, id).await? {
                break;
            }
        }
        let n = (differ.len() + gone.len()) as u64;
        if n > 0 {
            self.status.send_modify(|s| s.inconsistencies += n);
        }
        Ok(())
    }
}

/// The member-level changes a change-log row stands for.
fn member_changes(c: &Change) -> Vec<MemberChange> {
    let s = |v: &Option<Value>, k: &str| -> Option<String> {
        v.as_ref()?.get(k)?.as_str().map(str::to_owned)
    };
    let assignment = |v: &Option<Value>| -> Option<AssignmentChange> {
        Some(AssignmentChange {
            subject: s(v, "subject_id"),
            group: s(v, "group_id"),
            role: s(v, "role_id")?,
            scope: s(v, "scope").unwrap_or_default(),
        })
    };
    let mut out = Vec::new();
    match c.entity.as_str() {
        "subjects" => match c.op.as_str() {
            "DELETE" => out.extend(s(&c.old, "id").map(|id| MemberChange::DeleteSubject { id })),
            _ => out.extend(s(&c.new, "id").map(|id| {
                MemberChange::UpsertSubject {
                    id,
                    disabled: c
                        .new
                        .as_ref()
                        .and_then(|v| v.get("disabled"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }
            })),
        },
        "group_members" => {
            if c.op != "INSERT"
                && let (Some(group), Some(subject)) =
                    (s(&c.old, "group_id"), s(&c.old, "subject_id"))
            {
                out.push(MemberChange::RemoveMember { group, subject });
            }
            if c.op != "DELETE"
                && let (Some(group), Some(subject)) =
                    (s(&c.new, "group_id"), s(&c.new, "subject_id"))
            {
                out.push(MemberChange::AddMember { group, subject });
            }
        }
        "assignments" => {
            if c.op != "INSERT" {
                out.extend(assignment(&c.old).map(MemberChange::Revoke));
            }
            if c.op != "DELETE" {
                out.extend(assignment(&c.new).map(MemberChange::Grant));
            }
        }
        _ => {}
    }
    out
}

/// The revision the transaction's snapshot reflects, and on a standby its replay lag
/// (module documentation): zero once the server is no longer in recovery (a promoted
/// standby is a primary: current by definition), or while its WAL receiver runs
/// (streaming, or a status this role may not see) and it has replayed all it received
/// (after a restart the receiver starts at a segment boundary behind what was already
/// replayed: receive <= replay, not only equal); else the time since the last commit it
/// replayed (or since it started, if none).
async fn read_position(
    tx: &tokio_postgres::Transaction<'_>,
    standby: bool,
) -> Result<(u64, Option<Duration>), StoreError> {
    if !standby {
        return Ok((read_revision(tx).await?, None));
    }
    let row = tx
        .query_typed_one(
            "SELECT s.revision,
                    CASE WHEN NOT pg_is_in_recovery() THEN 0
                         WHEN (pg_last_wal_receive_lsn() IS NULL
                               OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn())
                          AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver
                                       WHERE status IS NULL OR status = 'streaming')
                         THEN 0
                         ELSE extract(epoch FROM now() - coalesce(pg_last_xact_replay_timestamp(),
                                                                  pg_postmaster_start_time()))
                    END::float8
               FROM authz_state s",
            &[],
        )
        .await?;
    let revision = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    let lag: f64 = row.get(1);
    Ok((
        revision,
        Some(Duration::try_from_secs_f64(lag.max(0.0)).unwrap_or(Duration::MAX)),
    ))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn closed(why: String) -> StoreError {
    StoreError::Closed(why)
}

/// Up to +25%, so replicas that lost the database together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
