//! The compiled, immutable form of one tenant's policy: what Check reads.
//!
//! Built by [`super::compile()`], never mutated after that: a change builds a new snapshot
//! and swaps it in (see [`crate::cache`]). Everything the evaluator needs is precomputed
//! here: role ids interned to indexes, each role's `includes` closure (as a sorted set and
//! in breadth-first order, for explanations), each permission's holders, and tries for the
//! per-role route rules and the tenant's endpoint table.

use std::{collections::HashMap, sync::Arc};

/// The hash map of snapshots: foldhash instead of SipHash. Keys are policy data (ids
/// written by administrators), never inserted from requests, so a fast hasher with a
/// per-process random seed is enough; it cuts a permission check's hashing by half.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use super::pattern::{Matcher, Pattern};
use crate::model::MethodSet;

/// Index of a role in a tenant's role table: built-in roles first, then custom roles.
pub type RoleIdx = u32;
/// Index of a scope in a tenant's scope table.
pub type ScopeIdx = u32;
/// Index of a group in a tenant's group table.
pub type GroupIdx = u32;

/// Sets up to this long are scanned rather than binary-searched.
const SCAN: usize = 16;

/// A set of roles of one tenant: their indexes, sorted.
///
/// Its size is the roles in it, not the roles of the tenant: every role's include
/// closure and every permission's holders are sets, so a tenant costs the sum of their
/// sizes. (Bit sets over all roles cost N² bits for N roles: 12.5 MB at 10,000 roles,
/// 748 MB at 40,000.) The sets a check compares are small (a closure is the role and
/// what it includes; holders are the roles naming one permission), so the hot path is a
/// short merge or a few binary searches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleSet(Box<[RoleIdx]>);

impl RoleSet {
    /// The set of `roles` (in any order, repeats ignored).
    pub fn from_unsorted(mut roles: Vec<RoleIdx>) -> Self {
        roles.sort_unstable();
        roles.dedup();
        RoleSet(roles.into_boxed_slice())
    }

    /// Whether the role is in the set: a scan of a short set (most are a few roles, and
    /// a scan of those is cheaper than a search), a binary search of a long one.
    #[inline]
    #[expect(
        clippy::manual_contains,
        reason = "a plain loop: `slice::contains` measured 60-80 more instructions per check (callgrind_check)"
    )]
    pub fn contains(&self, role: RoleIdx) -> bool {
        if self.0.len() <= SCAN {
            self.0.iter().any(|&r| r == role)
        } else {
            self.0.binary_search(&role).is_ok()
        }
    }

    /// Whether the sets share a role: lookups in the larger for each role of a short or
    /// much smaller one, else a merge of the two sorted lists.
    #[inline]
    pub fn intersects(&self, other: &RoleSet) -> bool {
        let (small, large) = if self.0.len() <= other.0.len() {
            (self, other)
        } else {
            (other, self)
        };
        if small.0.len() <= 4 || small.0.len().saturating_mul(8) < large.0.len() {
            return small.0.iter().any(|&r| large.contains(r));
        }
        let (small, large) = (&small.0, &large.0);
        let (mut a, mut b) = (small.iter(), large.iter());
        let (mut x, mut y) = (a.next(), b.next());
        while let (Some(p), Some(q)) = (x, y) {
            match p.cmp(q) {
                std::cmp::Ordering::Less => x = a.next(),
                std::cmp::Ordering::Greater => y = b.next(),
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The roles, ascending.
    pub fn iter(&self) -> impl Iterator<Item = RoleIdx> + '_ {
        self.0.iter().copied()
    }

    /// How many roles.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
    /// The longest chain of `includes` edges from this role (0: it includes nothing).
    pub depth: u32,
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

/// A subject's or group's assignments.
pub type Assignments = Box<[Assignment]>;

/// A subject id.
pub type SubjectId = Box<str>;

/// A registered member in its owned, editable form (compiling, incremental changes);
/// stored flat in [`Members`].
#[derive(Clone, Debug)]
pub struct Subject {
    /// A disabled subject holds nothing.
    pub disabled: bool,
    /// Direct assignments, nearest (deepest) scope first, then as written.
    pub assignments: Assignments,
    /// Groups the subject is a member of, as written in the policy.
    pub groups: Box<[GroupIdx]>,
}

/// A registered member as stored: borrowed from a tenant's [`Members`].
#[derive(Clone, Copy, Debug)]
pub struct SubjectRef<'a> {
    /// A disabled subject holds nothing.
    pub disabled: bool,
    /// Direct assignments, nearest (deepest) scope first, then as written.
    pub assignments: &'a [Assignment],
    /// Groups the subject is a member of, as written in the policy.
    pub groups: &'a [GroupIdx],
}

/// A tenant's registered members, flat: every id in one string, every assignment and
/// group membership in one array each, and per member a 16-byte entry of end offsets,
/// sorted by id. Lookup is a binary search, with no per-member heap blocks: at a million
/// assignments, a map of boxed members spent more on table slack, allocator headers and
/// pointers than on the data (see docs/benchmarks.md).
#[derive(Clone, Debug, Default)]
pub struct Members {
    ids: Box<str>,
    entries: Box<[MemberEntry]>,
    assignments: Box<[Assignment]>,
    groups: Box<[GroupIdx]>,
    /// Positions in `entries`, hashed by id: 4 bytes a slot, so lookups cost a hash and
    /// one comparison instead of a binary search's many.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

#[derive(Clone, Copy, Debug)]
struct MemberEntry {
    id_end: u32,
    assignments_end: u32,
    groups_end: u32,
    disabled: bool,
}

impl Members {
    /// Builds the flat form from members keyed by id.
    pub fn new<K: AsRef<str>>(members: impl IntoIterator<Item = (K, Subject)>) -> Self {
        let mut sorted: Vec<(K, Subject)> = members.into_iter().collect();
        sorted.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut ids = String::with_capacity(sorted.iter().map(|(k, _)| k.as_ref().len()).sum());
        let mut assignments =
            Vec::with_capacity(sorted.iter().map(|(_, s)| s.assignments.len()).sum());
        let mut groups = Vec::new();
        let mut entries = Vec::with_capacity(sorted.len());
        for (id, s) in &sorted {
            ids.push_str(id.as_ref());
            assignments.extend_from_slice(&s.assignments);
            groups.extend_from_slice(&s.groups);
            // INVARIANT: ids are at most 256 bytes and a tenant's totals stay far below
            // u32::MAX (a tenant of 10 million members would use 2.6 GB of ids alone).
            entries.push(MemberEntry {
                id_end: ids.len() as u32,
                assignments_end: assignments.len() as u32,
                groups_end: groups.len() as u32,
                disabled: s.disabled,
            });
        }
        let mut members = Members {
            ids: ids.into(),
            entries: entries.into(),
            assignments: assignments.into(),
            groups: groups.into(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        };
        let mut index = hashbrown::HashTable::with_capacity(members.entries.len());
        for i in 0..members.entries.len() {
            let hash = members.hash(members.id_at(i));
            index.insert_unique(hash, i as u32, |&j| members.hash(members.id_at(j as usize)));
        }
        members.index = index;
        members
    }

    fn hash(&self, id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(id)
    }

    /// The id at position `i` (empty if out of range, which never matches a valid id).
    fn id_at(&self, i: usize) -> &str {
        let start = match i.checked_sub(1).and_then(|p| self.entries.get(p)) {
            Some(p) => p.id_end as usize,
            None => 0,
        };
        let end = self.entries.get(i).map_or(start, |e| e.id_end as usize);
        self.ids.get(start..end).unwrap_or("")
    }

    /// The position (in id order) of the first member whose id sorts after `after`
    /// (0 for an empty `after`).
    pub fn position_after(&self, after: &str) -> usize {
        if after.is_empty() {
            return 0;
        }
        let (mut lo, mut hi) = (0usize, self.entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.id_at(mid) <= after {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The id of the member at `pos` (in id order).
    pub fn id_at_position(&self, pos: usize) -> Option<&str> {
        (pos < self.entries.len()).then(|| self.id_at(pos))
    }

    /// The position (in id order) of the member with this id.
    pub fn position_of(&self, id: &str) -> Option<usize> {
        self.index
            .find(self.hash(id), |&i| self.id_at(i as usize) == id)
            .map(|&i| i as usize)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The member at position `i` (in id order), with its id.
    fn at(&self, i: usize) -> Option<(&str, SubjectRef<'_>)> {
        let e = self.entries.get(i)?;
        let prev = i.checked_sub(1).and_then(|p| self.entries.get(p));
        let (id0, a0, g0) = prev.map_or((0, 0, 0), |p| (p.id_end, p.assignments_end, p.groups_end));
        let id = self.ids.get(id0 as usize..e.id_end as usize)?;
        Some((
            id,
            SubjectRef {
                disabled: e.disabled,
                assignments: self
                    .assignments
                    .get(a0 as usize..e.assignments_end as usize)?,
                groups: self.groups.get(g0 as usize..e.groups_end as usize)?,
            },
        ))
    }

    /// A member by id.
    pub fn get(&self, id: &str) -> Option<SubjectRef<'_>> {
        let &i = self
            .index
            .find(self.hash(id), |&i| self.id_at(i as usize) == id)?;
        self.at(i as usize).map(|(_, s)| s)
    }

    /// Whether a member has this id.
    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Every member with its id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, SubjectRef<'_>)> {
        (0..self.entries.len()).filter_map(|i| self.at(i))
    }

    /// Every id, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(id, _)| id)
    }

    /// The members in their editable form (for incremental changes).
    pub fn to_map(&self) -> Map<SubjectId, Subject> {
        self.iter()
            .map(|(id, s)| {
                (
                    id.into(),
                    Subject {
                        disabled: s.disabled,
                        assignments: s.assignments.into(),
                        groups: s.groups.into(),
                    },
                )
            })
            .collect()
    }
}

/// A group.
#[derive(Clone, Debug)]
pub struct Group {
    /// Group id.
    pub id: Box<str>,
    /// Members, as written.
    pub members: Box<[Box<str>]>,
    /// Assignments to the group, nearest scope first, then as written.
    pub assignments: Assignments,
}

/// The roles every tenant shares, compiled once.
#[derive(Debug, Default)]
pub struct Builtins {
    /// The roles; their indexes are the same in every tenant.
    pub roles: Box<[Role]>,
    /// Role id → index.
    pub index: Map<Box<str>, RoleIdx>,
    /// Permission → built-in roles holding it themselves.
    pub holders: Map<Box<str>, RoleSet>,
}

/// One tenant's compiled policy.
///
/// The role-level parts (custom roles, indexes, the endpoint table) sit behind `Arc`s:
/// a change to members, groups or assignments builds a new snapshot that shares them and
/// copies only the member data.
#[derive(Debug)]
pub struct TenantSnapshot {
    /// Tenant id.
    pub id: Box<str>,
    /// The policy revision this snapshot was built from.
    pub revision: u64,
    /// Built-in roles (shared by all tenants), indexes `0..builtins.roles.len()`.
    pub builtins: Arc<Builtins>,
    /// Custom roles, indexes following the built-in ones.
    pub custom: Arc<[Role]>,
    /// Custom role id → index (built-in ids are in [`Builtins::index`]; see
    /// [`TenantSnapshot::role_named`]).
    pub role_index: Arc<Map<Box<str>, RoleIdx>>,
    /// Permission → custom roles holding it themselves (built-in holders are in
    /// [`Builtins::holders`]).
    pub permission_holders: Arc<Map<Box<str>, RoleSet>>,
    /// Endpoint entries: the tenant's own, then global ones. A tenant without entries of
    /// its own shares the compiled global table.
    pub endpoints: Arc<[Endpoint]>,
    /// The entries in a trie.
    pub endpoint_matcher: Arc<Matcher<EndpointGroup>>,
    /// Roles every enabled member holds at the root.
    pub default_roles: Arc<[RoleIdx]>,
    /// Registered members.
    pub subjects: Members,
    /// Groups.
    pub groups: Box<[Group]>,
    /// Scopes used by assignments; index 0 is the root `""`.
    pub scopes: Box<[Box<str>]>,
    /// Role → holders, built by the first LookupSubjects on this snapshot.
    pub holders: super::lookup::LazyHolders,
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

    /// A role's index by id, custom or built-in.
    pub fn role_named(&self, id: &str) -> Option<RoleIdx> {
        self.role_index
            .get(id)
            .or_else(|| self.builtins.index.get(id))
            .copied()
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
        self.subjects.assignments.len()
            + self
                .groups
                .iter()
                .map(|g| g.assignments.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::RoleSet;

    #[test]
    fn role_sets_intersect_by_merge_and_by_search() {
        let a = RoleSet::from_unsorted(vec![9, 3, 3, 7]);
        assert_eq!(a.iter().collect::<Vec<_>>(), [3, 7, 9]);
        assert!(a.contains(7) && !a.contains(8));
        let b = RoleSet::from_unsorted(vec![1, 2, 9]);
        let c = RoleSet::from_unsorted(vec![1, 2, 4]);
        assert!(a.intersects(&b) && b.intersects(&a));
        assert!(!a.intersects(&c) && !c.intersects(&a));
        // A small set against a much larger one: binary searches.
        let large = RoleSet::from_unsorted((100..1000).collect());
        assert!(RoleSet::from_unsorted(vec![5, 500]).intersects(&large));
        assert!(!RoleSet::from_unsorted(vec![5, 5000]).intersects(&large));
        assert!(!RoleSet::default().intersects(&large));
    }
}
