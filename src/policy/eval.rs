//! The evaluator: a pure function from a snapshot and a validated query to a
//! [`Decision`].
//!
//! No I/O, no locks, no allocation: a decision is a few indexes into the snapshot, and
//! turning it into words is left to [`super::decision::Explanation`], off the decision
//! path. Order of evaluation follows `docs/semantics.md`: public endpoint, then subject,
//! then grants.

use super::{
    decision::{Decision, GrantRef, Matched, Reason, Source},
    pattern::PathSegments,
    snapshot::{Role, RoleIdx, RoleSet, RuleGroup, ScopeIdx, SubjectRef, TenantSnapshot},
};
use crate::model::{Method, scope_covers};

/// How one role's own rules judge a request: the most specific matching rules decide
/// (`docs/semantics.md`, "Role rules").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleVerdict {
    /// No rule of the role matches the path.
    NoMatch,
    /// The most specific matching rules allow the method; the first of them (index into
    /// [`Role::rules`]).
    Allowed(u32),
    /// The most specific matching rules do not allow the method; the first of them.
    MethodNotAllowed(u32),
}

impl Role {
    /// Judges a request by this role's own rules alone (includes are not followed: each
    /// included role is judged on its own rules). Check and the effective-access diff
    /// ([`super::diff`]) both judge through this.
    #[inline]
    pub fn judge(&self, segments: &PathSegments<'_>, method: Method<'_>) -> RuleVerdict {
        match self.matching_rules(segments) {
            Some(group) => self.verdict(group, method),
            None => RuleVerdict::NoMatch,
        }
    }

    /// The role's most specific rules matching the path (equally specific ones share a
    /// group), if any: the first half of [`Role::judge`], which does not depend on the
    /// method (the diff finds it once per path for every method).
    #[inline]
    pub fn matching_rules(&self, segments: &PathSegments<'_>) -> Option<&RuleGroup> {
        self.matcher.find_in(segments, |_| true)
    }

    /// How the matching `group` judges `method`: the second half of [`Role::judge`].
    #[inline]
    pub fn verdict(&self, group: &RuleGroup, method: Method<'_>) -> RuleVerdict {
        let allowed = group.rules.iter().find(|&&r| {
            self.rules
                .get(r as usize)
                .is_some_and(|rule| rule.methods.contains(method))
        });
        match (allowed, group.rules.first()) {
            (Some(&rule), _) => RuleVerdict::Allowed(rule),
            (None, Some(&rule)) => RuleVerdict::MethodNotAllowed(rule),
            (None, None) => RuleVerdict::NoMatch,
        }
    }
}

/// What a check asks for.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// A named permission.
    Permission(&'a str),
    /// An HTTP request; `path` is normalized ([`crate::model::request_path`]).
    Route {
        /// The method.
        method: Method<'a>,
        /// The path.
        path: &'a str,
    },
}

/// A validated check within one tenant.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// Subject id; empty is anonymous.
    pub subject: &'a str,
    /// Scope; empty is the tenant root.
    pub scope: &'a str,
    /// What is asked for.
    pub action: Action<'a>,
}

impl TenantSnapshot {
    /// Decides a query.
    pub fn check(&self, q: &Query<'_>) -> Decision {
        // Route: resolve the endpoint table first, like a router: the most specific entry
        // whose pattern matches and whose methods contain the method.
        let mut entry: Option<u32> = None;
        let mut entry_on_path: Option<u32> = None;
        // Split once for all tries; permission checks need no path at all.
        let segments = match q.action {
            Action::Route { path, .. } => Some(PathSegments::new(path)),
            Action::Permission(_) => None,
        };
        if let (Action::Route { method, .. }, Some(segments)) = (q.action, &segments) {
            (entry, entry_on_path) = self.resolve_endpoint(segments, method);
            if let Some(e) = entry
                && self.endpoints.get(e as usize).is_some_and(|ep| ep.public)
            {
                return Decision::new(Reason::Public, None, Some(Matched::Endpoint(e)));
            }
        }

        let subject = match self.subjects.get(q.subject) {
            _ if q.subject.is_empty() => return Decision::deny(Reason::UnknownSubject),
            None => return Decision::deny(Reason::UnknownSubject),
            Some(s) if s.disabled => return Decision::deny(Reason::SubjectDisabled),
            Some(s) => s,
        };

        match q.action {
            Action::Permission(p) => {
                // Built-in holders are shared by all tenants; custom ones are the tenant's.
                let builtin = self.builtins.holders.get(p);
                let custom = if self.permission_holders.is_empty() {
                    None
                } else {
                    self.permission_holders.get(p)
                };
                if builtin.is_none() && custom.is_none() {
                    return Decision::deny(Reason::NoGrant);
                }
                let holds =
                    |set: Option<&RoleSet>, f: &dyn Fn(&RoleSet) -> bool| set.is_some_and(f);
                let grant = self.first_grant(subject, q.scope, |role| {
                    let any = |h: &RoleSet| role.closure_set.intersects(h);
                    if !holds(builtin, &any) && !holds(custom, &any) {
                        return None;
                    }
                    let pos = role.closure.iter().position(|&(g, _)| {
                        let has = |h: &RoleSet| h.contains(g);
                        holds(builtin, &has) || holds(custom, &has)
                    })?;
                    Some((pos as u32, None))
                });
                match grant {
                    Some((g, _)) => Decision::new(Reason::Granted, Some(g), None),
                    None => Decision::deny(Reason::NoGrant),
                }
            }
            Action::Route { method, .. } => {
                let Some(segments) = &segments else {
                    return Decision::deny(Reason::NoMatchingRule);
                };
                if let Some(e) = entry {
                    let ep = self.endpoints.get(e as usize);
                    let grant = ep.and_then(|ep| {
                        self.first_grant(subject, q.scope, |role| {
                            if !role.closure_set.intersects(&ep.role_set) {
                                return None;
                            }
                            let pos = role
                                .closure
                                .iter()
                                .position(|(g, _)| ep.role_set.contains(*g))?;
                            Some((pos as u32, Some(Matched::Endpoint(e))))
                        })
                    });
                    if let Some((g, m)) = grant {
                        return Decision::new(Reason::Granted, Some(g), m);
                    }
                }
                // Role rules: each role judged on its own rules, most specific wins.
                let mut rule_on_path: Option<Matched> = None;
                let grant = self.first_grant(subject, q.scope, |role| {
                    role.closure.iter().enumerate().find_map(|(pos, &(g, _))| {
                        match self.role(g)?.judge(segments, method) {
                            RuleVerdict::Allowed(rule) => {
                                Some((pos as u32, Some(Matched::Rule { role: g, rule })))
                            }
                            RuleVerdict::MethodNotAllowed(rule) => {
                                rule_on_path.get_or_insert(Matched::Rule { role: g, rule });
                                None
                            }
                            RuleVerdict::NoMatch => None,
                        }
                    })
                });
                if let Some((g, m)) = grant {
                    return Decision::new(Reason::Granted, Some(g), m);
                }
                if let Some(e) = entry {
                    Decision::new(Reason::NoGrant, None, Some(Matched::Endpoint(e)))
                } else if let Some(m) = entry_on_path.map(Matched::Endpoint).or(rule_on_path) {
                    Decision::new(Reason::MethodNotAllowed, None, Some(m))
                } else {
                    Decision::deny(Reason::NoMatchingRule)
                }
            }
        }
    }

    /// Resolves a route in the endpoint table, as a router would: the most specific entry
    /// whose pattern matches and whose methods contain `method` (first), and the most
    /// specific entry whose pattern matches at all (second, for `method_not_allowed`).
    /// Check and the effective-access diff ([`super::diff`]) both resolve through this.
    #[inline]
    pub fn resolve_endpoint(
        &self,
        segments: &PathSegments<'_>,
        method: Method<'_>,
    ) -> (Option<u32>, Option<u32>) {
        let mut entry: Option<u32> = None;
        let mut entry_on_path: Option<u32> = None;
        if !self.endpoint_matcher.is_empty() {
            self.endpoint_matcher.find_in(segments, |group| {
                for &e in &group.entries {
                    entry_on_path.get_or_insert(e);
                    if self
                        .endpoints
                        .get(e as usize)
                        .is_some_and(|ep| ep.methods.contains(method))
                    {
                        entry = Some(e);
                        return true;
                    }
                }
                false
            });
        }
        (entry, entry_on_path)
    }

    /// The first grant `f` finds among the roles the subject holds at `scope`: `f` is
    /// given each assigned role and returns the position of the granting role in its
    /// closure and what matched.
    fn first_grant(
        &self,
        subject: SubjectRef<'_>,
        scope: &str,
        mut f: impl FnMut(&Role) -> Option<(u32, Option<Matched>)>,
    ) -> Option<(GrantRef, Option<Matched>)> {
        self.for_each_applicable(subject, scope, |role, at, source| {
            let (pos, m) = f(self.role(role)?)?;
            let grant = GrantRef {
                assigned: role,
                granting_pos: pos,
                scope: at,
                source,
            };
            Some((grant, m))
        })
    }

    /// Calls `f` with each role assigned to the subject at `scope` or above, in
    /// explanation order: direct assignments, then groups, then default roles; nearest
    /// scope first within each (the compiler sorted them). Stops at the first `Some`.
    pub(crate) fn for_each_applicable<T>(
        &self,
        subject: SubjectRef<'_>,
        scope: &str,
        mut f: impl FnMut(RoleIdx, ScopeIdx, Source) -> Option<T>,
    ) -> Option<T> {
        for a in subject.assignments.iter() {
            if scope_covers(self.scope(a.scope), scope)
                && let Some(t) = f(a.role, a.scope, Source::Direct)
            {
                return Some(t);
            }
        }
        for &gi in subject.groups.iter() {
            let Some(group) = self.groups.get(gi as usize) else {
                continue;
            };
            for a in group.assignments.iter() {
                if scope_covers(self.scope(a.scope), scope)
                    && let Some(t) = f(a.role, a.scope, Source::Group(gi))
                {
                    return Some(t);
                }
            }
        }
        self.default_roles
            .iter()
            .find_map(|&r| f(r, 0, Source::Default))
    }
}
