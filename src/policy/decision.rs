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

    fn matched_text(&self, m: &Matched) -> (String, String) {
        match *m {
            Matched::Rule { role, rule } => {
                let r = self.role(role).and_then(|r| r.rules.get(rule as usize));
                match r {
                    Some(r) => (
                        r.pattern.to_string(),
                        format!(
                            "rule `{} {}` of role `{}`",
                            r.methods,
                            r.pattern,
                            self.role_id(role)
                        ),
                    ),
                    None => (String::new(), String::new()),
                }
            }
            Matched::Endpoint(e) => match self.endpoints.get(e as usize) {
                Some(ep) => (
                    ep.pattern.to_string(),
                    format!("endpoint `{} {}`", ep.methods, ep.pattern),
                ),
                None => (String::new(), String::new()),
            },
        }
    }

    /// Explains a decision this snapshot made for `tenant`'s query.
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
        let (pattern, what) = d
            .matched
            .as_ref()
            .map(|m| self.matched_text(m))
            .unwrap_or_default();
        ex.matched_pattern = pattern;
        let at = |scope: &str| {
            if scope.is_empty() {
                "at the tenant root".to_owned()
            } else {
                format!("in `{scope}`")
            }
        };
        let subject = q.subject;
        ex.explanation = match d.reason {
            Reason::Granted => {
                let g = ex.grant.as_ref();
                let role = g.map_or(String::new(), |g| {
                    let mut s = format!("role `{}`", g.role);
                    if g.include_chain.len() > 1 {
                        s.push_str(&format!(" (through `{}`)", g.include_chain.join(" -> ")));
                    }
                    match g.source {
                        "group" => s.push_str(&format!(
                            ", assigned to group `{}` {}",
                            g.group_id,
                            at(&g.scope)
                        )),
                        "default" => s.push_str(", a default role of the tenant"),
                        _ => s.push_str(&format!(", assigned directly {}", at(&g.scope))),
                    }
                    s
                });
                match q.action {
                    Action::Permission(p) => {
                        format!("allowed, because {role}, holds permission `{p}`")
                    }
                    Action::Route { .. } => format!("allowed, because {role}, matched {what}"),
                }
            }
            Reason::Public => format!("allowed, because {what} is public"),
            Reason::UnknownTenant => "denied, because the tenant does not exist".to_owned(),
            Reason::UnknownSubject if subject.is_empty() => {
                "denied, because the request names no subject and is not for a public endpoint"
                    .to_owned()
            }
            Reason::UnknownSubject => format!(
                "denied, because subject `{subject}` is not a member of tenant `{}`",
                self.id
            ),
            Reason::SubjectDisabled => format!("denied, because subject `{subject}` is disabled"),
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
                    let list = roles
                        .iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let needs = if roles.len() == 1 {
                        format!("role {list}")
                    } else {
                        format!("one of roles {list}")
                    };
                    ex.required_roles = roles;
                    format!(
                        "denied, because {what} requires {needs}, which subject `{subject}` does not hold {}",
                        at(q.scope)
                    )
                }
                (Action::Permission(p), _) => {
                    format!(
                        "denied, because no role that subject `{subject}` holds {} has permission `{p}`",
                        at(q.scope)
                    )
                }
                (Action::Route { .. }, _) => format!(
                    "denied, because no role that subject `{subject}` holds {} allows the route",
                    at(q.scope)
                ),
            },
            Reason::MethodNotAllowed => {
                let method = match q.action {
                    Action::Route { method, .. } => method.as_str(),
                    Action::Permission(_) => "",
                };
                format!(
                    "denied, because the most specific match for the path, {what}, does not allow method `{method}`"
                )
            }
            Reason::NoMatchingRule => match q.action {
                Action::Route { path, .. } => {
                    format!("denied, because no rule or endpoint matches path `{path}`")
                }
                Action::Permission(_) => "denied, because nothing matches".to_owned(),
            },
        };
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
