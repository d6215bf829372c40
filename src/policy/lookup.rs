//! "Who may do this?": the registered subjects a check would allow, in subject id order,
//! a page at a time (LookupSubjects, AuthZEN subject search).
//!
//! Exact by construction: the candidates are a superset of the subjects that could be
//! allowed, and each candidate is decided by [`TenantSnapshot::check`] itself, so the
//! answer agrees with Check for every subject. The candidates come from the roles that
//! could grant (holding the permission, or having a rule or endpoint entry on the path)
//! and the roles whose `includes` reach them, through a per-snapshot index from role to
//! the members and groups it is assigned to, built on first use (linear in assignments)
//! and shared by later lookups on the same snapshot. A lookup then costs the holders of
//! those roles (plus a scan of the roles), not every subject of the tenant — except when
//! a default role grants, or the route is public: then every registered subject is a
//! candidate.

use std::sync::OnceLock;

use super::{
    decision::Reason,
    eval::{Action, Query},
    pattern::PathSegments,
    snapshot::{RoleIdx, RoleSet, TenantSnapshot},
};

/// Per snapshot: for each role (by index), the members (by position in id order) and
/// the groups it is assigned to directly, at any scope.
#[derive(Debug, Default)]
pub struct HolderIndex {
    members: Vec<Vec<u32>>,
    groups: Vec<Vec<u32>>,
}

/// A lazily built [`HolderIndex`]; a new snapshot starts without one.
#[derive(Debug, Default)]
pub struct LazyHolders(OnceLock<HolderIndex>);

impl Clone for LazyHolders {
    /// A copied snapshot's members may differ: the copy builds its own index.
    fn clone(&self) -> Self {
        LazyHolders::default()
    }
}

/// One allowed subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed<'s> {
    /// The subject id.
    pub subject: &'s str,
    /// `Granted` or `Public`.
    pub reason: Reason,
}

/// Most subjects in one page.
pub const MAX_PAGE: usize = 1000;

impl TenantSnapshot {
    fn holders(&self) -> &HolderIndex {
        self.holders.0.get_or_init(|| {
            let n = self.role_count();
            let mut index = HolderIndex {
                members: vec![Vec::new(); n],
                groups: vec![Vec::new(); n],
            };
            for (pos, (_, s)) in self.subjects.iter().enumerate() {
                for a in s.assignments {
                    if let Some(list) = index.members.get_mut(a.role as usize)
                        && list.last() != Some(&(pos as u32))
                    {
                        list.push(pos as u32);
                    }
                }
            }
            for (gi, g) in self.groups.iter().enumerate() {
                for a in g.assignments.iter() {
                    if let Some(list) = index.groups.get_mut(a.role as usize)
                        && list.last() != Some(&(gi as u32))
                    {
                        list.push(gi as u32);
                    }
                }
            }
            index
        })
    }

    /// The roles that could grant `action` themselves (a superset: holding the
    /// permission; having a rule on the path, whatever its method; named by an endpoint
    /// entry on the path), and whether the route is public.
    fn could_grant(&self, action: &Action<'_>) -> (RoleSet, bool) {
        let mut set: Vec<RoleIdx> = Vec::new();
        let mut public = false;
        match *action {
            Action::Permission(p) => {
                for h in [self.builtins.holders.get(p), self.permission_holders.get(p)]
                    .into_iter()
                    .flatten()
                {
                    set.extend(h.iter());
                }
            }
            Action::Route { method, path } => {
                let segments = PathSegments::new(path);
                let mut resolved = false;
                self.endpoint_matcher.find_in(&segments, |group| {
                    for &e in &group.entries {
                        if let Some(ep) = self.endpoints.get(e as usize) {
                            set.extend(ep.role_set.iter());
                            // The entry the router resolves to: public means anyone.
                            if !resolved && ep.methods.contains(method) {
                                resolved = true;
                                public = ep.public;
                            }
                        }
                    }
                    false
                });
                for i in 0..self.role_count() {
                    let i = i as RoleIdx;
                    if self
                        .role(i)
                        .is_some_and(|r| r.matcher.find_in(&segments, |_| true).is_some())
                    {
                        set.push(i);
                    }
                }
            }
        }
        (RoleSet::from_unsorted(set), public)
    }

    /// The registered subjects `check` allows for `action` at `scope`, in subject id
    /// order, after `after` (exclusive; empty: from the start), at most `limit`
    /// (capped at [`MAX_PAGE`]). Returns the page and whether more may follow.
    ///
    /// Every subject listed is one for which [`TenantSnapshot::check`] answers allowed,
    /// and no such subject is left out: a public route lists every registered subject,
    /// disabled ones included, because Check allows them (docs/semantics.md).
    pub fn lookup_subjects(
        &self,
        scope: &str,
        action: Action<'_>,
        after: &str,
        limit: usize,
    ) -> (Vec<Allowed<'_>>, bool) {
        let limit = limit.clamp(1, MAX_PAGE);
        let (grants, public) = self.could_grant(&action);
        // Roles whose closure reaches a role that could grant.
        let assigned: Vec<RoleIdx> = (0..self.role_count() as RoleIdx)
            .filter(|&r| {
                self.role(r)
                    .is_some_and(|role| role.closure_set.intersects(&grants))
            })
            .collect();
        let everyone = public
            || self
                .default_roles
                .iter()
                .any(|d| assigned.binary_search(d).is_ok());
        let start = self.subjects.position_after(after);
        let candidates: Box<dyn Iterator<Item = usize>> = if everyone {
            Box::new(start..self.subjects.len())
        } else {
            let index = self.holders();
            let mut candidates: Vec<u32> = Vec::new();
            for &r in &assigned {
                if let Some(m) = index.members.get(r as usize) {
                    candidates.extend(m.iter().filter(|&&p| p as usize >= start));
                }
                for &g in index.groups.get(r as usize).into_iter().flatten() {
                    if let Some(group) = self.groups.get(g as usize) {
                        for m in group.members.iter() {
                            if let Some(p) = self.subjects.position_of(m)
                                && p >= start
                            {
                                candidates.push(p as u32);
                            }
                        }
                    }
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
            Box::new(candidates.into_iter().map(|p| p as usize))
        };
        let mut out = Vec::new();
        for pos in candidates {
            let Some(id) = self.subjects.id_at_position(pos) else {
                continue;
            };
            let reason = self
                .check(&Query {
                    subject: id,
                    scope,
                    action,
                })
                .reason;
            if reason.allowed() {
                out.push(Allowed {
                    subject: id,
                    reason,
                });
                // One more than asked for says whether more follow.
                if out.len() > limit {
                    break;
                }
            }
        }
        let more = out.len() > limit;
        out.truncate(limit);
        (out, more)
    }
}
