//! What a subject may do at a scope: effective roles and where each comes from, named
//! permissions, route rules, callable endpoint entries, and the scopes below where the
//! subject holds more. What a UI needs to hide what the user may not do.
//!
//! Listings allocate freely; they are not on the Check path.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    decision::{GrantRef, GrantView, Reason},
    snapshot::{RoleIdx, RoleSet, TenantSnapshot},
};
use crate::model::{MethodSet, scope_covers};

/// A subject's effective grants at a scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// `Granted` for an active member; else why the lists are empty.
    pub reason: Option<Reason>,
    /// Effective roles, sorted by id, each with how it is held.
    pub roles: Vec<(String, GrantView)>,
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
        let public_endpoints = |out: &mut Listing, held: Option<&RoleSet>| {
            for (ep, methods) in self.endpoints.iter().zip(&resolved) {
                if methods.is_empty() {
                    continue;
                }
                if ep.public || held.is_some_and(|h| h.intersects(&ep.role_set)) {
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
        let mut held = RoleSet::with_capacity(self.role_count());
        let mut roles: BTreeMap<String, (RoleIdx, GrantView)> = BTreeMap::new();
        self.for_each_applicable(subject, scope, |assigned, at, source| {
            let role = self.role(assigned)?;
            for (pos, &(g, _)) in role.closure.iter().enumerate() {
                if held.contains(g) {
                    continue;
                }
                held.insert(g);
                let grant = GrantRef {
                    assigned,
                    granting_pos: pos as u32,
                    scope: at,
                    source,
                };
                roles.insert(self.role_id(g).to_owned(), (g, self.grant_view(&grant)));
            }
            None::<()>
        });
        let mut permissions: Vec<String> = Vec::new();
        for (name, (idx, view)) in roles {
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
            out.roles.push((name, view));
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
