//! The effective-access diff: who gains and who loses which access through a policy
//! change, and the structural change behind it. `docs/policy-diff.md` is the user's view.
//!
//! # What is compared, exactly
//! For every tenant of either policy, every registered subject of either (and "anyone":
//! the anonymous or unregistered caller, who gets public endpoints only), at every scope
//! where its access can differ, the diff lists
//! - named permissions gained and lost;
//! - route requests (method, path) gained and lost, grouped by what allows them on the
//!   side that allows: a role's rule, an endpoint entry (through a role), or a public
//!   entry.
//!
//! And for every group of either side, the same for a new member of that group only
//! ([`GroupAccess`]). Equal changes are one change set per tenant, by content.
//!
//! It is computed from the compiled snapshots with the evaluator's own parts: effective
//! roles through `TenantSnapshot::for_each_applicable` (the assignments Check
//! considers), role rules through [`super::snapshot::Role::judge`] and the endpoint table
//! through [`TenantSnapshot::resolve_endpoint`], combined as Check combines them (public
//! entry; else the resolved entry's roles; else any effective role's rules).
//!
//! **Scopes.** A subject's effective roles at scope S depend only on which of its
//! assignment scopes (direct and through its groups, in either policy) cover S; so its
//! access at any scope equals its access at the deepest of those scopes (or the root)
//! covering S. The diff evaluates the root and each of them.
//!
//! **Paths.** A route's decision depends only on which patterns (of any role or entry of
//! either policy) match the path, and on the method. [`probe_paths`] enumerates one
//! canonical path for every set of patterns a path can match: each segment is kept if it
//! is a literal of a still-matching pattern at that position, and is otherwise replaced by
//! a fresh segment no pattern names (`~`); the path is cut one segment after no pattern
//! can match a longer path. Methods likewise: every method a rule or entry names, and one
//! other method standing for all the rest. Every concrete request is decided as its
//! canonical probe is, so the route changes listed are exact for every path.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{
    compile::Policy,
    eval::RuleVerdict,
    pattern::{PathSegments, Segment},
    snapshot::{GroupIdx, RoleIdx, SubjectRef, TenantSnapshot},
    source::{AssignmentDoc, EndpointDoc, PolicyDocument, RoleDoc, TenantDoc},
};
use crate::model::{self, Method};

/// Most canonical probe paths per tenant ([`probe_paths`]): the diff evaluates each for
/// each method and each distinct set of effective roles, so this bounds its work.
pub const MAX_PROBE_PATHS: usize = 100_000;

/// Most route requests (probe paths × methods) per tenant.
pub const MAX_PROBE_REQUESTS: usize = 1_000_000;

/// Why a diff cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The patterns of one tenant distinguish more paths than the limit.
    #[error(
        "tenant `{tenant}`: its route patterns distinguish more than {limit} paths (or path × method requests); the diff would be too large to compute"
    )]
    TooManyProbes {
        /// The tenant.
        tenant: String,
        /// The limit that was hit.
        limit: usize,
    },
}

/// One side of a diff: a document and its compiled form.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// How to name it (`old.yaml`, `database revision 42`).
    pub label: &'a str,
    /// The document.
    pub doc: &'a PolicyDocument,
    /// The document compiled.
    pub policy: &'a Policy,
}

/// The whole diff between two policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// The old side's label.
    pub old: String,
    /// The new side's label.
    pub new: String,
    /// What changed in the documents.
    pub structural: Structural,
    /// Who gains and who loses what, per tenant (only tenants where some subject's
    /// access, or some group's, changes).
    pub access: Vec<TenantAccess>,
}

impl PolicyDiff {
    /// Whether anyone's effective access changes: some subject's (or anyone's), not only
    /// what a group would give a new member ([`TenantAccess::groups`]).
    pub fn access_changed(&self) -> bool {
        self.access.iter().any(|t| !t.subjects.is_empty())
    }

    /// Whether the documents differ in anything the diff reports.
    pub fn structure_changed(&self) -> bool {
        self.structural != Structural::default()
    }
}

/// What changed in the documents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Structural {
    /// Built-in roles added, removed or changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub builtin_roles: Vec<RoleChange>,
    /// The endpoint table for all tenants.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub global_endpoints: Changes,
    /// Tenants added, removed or changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantChange>,
}

/// Items added and removed, each written as text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// Removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl Changes {
    /// Whether nothing was added or removed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    fn of(old: impl Iterator<Item = String>, new: impl Iterator<Item = String>) -> Self {
        let old: BTreeSet<String> = old.collect();
        let new: BTreeSet<String> = new.collect();
        Changes {
            added: new.difference(&old).cloned().collect(),
            removed: old.difference(&new).cloned().collect(),
        }
    }
}

/// How an item changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the new policy.
    Added,
    /// Only in the old policy.
    Removed,
    /// In both, different.
    Changed,
}

/// A role added, removed or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleChange {
    /// The role id.
    pub role: String,
    /// How.
    pub change: ChangeKind,
    /// Included roles.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub includes: Changes,
    /// Named permissions.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub permissions: Changes,
    /// Route rules, as `METHODS pattern`.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub routes: Changes,
    /// The description changed (text for people: decides nothing, but an apply writes
    /// it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub description_changed: bool,
}

impl RoleChange {
    /// Whether the role decides differently: includes, permissions or rules changed
    /// (not only its description).
    pub fn decides_differently(&self) -> bool {
        !(self.includes.is_empty() && self.permissions.is_empty() && self.routes.is_empty())
    }
}

/// A tenant added, removed or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantChange {
    /// The tenant id.
    pub tenant: String,
    /// How.
    pub change: ChangeKind,
    /// Custom roles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleChange>,
    /// The tenant's own endpoint entries, as `METHODS pattern -> roles` or `(public)`.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub endpoints: Changes,
    /// Default roles.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub default_roles: Changes,
    /// Registered subjects.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub subjects: Changes,
    /// Subjects disabled (in both, enabled before).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disabled: Vec<String>,
    /// Subjects enabled again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enabled: Vec<String>,
    /// Groups.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub groups: Changes,
    /// Group memberships, as `group: subject`.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub members: Changes,
    /// Assignments, as `subject alice: role at scope` or `group g: role at scope`.
    #[serde(skip_serializing_if = "Changes::is_empty")]
    pub assignments: Changes,
}

/// Effective-access changes in one tenant.
///
/// Distinct changes are listed once (`change_sets`) and subjects refer to them by index:
/// a change to a role many subjects hold reads once, not once per subject. Route requests
/// are (method, path) index pairs into `methods` and `paths`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantAccess {
    /// The tenant id.
    pub tenant: String,
    /// The segment that stands for "any segment no pattern names" in probe paths.
    pub fresh_segment: String,
    /// The method that stands for "any method no rule or entry names".
    pub other_method: String,
    /// The methods rules and entries name, then [`TenantAccess::other_method`].
    pub methods: Vec<String>,
    /// How many canonical probe paths the tenant's patterns give.
    pub probe_paths: usize,
    /// The canonical probe paths some change names, sorted.
    pub paths: Vec<String>,
    /// The distinct changes.
    pub change_sets: Vec<ChangeSet>,
    /// The distinct route changes the change sets name: a group of requests gained or
    /// lost through one rule or entry, listed once however many change sets share it.
    pub route_changes: Vec<RouteChange>,
    /// Subjects whose access changes, by id; the empty id is anyone (anonymous or not
    /// registered), who gets public endpoints only.
    pub subjects: Vec<SubjectAccess>,
    /// Groups (of either side) whose meaning changes, by id: what a member gets through
    /// each ([`GroupAccess`]).
    pub groups: Vec<GroupAccess>,
}

impl TenantAccess {
    /// A request's method and path by its indexes (empty for an index out of range).
    pub fn request(&self, (method, path): (u32, u32)) -> (&str, &str) {
        (
            self.methods.get(method as usize).map_or("", |m| m),
            self.paths.get(path as usize).map_or("", |p| p),
        )
    }
}

/// One subject's changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubjectAccess {
    /// The subject id; empty for anyone (anonymous or unregistered).
    pub subject: String,
    /// Changes, each with the scopes where it applies (a scope not listed here or in
    /// `unchanged_scopes` is judged as the deepest listed scope above it, or the root).
    pub changes: Vec<ScopedChange>,
    /// Scopes where the subject has assignments but its access does not change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchanged_scopes: Vec<String>,
    /// The structural changes that touch this subject: why its access changes.
    pub causes: Vec<Cause>,
}

/// What a group gives a member, where that changes.
///
/// A group's access at a scope is the access of a registered, enabled subject that
/// belongs to this group only and has no assignments of its own: what joining the group
/// gives a new member, including the tenant's default roles and public entries. On a side
/// without the group, such a subject is a member of nothing (default roles only); on a
/// side without the tenant, it holds nothing. It is evaluated at the root and at every
/// scope of the group's assignments on either side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupAccess {
    /// The group id.
    pub group: String,
    /// Changes, each with the scopes where it applies (a scope not listed here or in
    /// `unchanged_scopes` is judged as the deepest listed scope above it, or the root).
    pub changes: Vec<ScopedChange>,
    /// Scopes of the group's assignments where what it gives does not change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchanged_scopes: Vec<String>,
    /// The structural changes behind it: the group added or removed, its assignments
    /// added or removed, default roles, roles it gives (on either side) changed, and the
    /// endpoint tables when a route change comes through an entry.
    pub causes: Vec<Cause>,
    /// Members (on either side) whose own access changes, sorted; each is in
    /// [`TenantAccess::subjects`] with its own changes, which other roles it holds may
    /// make differ from the group's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members_changed: Vec<String>,
}

/// A change at some scopes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScopedChange {
    /// The scopes where this is the change (`""` is the root).
    pub scopes: Vec<String>,
    /// Index into [`TenantAccess::change_sets`].
    pub change_set: usize,
}

/// What changes for a subject (or a group's member) at a scope. Each distinct change is
/// listed once per tenant: subjects whose access changes alike share one, whatever roles
/// they hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangeSet {
    /// Named permissions gained.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions_gained: Vec<String>,
    /// Named permissions lost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions_lost: Vec<String>,
    /// Route requests gained and lost, grouped by what allows them: indexes into
    /// [`TenantAccess::route_changes`], gained ones first, each direction in index
    /// order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<usize>,
}

/// Whether access is gained or lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Allowed in the new policy only.
    Gained,
    /// Allowed in the old policy only.
    Lost,
}

/// Route requests gained or lost through one rule or entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteChange {
    /// Gained or lost.
    pub change: Direction,
    /// What allows the requests on the side that allows them.
    pub via: Via,
    /// The requests, as (method, path) indexes into [`TenantAccess::methods`] and
    /// [`TenantAccess::paths`].
    pub requests: Vec<(u32, u32)>,
}

/// What allows a route request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Via {
    /// `rule` (a role's own rule), `endpoint` (an endpoint entry whose roles the subject
    /// holds) or `public` (a public endpoint entry).
    pub kind: &'static str,
    /// The role (the rule's owner, or the entry's role the subject holds); empty for
    /// `public`.
    pub role: String,
    /// The rule's or entry's pattern.
    pub pattern: String,
    /// The rule's or entry's methods, as written (`GET,PUT` or `*`).
    pub methods: String,
}

/// A structural change that affects a subject.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Cause {
    /// `tenant_added`, `tenant_removed`, `subject_added`, `subject_removed`,
    /// `subject_disabled`, `subject_enabled`, `assignment_added`, `assignment_removed`,
    /// `group_joined`, `group_left`, `group_added`, `group_removed` (groups only),
    /// `group_assignment_added`, `group_assignment_removed`, `default_role_added`,
    /// `default_role_removed`, `role_added`, `role_removed`, `role_changed`,
    /// `endpoints_changed`.
    pub kind: &'static str,
    /// What exactly, in words.
    pub detail: String,
}

/// Computes the diff between two policies. Errors only when a tenant's patterns exceed
/// [`MAX_PROBE_PATHS`] or [`MAX_PROBE_REQUESTS`].
pub fn diff(old: Side<'_>, new: Side<'_>) -> Result<PolicyDiff, DiffError> {
    let mut out = PolicyDiff {
        old: old.label.to_owned(),
        new: new.label.to_owned(),
        structural: structural(old.doc, new.doc),
        access: Vec::new(),
    };
    let mut tenants: BTreeSet<&str> = BTreeSet::new();
    tenants.extend(old.policy.tenants.iter().map(|t| &*t.id));
    tenants.extend(new.policy.tenants.iter().map(|t| &*t.id));
    for id in tenants {
        let o = old.policy.tenants.iter().find(|t| *t.id == *id);
        let n = new.policy.tenants.iter().find(|t| *t.id == *id);
        let od = old.doc.tenants.iter().find(|t| t.id == id);
        let nd = new.doc.tenants.iter().find(|t| t.id == id);
        let access = tenant_access(id, o, n, (old.doc, od), (new.doc, nd))?;
        if !access.subjects.is_empty() || !access.groups.is_empty() {
            out.access.push(access);
        }
    }
    Ok(out)
}

/// The document the database would hold after applying `doc` to `current`
/// (`authzd policy apply`'s rules, [`crate::store::sync`]): `doc`'s built-in roles and
/// global endpoint table, `doc`'s tenants, and `current`'s other tenants unchanged.
pub fn after_apply(current: &PolicyDocument, doc: &PolicyDocument) -> PolicyDocument {
    let mut tenants = doc.tenants.clone();
    tenants.extend(
        current
            .tenants
            .iter()
            .filter(|t| !doc.tenants.iter().any(|d| d.id == t.id))
            .cloned(),
    );
    PolicyDocument {
        version: doc.version,
        roles: doc.roles.clone(),
        endpoints: doc.endpoints.clone(),
        tenants,
    }
}

// ------------------------------------------------------------------------- structure

fn route_text(methods: &[String], path: &str) -> String {
    format!("{} {path}", methods.join(","))
}

fn endpoint_text(e: &EndpointDoc) -> String {
    if e.public {
        format!("{} (public)", route_text(&e.methods, &e.path))
    } else {
        format!(
            "{} -> {}",
            route_text(&e.methods, &e.path),
            e.roles.join(",")
        )
    }
}

fn role_changes(old: &[RoleDoc], new: &[RoleDoc]) -> Vec<RoleChange> {
    let o: BTreeMap<&str, &RoleDoc> = old.iter().map(|r| (r.id.as_str(), r)).collect();
    let n: BTreeMap<&str, &RoleDoc> = new.iter().map(|r| (r.id.as_str(), r)).collect();
    let ids: BTreeSet<&str> = o.keys().chain(n.keys()).copied().collect();
    let empty = RoleDoc::default();
    let mut out = Vec::new();
    for id in ids {
        let (a, b) = (o.get(id).copied(), n.get(id).copied());
        let change = match (a, b) {
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            _ => ChangeKind::Changed,
        };
        let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
        let c = RoleChange {
            role: id.to_owned(),
            change,
            includes: Changes::of(a.includes.iter().cloned(), b.includes.iter().cloned()),
            permissions: Changes::of(a.permissions.iter().cloned(), b.permissions.iter().cloned()),
            routes: Changes::of(
                a.routes.iter().map(|r| route_text(&r.methods, &r.path)),
                b.routes.iter().map(|r| route_text(&r.methods, &r.path)),
            ),
            description_changed: change == ChangeKind::Changed && a.description != b.description,
        };
        if change != ChangeKind::Changed || c.decides_differently() || c.description_changed {
            out.push(c);
        }
    }
    out
}

fn assignment_text(a: &AssignmentDoc) -> String {
    let who = match (&a.subject, &a.group) {
        (Some(s), _) => format!("subject {s}"),
        (None, Some(g)) => format!("group {g}"),
        (None, None) => "nobody".to_owned(),
    };
    format!("{who}: {} at {}", a.role, scope_text(&a.scope))
}

fn scope_text(scope: &str) -> String {
    if scope.is_empty() {
        "the root".to_owned()
    } else {
        format!("`{scope}`")
    }
}

fn tenant_change(id: &str, old: Option<&TenantDoc>, new: Option<&TenantDoc>) -> TenantChange {
    let empty = TenantDoc::default();
    let change = match (old, new) {
        (None, Some(_)) => ChangeKind::Added,
        (Some(_), None) => ChangeKind::Removed,
        _ => ChangeKind::Changed,
    };
    let (a, b) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let enabled = |t: &TenantDoc, disabled: bool| -> BTreeSet<String> {
        t.subjects
            .iter()
            .filter(|s| s.disabled == disabled)
            .map(|s| s.id.clone())
            .collect()
    };
    let (a_off, b_on) = (enabled(a, true), enabled(b, false));
    let (a_on, b_off) = (enabled(a, false), enabled(b, true));
    let members = |t: &TenantDoc| -> Vec<String> {
        t.groups
            .iter()
            .flat_map(|g| g.members.iter().map(move |m| format!("{}: {m}", g.id)))
            .collect()
    };
    TenantChange {
        tenant: id.to_owned(),
        change,
        roles: role_changes(&a.roles, &b.roles),
        endpoints: Changes::of(
            a.endpoints.iter().map(endpoint_text),
            b.endpoints.iter().map(endpoint_text),
        ),
        default_roles: Changes::of(
            a.default_roles.iter().cloned(),
            b.default_roles.iter().cloned(),
        ),
        subjects: Changes::of(
            a.subjects.iter().map(|s| s.id.clone()),
            b.subjects.iter().map(|s| s.id.clone()),
        ),
        disabled: a_on.intersection(&b_off).cloned().collect(),
        enabled: a_off.intersection(&b_on).cloned().collect(),
        groups: Changes::of(
            a.groups.iter().map(|g| g.id.clone()),
            b.groups.iter().map(|g| g.id.clone()),
        ),
        members: Changes::of(members(a).into_iter(), members(b).into_iter()),
        assignments: Changes::of(
            a.assignments.iter().map(assignment_text),
            b.assignments.iter().map(assignment_text),
        ),
    }
}

impl TenantChange {
    fn is_empty(&self) -> bool {
        self.change == ChangeKind::Changed
            && self.roles.is_empty()
            && self.endpoints.is_empty()
            && self.default_roles.is_empty()
            && self.subjects.is_empty()
            && self.disabled.is_empty()
            && self.enabled.is_empty()
            && self.groups.is_empty()
            && self.members.is_empty()
            && self.assignments.is_empty()
    }
}

/// The structural diff of two documents.
pub fn structural(old: &PolicyDocument, new: &PolicyDocument) -> Structural {
    let ids: BTreeSet<&str> = old
        .tenants
        .iter()
        .chain(&new.tenants)
        .map(|t| t.id.as_str())
        .collect();
    Structural {
        builtin_roles: role_changes(&old.roles, &new.roles),
        global_endpoints: Changes::of(
            old.endpoints.iter().map(endpoint_text),
            new.endpoints.iter().map(endpoint_text),
        ),
        tenants: ids
            .into_iter()
            .map(|id| {
                tenant_change(
                    id,
                    old.tenants.iter().find(|t| t.id == id),
                    new.tenants.iter().find(|t| t.id == id),
                )
            })
            .filter(|c| !c.is_empty())
            .collect(),
    }
}

// ------------------------------------------------------------------------ probes

/// A pattern as the probe enumeration sees it: segments before a final `**`, and
/// whether it ends in `**`.
#[derive(Clone, Copy, Debug)]
pub struct ProbePattern<'a> {
    /// Segments before any final `**`.
    pub prefix: &'a [Segment],
    /// Ends in `**`.
    pub rest: bool,
}

impl<'a> ProbePattern<'a> {
    /// From a pattern's segments.
    pub fn new(segments: &'a [Segment]) -> Self {
        match segments.split_last() {
            Some((Segment::Rest, prefix)) => ProbePattern { prefix, rest: true },
            _ => ProbePattern {
                prefix: segments,
                rest: false,
            },
        }
    }
}

/// A segment no pattern names as a literal: `~`, lengthened until it is unused.
pub fn fresh_segment(patterns: &[ProbePattern<'_>]) -> String {
    let mut fresh = "~".to_owned();
    while patterns.iter().any(|p| {
        p.prefix
            .iter()
            .any(|s| matches!(s, Segment::Literal(l) if **l == *fresh))
    }) {
        fresh.push('~');
    }
    fresh
}

/// One canonical path for every set of `patterns` a request path can match (see the
/// module docs), in depth-first order; paths longer than a request may be
/// ([`model::limits::SEGMENTS`] segments, [`model::limits::PATH`] bytes) are left out,
/// as no request can have them. `None` when there would be more than `limit`.
pub fn probe_paths(
    patterns: &[ProbePattern<'_>],
    fresh: &str,
    limit: usize,
) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let all: Vec<usize> = (0..patterns.len()).collect();
    let mut prefix: Vec<&str> = Vec::new();
    if probe_walk(patterns, fresh, &all, &mut prefix, &mut out, limit) {
        Some(out)
    } else {
        None
    }
}

fn join_path(prefix: &[&str]) -> String {
    let mut s = String::new();
    for seg in prefix {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Emits the path of `prefix` and its canonical extensions; false when over `limit`.
fn probe_walk<'p>(
    patterns: &[ProbePattern<'p>],
    fresh: &'p str,
    alive: &[usize],
    prefix: &mut Vec<&'p str>,
    out: &mut Vec<String>,
    limit: usize,
) -> bool {
    let path = join_path(prefix);
    if path.len() > model::limits::PATH {
        return true;
    }
    out.push(path);
    if out.len() > limit {
        return false;
    }
    if prefix.len() >= model::limits::SEGMENTS {
        return true;
    }
    let i = prefix.len();
    let longer: Vec<usize> = alive
        .iter()
        .copied()
        .filter(|&p| patterns.get(p).is_some_and(|p| p.prefix.len() > i))
        .collect();
    let at = |p: usize| patterns.get(p).and_then(|p| p.prefix.get(i));
    if longer.is_empty() {
        // No pattern names a segment past here: only patterns ending in `**` still
        // match a longer path, and they match every longer path alike. One fresh segment
        // stands for all of them, and the walk stops.
        prefix.push(fresh);
        let path = join_path(prefix);
        prefix.pop();
        if path.len() <= model::limits::PATH {
            out.push(path);
        }
        return out.len() <= limit;
    }
    let literals: BTreeSet<&'p str> = longer
        .iter()
        .filter_map(|&p| match at(p) {
            Some(Segment::Literal(l)) => Some(&**l),
            _ => None,
        })
        .collect();
    for lit in literals {
        let next: Vec<usize> = longer
            .iter()
            .copied()
            .filter(|&p| match at(p) {
                Some(Segment::Literal(l)) => **l == *lit,
                Some(Segment::Wildcard) => true,
                _ => false,
            })
            .collect();
        prefix.push(lit);
        let ok = probe_walk(patterns, fresh, &next, prefix, out, limit);
        prefix.pop();
        if !ok {
            return false;
        }
    }
    let next: Vec<usize> = longer
        .iter()
        .copied()
        .filter(|&p| matches!(at(p), Some(Segment::Wildcard)))
        .collect();
    prefix.push(fresh);
    let ok = probe_walk(patterns, fresh, &next, prefix, out, limit);
    prefix.pop();
    ok
}

// ------------------------------------------------------------------------ access

/// A set of (probe path, method) requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn or(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    fn minus(&self, other: &Bits) -> Bits {
        Bits(self.0.iter().zip(&other.0).map(|(a, b)| a & !b).collect())
    }
    /// How many requests are in the set.
    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// Moves the requests of `self` that are in `part` out of `self` into the result;
    /// `None` (and nothing allocated) when they share none.
    fn take(&mut self, part: &Bits) -> Option<Bits> {
        if !self.0.iter().zip(&part.0).any(|(a, b)| a & b != 0) {
            return None;
        }
        let taken = Bits(self.0.iter().zip(&part.0).map(|(a, b)| a & b).collect());
        for (a, t) in self.0.iter_mut().zip(&taken.0) {
            *a &= !t;
        }
        Some(taken)
    }
    fn indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut x = word;
            std::iter::from_fn(move || {
                if x == 0 {
                    return None;
                }
                let bit = x.trailing_zeros() as usize;
                x &= x - 1;
                Some(w * 64 + bit)
            })
        })
    }
}

/// The probe requests of one tenant, shared by both sides: request `i` is path
/// `i / methods.len()` with method `i % methods.len()`.
struct Probes {
    paths: Vec<String>,
    methods: Vec<String>,
}

impl Probes {
    fn len(&self) -> usize {
        self.paths.len() * self.methods.len()
    }
}

/// A subject's effective roles on one side (`Nobody`: no registered, enabled subject;
/// `NoTenant`: the tenant does not exist there).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Holder {
    NoTenant,
    Nobody,
    Roles(Vec<RoleIdx>),
}

/// What a holder may do.
struct Access {
    /// The effective roles, sorted by id (the order changes are attributed in).
    by_id: Vec<RoleIdx>,
    permissions: Vec<Box<str>>,
    routes: Bits,
}

/// One role's route requests: through endpoint entries naming it, and per rule that
/// decides (allows) them.
struct RoleRoutes {
    entries: Vec<u32>,
    rules: Vec<(u32, Bits)>,
    all: Bits,
}

/// One side of one tenant, with what the diff has evaluated so far.
struct Eval<'a> {
    snap: Option<&'a TenantSnapshot>,
    /// Requests resolving to each public entry.
    public: Vec<(u32, Bits)>,
    public_all: Bits,
    /// Requests resolving to each non-public entry (by entry index).
    entries: Vec<Option<Bits>>,
    /// Per role, computed when first needed.
    roles: Vec<Option<RoleRoutes>>,
    accesses: Vec<Access>,
    index: HashMap<Holder, usize>,
    /// The tenant's groups by id.
    groups: HashMap<&'a str, GroupIdx>,
}

impl<'a> Eval<'a> {
    fn new(snap: Option<&'a TenantSnapshot>, probes: &Probes) -> Self {
        let n = probes.len();
        let mut eval = Eval {
            snap,
            public: Vec::new(),
            public_all: Bits::new(n),
            entries: Vec::new(),
            roles: Vec::new(),
            accesses: Vec::new(),
            index: HashMap::new(),
            groups: HashMap::new(),
        };
        let Some(s) = snap else {
            return eval;
        };
        eval.groups = s
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (&*g.id, i as GroupIdx))
            .collect();
        eval.roles = (0..s.role_count()).map(|_| None).collect();
        eval.entries = vec![None; s.endpoints.len()];
        let mut public: BTreeMap<u32, Bits> = BTreeMap::new();
        for (pi, path) in probes.paths.iter().enumerate() {
            let segments = PathSegments::new(path);
            for (mi, method) in probes.methods.iter().enumerate() {
                let Ok(method) = Method::parse(method) else {
                    continue;
                };
                let i = pi * probes.methods.len() + mi;
                let (Some(e), _) = s.resolve_endpoint(&segments, method) else {
                    continue;
                };
                match s.endpoints.get(e as usize) {
                    Some(ep) if ep.public => {
                        public.entry(e).or_insert_with(|| Bits::new(n)).set(i);
                        eval.public_all.set(i);
                    }
                    Some(_) => {
                        if let Some(slot) = eval.entries.get_mut(e as usize) {
                            slot.get_or_insert_with(|| Bits::new(n)).set(i);
                        }
                    }
                    None => {}
                }
            }
        }
        eval.public = public.into_iter().collect();
        eval
    }

    /// Computes the requests of every role in `needed` not computed yet: the entries
    /// naming it, and its rules judged on every probe request. Path by path (each split
    /// once), judging only roles whose rules can match it: a role whose rules all start
    /// with a literal segment is judged only on paths starting with one of those.
    fn prepare_roles(&mut self, needed: &BTreeSet<RoleIdx>, probes: &Probes) {
        let Some(s) = self.snap else { return };
        let n = probes.len();
        let todo: Vec<RoleIdx> = needed
            .iter()
            .copied()
            .filter(|&r| self.roles.get(r as usize).is_some_and(Option::is_none))
            .collect();
        let methods: Vec<Method<'_>> = probes
            .methods
            .iter()
            .filter_map(|m| Method::parse(m).ok())
            .collect();
        let mut any_first: Vec<RoleIdx> = Vec::new();
        let mut by_first: HashMap<&str, Vec<RoleIdx>> = HashMap::new();
        for &r in &todo {
            let Some(role) = s.role(r) else { continue };
            let mut firsts: BTreeSet<&str> = BTreeSet::new();
            let mut any = false;
            for rule in role.rules.iter() {
                match rule.pattern.segments().first() {
                    Some(Segment::Literal(l)) => {
                        firsts.insert(l);
                    }
                    _ => any = true,
                }
            }
            if any {
                any_first.push(r);
            } else {
                for f in firsts {
                    by_first.entry(f).or_default().push(r);
                }
            }
        }
        let mut rules: HashMap<RoleIdx, BTreeMap<u32, Bits>> = HashMap::new();
        for (pi, path) in probes.paths.iter().enumerate() {
            let first = super::pattern::path_segments(path).next().unwrap_or("");
            let candidates = any_first
                .iter()
                .chain(by_first.get(first).into_iter().flatten());
            let mut segments: Option<PathSegments<'_>> = None;
            for &r in candidates {
                let Some(role) = s.role(r) else { continue };
                let segments = segments.get_or_insert_with(|| PathSegments::new(path));
                // Role::judge in two halves: the path's rules once, then each method.
                let Some(group) = role.matching_rules(segments) else {
                    continue;
                };
                for (mi, &method) in methods.iter().enumerate() {
                    if let RuleVerdict::Allowed(rule) = role.verdict(group, method) {
                        let i = pi * probes.methods.len() + mi;
                        rules
                            .entry(r)
                            .or_default()
                            .entry(rule)
                            .or_insert_with(|| Bits::new(n))
                            .set(i);
                    }
                }
            }
        }
        for r in todo {
            let entries: Vec<u32> = (0..s.endpoints.len() as u32)
                .filter(|&e| {
                    s.endpoints
                        .get(e as usize)
                        .is_some_and(|ep| !ep.public && ep.role_set.contains(r))
                        && self.entries.get(e as usize).is_some_and(Option::is_some)
                })
                .collect();
            let mut all = Bits::new(n);
            for &e in &entries {
                if let Some(Some(b)) = self.entries.get(e as usize) {
                    all.or(b);
                }
            }
            let rules: Vec<(u32, Bits)> =
                rules.remove(&r).unwrap_or_default().into_iter().collect();
            for (_, b) in &rules {
                all.or(b);
            }
            if let Some(slot) = self.roles.get_mut(r as usize) {
                *slot = Some(RoleRoutes {
                    entries,
                    rules,
                    all,
                });
            }
        }
    }

    /// The holder for a subject at a scope: its effective roles, as Check gathers them.
    fn holder(&self, subject: &str, scope: &str) -> Holder {
        let Some(s) = self.snap else {
            return Holder::NoTenant;
        };
        match s.subjects.get(subject) {
            Some(m) if !subject.is_empty() && !m.disabled => Holder::Roles(roles_of(s, m, scope)),
            _ => Holder::Nobody,
        }
    }

    /// The holder for a new member of `group` at a scope: a registered, enabled subject
    /// in that group only, with no assignments of its own. Where the group does not
    /// exist, a member of nothing (the default roles only).
    fn group_holder(&self, group: &str, scope: &str) -> Holder {
        let Some(s) = self.snap else {
            return Holder::NoTenant;
        };
        let groups = match self.groups.get(group) {
            Some(g) => std::slice::from_ref(g),
            None => &[],
        };
        let member = SubjectRef {
            disabled: false,
            assignments: &[],
            groups,
        };
        Holder::Roles(roles_of(s, member, scope))
    }

    fn access(&mut self, holder: Holder, probes: &Probes) -> usize {
        if let Some(&i) = self.index.get(&holder) {
            return i;
        }
        let access = match (&holder, self.snap) {
            (Holder::Roles(roles), Some(s)) => {
                let mut perms: BTreeSet<&str> = BTreeSet::new();
                let mut routes = self.public_all.clone();
                for &r in roles {
                    if let Some(role) = s.role(r) {
                        perms.extend(role.permissions.iter().map(|p| &**p));
                    }
                    if let Some(Some(rr)) = self.roles.get(r as usize) {
                        routes.or(&rr.all);
                    }
                }
                let mut by_id = roles.clone();
                by_id.sort_by_key(|&r| s.role_id(r));
                Access {
                    by_id,
                    permissions: perms.into_iter().map(Box::from).collect(),
                    routes,
                }
            }
            (Holder::Nobody, Some(_)) => Access {
                by_id: Vec::new(),
                permissions: Vec::new(),
                routes: self.public_all.clone(),
            },
            _ => Access {
                by_id: Vec::new(),
                permissions: Vec::new(),
                routes: Bits::new(probes.len()),
            },
        };
        let i = self.accesses.len();
        self.accesses.push(access);
        self.index.insert(holder, i);
        i
    }

    /// Splits `bits` (requests access `a` allows) by what allows them, in the order Check
    /// looks: public entries, then the resolved entry's roles, then role rules; among
    /// roles, the first by id.
    fn attribute(&self, a: usize, mut bits: Bits) -> Vec<(Via, Bits)> {
        let mut out = Vec::new();
        let (Some(s), Some(access)) = (self.snap, self.accesses.get(a)) else {
            return out;
        };
        let entry_via = |kind: &'static str, role: &str, e: u32| {
            s.endpoints.get(e as usize).map(|ep| Via {
                kind,
                role: role.to_owned(),
                pattern: ep.pattern.to_string(),
                methods: ep.methods.to_string(),
            })
        };
        // Requests not yet attributed: the walk stops once every one is.
        let mut left = bits.count();
        let take = |bits: &mut Bits, part: &Bits, left: &mut usize| {
            let taken = bits.take(part)?;
            *left -= taken.count();
            Some(taken)
        };
        for (e, b) in &self.public {
            if left == 0 {
                return out;
            }
            if let Some(taken) = take(&mut bits, b, &mut left)
                && let Some(via) = entry_via("public", "", *e)
            {
                out.push((via, taken));
            }
        }
        for &r in &access.by_id {
            let Some(Some(rr)) = self.roles.get(r as usize) else {
                continue;
            };
            for &e in &rr.entries {
                if left == 0 {
                    return out;
                }
                if let Some(Some(b)) = self.entries.get(e as usize)
                    && let Some(taken) = take(&mut bits, b, &mut left)
                    && let Some(via) = entry_via("endpoint", s.role_id(r), e)
                {
                    out.push((via, taken));
                }
            }
        }
        for &r in &access.by_id {
            let (Some(Some(rr)), Some(role)) = (self.roles.get(r as usize), s.role(r)) else {
                continue;
            };
            for (k, b) in &rr.rules {
                if left == 0 {
                    return out;
                }
                if let Some(taken) = take(&mut bits, b, &mut left)
                    && let Some(rule) = role.rules.get(*k as usize)
                {
                    out.push((
                        Via {
                            kind: "rule",
                            role: s.role_id(r).to_owned(),
                            pattern: rule.pattern.to_string(),
                            methods: rule.methods.to_string(),
                        },
                        taken,
                    ));
                }
            }
        }
        out
    }
}

/// The effective roles of `member` at `scope`, as Check gathers them, sorted.
fn roles_of(s: &TenantSnapshot, member: SubjectRef<'_>, scope: &str) -> Vec<RoleIdx> {
    let mut roles: Vec<RoleIdx> = Vec::new();
    s.for_each_applicable(member, scope, |role, _, _| {
        if let Some(r) = s.role(role) {
            roles.extend(r.closure_set.iter());
        }
        None::<()>
    });
    roles.sort_unstable();
    roles.dedup();
    roles
}

/// A change with requests as probe request indexes (before paths are renumbered). Its
/// content is its identity: equal changes are one change set ([`ChangeSets`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RawChange {
    /// Sorted.
    gained: Vec<String>,
    /// Sorted.
    lost: Vec<String>,
    /// Indexes into the [`RouteGroups`]: gained ones first, each direction by index.
    routes: Vec<usize>,
}

/// Route changes, each kept once: subjects whose access changes alike (losing the same
/// role's rule, say) share them.
#[derive(Default)]
struct RouteGroups {
    index: HashMap<(Direction, Via, Bits), usize>,
    list: Vec<(Direction, Via, Bits)>,
}

impl RouteGroups {
    fn intern(&mut self, key: (Direction, Via, Bits)) -> usize {
        use std::collections::hash_map::Entry;
        match self.index.entry(key) {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(v) => {
                self.list.push(v.key().clone());
                *v.insert(self.list.len() - 1)
            }
        }
    }
}

/// The change between two accesses, or `None` when they allow the same.
fn change(
    old: &Eval<'_>,
    a: usize,
    new: &Eval<'_>,
    b: usize,
    groups: &mut RouteGroups,
) -> Option<RawChange> {
    let (oa, nb) = (old.accesses.get(a)?, new.accesses.get(b)?);
    let op: BTreeSet<&str> = oa.permissions.iter().map(|p| &**p).collect();
    let np: BTreeSet<&str> = nb.permissions.iter().map(|p| &**p).collect();
    let gained: Vec<String> = np.difference(&op).map(|p| (*p).to_owned()).collect();
    let lost: Vec<String> = op.difference(&np).map(|p| (*p).to_owned()).collect();
    let mut routes = Vec::new();
    for (via, bits) in new.attribute(b, nb.routes.minus(&oa.routes)) {
        routes.push(groups.intern((Direction::Gained, via, bits)));
    }
    for (via, bits) in old.attribute(a, oa.routes.minus(&nb.routes)) {
        routes.push(groups.intern((Direction::Lost, via, bits)));
    }
    if gained.is_empty() && lost.is_empty() && routes.is_empty() {
        return None;
    }
    // One order for one content: accesses that differ only in roles that change nothing
    // attribute the same route changes, possibly in another order.
    routes.sort_by_key(|&r| (groups.list.get(r).map(|(d, _, _)| *d), r));
    routes.dedup();
    Some(RawChange {
        gained,
        lost,
        routes,
    })
}

/// One tenant's distinct changes: each (old access, new access) pair is compared once,
/// and equal changes (by content) are one change set, however many holders of however
/// different roles get them.
#[derive(Default)]
struct ChangeSets {
    /// (old access, new access) to its change set, `None` when they allow the same.
    memo: HashMap<(usize, usize), Option<usize>>,
    index: HashMap<RawChange, usize>,
    list: Vec<RawChange>,
    routes: RouteGroups,
}

impl ChangeSets {
    /// The change set between accesses `a` (old side) and `b` (new side).
    fn between(&mut self, old: &Eval<'_>, a: usize, new: &Eval<'_>, b: usize) -> Option<usize> {
        if let Some(c) = self.memo.get(&(a, b)) {
            return *c;
        }
        let c = change(old, a, new, b, &mut self.routes).map(|c| {
            use std::collections::hash_map::Entry;
            match self.index.entry(c) {
                Entry::Occupied(o) => *o.get(),
                Entry::Vacant(v) => {
                    self.list.push(v.key().clone());
                    *v.insert(self.list.len() - 1)
                }
            }
        });
        self.memo.insert((a, b), c);
        c
    }
}

/// Whose access is evaluated: a subject (the empty id is anyone), or a group (a member of
/// that group only, with no assignments of its own).
#[derive(Clone, Copy, Debug)]
enum Who<'a> {
    Subject(&'a str),
    Group(&'a str),
}

/// One subject's or group's holders per scope: (scope, old side, new side).
type Holders = Vec<(String, Holder, Holder)>;

/// What one subject's or group's holders come to.
struct Evaluated {
    changes: Vec<ScopedChange>,
    unchanged: Vec<String>,
    /// The roles held at any of its scopes, on either side, by id.
    roles: BTreeSet<String>,
    /// Whether a route change comes through an endpoint entry.
    via_endpoint: bool,
}

/// Compares `holders` scope by scope; `None` when nothing changes at any scope.
fn evaluate(
    (o, n): (&mut Eval<'_>, &mut Eval<'_>),
    probes: &Probes,
    holders: Holders,
    sets: &mut ChangeSets,
) -> Option<Evaluated> {
    let mut per_scope: Vec<(String, Option<usize>)> = Vec::with_capacity(holders.len());
    let mut roles_seen: (BTreeSet<RoleIdx>, BTreeSet<RoleIdx>) = Default::default();
    for (scope, ho, hn) in holders {
        if let Holder::Roles(r) = &ho {
            roles_seen.0.extend(r.iter().copied());
        }
        if let Holder::Roles(r) = &hn {
            roles_seen.1.extend(r.iter().copied());
        }
        let (a, b) = (o.access(ho, probes), n.access(hn, probes));
        per_scope.push((scope, sets.between(o, a, n, b)));
    }
    if per_scope.iter().all(|(_, c)| c.is_none()) {
        return None;
    }
    let mut grouped: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut unchanged = Vec::new();
    for (scope, c) in per_scope {
        match c {
            Some(c) => grouped.entry(c).or_default().push(scope),
            None => unchanged.push(scope),
        }
    }
    let mut changes: Vec<ScopedChange> = grouped
        .into_iter()
        .map(|(change_set, scopes)| ScopedChange { scopes, change_set })
        .collect();
    changes.sort_by(|a, b| a.scopes.cmp(&b.scopes));
    let role_ids = |s: Option<&TenantSnapshot>, set: &BTreeSet<RoleIdx>| -> BTreeSet<String> {
        s.map(|s| set.iter().map(|&r| s.role_id(r).to_owned()).collect())
            .unwrap_or_default()
    };
    let mut roles = role_ids(o.snap, &roles_seen.0);
    roles.extend(role_ids(n.snap, &roles_seen.1));
    let via_endpoint = changes.iter().any(|c| {
        sets.list.get(c.change_set).is_some_and(|r| {
            r.routes.iter().any(|&g| {
                sets.routes
                    .list
                    .get(g)
                    .is_some_and(|(_, v, _)| v.kind != "rule")
            })
        })
    });
    Some(Evaluated {
        changes,
        unchanged,
        roles,
        via_endpoint,
    })
}

/// The scopes where `subject`'s access can differ: the root and every scope of its
/// assignments, direct and through its groups.
fn subject_scopes(s: Option<&TenantSnapshot>, subject: &str, out: &mut BTreeSet<String>) {
    let Some(s) = s else { return };
    let Some(m) = s.subjects.get(subject) else {
        return;
    };
    for a in m.assignments {
        out.insert(s.scope(a.scope).to_owned());
    }
    for &g in m.groups {
        group_scopes(s, g, out);
    }
}

/// The scopes of group `g`'s assignments.
fn group_scopes(s: &TenantSnapshot, g: GroupIdx, out: &mut BTreeSet<String>) {
    if let Some(g) = s.groups.get(g as usize) {
        for a in g.assignments.iter() {
            out.insert(s.scope(a.scope).to_owned());
        }
    }
}

type DocSide<'a> = (&'a PolicyDocument, Option<&'a TenantDoc>);

fn tenant_access(
    tenant: &str,
    old: Option<&TenantSnapshot>,
    new: Option<&TenantSnapshot>,
    old_doc: DocSide<'_>,
    new_doc: DocSide<'_>,
) -> Result<TenantAccess, DiffError> {
    // The patterns and methods of every rule and entry of both sides.
    let mut patterns: Vec<ProbePattern<'_>> = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut methods: BTreeSet<String> = BTreeSet::new();
    for s in [old, new].into_iter().flatten() {
        let roles = s.builtins.roles.iter().chain(s.custom.iter());
        for rule in roles.flat_map(|r| r.rules.iter()) {
            if seen.insert(rule.pattern.as_str()) {
                patterns.push(ProbePattern::new(rule.pattern.segments()));
            }
            methods.extend(rule.methods.to_strings());
        }
        for ep in s.endpoints.iter() {
            if seen.insert(ep.pattern.as_str()) {
                patterns.push(ProbePattern::new(ep.pattern.segments()));
            }
            methods.extend(ep.methods.to_strings());
        }
    }
    methods.remove("*");
    // INVARIANT: every probe method parses (compiled sets hold valid tokens), so method
    // indexes line up wherever the methods are parsed again.
    methods.retain(|m| Method::parse(m).is_ok());
    let mut other = "OTHER".to_owned();
    while methods.contains(&other) {
        other.push('_');
    }
    let mut methods: Vec<String> = methods.into_iter().collect();
    methods.push(other.clone());
    let fresh = fresh_segment(&patterns);
    let too_many = |limit| DiffError::TooManyProbes {
        tenant: tenant.to_owned(),
        limit,
    };
    let paths = if patterns.is_empty() {
        Vec::new()
    } else {
        probe_paths(&patterns, &fresh, MAX_PROBE_PATHS).ok_or_else(|| too_many(MAX_PROBE_PATHS))?
    };
    let probes = Probes { paths, methods };
    if probes.len() > MAX_PROBE_REQUESTS {
        return Err(too_many(MAX_PROBE_REQUESTS));
    }
    let mut o = Eval::new(old, &probes);
    let mut n = Eval::new(new, &probes);

    // Anyone (the empty id), the subjects of either side, then the groups of either side.
    let mut subjects: BTreeSet<&str> = BTreeSet::new();
    let mut groups: BTreeSet<&str> = BTreeSet::new();
    for s in [old, new].into_iter().flatten() {
        subjects.extend(s.subjects.keys());
        groups.extend(s.groups.iter().map(|g| &*g.id));
    }
    let mut sets = ChangeSets::default();
    // First the effective roles of each per scope, so each side judges the roles held
    // anywhere in one pass over the probe paths.
    let mut held: Vec<(Who<'_>, Holders)> = Vec::new();
    let mut needed: (BTreeSet<RoleIdx>, BTreeSet<RoleIdx>) = Default::default();
    let mut hold = |who: Who<'_>, scopes: BTreeSet<String>, o: &Eval<'_>, n: &Eval<'_>| {
        let mut holders = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let (ho, hn) = match who {
                Who::Subject(s) => (o.holder(s, &scope), n.holder(s, &scope)),
                Who::Group(g) => (o.group_holder(g, &scope), n.group_holder(g, &scope)),
            };
            if let Holder::Roles(r) = &ho {
                needed.0.extend(r.iter().copied());
            }
            if let Holder::Roles(r) = &hn {
                needed.1.extend(r.iter().copied());
            }
            holders.push((scope, ho, hn));
        }
        holders
    };
    for subject in std::iter::once("").chain(subjects.iter().copied()) {
        let mut scopes: BTreeSet<String> = BTreeSet::new();
        scopes.insert(String::new());
        if !subject.is_empty() {
            subject_scopes(old, subject, &mut scopes);
            subject_scopes(new, subject, &mut scopes);
        }
        held.push((
            Who::Subject(subject),
            hold(Who::Subject(subject), scopes, &o, &n),
        ));
    }
    for &group in &groups {
        let mut scopes: BTreeSet<String> = BTreeSet::new();
        scopes.insert(String::new());
        for e in [&o, &n] {
            if let (Some(s), Some(&g)) = (e.snap, e.groups.get(group)) {
                group_scopes(s, g, &mut scopes);
            }
        }
        held.push((Who::Group(group), hold(Who::Group(group), scopes, &o, &n)));
    }
    o.prepare_roles(&needed.0, &probes);
    n.prepare_roles(&needed.1, &probes);
    let (old_index, new_index) = (DocIndex::of(old_doc.1), DocIndex::of(new_doc.1));
    let mut out = Vec::new();
    let mut group_out = Vec::new();
    for (who, holders) in held {
        let Some(e) = evaluate((&mut o, &mut n), &probes, holders, &mut sets) else {
            continue;
        };
        let causes = causes(
            who,
            old_doc,
            new_doc,
            (&old_index, &new_index),
            &e.roles,
            e.via_endpoint,
        );
        match who {
            Who::Subject(subject) => out.push(SubjectAccess {
                subject: subject.to_owned(),
                causes,
                changes: e.changes,
                unchanged_scopes: e.unchanged,
            }),
            Who::Group(group) => group_out.push(GroupAccess {
                group: group.to_owned(),
                changes: e.changes,
                unchanged_scopes: e.unchanged,
                causes,
                members_changed: Vec::new(),
            }),
        }
    }
    // Members (either side) whose own access changes: the subjects are all listed by now.
    let changed: BTreeSet<&str> = out.iter().map(|s| s.subject.as_str()).collect();
    for g in &mut group_out {
        let members: BTreeSet<&str> = [&old_index, &new_index]
            .into_iter()
            .flat_map(|ix| ix.members.get(g.group.as_str()).into_iter().flatten())
            .copied()
            .filter(|m| changed.contains(m))
            .collect();
        g.members_changed = members.into_iter().map(str::to_owned).collect();
    }
    // Only the paths some change names, renumbered in sorted order.
    let m = probes.methods.len().max(1);
    let mut used: BTreeSet<usize> = BTreeSet::new();
    for (_, _, bits) in &sets.routes.list {
        used.extend(bits.indexes().map(|i| i / m));
    }
    let mut used: Vec<(usize, &String)> = used
        .into_iter()
        .filter_map(|p| probes.paths.get(p).map(|s| (p, s)))
        .collect();
    used.sort_by(|a, b| a.1.cmp(b.1));
    let renumber: HashMap<usize, u32> = used
        .iter()
        .enumerate()
        .map(|(new, (old, _))| (*old, new as u32))
        .collect();
    let route_changes = sets
        .routes
        .list
        .into_iter()
        .map(|(change, via, bits)| RouteChange {
            change,
            via,
            requests: bits
                .indexes()
                .filter_map(|i| Some(((i % m) as u32, *renumber.get(&(i / m))?)))
                .collect(),
        })
        .collect();
    let change_sets = sets
        .list
        .into_iter()
        .map(|c| ChangeSet {
            permissions_gained: c.gained,
            permissions_lost: c.lost,
            routes: c.routes,
        })
        .collect();
    Ok(TenantAccess {
        tenant: tenant.to_owned(),
        fresh_segment: fresh,
        other_method: other,
        probe_paths: probes.paths.len(),
        paths: used.into_iter().map(|(_, p)| p.clone()).collect(),
        methods: probes.methods,
        change_sets,
        route_changes,
        subjects: out,
        groups: group_out,
    })
}

/// One side's tenant document, indexed for [`causes`]: each subject's registration,
/// direct assignments and groups, each group's members and assignments (so finding a
/// subject's causes does not scan the whole tenant).
#[derive(Default)]
struct DocIndex<'a> {
    subjects: HashMap<&'a str, bool>,
    direct: HashMap<&'a str, BTreeSet<String>>,
    groups_of: HashMap<&'a str, BTreeSet<&'a str>>,
    /// Every group, with its members.
    members: HashMap<&'a str, Vec<&'a str>>,
    group_assignments: HashMap<&'a str, BTreeSet<String>>,
    defaults: BTreeSet<&'a str>,
}

impl<'a> DocIndex<'a> {
    fn of(t: Option<&'a TenantDoc>) -> Self {
        let mut ix = DocIndex::default();
        let Some(t) = t else { return ix };
        ix.subjects = t
            .subjects
            .iter()
            .map(|s| (s.id.as_str(), s.disabled))
            .collect();
        for a in &t.assignments {
            let at = format!("{} at {}", a.role, scope_text(&a.scope));
            match (&a.subject, &a.group) {
                (Some(s), _) => {
                    ix.direct.entry(s).or_default().insert(at);
                }
                (None, Some(g)) => {
                    ix.group_assignments
                        .entry(g)
                        .or_default()
                        .insert(format!("group `{g}`: {at}"));
                }
                (None, None) => {}
            }
        }
        for g in &t.groups {
            for m in &g.members {
                ix.groups_of.entry(m).or_default().insert(&g.id);
            }
            ix.members
                .entry(&g.id)
                .or_default()
                .extend(g.members.iter().map(String::as_str));
        }
        ix.defaults = t.default_roles.iter().map(String::as_str).collect();
        ix
    }
}

/// The structural changes behind a subject's change: its own registration, assignments
/// and groups, its groups' assignments, the tenant's default roles, the definitions of
/// roles it holds on either side, and the endpoint tables when a route change comes
/// through one. For a group: the group added or removed, its assignments, the default
/// roles, the roles and the endpoint tables.
fn causes(
    who: Who<'_>,
    (old_policy, old): DocSide<'_>,
    (new_policy, new): DocSide<'_>,
    (io, inew): (&DocIndex<'_>, &DocIndex<'_>),
    roles: &BTreeSet<String>,
    via_endpoint: bool,
) -> Vec<Cause> {
    let mut out: BTreeSet<Cause> = BTreeSet::new();
    let mut add = |kind: &'static str, detail: String| {
        out.insert(Cause { kind, detail });
    };
    match (old, new) {
        (None, Some(_)) => add("tenant_added", "the tenant is new".to_owned()),
        (Some(_), None) => add("tenant_removed", "the tenant is removed".to_owned()),
        _ => {}
    }
    let empty = TenantDoc::default();
    let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let none = BTreeSet::new();
    let defaults = |add: &mut dyn FnMut(&'static str, String)| {
        for r in inew.defaults.difference(&io.defaults) {
            add("default_role_added", format!("default role `{r}`"));
        }
        for r in io.defaults.difference(&inew.defaults) {
            add("default_role_removed", format!("default role `{r}`"));
        }
    };
    let group_assignments = |g: &str, add: &mut dyn FnMut(&'static str, String)| {
        let (a, b) = (
            io.group_assignments.get(g).unwrap_or(&none),
            inew.group_assignments.get(g).unwrap_or(&none),
        );
        for x in b.difference(a) {
            add("group_assignment_added", x.clone());
        }
        for x in a.difference(b) {
            add("group_assignment_removed", x.clone());
        }
    };
    if let Who::Group(g) = who {
        match (io.members.contains_key(g), inew.members.contains_key(g)) {
            (false, true) if old.is_some() => add("group_added", format!("group `{g}` is new")),
            (true, false) if new.is_some() => {
                add("group_removed", format!("group `{g}` is removed"))
            }
            _ => {}
        }
        group_assignments(g, &mut add);
        defaults(&mut add);
    }
    if let Who::Subject(subject) = who
        && !subject.is_empty()
    {
        match (io.subjects.get(subject), inew.subjects.get(subject)) {
            (None, Some(_)) if old.is_some() => {
                add("subject_added", format!("`{subject}` registered"))
            }
            (Some(_), None) if new.is_some() => {
                add("subject_removed", format!("`{subject}` removed"))
            }
            (Some(false), Some(true)) => add("subject_disabled", format!("`{subject}` disabled")),
            (Some(true), Some(false)) => add("subject_enabled", format!("`{subject}` enabled")),
            _ => {}
        }
        let (da, db) = (
            io.direct.get(subject).unwrap_or(&none),
            inew.direct.get(subject).unwrap_or(&none),
        );
        for x in db.difference(da) {
            add("assignment_added", x.clone());
        }
        for x in da.difference(db) {
            add("assignment_removed", x.clone());
        }
        let no_groups = BTreeSet::new();
        let (ga, gb) = (
            io.groups_of.get(subject).unwrap_or(&no_groups),
            inew.groups_of.get(subject).unwrap_or(&no_groups),
        );
        for g in gb.difference(ga) {
            add("group_joined", format!("member of group `{g}`"));
        }
        for g in ga.difference(gb) {
            add("group_left", format!("no longer in group `{g}`"));
        }
        for g in ga.intersection(gb) {
            group_assignments(g, &mut add);
        }
        defaults(&mut add);
    }
    // Definitions of the roles held on either side.
    let role = |policy: &PolicyDocument, t: &TenantDoc, id: &str| -> Option<RoleDoc> {
        t.roles
            .iter()
            .chain(&policy.roles)
            .find(|r| r.id == id)
            .cloned()
    };
    for id in roles {
        match (role(old_policy, o, id), role(new_policy, n, id)) {
            (None, Some(_)) => add("role_added", format!("role `{id}` is new")),
            (Some(_), None) => add("role_removed", format!("role `{id}` is removed")),
            (Some(a), Some(b)) => {
                // A description says nothing about access: not a cause.
                if let Some(c) =
                    role_changes(std::slice::from_ref(&a), std::slice::from_ref(&b)).first()
                    && c.decides_differently()
                {
                    add("role_changed", role_change_text(c));
                }
            }
            (None, None) => {}
        }
    }
    let endpoints = |p: &PolicyDocument, t: &TenantDoc| -> Vec<String> {
        p.endpoints
            .iter()
            .chain(&t.endpoints)
            .map(endpoint_text)
            .collect()
    };
    if via_endpoint {
        let c = Changes::of(
            endpoints(old_policy, o).into_iter(),
            endpoints(new_policy, n).into_iter(),
        );
        for x in c.added {
            add("endpoints_changed", format!("entry added: {x}"));
        }
        for x in c.removed {
            add("endpoints_changed", format!("entry removed: {x}"));
        }
    }
    out.into_iter().collect()
}

/// A role change in words: ``role `r`: +includes x; -permissions p; +rules GET /a``.
pub fn role_change_text(c: &RoleChange) -> String {
    let mut parts = Vec::new();
    let mut part = |sign: &str, what: &str, items: &[String]| {
        if !items.is_empty() {
            parts.push(format!("{sign}{what} {}", items.join(", ")));
        }
    };
    part("+", "includes", &c.includes.added);
    part("-", "includes", &c.includes.removed);
    part("+", "permissions", &c.permissions.added);
    part("-", "permissions", &c.permissions.removed);
    part("+", "rules", &c.routes.added);
    part("-", "rules", &c.routes.removed);
    if c.description_changed {
        parts.push("description changed".to_owned());
    }
    format!("role `{}`: {}", c.role, parts.join("; "))
}
