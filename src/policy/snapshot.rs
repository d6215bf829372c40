//! The compiled, immutable form of one tenant's policy: what Check reads.
//!
//! Built by [`super::compile`], never mutated after that: a change builds a new snapshot
//! and swaps it in (see [`crate::cache`]). Everything the evaluator needs is precomputed
//! here: role ids interned to indexes, each role's `includes` closure (as a bit set and in
//! breadth-first order, for explanations), each permission's holders, and tries for the
//! per-role route rules and the tenant's endpoint table.

use std::{collections::HashMap, sync::Arc};

use super::pattern::{Matcher, Pattern};
use crate::model::MethodSet;

/// Index of a role in a tenant's role table: built-in roles first, then custom roles.
pub type RoleIdx = u32;
/// Index of a scope in a tenant's scope table.
pub type ScopeIdx = u32;
/// Index of a group in a tenant's group table.
pub type GroupIdx = u32;

/// A set of roles of one tenant, as bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleSet(Box<[u64]>);

impl RoleSet {
    /// An empty set sized for `roles` roles.
    pub fn with_capacity(roles: usize) -> Self {
        RoleSet(vec![0; roles.div_ceil(64)].into_boxed_slice())
    }

    /// Adds a role. Roles beyond the set's capacity are ignored (never happens for sets
    /// sized by the compiler).
    pub fn insert(&mut self, role: RoleIdx) {
        if let Some(w) = self.0.get_mut(role as usize / 64) {
            *w |= 1 << (role % 64);
        }
    }

    /// Whether the role is in the set.
    pub fn contains(&self, role: RoleIdx) -> bool {
        self.0
            .get(role as usize / 64)
            .is_some_and(|w| w & (1 << (role % 64)) != 0)
    }

    /// Whether the sets share a role.
    pub fn intersects(&self, other: &RoleSet) -> bool {
        self.0.iter().zip(other.0.iter()).any(|(a, b)| a & b != 0)
    }
}

/// A compiled role.
#[derive(Debug)]
pub struct Role {
    /// Role id.
    pub id: Box<str>,
    /// Free text.
    pub description: Box<str>,
    /// Declared once for all tenants.
    pub builtin: bool,
    /// This role and every role it includes, transitively, in breadth-first order from
    /// this role; each with the position (in this list) of the role that includes it.
    /// The first entry is the role itself, pointing at itself.
    pub closure: Box<[(RoleIdx, u32)]>,
    /// The same roles as a set.
    pub closure_set: RoleSet,
    /// Named permissions of the role itself, by name, sorted.
    pub permissions: Box<[Box<str>]>,
    /// The role's own route rules, as written.
    pub rules: Box<[Rule]>,
    /// The rules in a trie; equally specific rules share a [`RuleGroup`].
    pub matcher: Matcher<RuleGroup>,
}

/// A route rule of a role.
#[derive(Debug)]
pub struct Rule {
    /// Methods it allows.
    pub methods: MethodSet,
    /// Path pattern.
    pub pattern: Pattern,
}

/// Equally specific rules of one role.
#[derive(Debug)]
pub struct RuleGroup {
    /// Indexes into [`Role::rules`], in the order written.
    pub rules: Vec<u32>,
}

/// An endpoint-table entry.
#[derive(Debug)]
pub struct Endpoint {
    /// Path pattern.
    pub pattern: Pattern,
    /// Methods it applies to.
    pub methods: MethodSet,
    /// Roles that may call it, as written.
    pub roles: Box<[RoleIdx]>,
    /// The same roles as a set.
    pub role_set: RoleSet,
    /// Anyone in the tenant may call it.
    pub public: bool,
}

/// Equally specific endpoint entries: the tenant's own first, then global ones, so a
/// tenant's entry shadows a global entry for the methods they share.
#[derive(Debug)]
pub struct EndpointGroup {
    /// Indexes into [`TenantSnapshot::endpoints`].
    pub entries: Vec<u32>,
}

/// A role assignment at a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The role.
    pub role: RoleIdx,
    /// The scope.
    pub scope: ScopeIdx,
}

/// A registered member.
#[derive(Debug)]
pub struct Subject {
    /// A disabled subject holds nothing.
    pub disabled: bool,
    /// Direct assignments, nearest (deepest) scope first, then as written.
    pub assignments: Box<[Assignment]>,
    /// Groups the subject is a member of, as written in the policy.
    pub groups: Box<[GroupIdx]>,
}

/// A group.
#[derive(Debug)]
pub struct Group {
    /// Group id.
    pub id: Box<str>,
    /// Members, as written.
    pub members: Box<[Box<str>]>,
    /// Assignments to the group, nearest scope first, then as written.
    pub assignments: Box<[Assignment]>,
}

/// The roles every tenant shares, compiled once.
#[derive(Debug, Default)]
pub struct Builtins {
    /// The roles; their indexes are the same in every tenant.
    pub roles: Box<[Role]>,
}

/// One tenant's compiled policy.
#[derive(Debug)]
pub struct TenantSnapshot {
    /// Tenant id.
    pub id: Box<str>,
    /// The policy revision this snapshot was built from.
    pub revision: u64,
    /// Built-in roles (shared by all tenants), indexes `0..builtins.roles.len()`.
    pub builtins: Arc<Builtins>,
    /// Custom roles, indexes following the built-in ones.
    pub custom: Box<[Role]>,
    /// Role id → index, built-in and custom.
    pub role_index: HashMap<Box<str>, RoleIdx>,
    /// Permission → roles holding it themselves (not through includes).
    pub permission_holders: HashMap<Box<str>, RoleSet>,
    /// Endpoint entries: the tenant's own, then global ones.
    pub endpoints: Box<[Endpoint]>,
    /// The entries in a trie.
    pub endpoint_matcher: Matcher<EndpointGroup>,
    /// Roles every enabled member holds at the root.
    pub default_roles: Box<[RoleIdx]>,
    /// Registered members.
    pub subjects: HashMap<Box<str>, Subject>,
    /// Groups.
    pub groups: Box<[Group]>,
    /// Scopes used by assignments; index 0 is the root `""`.
    pub scopes: Box<[Box<str>]>,
}

impl TenantSnapshot {
    /// The role at an index.
    pub fn role(&self, idx: RoleIdx) -> Option<&Role> {
        let b = self.builtins.roles.len();
        let i = idx as usize;
        if i < b {
            self.builtins.roles.get(i)
        } else {
            self.custom.get(i - b)
        }
    }

    /// A role's id, or `?` for an index that does not exist (never for compiled data).
    pub fn role_id(&self, idx: RoleIdx) -> &str {
        self.role(idx).map_or("?", |r| &r.id)
    }

    /// The number of roles, built-in and custom.
    pub fn role_count(&self) -> usize {
        self.builtins.roles.len() + self.custom.len()
    }

    /// A scope's text.
    pub fn scope(&self, idx: ScopeIdx) -> &str {
        self.scopes.get(idx as usize).map_or("", |s| s)
    }

    /// A group's id.
    pub fn group_id(&self, idx: GroupIdx) -> &str {
        self.groups.get(idx as usize).map_or("?", |g| &g.id)
    }

    /// The number of role assignments (direct and to groups).
    pub fn assignment_count(&self) -> usize {
        self.subjects
            .values()
            .map(|s| s.assignments.len())
            .chain(self.groups.iter().map(|g| g.assignments.len()))
            .sum()
    }
}
