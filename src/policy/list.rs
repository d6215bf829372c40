//! What a subject may do at a scope: effective roles and where each comes from, named
//! permissions, route rules, callable endpoint entries, and the scopes below where the
//! subject holds more. What a UI needs to hide what the user may not do.
//!
//! Listings allocate freely; they are not on the Check path.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    decision::{GrantRef, GrantView, Reason},
    snapshot::{RoleIdx, TenantSnapshot},
};
use crate::model::{MethodSet, scope_covers};

/// A subject's effective grants at a scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// `Granted` for an active member; else why the lists are empty.
    pub reason: Option<Reason>,
    /// Effective roles, sorted by id, each with how it is held.
    pub roles: Vec<ListedRole>,
    /// Named permissions, sorted.
    pub permissions: Vec<String>,
    /// Route rules of the effective roles: (role, methods, pattern).
    pub routes: Vec<(String, Vec<String>, String)>,
    /// Callable endpoint entries: (pattern, methods, public).
    pub endpoints: Vec<(String, Vec<String>, bool)>,
    /// Scopes below the requested one with extra roles, sorted, roles sorted.
    pub scopes_below: Vec<(String, Vec<String>)>,
    /// The revision it was computed on.
    pub revision: u64,
}

/// An effective role in a [`Listing`], and how the subject holds it.
///
/// Linear in size whatever the include depth: the grant's `include_chain` holds only its
/// two ends (the assigned role and this role; just this role when it was assigned
/// itself), and `included_through` names the role that includes this one. Following
/// `included_through` from role to role within the listing gives the whole chain: a role
/// is listed with the first assignment that gives it, and the role including it is then
/// held through that same assignment (had it been held earlier, so would this role).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListedRole {
    /// The role.
    pub role: String,
    /// The assignment (or default) through which it is held.
    pub grant: GrantView,
    /// The role that includes it on the way from the assigned role; empty when it is the
    /// assigned role itself.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub included_through: String,
}

impl TenantSnapshot {
    /// Lists what `subject` may do at `scope` (both validated).
    pub fn list(&self, subject: &str, scope: &str) -> Listing {
        let mut out = Listing {
            revision: self.revision,
            ..Listing::default()
        };
        let member = self.subjects.get(subject).filter(|_| !subject.is_empty());
        // The methods each entry is resolved for: a tenant's own entry (earlier in its
        // group) replaces an equally specific global entry for the methods they share.
        let mut resolved: Vec<MethodSet> =
            self.endpoints.iter().map(|ep| ep.methods.clone()).collect();
        for group in self.endpoint_matcher.values() {
            let mut earlier = MethodSet::default();
            for &e in &group.entries {
                if let (Some(m), Some(ep)) =
                    (resolved.get_mut(e as usize), self.endpoints.get(e as usize))
                {
                    *m = m.without(&earlier);
                    earlier.union_with(&ep.methods);
                }
            }
        }
        let public_endpoints = |out: &mut Listing, held: Option<&[bool]>| {
            for (ep, methods) in self.endpoints.iter().zip(&resolved) {
                if methods.is_empty() {
                    continue;
                }
                let holds = |h: &[bool]| {
                    ep.role_set
                        .iter()
                        .any(|r| h.get(r as usize).copied().unwrap_or(false))
                };
                if ep.public || held.is_some_and(holds) {
                    out.endpoints
                        .push((ep.pattern.to_string(), methods.to_strings(), ep.public));
                }
            }
        };
        let subject = match member {
            None => {
                out.reason = Some(Reason::UnknownSubject);
                public_endpoints(&mut out, None);
                return out;
            }
            Some(s) if s.disabled => {
                out.reason = Some(Reason::SubjectDisabled);
                public_endpoints(&mut out, None);
                return out;
            }
            Some(s) => s,
        };
        out.reason = Some(Reason::Granted);

        // Effective roles, the first way each is held winning (the order Check uses).
        // Dense for this one listing (linear in the tenant's roles, like the listing).
        let mut held = vec![false; self.role_count()];
        let mut roles: BTreeMap<String, (RoleIdx, ListedRole)> = BTreeMap::new();
        self.for_each_applicable(subject, scope, |assigned, at, source| {
            let role = self.role(assigned)?;
            for (pos, &(g, parent)) in role.closure.iter().enumerate() {
                match held.get_mut(g as usize) {
                    Some(h) if !*h => *h = true,
                    _ => continue,
                }
                let grant = GrantRef {
                    assigned,
                    // The assigned role itself: a view without the chain in between.
                    granting_pos: 0,
                    scope: at,
                    source,
                };
                let mut view = self.grant_view(&grant);
                let id = self.role_id(g).to_owned();
                let included_through = if pos == 0 {
                    String::new()
                } else {
                    view.include_chain.push(id.clone());
                    view.role = id.clone();
                    role.closure
                        .get(parent as usize)
                        .map_or_else(String::new, |&(p, _)| self.role_id(p).to_owned())
                };
                roles.insert(
                    id.clone(),
                    (
                        g,
                        ListedRole {
                            role: id,
                            grant: view,
                            included_through,
                        },
                    ),
                );
            }
            None::<()>
        });
        let mut permissions: Vec<String> = Vec::new();
        for (name, (idx, listed)) in roles {
            if let Some(role) = self.role(idx) {
                permissions.extend(role.permissions.iter().map(|p| p.to_string()));
                for rule in role.rules.iter() {
                    out.routes.push((
                        name.clone(),
                        rule.methods.to_strings(),
                        rule.pattern.to_string(),
                    ));
                }
            }
            out.roles.push(listed);
        }
        permissions.sort();
        permissions.dedup();
        out.permissions = permissions;
        public_endpoints(&mut out, Some(&held));

        // Scopes strictly below the requested one where the subject has assignments.
        let mut below: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let groups = subject
            .groups
            .iter()
            .filter_map(|&g| self.groups.get(g as usize))
            .flat_map(|g| g.assignments.iter());
        for a in subject.assignments.iter().chain(groups) {
            let s = self.scope(a.scope);
            if s != scope && scope_covers(scope, s) {
                below
                    .entry(s.to_owned())
                    .or_default()
                    .push(self.role_id(a.role).to_owned());
            }
        }
        out.scopes_below = below
            .into_iter()
            .map(|(s, mut r)| {
                r.sort();
                r.dedup();
                (s, r)
            })
            .collect();
        out
    }
}
