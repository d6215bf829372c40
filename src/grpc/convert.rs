//! pb ⇄ model: one function per request turns wire values into validated queries (or a
//! [`FieldError`] naming the field), and `to_pb` functions turn explanations back.

use crate::{
    model::{self, InputError, Method},
    pb,
    policy::{Action, Explanation, Query, Reason, decision::GrantView, list::Listing},
};

/// A bad request value and the field it came from, e.g. `checks[3].route.path`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {error}")]
pub struct FieldError {
    /// The field path.
    pub field: String,
    /// What is wrong.
    pub error: InputError,
}

/// Where a check sits in its request: the whole request (`None`), or item `i` of a
/// BatchCheck (`checks[i]`). The field path is written only when there is an error to
/// report, so validating a batch item allocates nothing.
pub type Item = Option<usize>;

/// The field path of `name` in `item`: `name` or `checks[i].name`.
pub fn field(prefix: Item, name: &str) -> String {
    match prefix {
        None => name.to_owned(),
        Some(i) => format!("checks[{i}].{name}"),
    }
}

fn at<T>(prefix: Item, name: &str, r: Result<T, InputError>) -> Result<T, FieldError> {
    r.map_err(|error| FieldError {
        field: field(prefix, name),
        error,
    })
}

/// Validates a subject id; empty is anonymous and allowed.
fn subject(prefix: Item, s: &str) -> Result<&str, FieldError> {
    if s.is_empty() {
        Ok(s)
    } else {
        at(prefix, "subject_id", model::subject_id(s))
    }
}

/// Validates a check. `tenant` and `subject` fall back to the batch's values when the
/// item leaves them empty; `prefix` says which item of a batch it is (field paths in
/// errors: `checks[3].route.path`, or `tenant_id` for the batch's own value).
pub fn check_request<'a>(
    req: &'a pb::CheckRequest,
    prefix: Item,
    batch_tenant: &'a str,
    batch_subject: &'a str,
) -> Result<(&'a str, Query<'a>), FieldError> {
    let (tenant_value, tenant_field) = if req.tenant_id.is_empty() && !batch_tenant.is_empty() {
        (batch_tenant, None)
    } else {
        (req.tenant_id.as_str(), prefix)
    };
    let tenant = at(tenant_field, "tenant_id", model::tenant_id(tenant_value))?;
    let (subject_value, subject_field) = if req.subject_id.is_empty() {
        (batch_subject, None)
    } else {
        (req.subject_id.as_str(), prefix)
    };
    let subject = subject(subject_field, subject_value)?;
    let scope = at(prefix, "scope", model::scope(&req.scope))?;
    let action = match &req.action {
        Some(pb::check_request::Action::Permission(p)) => {
            Action::Permission(at(prefix, "permission", model::name(p))?)
        }
        Some(pb::check_request::Action::Route(r)) => Action::Route {
            method: at(prefix, "route.method", Method::parse(&r.method))?,
            path: at(prefix, "route.path", model::request_path(&r.path))?,
        },
        None => {
            return Err(FieldError {
                field: field(prefix, "action"),
                error: InputError::Malformed("needs `permission` or `route`"),
            });
        }
    };
    Ok((
        tenant,
        Query {
            subject,
            scope,
            action,
        },
    ))
}

/// A validated LookupSubjects request.
#[derive(Debug)]
pub struct Lookup<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Scope.
    pub scope: &'a str,
    /// What is asked for.
    pub action: Action<'a>,
    /// Subjects per page.
    pub page_size: usize,
    /// Continue after this subject id (empty: from the start).
    pub after: String,
}

/// Validates a LookupSubjects request. The page token comes from the previous page of
/// the same question ([`page_token`]; opaque to callers): any other value, or one issued
/// for another question, is INVALID_ARGUMENT `page_token`.
pub fn lookup_request(req: &pb::LookupSubjectsRequest) -> Result<Lookup<'_>, FieldError> {
    let tenant = at(None, "tenant_id", model::tenant_id(&req.tenant_id))?;
    let scope = at(None, "scope", model::scope(&req.scope))?;
    let action = match &req.action {
        Some(pb::lookup_subjects_request::Action::Permission(p)) => {
            Action::Permission(at(None, "permission", model::name(p))?)
        }
        Some(pb::lookup_subjects_request::Action::Route(r)) => Action::Route {
            method: at(None, "route.method", Method::parse(&r.method))?,
            path: at(None, "route.path", model::request_path(&r.path))?,
        },
        None => {
            return Err(FieldError {
                field: "action".into(),
                error: InputError::Malformed("needs `permission` or `route`"),
            });
        }
    };
    let page_size = match req.page_size {
        0 => 100,
        n if n as usize > crate::policy::lookup::MAX_PAGE => {
            return Err(FieldError {
                field: "page_size".into(),
                error: InputError::TooManyItems {
                    limit: crate::policy::lookup::MAX_PAGE,
                },
            });
        }
        n => n as usize,
    };
    let after =
        decode_page_token(&req.page_token, tenant, scope, &action).ok_or_else(|| FieldError {
            field: "page_token".into(),
            error: InputError::Malformed(
                "is not a token this server issued for this question (tenant, scope and action)",
            ),
        })?;
    Ok(Lookup {
        tenant,
        scope,
        action,
        page_size,
        after,
    })
}

/// What a page token is bound to: the question (tenant, scope, action), so a token is
/// only good for the same request it came from (AuthZEN: follow-up pages repeat the
/// request); 8 bytes of its SHA-256.
fn query_key(tenant: &str, scope: &str, action: &Action<'_>) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [tenant, "\0", scope, "\0"] {
        h.update(part.as_bytes());
    }
    match action {
        Action::Permission(p) => {
            h.update(b"p\0");
            h.update(p.as_bytes());
        }
        Action::Route { method, path } => {
            h.update(b"r\0");
            h.update(method.as_str().as_bytes());
            h.update(b"\0");
            h.update(path.as_bytes());
        }
    }
    let d = h.finalize();
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(d.iter()) {
        *k = *b;
    }
    key
}

fn hex(out: &mut String, bytes: &[u8]) {
    use std::fmt::Write;
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// The page token that continues after subject `id` for the same question: the
/// question's key, then the id, in lower-case hex.
pub fn page_token(tenant: &str, scope: &str, action: &Action<'_>, id: &str) -> String {
    let mut s = String::with_capacity(16 + id.len() * 2);
    hex(&mut s, &query_key(tenant, scope, action));
    hex(&mut s, id.as_bytes());
    s
}

/// The subject id a page token continues after; `None` for a token this server did not
/// issue for this question (not lower-case hex, another question's key, not a subject id).
pub fn decode_page_token(
    token: &str,
    tenant: &str,
    scope: &str,
    action: &Action<'_>,
) -> Option<String> {
    if token.is_empty() {
        return Some(String::new());
    }
    if !token.len().is_multiple_of(2)
        || token.len() > 16 + 2 * model::limits::SUBJECT_ID
        || !token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let bytes = bytes?;
    let (key, id) = bytes.split_at_checked(8)?;
    if key != query_key(tenant, scope, action) {
        return None;
    }
    let id = String::from_utf8(id.to_vec()).ok()?;
    model::subject_id(&id).ok()?;
    Some(id)
}

/// Validates a listing request: tenant, subject, scope.
pub fn list_request(req: &pb::ListPermissionsRequest) -> Result<(&str, &str, &str), FieldError> {
    Ok((
        at(None, "tenant_id", model::tenant_id(&req.tenant_id))?,
        subject(None, &req.subject_id)?,
        at(None, "scope", model::scope(&req.scope))?,
    ))
}

/// The wire form of a reason.
pub fn reason_to_pb(r: Reason) -> pb::Reason {
    match r {
        Reason::Granted => pb::Reason::Granted,
        Reason::Public => pb::Reason::Public,
        Reason::UnknownTenant => pb::Reason::UnknownTenant,
        Reason::UnknownSubject => pb::Reason::UnknownSubject,
        Reason::SubjectDisabled => pb::Reason::SubjectDisabled,
        Reason::NoGrant => pb::Reason::NoGrant,
        Reason::NoMatchingRule => pb::Reason::NoMatchingRule,
        Reason::MethodNotAllowed => pb::Reason::MethodNotAllowed,
    }
}

/// The wire form of a grant.
pub fn grant_to_pb(g: GrantView) -> pb::Grant {
    pb::Grant {
        role: g.role,
        include_chain: g.include_chain,
        scope: g.scope,
        source: match g.source {
            "direct" => pb::GrantSource::Direct,
            "group" => pb::GrantSource::Group,
            "default" => pb::GrantSource::Default,
            _ => pb::GrantSource::Unspecified,
        } as i32,
        group_id: g.group_id,
    }
}

/// The wire form of an explained decision.
pub fn explanation_to_pb(e: Explanation) -> pb::CheckResponse {
    pb::CheckResponse {
        allowed: e.allowed,
        reason: reason_to_pb(e.reason) as i32,
        grant: e.grant.map(grant_to_pb),
        revision: e.revision,
        explanation: e.explanation,
        matched_pattern: e.matched_pattern,
        required_roles: e.required_roles,
    }
}

/// The wire form of a listing.
pub fn listing_to_pb(l: Listing) -> pb::ListPermissionsResponse {
    pb::ListPermissionsResponse {
        reason: l.reason.map_or(pb::Reason::Unspecified, reason_to_pb) as i32,
        roles: l
            .roles
            .into_iter()
            .map(|r| pb::EffectiveRole {
                role: r.role,
                grant: Some(grant_to_pb(r.grant)),
                included_through: r.included_through,
            })
            .collect(),
        permissions: l.permissions,
        routes: l
            .routes
            .into_iter()
            .map(|(role, methods, path)| pb::RouteRule {
                role,
                methods,
                path,
            })
            .collect(),
        endpoints: l
            .endpoints
            .into_iter()
            .map(|(path, methods, public)| pb::Endpoint {
                path,
                methods,
                public,
            })
            .collect(),
        scopes_below: l
            .scopes_below
            .into_iter()
            .map(|(scope, roles)| pb::ScopedRoles { scope, roles })
            .collect(),
        revision: l.revision,
    }
}

impl crate::policy::expect::Observed {
    /// A gRPC CheckResponse in the terms expectation files use (`REASON_NO_GRANT` is
    /// `no_grant`, `GRANT_SOURCE_GROUP` is `group`); unknown enum values are empty.
    pub fn from_pb(r: &pb::CheckResponse) -> Self {
        let reason = pb::Reason::try_from(r.reason)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("REASON_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let g = r.grant.clone().unwrap_or_default();
        let source = match pb::GrantSource::try_from(g.source) {
            Ok(pb::GrantSource::Unspecified) | Err(_) => String::new(),
            Ok(s) => s
                .as_str_name()
                .trim_start_matches("GRANT_SOURCE_")
                .to_ascii_lowercase(),
        };
        Self {
            allowed: r.allowed,
            reason,
            role: g.role,
            chain: g.include_chain,
            source,
            group: g.group_id,
            grant_scope: g.scope,
            pattern: r.matched_pattern.clone(),
            required_roles: r.required_roles.clone(),
            explanation: r.explanation.clone(),
        }
    }
}

impl crate::policy::expect::Case {
    /// The case as a gRPC CheckRequest (a case with neither a permission nor a route
    /// gets no action, which the server refuses as invalid).
    pub fn to_pb(&self) -> pb::CheckRequest {
        let action = match (&self.permission, &self.method, &self.path) {
            (Some(p), _, _) => Some(pb::check_request::Action::Permission(p.clone())),
            (None, Some(m), Some(p)) => Some(pb::check_request::Action::Route(pb::HttpRoute {
                method: m.clone(),
                path: p.clone(),
            })),
            _ => None,
        };
        pb::CheckRequest {
            tenant_id: self.tenant.clone(),
            subject_id: self.subject.clone(),
            scope: self.scope.clone(),
            action,
            min_revision: 0,
        }
    }
}

/// A policy diff ([`crate::policy::diff`]) as DiffPolicy's answer, at `revision`.
pub fn diff_to_pb(d: &crate::policy::diff::PolicyDiff, revision: u64) -> pb::DiffPolicyResponse {
    use crate::policy::diff::{Cause, ChangeKind, Changes, Direction, RoleChange, ScopedChange};
    let changes = |c: &Changes| pb::ItemChanges {
        added: c.added.clone(),
        removed: c.removed.clone(),
    };
    let kind = |k: ChangeKind| match k {
        ChangeKind::Added => pb::ItemChangeKind::Added,
        ChangeKind::Removed => pb::ItemChangeKind::Removed,
        ChangeKind::Changed => pb::ItemChangeKind::Changed,
    } as i32;
    let role = |r: &RoleChange| pb::RoleDiff {
        role_id: r.role.clone(),
        change: kind(r.change),
        includes: Some(changes(&r.includes)),
        permissions: Some(changes(&r.permissions)),
        routes: Some(changes(&r.routes)),
        description_changed: r.description_changed,
    };
    let scoped = |c: &ScopedChange| pb::ScopedAccessChange {
        scopes: c.scopes.clone(),
        change_set: c.change_set as u32,
    };
    let cause = |c: &Cause| pb::AccessCause {
        kind: c.kind.to_owned(),
        detail: c.detail.clone(),
    };
    let s = &d.structural;
    pb::DiffPolicyResponse {
        revision,
        new_revision: 0,
        protected_rows: Vec::new(),
        access_changed: d.access_changed(),
        structure: Some(pb::PolicyStructureDiff {
            builtin_roles: s.builtin_roles.iter().map(role).collect(),
            global_endpoints: Some(changes(&s.global_endpoints)),
            tenants: s
                .tenants
                .iter()
                .map(|t| pb::TenantDiff {
                    tenant_id: t.tenant.clone(),
                    change: kind(t.change),
                    roles: t.roles.iter().map(role).collect(),
                    endpoints: Some(changes(&t.endpoints)),
                    default_roles: Some(changes(&t.default_roles)),
                    subjects: Some(changes(&t.subjects)),
                    disabled: t.disabled.clone(),
                    enabled: t.enabled.clone(),
                    groups: Some(changes(&t.groups)),
                    members: Some(changes(&t.members)),
                    assignments: Some(changes(&t.assignments)),
                })
                .collect(),
        }),
        access: d
            .access
            .iter()
            .map(|t| pb::TenantAccessDiff {
                tenant_id: t.tenant.clone(),
                fresh_segment: t.fresh_segment.clone(),
                other_method: t.other_method.clone(),
                methods: t.methods.clone(),
                probe_paths: t.probe_paths as u64,
                paths: t.paths.clone(),
                change_sets: t
                    .change_sets
                    .iter()
                    .map(|c| pb::AccessChangeSet {
                        permissions_gained: c.permissions_gained.clone(),
                        permissions_lost: c.permissions_lost.clone(),
                        routes: c.routes.iter().map(|&r| r as u32).collect(),
                    })
                    .collect(),
                route_changes: t
                    .route_changes
                    .iter()
                    .map(|r| pb::RouteAccessChange {
                        change: match r.change {
                            Direction::Gained => pb::AccessDirection::Gained,
                            Direction::Lost => pb::AccessDirection::Lost,
                        } as i32,
                        via: Some(pb::AccessVia {
                            kind: r.via.kind.to_owned(),
                            role_id: r.via.role.clone(),
                            pattern: r.via.pattern.clone(),
                            methods: r.via.methods.clone(),
                        }),
                        requests: r
                            .requests
                            .iter()
                            .map(|&(m, p)| pb::ProbeRequest {
                                method_index: m,
                                path_index: p,
                            })
                            .collect(),
                    })
                    .collect(),
                subjects: t
                    .subjects
                    .iter()
                    .map(|s| pb::SubjectAccessDiff {
                        subject_id: s.subject.clone(),
                        changes: s.changes.iter().map(scoped).collect(),
                        unchanged_scopes: s.unchanged_scopes.clone(),
                        causes: s.causes.iter().map(cause).collect(),
                    })
                    .collect(),
                groups: t
                    .groups
                    .iter()
                    .map(|g| pb::GroupAccessDiff {
                        group_id: g.group.clone(),
                        changes: g.changes.iter().map(scoped).collect(),
                        unchanged_scopes: g.unchanged_scopes.clone(),
                        causes: g.causes.iter().map(cause).collect(),
                        members_changed: g.members_changed.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
