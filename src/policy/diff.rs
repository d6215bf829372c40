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
    snapshot::{RoleIdx, TenantSnapshot},
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
    /// Who gains and who loses what, per tenant (only tenants with a change).
    pub access: Vec<TenantAccess>,
}

impl PolicyDiff {
    /// Whether anyone's effective access changes.
    pub fn access_changed(&self) -> bool {
        !self.access.is_empty()
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
    /// Subjects whose access changes, by id; the empty id is anyone (anonymous or not
    /// registered), who gets public endpoints only.
    pub subjects: Vec<SubjectAccess>,
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

/// A change of access at some scopes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScopedChange {
    /// The scopes where this is the change (`""` is the root).
    pub scopes: Vec<String>,
    /// Named permissions gained.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions_gained: Vec<String>,
    /// Named permissions lost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions_lost: Vec<String>,
    /// Route requests gained and lost, grouped by what allows them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteChange>,
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
    /// The requests, as (method, canonical probe path).
    pub requests: Vec<(String, String)>,
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
    /// `group_joined`, `group_left`, `group_assignment_added`, `group_assignment_removed`,
    /// `default_role_added`, `default_role_removed`, `role_added`, `role_removed`,
    /// `role_changed`, `endpoints_changed`.
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
        if !access.subjects.is_empty() {
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
        };
        if change != ChangeKind::Changed
            || !(c.includes.is_empty() && c.permissions.is_empty() && c.routes.is_empty())
        {
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
        // No pattern can match a longer path differently: one more segment stands for
        // every longer path.
        prefix.push(fresh);
        let ok = probe_walk(patterns, fresh, &[], prefix, out, limit);
        prefix.pop();
        return ok;
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
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn or(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    /// Indexes set here and not in `other`.
    fn minus<'a>(&'a self, other: &'a Bits) -> impl Iterator<Item = usize> + 'a {
        self.0
            .iter()
            .zip(&other.0)
            .enumerate()
            .flat_map(|(w, (a, b))| {
                let mut x = a & !b;
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

/// The probe requests of one tenant, shared by both sides.
struct Probes {
    paths: Vec<String>,
    methods: Vec<String>,
}

impl Probes {
    fn len(&self) -> usize {
        self.paths.len() * self.methods.len()
    }
    fn request(&self, i: usize) -> Option<(&str, &str)> {
        let m = self.methods.len().max(1);
        Some((self.paths.get(i / m)?, self.methods.get(i % m)?))
    }
}

/// A subject's access on one side: its effective roles (`None`: no registered, enabled
/// subject; `Some` of an empty set: a subject holding nothing), or no tenant at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Holder {
    NoTenant,
    Nobody,
    Roles(Vec<RoleIdx>),
}

/// What a holder may do.
struct Access {
    holder: Holder,
    permissions: Vec<Box<str>>,
    routes: Bits,
}

/// One side of one tenant, with what the diff has evaluated so far.
struct Eval<'a> {
    snap: Option<&'a TenantSnapshot>,
    /// Requests allowed to anyone (public entries).
    public: Bits,
    /// The resolved (method-matching, non-public) entry of each request.
    entry: Vec<Option<u32>>,
    /// Per role: the requests its own rules allow or its membership in the resolved
    /// entry allows; computed when first needed.
    role_bits: Vec<Option<Bits>>,
    accesses: Vec<Access>,
    index: HashMap<Holder, usize>,
}

impl<'a> Eval<'a> {
    fn new(snap: Option<&'a TenantSnapshot>, probes: &Probes) -> Self {
        let n = probes.len();
        let mut public = Bits::new(n);
        let mut entry = vec![None; n];
        if let Some(s) = snap {
            for i in 0..n {
                let Some((path, method)) = probes.request(i) else {
                    continue;
                };
                let Ok(method) = Method::parse(method) else {
                    continue;
                };
                let (e, _) = s.resolve_endpoint(&PathSegments::new(path), method);
                match e.and_then(|e| s.endpoints.get(e as usize).map(|ep| (e, ep))) {
                    Some((_, ep)) if ep.public => public.set(i),
                    Some((e, _)) => {
                        if let Some(slot) = entry.get_mut(i) {
                            *slot = Some(e);
                        }
                    }
                    None => {}
                }
            }
        }
        Eval {
            snap,
            public,
            entry,
            role_bits: vec![None; snap.map_or(0, |s| s.role_count())],
            accesses: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn role_bits(&mut self, role: RoleIdx, probes: &Probes) -> Bits {
        if let Some(Some(b)) = self.role_bits.get(role as usize) {
            return b.clone();
        }
        let mut bits = Bits::new(probes.len());
        if let Some(s) = self.snap
            && let Some(r) = s.role(role)
        {
            let has_rules = !r.rules.is_empty();
            for i in 0..probes.len() {
                let in_entry = self
                    .entry
                    .get(i)
                    .copied()
                    .flatten()
                    .and_then(|e| s.endpoints.get(e as usize))
                    .is_some_and(|ep| ep.role_set.contains(role));
                let allowed = in_entry
                    || (has_rules
                        && probes.request(i).is_some_and(|(path, method)| {
                            Method::parse(method).is_ok_and(|m| {
                                matches!(
                                    r.judge(&PathSegments::new(path), m),
                                    RuleVerdict::Allowed(_)
                                )
                            })
                        }));
                if allowed {
                    bits.set(i);
                }
            }
        }
        if let Some(slot) = self.role_bits.get_mut(role as usize) {
            *slot = Some(bits.clone());
        }
        bits
    }

    /// The holder for a subject at a scope: its effective roles, as Check gathers them.
    fn holder(&self, subject: &str, scope: &str) -> Holder {
        let Some(s) = self.snap else {
            return Holder::NoTenant;
        };
        let member = match s.subjects.get(subject) {
            Some(m) if !subject.is_empty() && !m.disabled => m,
            _ => return Holder::Nobody,
        };
        let mut roles: Vec<RoleIdx> = Vec::new();
        s.for_each_applicable(member, scope, |role, _, _| {
            if let Some(r) = s.role(role) {
                roles.extend(r.closure_set.iter());
            }
            None::<()>
        });
        roles.sort_unstable();
        roles.dedup();
        Holder::Roles(roles)
    }

    fn access(&mut self, holder: Holder, probes: &Probes) -> usize {
        if let Some(&i) = self.index.get(&holder) {
            return i;
        }
        let (permissions, routes) = match (&holder, self.snap) {
            (Holder::Roles(roles), Some(s)) => {
                let mut perms: BTreeSet<&str> = BTreeSet::new();
                let mut routes = self.public.clone();
                for &r in roles {
                    if let Some(role) = s.role(r) {
                        perms.extend(role.permissions.iter().map(|p| &**p));
                    }
                    let b = self.role_bits(r, probes);
                    routes.or(&b);
                }
                (perms.into_iter().map(Box::from).collect(), routes)
            }
            (Holder::Nobody, Some(_)) => (Vec::new(), self.public.clone()),
            _ => (Vec::new(), Bits::new(probes.len())),
        };
        let i = self.accesses.len();
        self.accesses.push(Access {
            holder: holder.clone(),
            permissions,
            routes,
        });
        self.index.insert(holder, i);
        i
    }

    /// What allows request `i` for the holder of access `a` (which allows it): as Check
    /// looks, a public entry, then the resolved entry's roles, then role rules; among
    /// roles, the first by id.
    fn via(&self, a: usize, i: usize, probes: &Probes) -> Via {
        let unknown = Via {
            kind: "rule",
            role: String::new(),
            pattern: String::new(),
            methods: String::new(),
        };
        let (Some(s), Some(access)) = (self.snap, self.accesses.get(a)) else {
            return unknown;
        };
        let Some((path, method)) = probes.request(i) else {
            return unknown;
        };
        let segments = PathSegments::new(path);
        let Ok(m) = Method::parse(method) else {
            return unknown;
        };
        if self.public.get(i) {
            let (e, _) = s.resolve_endpoint(&segments, m);
            if let Some(ep) = e.and_then(|e| s.endpoints.get(e as usize)) {
                return Via {
                    kind: "public",
                    role: String::new(),
                    pattern: ep.pattern.to_string(),
                    methods: ep.methods.to_string(),
                };
            }
        }
        let Holder::Roles(roles) = &access.holder else {
            return unknown;
        };
        let mut by_id: Vec<(&str, RoleIdx)> = roles.iter().map(|&r| (s.role_id(r), r)).collect();
        by_id.sort_unstable();
        if let Some(ep) = self
            .entry
            .get(i)
            .copied()
            .flatten()
            .and_then(|e| s.endpoints.get(e as usize))
            && let Some(&(id, _)) = by_id.iter().find(|(_, r)| ep.role_set.contains(*r))
        {
            return Via {
                kind: "endpoint",
                role: id.to_owned(),
                pattern: ep.pattern.to_string(),
                methods: ep.methods.to_string(),
            };
        }
        for (id, r) in by_id {
            if let Some(role) = s.role(r)
                && let RuleVerdict::Allowed(rule) = role.judge(&segments, m)
                && let Some(rule) = role.rules.get(rule as usize)
            {
                return Via {
                    kind: "rule",
                    role: id.to_owned(),
                    pattern: rule.pattern.to_string(),
                    methods: rule.methods.to_string(),
                };
            }
        }
        unknown
    }
}

/// The change between two accesses, or `None` when they allow the same.
fn change(
    old: &Eval<'_>,
    a: usize,
    new: &Eval<'_>,
    b: usize,
    probes: &Probes,
) -> Option<(Vec<String>, Vec<String>, Vec<RouteChange>)> {
    let (oa, nb) = (old.accesses.get(a)?, new.accesses.get(b)?);
    let op: BTreeSet<&str> = oa.permissions.iter().map(|p| &**p).collect();
    let np: BTreeSet<&str> = nb.permissions.iter().map(|p| &**p).collect();
    let gained: Vec<String> = np.difference(&op).map(|p| (*p).to_owned()).collect();
    let lost: Vec<String> = op.difference(&np).map(|p| (*p).to_owned()).collect();
    let mut routes: BTreeMap<(Direction, Via), Vec<(String, String)>> = BTreeMap::new();
    for i in nb.routes.minus(&oa.routes) {
        if let Some((p, m)) = probes.request(i) {
            routes
                .entry((Direction::Gained, new.via(b, i, probes)))
                .or_default()
                .push((m.to_owned(), p.to_owned()));
        }
    }
    for i in oa.routes.minus(&nb.routes) {
        if let Some((p, m)) = probes.request(i) {
            routes
                .entry((Direction::Lost, old.via(a, i, probes)))
                .or_default()
                .push((m.to_owned(), p.to_owned()));
        }
    }
    if gained.is_empty() && lost.is_empty() && routes.is_empty() {
        return None;
    }
    let routes = routes
        .into_iter()
        .map(|((change, via), requests)| RouteChange {
            change,
            via,
            requests,
        })
        .collect();
    Some((gained, lost, routes))
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
        if let Some(g) = s.groups.get(g as usize) {
            for a in g.assignments.iter() {
                out.insert(s.scope(a.scope).to_owned());
            }
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

    // Subjects of either side, then anyone (the empty id).
    let mut subjects: BTreeSet<&str> = BTreeSet::new();
    for s in [old, new].into_iter().flatten() {
        subjects.extend(s.subjects.keys());
    }
    let mut memo: HashMap<(usize, usize), Option<usize>> = HashMap::new();
    let mut changes: Vec<(Vec<String>, Vec<String>, Vec<RouteChange>)> = Vec::new();
    let mut out = Vec::new();
    for subject in std::iter::once("").chain(subjects.iter().copied()) {
        let mut scopes: BTreeSet<String> = BTreeSet::new();
        scopes.insert(String::new());
        if !subject.is_empty() {
            subject_scopes(old, subject, &mut scopes);
            subject_scopes(new, subject, &mut scopes);
        }
        let mut per_scope: Vec<(String, Option<usize>)> = Vec::with_capacity(scopes.len());
        let mut roles_seen: (BTreeSet<RoleIdx>, BTreeSet<RoleIdx>) = Default::default();
        for scope in scopes {
            let (ho, hn) = (o.holder(subject, &scope), n.holder(subject, &scope));
            if let Holder::Roles(r) = &ho {
                roles_seen.0.extend(r.iter().copied());
            }
            if let Holder::Roles(r) = &hn {
                roles_seen.1.extend(r.iter().copied());
            }
            let (a, b) = (o.access(ho, &probes), n.access(hn, &probes));
            let c = match memo.get(&(a, b)) {
                Some(c) => *c,
                None => {
                    let c = change(&o, a, &n, b, &probes).map(|c| {
                        changes.push(c);
                        changes.len() - 1
                    });
                    memo.insert((a, b), c);
                    c
                }
            };
            per_scope.push((scope, c));
        }
        if per_scope.iter().all(|(_, c)| c.is_none()) {
            continue;
        }
        let mut grouped: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut unchanged = Vec::new();
        for (scope, c) in per_scope {
            match c {
                Some(c) => grouped.entry(c).or_default().push(scope),
                None => unchanged.push(scope),
            }
        }
        let mut scoped: Vec<ScopedChange> = grouped
            .into_iter()
            .filter_map(|(c, scopes)| {
                let (g, l, r) = changes.get(c)?;
                Some(ScopedChange {
                    scopes,
                    permissions_gained: g.clone(),
                    permissions_lost: l.clone(),
                    routes: r.clone(),
                })
            })
            .collect();
        scoped.sort_by(|a, b| a.scopes.cmp(&b.scopes));
        let role_ids = |s: Option<&TenantSnapshot>, set: &BTreeSet<RoleIdx>| -> BTreeSet<String> {
            s.map(|s| set.iter().map(|&r| s.role_id(r).to_owned()).collect())
                .unwrap_or_default()
        };
        let mut roles = role_ids(old, &roles_seen.0);
        roles.extend(role_ids(new, &roles_seen.1));
        out.push(SubjectAccess {
            subject: subject.to_owned(),
            causes: causes(subject, old_doc, new_doc, &roles, &scoped),
            changes: scoped,
            unchanged_scopes: unchanged,
        });
    }
    Ok(TenantAccess {
        tenant: tenant.to_owned(),
        fresh_segment: fresh,
        other_method: other,
        methods: probes.methods,
        probe_paths: probes.paths.len(),
        subjects: out,
    })
}

/// The structural changes behind a subject's change: its own registration, assignments
/// and groups, its groups' assignments, the tenant's default roles, the definitions of
/// roles it holds on either side, and the endpoint tables when a route change comes
/// through one.
fn causes(
    subject: &str,
    (old_policy, old): DocSide<'_>,
    (new_policy, new): DocSide<'_>,
    roles: &BTreeSet<String>,
    changes: &[ScopedChange],
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
    if !subject.is_empty() {
        let (so, sn) = (
            o.subjects.iter().find(|s| s.id == subject),
            n.subjects.iter().find(|s| s.id == subject),
        );
        match (so, sn) {
            (None, Some(_)) if old.is_some() => {
                add("subject_added", format!("`{subject}` registered"))
            }
            (Some(_), None) if new.is_some() => {
                add("subject_removed", format!("`{subject}` removed"))
            }
            (Some(a), Some(b)) if !a.disabled && b.disabled => {
                add("subject_disabled", format!("`{subject}` disabled"))
            }
            (Some(a), Some(b)) if a.disabled && !b.disabled => {
                add("subject_enabled", format!("`{subject}` enabled"))
            }
            _ => {}
        }
        let direct = |t: &TenantDoc| -> BTreeSet<String> {
            t.assignments
                .iter()
                .filter(|a| a.subject.as_deref() == Some(subject))
                .map(|a| format!("{} at {}", a.role, scope_text(&a.scope)))
                .collect()
        };
        let (da, db) = (direct(o), direct(n));
        for x in db.difference(&da) {
            add("assignment_added", x.clone());
        }
        for x in da.difference(&db) {
            add("assignment_removed", x.clone());
        }
        let groups = |t: &TenantDoc| -> BTreeSet<String> {
            t.groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m == subject))
                .map(|g| g.id.clone())
                .collect()
        };
        let (ga, gb) = (groups(o), groups(n));
        for g in gb.difference(&ga) {
            add("group_joined", format!("member of group `{g}`"));
        }
        for g in ga.difference(&gb) {
            add("group_left", format!("no longer in group `{g}`"));
        }
        let group_assignments = |t: &TenantDoc, g: &str| -> BTreeSet<String> {
            t.assignments
                .iter()
                .filter(|a| a.group.as_deref() == Some(g))
                .map(|a| format!("group `{g}`: {} at {}", a.role, scope_text(&a.scope)))
                .collect()
        };
        for g in ga.intersection(&gb) {
            let (a, b) = (group_assignments(o, g), group_assignments(n, g));
            for x in b.difference(&a) {
                add("group_assignment_added", x.clone());
            }
            for x in a.difference(&b) {
                add("group_assignment_removed", x.clone());
            }
        }
        let defaults =
            |t: &TenantDoc| -> BTreeSet<String> { t.default_roles.iter().cloned().collect() };
        let (a, b) = (defaults(o), defaults(n));
        for r in b.difference(&a) {
            add("default_role_added", format!("default role `{r}`"));
        }
        for r in a.difference(&b) {
            add("default_role_removed", format!("default role `{r}`"));
        }
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
                if let Some(c) =
                    role_changes(std::slice::from_ref(&a), std::slice::from_ref(&b)).first()
                {
                    add("role_changed", role_change_text(c));
                }
            }
            (None, None) => {}
        }
    }
    let via_endpoint = changes
        .iter()
        .flat_map(|c| &c.routes)
        .any(|r| r.via.kind != "rule");
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
    format!("role `{}`: {}", c.role, parts.join("; "))
}
