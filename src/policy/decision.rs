//! Decisions and their explanations.
//!
//! A [`Decision`] is what the evaluator returns: a reason and indexes into the snapshot,
//! `Copy`, no allocation. An [`Explanation`] is the same decision in words and names,
//! built once per answer by the gRPC layer and the CLI alike, so both say exactly the
//! same thing.

use serde::Serialize;

use super::{
    eval::{Action, Query},
    snapshot::{GroupIdx, RoleIdx, ScopeIdx, TenantSnapshot},
};

/// Why a decision was made. A deny is a value, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Allowed: an effective role holds the permission or a rule allows the route.
    Granted,
    /// Allowed: the route resolves to a public endpoint entry.
    Public,
    /// Denied: the tenant does not exist.
    UnknownTenant,
    /// Denied: the subject is not registered, or anonymous.
    UnknownSubject,
    /// Denied: the subject is disabled.
    SubjectDisabled,
    /// Denied: no effective role holds the permission, or the endpoint entry requires
    /// roles the subject lacks.
    NoGrant,
    /// Denied: nothing matches the path.
    NoMatchingRule,
    /// Denied: something matches the path, but not for this method.
    MethodNotAllowed,
}

impl Reason {
    /// Whether the reason allows.
    pub fn allowed(self) -> bool {
        matches!(self, Reason::Granted | Reason::Public)
    }

    /// The reason's name as in policies and expectations files.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Granted => "granted",
            Reason::Public => "public",
            Reason::UnknownTenant => "unknown_tenant",
            Reason::UnknownSubject => "unknown_subject",
            Reason::SubjectDisabled => "subject_disabled",
            Reason::NoGrant => "no_grant",
            Reason::NoMatchingRule => "no_matching_rule",
            Reason::MethodNotAllowed => "method_not_allowed",
        }
    }
}

/// How a subject holds an assigned role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Assigned to the subject.
    Direct,
    /// Assigned to a group the subject is in.
    Group(GroupIdx),
    /// A default role of the tenant.
    Default,
}

/// An assignment that grants, and where in the assigned role's closure the granting role
/// sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantRef {
    /// The assigned role.
    pub assigned: RoleIdx,
    /// Position of the granting role in the assigned role's closure.
    pub granting_pos: u32,
    /// The assignment's scope.
    pub scope: ScopeIdx,
    /// How the role is held.
    pub source: Source,
}

/// What matched a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    /// A role's rule.
    Rule {
        /// The role owning the rule.
        role: RoleIdx,
        /// Index into the role's rules.
        rule: u32,
    },
    /// An endpoint entry (index into the snapshot's endpoints).
    Endpoint(u32),
}

/// A decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Why.
    pub reason: Reason,
    /// For a grant: the assignment and granting role.
    pub grant: Option<GrantRef>,
    /// For routes: what matched (the granting or deciding rule or entry).
    pub matched: Option<Matched>,
}

impl Decision {
    /// A decision with all parts.
    pub fn new(reason: Reason, grant: Option<GrantRef>, matched: Option<Matched>) -> Self {
        Decision {
            reason,
            grant,
            matched,
        }
    }

    /// A denial without details.
    pub fn deny(reason: Reason) -> Self {
        Decision::new(reason, None, None)
    }

    /// Whether it allows.
    pub fn allowed(&self) -> bool {
        self.reason.allowed()
    }
}

/// A decision in names and words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Whether allowed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// For a grant through a role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantView>,
    /// The revision the decision was computed on.
    pub revision: u64,
    /// The pattern or endpoint entry that decided a route.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub matched_pattern: String,
    /// For a no-grant on an endpoint entry: the roles it requires.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_roles: Vec<String>,
    /// One line for people.
    pub explanation: String,
}

/// A grant in names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantView {
    /// The role whose own permission or rule matched.
    pub role: String,
    /// From the assigned role to `role`, both included.
    pub include_chain: Vec<String>,
    /// The assignment's scope.
    pub scope: String,
    /// `direct`, `group` or `default`.
    pub source: &'static str,
    /// The group, for `group`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group_id: String,
}

impl TenantSnapshot {
    /// The include chain of a grant: assigned role to granting role.
    pub fn chain(&self, g: &GrantRef) -> Vec<String> {
        let Some(role) = self.role(g.assigned) else {
            return Vec::new();
        };
        let mut chain = Vec::new();
        let mut pos = g.granting_pos as usize;
        // Parents always sit earlier in the closure; the bound guards the loop anyway.
        for _ in 0..role.closure.len() {
            let Some(&(r, parent)) = role.closure.get(pos) else {
                break;
            };
            chain.push(self.role_id(r).to_owned());
            if pos == 0 {
                break;
            }
            pos = parent as usize;
        }
        chain.reverse();
        chain
    }

    /// A grant in names.
    pub fn grant_view(&self, g: &GrantRef) -> GrantView {
        let chain = self.chain(g);
        GrantView {
            role: chain.last().cloned().unwrap_or_default(),
            include_chain: chain,
            scope: self.scope(g.scope).to_owned(),
            source: match g.source {
                Source::Direct => "direct",
                Source::Group(_) => "group",
                Source::Default => "default",
            },
            group_id: match g.source {
                Source::Group(gi) => self.group_id(gi).to_owned(),
                _ => String::new(),
            },
        }
    }

    /// The matched rule or entry: its pattern, and appends its description
    /// (``rule `GET /x` of role `r` `` or ``endpoint `GET /x` ``) to `what`.
    fn matched_text(&self, m: &Matched, what: &mut String) -> String {
        match *m {
            Matched::Rule { role, rule } => {
                match self.role(role).and_then(|r| r.rules.get(rule as usize)) {
                    Some(r) => {
                        what.push_str("rule `");
                        r.methods.write_to(what);
                        what.push(' ');
                        what.push_str(r.pattern.as_str());
                        what.push_str("` of role `");
                        what.push_str(self.role_id(role));
                        what.push('`');
                        r.pattern.as_str().to_owned()
                    }
                    None => String::new(),
                }
            }
            Matched::Endpoint(e) => match self.endpoints.get(e as usize) {
                Some(ep) => {
                    what.push_str("endpoint `");
                    ep.methods.write_to(what);
                    what.push(' ');
                    what.push_str(ep.pattern.as_str());
                    what.push('`');
                    ep.pattern.as_str().to_owned()
                }
                None => String::new(),
            },
        }
    }

    /// Explains a decision this snapshot made for `tenant`'s query.
    ///
    /// The sentence is built by appending to one buffer (no `format!`): explanations are
    /// made for every answer, on the request path.
    pub fn explain(&self, q: &Query<'_>, d: &Decision) -> Explanation {
        let mut ex = Explanation {
            allowed: d.allowed(),
            reason: d.reason,
            grant: d.grant.as_ref().map(|g| self.grant_view(g)),
            revision: self.revision,
            matched_pattern: String::new(),
            required_roles: Vec::new(),
            explanation: String::new(),
        };
        let mut what = String::new();
        if let Some(m) = d.matched.as_ref() {
            ex.matched_pattern = self.matched_text(m, &mut what);
        }
        let at = |out: &mut String, scope: &str| {
            if scope.is_empty() {
                out.push_str("at the tenant root");
            } else {
                out.push_str("in `");
                out.push_str(scope);
                out.push('`');
            }
        };
        let subject = q.subject;
        let mut s = String::with_capacity(128);
        match d.reason {
            Reason::Granted => {
                s.push_str("allowed, because ");
                if let Some(g) = ex.grant.as_ref() {
                    s.push_str("role `");
                    s.push_str(&g.role);
                    s.push('`');
                    if g.include_chain.len() > 1 {
                        s.push_str(" (through `");
                        for (i, r) in g.include_chain.iter().enumerate() {
                            if i > 0 {
                                s.push_str(" -> ");
                            }
                            s.push_str(r);
                        }
                        s.push_str("`)");
                    }
                    match g.source {
                        "group" => {
                            s.push_str(", assigned to group `");
                            s.push_str(&g.group_id);
                            s.push_str("` ");
                            at(&mut s, &g.scope);
                        }
                        "default" => s.push_str(", a default role of the tenant"),
                        _ => {
                            s.push_str(", assigned directly ");
                            at(&mut s, &g.scope);
                        }
                    }
                }
                match q.action {
                    Action::Permission(p) => {
                        s.push_str(", holds permission `");
                        s.push_str(p);
                        s.push('`');
                    }
                    Action::Route { .. } => {
                        s.push_str(", matched ");
                        s.push_str(&what);
                    }
                }
            }
            Reason::Public => {
                s.push_str("allowed, because ");
                s.push_str(&what);
                s.push_str(" is public");
            }
            Reason::UnknownTenant => s.push_str("denied, because the tenant does not exist"),
            Reason::UnknownSubject if subject.is_empty() => s.push_str(
                "denied, because the request names no subject and is not for a public endpoint",
            ),
            Reason::UnknownSubject => {
                s.push_str("denied, because subject `");
                s.push_str(subject);
                s.push_str("` is not a member of tenant `");
                s.push_str(&self.id);
                s.push('`');
            }
            Reason::SubjectDisabled => {
                s.push_str("denied, because subject `");
                s.push_str(subject);
                s.push_str("` is disabled");
            }
            Reason::NoGrant => match (q.action, d.matched) {
                (Action::Route { .. }, Some(Matched::Endpoint(e))) => {
                    let roles: Vec<String> = self
                        .endpoints
                        .get(e as usize)
                        .map(|ep| {
                            ep.roles
                                .iter()
                                .map(|&r| self.role_id(r).to_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    s.push_str("denied, because ");
                    s.push_str(&what);
                    s.push_str(" requires ");
                    s.push_str(if roles.len() == 1 {
                        "role "
                    } else {
                        "one of roles "
                    });
                    for (i, r) in roles.iter().enumerate() {
                        if i > 0 {
                            s.push_str(", ");
                        }
                        s.push('`');
                        s.push_str(r);
                        s.push('`');
                    }
                    s.push_str(", which subject `");
                    s.push_str(subject);
                    s.push_str("` does not hold ");
                    at(&mut s, q.scope);
                    ex.required_roles = roles;
                }
                (Action::Permission(p), _) => {
                    s.push_str("denied, because no role that subject `");
                    s.push_str(subject);
                    s.push_str("` holds ");
                    at(&mut s, q.scope);
                    s.push_str(" has permission `");
                    s.push_str(p);
                    s.push('`');
                }
                (Action::Route { .. }, _) => {
                    s.push_str("denied, because no role that subject `");
                    s.push_str(subject);
                    s.push_str("` holds ");
                    at(&mut s, q.scope);
                    s.push_str(" allows the route");
                }
            },
            Reason::MethodNotAllowed => {
                let method = match q.action {
                    Action::Route { method, .. } => method.as_str(),
                    Action::Permission(_) => "",
                };
                s.push_str("denied, because the most specific match for the path, ");
                s.push_str(&what);
                s.push_str(", does not allow method `");
                s.push_str(method);
                s.push('`');
            }
            Reason::NoMatchingRule => match q.action {
                Action::Route { path, .. } => {
                    s.push_str("denied, because no rule or endpoint matches path `");
                    s.push_str(path);
                    s.push('`');
                }
                Action::Permission(_) => s.push_str("denied, because nothing matches"),
            },
        }
        ex.explanation = s;
        ex
    }
}

impl Explanation {
    /// The explanation for a tenant that does not exist (there is no snapshot to name
    /// anything from).
    pub fn unknown_tenant(tenant: &str, revision: u64) -> Self {
        Explanation {
            allowed: false,
            reason: Reason::UnknownTenant,
            grant: None,
            revision,
            matched_pattern: String::new(),
            required_roles: Vec::new(),
            explanation: format!("denied, because tenant `{tenant}` does not exist"),
        }
    }
}
