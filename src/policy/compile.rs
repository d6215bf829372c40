//! Compiles a [`PolicyDocument`] into immutable [`TenantSnapshot`]s.
//!
//! Everything is checked here, once: ids, patterns, methods, references, duplicates and
//! include cycles. Every problem is collected (not just the first), each naming the
//! tenant and the role, entry or rule. A document with any problem compiles to nothing:
//! there is no partial policy.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    sync::Arc,
};

use super::{
    pattern::{Matcher, Pattern, Segment},
    snapshot::*,
    source::{EndpointDoc, PolicyDocument, RoleDoc, TenantDoc},
};
use crate::model::{self, MethodSet};

/// Per-tenant limits on what a policy may hold, checked before the expensive work, so
/// nothing a tenant admin or a policy file writes can make compiling (or the database's
/// validation, which enforces the same limits from its `authz_limits` table) cost more
/// than linear time and memory in the document.
///
/// The rules and defaults are listed in docs/policy-rules.md; a real tenant never meets
/// the defaults. Exceeding one is a load error naming the limit (`max_include_depth` ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest chain of `includes` edges from any role (a role including nothing has
    /// depth 0; `a` including `b` gives `a` depth 1), through built-in roles too.
    pub include_depth: u32,
    /// Most custom roles in one tenant; the built-in roles are held to the same number.
    pub roles_per_tenant: u32,
    /// Most route rules in one role.
    pub rules_per_role: u32,
    /// Most named permissions in one role.
    pub permissions_per_role: u32,
    /// Most endpoint entries in one tenant's table; the global table likewise.
    pub endpoints_per_tenant: u32,
    /// Largest cost of one tenant's include closures: for each of its custom roles, every
    /// role it reaches through `includes` (itself, its includes, theirs ..., built-in roles
    /// too) counts 1 plus that role's number of includes; the built-in roles are held to
    /// the same number. The depth limit bounds a chain, not a fan-out (roles each
    /// including one hub of thousands) nor a dense graph (layers of roles each including
    /// every role of the next): this bounds both the closures' memory (12 bytes an entry,
    /// at most one entry per unit) and the work of computing them (one unit per role
    /// reached and per include followed), in the compiler and in the database alike.
    pub closure_cost_per_tenant: u64,
    /// Largest policy file read, in bytes (checked before reading it; a database's
    /// policy is bounded by the limits above, an ApplyPolicy document by the gRPC
    /// message limit).
    pub document_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            include_depth: 32,
            roles_per_tenant: 10_000,
            rules_per_role: 1_000,
            permissions_per_role: 1_000,
            endpoints_per_tenant: 10_000,
            closure_cost_per_tenant: 2_000_000,
            document_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A compiled policy: every tenant's snapshot.
#[derive(Debug)]
pub struct Policy {
    /// The tenants, in document order.
    pub tenants: Vec<TenantSnapshot>,
}

/// One problem in a policy document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: ``tenant `acme`, role `editor` ``; empty for the document itself.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

/// A policy document that does not compile, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    /// The file (or other source) the document came from.
    pub file: String,
    /// The problems, in document order.
    pub problems: Vec<Problem>,
}

impl CompileError {
    /// Whether every problem is a limit exceeded (`... more than the limit max_... = N`),
    /// so that a checker holding other [`Limits`] (a database's `authz_limits`) may decide
    /// otherwise.
    pub fn only_limits(&self) -> bool {
        !self.problems.is_empty()
            && self
                .problems
                .iter()
                .all(|p| p.message.contains("more than the limit max_"))
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for p in &self.problems {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            write!(f, "{}: {p}", self.file)?;
        }
        Ok(())
    }
}

/// The compiled parts every tenant shares: the built-in roles and the endpoint table for
/// all tenants. Compiled once; a tenant is compiled against it ([`compile_tenant`]).
#[derive(Debug)]
pub struct Shared {
    /// The built-in roles.
    pub builtins: Arc<Builtins>,
    global: Vec<EndpointSpec>,
    /// The global endpoint table, compiled once for every tenant without entries of
    /// its own.
    global_endpoints: Arc<[Endpoint]>,
    global_matcher: Arc<Matcher<EndpointGroup>>,
    /// The limits every tenant compiled against this is held to.
    pub limits: Limits,
}

/// Compiles a document; `file` names it in errors and `revision` is stamped on every
/// snapshot.
pub fn compile(doc: &PolicyDocument, file: &str, revision: u64) -> Result<Policy, CompileError> {
    compile_with(doc, file, revision, Limits::default())
}

/// [`compile`] with other [`Limits`].
pub fn compile_with(
    doc: &PolicyDocument,
    file: &str,
    revision: u64,
    limits: Limits,
) -> Result<Policy, CompileError> {
    let shared = compile_shared_with(&doc.roles, &doc.endpoints, file, limits)?;
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut tenants = Vec::with_capacity(doc.tenants.len());
    for t in &doc.tenants {
        if !seen.insert(t.id.as_str()) {
            problems.push(Problem {
                location: format!("tenant `{}`", t.id),
                message: "duplicate tenant id".into(),
            });
            continue;
        }
        match compile_tenant(&shared, t, file, revision) {
            Ok(s) => tenants.push(s),
            Err(e) => problems.extend(e.problems),
        }
    }
    if problems.is_empty() {
        Ok(Policy { tenants })
    } else {
        Err(CompileError {
            file: file.to_owned(),
            problems,
        })
    }
}

/// Compiles the built-in roles and the endpoint table for all tenants, with the default
/// [`Limits`].
pub fn compile_shared(
    roles: &[RoleDoc],
    endpoints: &[EndpointDoc],
    file: &str,
) -> Result<Shared, CompileError> {
    compile_shared_with(roles, endpoints, file, Limits::default())
}

/// [`compile_shared`] with other [`Limits`]; tenants compiled against the result are held
/// to them too.
pub fn compile_shared_with(
    roles: &[RoleDoc],
    endpoints: &[EndpointDoc],
    file: &str,
    limits: Limits,
) -> Result<Shared, CompileError> {
    let mut cx = Context {
        problems: Vec::new(),
        limits,
    };
    if !cx.within_counts("", roles, endpoints) {
        return Err(CompileError {
            file: file.to_owned(),
            problems: cx.problems,
        });
    }
    let builtins = Arc::new(cx.builtins(roles));
    if !cx.problems.is_empty() {
        // The built-in roles did not compile: checking the global table against them
        // would only report their absence again, entry by entry.
        return Err(CompileError {
            file: file.to_owned(),
            problems: cx.problems,
        });
    }
    let global = cx.endpoint_docs("", endpoints);
    for spec in &global {
        for name in &spec.doc.roles {
            if !builtins.roles.iter().any(|r| *r.id == **name) {
                cx.problem(
                    &format!("endpoint `{} {}`", spec.doc.methods.join(","), spec.doc.path),
                    format!("names `{name}`, which is not a built-in role (entries for all tenants may only name built-in roles)"),
                );
            }
        }
    }
    if cx.problems.is_empty() {
        let (endpoints, matcher) = cx.endpoint_table("", &[], &global, &|_| None, &builtins);
        Ok(Shared {
            builtins,
            global,
            global_endpoints: endpoints.into(),
            global_matcher: Arc::new(matcher),
            limits,
        })
    } else {
        Err(CompileError {
            file: file.to_owned(),
            problems: cx.problems,
        })
    }
}

/// Compiles one tenant against the shared parts.
pub fn compile_tenant(
    shared: &Shared,
    t: &TenantDoc,
    file: &str,
    revision: u64,
) -> Result<TenantSnapshot, CompileError> {
    let mut cx = Context {
        problems: Vec::new(),
        limits: shared.limits,
    };
    let snapshot = match model::tenant_id(&t.id) {
        // Counts first: a tenant over a limit is refused before anything is built.
        Ok(_) if !cx.within_counts(&format!("tenant `{}`", t.id), &t.roles, &t.endpoints) => None,
        Ok(_) => cx.tenant(t, shared, revision),
        Err(e) => {
            cx.problem(&format!("tenant `{}`", t.id), format!("id {e}"));
            None
        }
    };
    match snapshot {
        Some(s) if cx.problems.is_empty() => Ok(s),
        _ => Err(CompileError {
            file: file.to_owned(),
            problems: cx.problems,
        }),
    }
}

struct Context {
    problems: Vec<Problem>,
    limits: Limits,
}

/// Parsed endpoint entry before role names are resolved.
#[derive(Debug)]
struct EndpointSpec {
    doc: EndpointDoc,
    pattern: Pattern,
    methods: MethodSet,
}

impl Context {
    fn problem(&mut self, location: &str, message: String) {
        self.problems.push(Problem {
            location: location.to_owned(),
            message,
        });
    }

    /// Checks the count limits of one role table and endpoint table (`tenant_loc` empty:
    /// the built-in ones); false if any is exceeded.
    fn within_counts(
        &mut self,
        tenant_loc: &str,
        roles: &[RoleDoc],
        endpoints: &[EndpointDoc],
    ) -> bool {
        let before = self.problems.len();
        let l = self.limits;
        let what = if tenant_loc.is_empty() {
            "built-in roles"
        } else {
            "custom roles"
        };
        if roles.len() > l.roles_per_tenant as usize {
            let loc = if tenant_loc.is_empty() {
                "built-in roles"
            } else {
                tenant_loc
            };
            self.problem(
                loc,
                format!(
                    "{} {what}, more than the limit max_roles_per_tenant = {}",
                    roles.len(),
                    l.roles_per_tenant
                ),
            );
        }
        if endpoints.len() > l.endpoints_per_tenant as usize {
            let loc = if tenant_loc.is_empty() {
                "endpoints for all tenants"
            } else {
                tenant_loc
            };
            self.problem(
                loc,
                format!(
                    "{} endpoint entries, more than the limit max_endpoints_per_tenant = {}",
                    endpoints.len(),
                    l.endpoints_per_tenant
                ),
            );
        }
        for r in roles {
            let loc = join(tenant_loc, &format!("role `{}`", r.id));
            if r.routes.len() > l.rules_per_role as usize {
                self.problem(
                    &loc,
                    format!(
                        "{} route rules, more than the limit max_rules_per_role = {}",
                        r.routes.len(),
                        l.rules_per_role
                    ),
                );
            }
            // Distinct permissions, as the database counts them (a repeat is one row).
            let distinct = || r.permissions.iter().collect::<HashSet<_>>().len();
            if r.permissions.len() > l.permissions_per_role as usize
                && distinct() > l.permissions_per_role as usize
            {
                self.problem(
                    &loc,
                    format!(
                        "{} permissions, more than the limit max_permissions_per_role = {}",
                        distinct(),
                        l.permissions_per_role
                    ),
                );
            }
        }
        self.problems.len() == before
    }

    fn builtins(&mut self, docs: &[RoleDoc]) -> Builtins {
        let index = self.role_index("", docs, &Map::default());
        let roles = self.roles("", docs, &index, 0, None);
        let mut holders: Map<Box<str>, Vec<RoleIdx>> = Map::default();
        for (i, role) in roles.iter().enumerate() {
            for p in role.permissions.iter() {
                holders.entry(p.clone()).or_default().push(i as RoleIdx);
            }
        }
        Builtins {
            roles,
            index,
            holders: holders
                .into_iter()
                .map(|(p, h)| (p, RoleSet::from_unsorted(h)))
                .collect(),
        }
    }

    /// Indexes role ids from `base` on, reporting bad and duplicate ids.
    fn role_index(
        &mut self,
        tenant_loc: &str,
        docs: &[RoleDoc],
        builtin: &Map<Box<str>, RoleIdx>,
    ) -> Map<Box<str>, RoleIdx> {
        let mut index = builtin.clone();
        let base = builtin.len() as RoleIdx;
        for (i, r) in docs.iter().enumerate() {
            let loc = join(tenant_loc, &format!("role `{}`", r.id));
            if let Err(e) = model::name(&r.id) {
                self.problem(&loc, format!("id {e}"));
            }
            if builtin.contains_key(r.id.as_str()) {
                self.problem(&loc, "custom role reuses the id of a built-in role".into());
            } else if index
                .insert(r.id.as_str().into(), base + i as RoleIdx)
                .is_some()
            {
                self.problem(&loc, "duplicate role id".into());
            }
        }
        index
    }

    /// Compiles roles whose indexes start at `base`. `builtins` is given for custom roles.
    fn roles(
        &mut self,
        tenant_loc: &str,
        docs: &[RoleDoc],
        index: &Map<Box<str>, RoleIdx>,
        base: RoleIdx,
        builtins: Option<&Builtins>,
    ) -> Box<[Role]> {
        let total = index.len().max(base as usize + docs.len());
        // Resolve includes to indexes.
        let mut includes: Vec<Vec<RoleIdx>> = Vec::with_capacity(docs.len());
        // Distinct includes per role: a role's share of the closure cost.
        let mut include_counts: Vec<u64> = Vec::with_capacity(docs.len());
        for r in docs {
            let loc = join(tenant_loc, &format!("role `{}`", r.id));
            let mut inc = Vec::new();
            for name in &r.includes {
                match index.get(name.as_str()) {
                    Some(&i) => inc.push(i),
                    None if builtins.is_none() => self.problem(
                        &loc,
                        format!("built-in role includes `{name}`, which is not a built-in role"),
                    ),
                    None => self.problem(&loc, format!("includes unknown role `{name}`")),
                }
            }
            let mut distinct = inc.clone();
            distinct.sort_unstable();
            distinct.dedup();
            include_counts.push(distinct.len() as u64);
            includes.push(inc);
        }
        // The include graph over all roles of this table: built-in roles' edges are
        // already known to be acyclic and closed, so only custom edges are walked.
        let edges = |i: RoleIdx| -> &[RoleIdx] {
            if i >= base {
                includes
                    .get((i - base) as usize)
                    .map_or(&[], |v| v.as_slice())
            } else {
                &[]
            }
        };
        let name = |i: RoleIdx| -> &str {
            if i >= base {
                docs.get((i - base) as usize).map_or("?", |r| r.id.as_str())
            } else {
                builtins
                    .and_then(|b| b.roles.get(i as usize))
                    .map_or("?", |r| &*r.id)
            }
        };
        let builtin_depth = |i: RoleIdx| -> u32 {
            builtins
                .and_then(|b| b.roles.get(i as usize))
                .map_or(0, |r| r.depth)
        };
        let depths = match include_depths(base, docs.len(), &edges, &builtin_depth) {
            Ok(d) => d,
            Err(GraphError::Cycle(cycle)) => {
                let names: Vec<&str> = cycle.iter().map(|&i| name(i)).collect();
                let first = names.first().copied().unwrap_or("?");
                self.problem(
                    &join(tenant_loc, &format!("role `{first}`")),
                    format!("include cycle `{}`", names.join(" -> ")),
                );
                return Box::new([]);
            }
        };
        let limit = self.limits.include_depth;
        if let Some((i, &d)) = depths.iter().enumerate().find(|&(_, &d)| d > limit) {
            // Name the longest chain: from the role, always to a deepest include.
            let depth_of = |r: RoleIdx| -> u32 {
                if r >= base {
                    depths.get((r - base) as usize).copied().unwrap_or(0)
                } else {
                    builtin_depth(r)
                }
            };
            let children = |r: RoleIdx| -> Vec<RoleIdx> {
                if r >= base {
                    edges(r).to_vec()
                } else {
                    builtin_includes(builtins, r)
                }
            };
            let mut chain = vec![base + i as RoleIdx];
            let mut cur = base + i as RoleIdx;
            while let Some(next) = children(cur).into_iter().max_by_key(|&n| depth_of(n)) {
                chain.push(next);
                cur = next;
                if chain.len() > limit as usize + 1 {
                    break;
                }
            }
            let names: Vec<&str> = chain.iter().map(|&r| name(r)).collect();
            self.problem(
                &join(tenant_loc, &format!("role `{}`", name(base + i as RoleIdx))),
                format!(
                    "include chain `{}{}` is {d} deep, more than the limit max_include_depth = {limit}",
                    names.join(" -> "),
                    if (d as usize) + 1 > names.len() { " -> ..." } else { "" },
                ),
            );
            return Box::new([]);
        }
        let mut roles = Vec::with_capacity(docs.len());
        // Which role's closure last reached each role: one array for all closures, never
        // cleared, so computing them costs their sizes, not roles × roles.
        let mut seen_by: Vec<RoleIdx> = vec![RoleIdx::MAX; total];
        // The cost of the closures computed so far (Limits::closure_cost_per_tenant): one
        // unit per role reached and per include followed, exactly the walk's work. Past
        // the limit nothing more is built (one closure costs at most all roles and
        // includes, so the work is bounded by the limit plus the tenant's size).
        let mut closure_cost: u64 = 0;
        let closure_limit = self.limits.closure_cost_per_tenant;
        for (i, r) in docs.iter().enumerate() {
            let me = base + i as RoleIdx;
            let loc = join(tenant_loc, &format!("role `{}`", r.id));
            // Breadth-first closure, remembering who included whom, for explanations.
            let mut closure: Vec<(RoleIdx, u32)> = vec![(me, 0)];
            let mut visit = |n: RoleIdx| match seen_by.get_mut(n as usize) {
                Some(s) if *s == me => false,
                Some(s) => {
                    *s = me;
                    true
                }
                // Not a role of this tenant (never produced by the compiler).
                None => false,
            };
            visit(me);
            let mut queue = VecDeque::from([0usize]);
            while let Some(pos) = queue.pop_front() {
                let Some(&(role, _)) = closure.get(pos) else {
                    break;
                };
                let next: Vec<RoleIdx> = if role >= base {
                    edges(role).to_vec()
                } else {
                    builtin_includes(builtins, role)
                };
                closure_cost += 1 + if role >= base {
                    include_counts
                        .get((role - base) as usize)
                        .copied()
                        .unwrap_or(0)
                } else {
                    next.len() as u64
                };
                for n in next {
                    if visit(n) {
                        closure.push((n, pos as u32));
                        queue.push_back(closure.len() - 1);
                    }
                }
            }
            if closure_cost > closure_limit {
                self.problem(
                    if tenant_loc.is_empty() {
                        "built-in roles"
                    } else {
                        tenant_loc
                    },
                    format!(
                        "the roles' include closures cost more than {closure_limit}, more than the limit max_closure_cost = {closure_limit} (every role a role reaches through includes, itself too, costs 1 plus its own includes; `{}` reaches {} roles)",
                        r.id,
                        closure.len()
                    ),
                );
                return Box::new([]);
            }
            let mut permissions: Vec<Box<str>> = Vec::new();
            for p in &r.permissions {
                match model::name(p) {
                    Ok(_) => permissions.push(p.as_str().into()),
                    Err(e) => self.problem(&loc, format!("permission `{p}` {e}")),
                }
            }
            permissions.sort();
            permissions.dedup();
            let mut rules = Vec::new();
            let mut matcher = Matcher::default();
            for (n, rd) in r.routes.iter().enumerate() {
                let rloc = format!("{loc}, rule {} (`{}`)", n + 1, rd.path);
                let pattern = Pattern::parse(&rd.path).map_err(|e| e.to_string());
                let methods = MethodSet::parse(&rd.methods);
                match (pattern, methods) {
                    (Ok(pattern), Ok(methods)) => {
                        let idx = rules.len() as u32;
                        let _ = matcher.insert(
                            &pattern,
                            || RuleGroup { rules: vec![idx] },
                            |g| {
                                g.rules.push(idx);
                                Ok::<_, ()>(())
                            },
                        );
                        rules.push(Rule { methods, pattern });
                    }
                    (p, m) => {
                        for e in [p.err(), m.err()].into_iter().flatten() {
                            self.problem(&rloc, e);
                        }
                    }
                }
            }
            roles.push(Role {
                depth: depths.get(i).copied().unwrap_or(0),
                id: r.id.as_str().into(),
                description: r.description.as_str().into(),
                builtin: builtins.is_none(),
                closure_set: RoleSet::from_unsorted(closure.iter().map(|&(g, _)| g).collect()),
                closure: closure.into_boxed_slice(),
                permissions: permissions.into_boxed_slice(),
                rules: rules.into_boxed_slice(),
                matcher,
            });
        }
        roles.into_boxed_slice()
    }

    /// Parses endpoint entries' patterns and methods; roles are resolved per tenant.
    fn endpoint_docs(&mut self, tenant_loc: &str, docs: &[EndpointDoc]) -> Vec<EndpointSpec> {
        let mut out = Vec::new();
        for e in docs {
            let loc = join(
                tenant_loc,
                &format!("endpoint `{} {}`", e.methods.join(","), e.path),
            );
            if e.public != e.roles.is_empty() {
                self.problem(
                    &loc,
                    if e.public {
                        "entry is `public` and names `roles`; choose one".into()
                    } else {
                        "entry needs `roles` or `public: true`".into()
                    },
                );
            }
            match (Pattern::parse(&e.path), MethodSet::parse(&e.methods)) {
                (Ok(pattern), Ok(methods)) => out.push(EndpointSpec {
                    doc: e.clone(),
                    pattern,
                    methods,
                }),
                (p, m) => {
                    if let Err(err) = p {
                        self.problem(&loc, err.to_string());
                    }
                    if let Err(err) = m {
                        self.problem(&loc, err);
                    }
                }
            }
        }
        // Two entries of one table the router could not choose between. Entries are
        // grouped by pattern (a hash map, linear in entries); only within a group are
        // methods compared, against the union of the group's earlier entries, and the
        // earlier entry is searched for only when there is a conflict to report.
        let mut groups: HashMap<&[Segment], (MethodSet, Vec<usize>)> = HashMap::new();
        let mut conflicts = Vec::new();
        for (i, b) in out.iter().enumerate() {
            let (union, members) = groups.entry(b.pattern.segments()).or_default();
            if union.intersects(&b.methods) {
                let a = members
                    .iter()
                    .filter_map(|&j| out.get(j))
                    .find(|a| a.methods.intersects(&b.methods));
                if let Some(a) = a {
                    conflicts.push((a, b));
                }
            }
            union.union_with(&b.methods);
            members.push(i);
        }
        for (a, b) in conflicts {
            self.problem(
                &join(
                    tenant_loc,
                    &format!("endpoint `{} {}`", b.doc.methods.join(","), b.doc.path),
                ),
                format!(
                    "conflicts with endpoint `{} {}`: same pattern, common method",
                    a.doc.methods.join(","),
                    a.doc.path
                ),
            );
        }
        out
    }

    /// Builds an endpoint table: `own` entries first (they shadow `global` ones for the
    /// methods they share). Own entries resolve role ids with `custom` then the built-in
    /// roles; global entries only with the built-in roles (checked once, in
    /// [`compile_shared`]).
    fn endpoint_table(
        &mut self,
        tenant_loc: &str,
        own: &[EndpointSpec],
        global: &[EndpointSpec],
        custom: &dyn Fn(&str) -> Option<RoleIdx>,
        builtins: &Builtins,
    ) -> (Vec<Endpoint>, Matcher<EndpointGroup>) {
        let mut endpoints = Vec::new();
        let mut matcher = Matcher::default();
        for (spec, is_global) in own
            .iter()
            .map(|s| (s, false))
            .chain(global.iter().map(|s| (s, true)))
        {
            let mut roles = Vec::new();
            for name in &spec.doc.roles {
                let found = builtins
                    .index
                    .get(name.as_str())
                    .copied()
                    .or_else(|| if is_global { None } else { custom(name) });
                match found {
                    Some(r) => roles.push(r),
                    // A global entry's unknown role is reported once, by compile_shared.
                    None if is_global => {}
                    None => self.problem(
                        &join(
                            tenant_loc,
                            &format!(
                                "endpoint `{} {}`",
                                spec.doc.methods.join(","),
                                spec.doc.path
                            ),
                        ),
                        format!("names unknown role `{name}`"),
                    ),
                }
            }
            let idx = endpoints.len() as u32;
            let _ = matcher.insert(
                &spec.pattern,
                || EndpointGroup { entries: vec![idx] },
                |g| {
                    g.entries.push(idx);
                    Ok::<_, ()>(())
                },
            );
            endpoints.push(Endpoint {
                pattern: spec.pattern.clone(),
                methods: spec.methods.clone(),
                role_set: RoleSet::from_unsorted(roles.clone()),
                roles: roles.into_boxed_slice(),
                public: spec.doc.public,
            });
        }
        (endpoints, matcher)
    }

    fn tenant(&mut self, t: &TenantDoc, shared: &Shared, revision: u64) -> Option<TenantSnapshot> {
        let builtins = &shared.builtins;
        let before = self.problems.len();
        let loc = format!("tenant `{}`", t.id);
        let base = builtins.roles.len() as RoleIdx;
        // Built-in and custom ids while compiling; the snapshot keeps only the custom ones.
        let role_index = self.role_index(&loc, &t.roles, &builtins.index);
        let custom = self.roles(&loc, &t.roles, &role_index, base, Some(builtins));

        // Custom roles' permissions; built-in holders are shared in `Builtins`.
        let mut holders: Map<Box<str>, Vec<RoleIdx>> = Map::default();
        for (i, role) in custom.iter().enumerate() {
            for p in role.permissions.iter() {
                holders
                    .entry(p.clone())
                    .or_default()
                    .push(base + i as RoleIdx);
            }
        }
        let permission_holders: Map<Box<str>, RoleSet> = holders
            .into_iter()
            .map(|(p, h)| (p, RoleSet::from_unsorted(h)))
            .collect();

        // Endpoint table: the tenant's own entries first, so they shadow global ones. A
        // tenant without entries of its own shares the global table compiled once.
        let (endpoints, endpoint_matcher): (Arc<[Endpoint]>, Arc<Matcher<EndpointGroup>>) =
            if t.endpoints.is_empty() {
                (
                    Arc::clone(&shared.global_endpoints),
                    Arc::clone(&shared.global_matcher),
                )
            } else {
                let own = self.endpoint_docs(&loc, &t.endpoints);
                let custom_role = |name: &str| role_index.get(name).copied();
                let (e, m) =
                    self.endpoint_table(&loc, &own, &shared.global, &custom_role, builtins);
                (e.into(), Arc::new(m))
            };

        let mut default_roles = Vec::new();
        for name in &t.default_roles {
            match role_index.get(name.as_str()) {
                Some(&r) => default_roles.push(r),
                None => self.problem(&loc, format!("default role `{name}` is not defined")),
            }
        }

        let mut subjects: Map<SubjectId, Subject> =
            Map::with_capacity_and_hasher(t.subjects.len(), Default::default());
        for s in &t.subjects {
            let sloc = join(&loc, &format!("subject `{}`", s.id));
            if let Err(e) = model::subject_id(&s.id) {
                self.problem(&sloc, format!("id {e}"));
            }
            let subject = Subject {
                disabled: s.disabled,
                assignments: Assignments::default(),
                groups: Box::new([]),
            };
            if subjects.insert(s.id.as_str().into(), subject).is_some() {
                self.problem(&sloc, "duplicate subject id".into());
            }
        }

        let mut group_index: HashMap<&str, GroupIdx> = HashMap::new();
        let mut member_of: HashMap<&str, Vec<GroupIdx>> = HashMap::new();
        for (gi, g) in t.groups.iter().enumerate() {
            let gloc = join(&loc, &format!("group `{}`", g.id));
            if let Err(e) = model::subject_id(&g.id) {
                self.problem(&gloc, format!("id {e}"));
            }
            if group_index.insert(g.id.as_str(), gi as GroupIdx).is_some() {
                self.problem(&gloc, "duplicate group id".into());
            }
            for m in &g.members {
                if !subjects.contains_key(m.as_str()) {
                    self.problem(&gloc, format!("member `{m}` is not a registered subject"));
                } else {
                    let list = member_of.entry(m.as_str()).or_default();
                    if !list.contains(&(gi as GroupIdx)) {
                        list.push(gi as GroupIdx);
                    }
                }
            }
        }

        let mut scopes: Vec<Box<str>> = vec!["".into()];
        let mut scope_index: HashMap<&str, ScopeIdx> = HashMap::from([("", 0)]);
        let mut direct: HashMap<&str, Vec<Assignment>> = HashMap::new();
        let mut to_group: Vec<Vec<Assignment>> = vec![Vec::new(); t.groups.len()];
        for (n, a) in t.assignments.iter().enumerate() {
            let aloc = join(&loc, &format!("assignment {} (role `{}`)", n + 1, a.role));
            let Some(&role) = role_index.get(a.role.as_str()) else {
                self.problem(&aloc, format!("role `{}` is not defined", a.role));
                continue;
            };
            let scope = match model::scope(&a.scope) {
                Ok(s) => s,
                Err(e) => {
                    self.problem(&aloc, format!("scope `{}` {e}", a.scope));
                    continue;
                }
            };
            let next = scopes.len() as ScopeIdx;
            let scope = *scope_index.entry(scope).or_insert_with(|| {
                scopes.push(scope.into());
                next
            });
            let assignment = Assignment { role, scope };
            match (&a.subject, &a.group) {
                (Some(s), None) => {
                    if subjects.contains_key(s.as_str()) {
                        direct.entry(s.as_str()).or_default().push(assignment);
                    } else {
                        self.problem(&aloc, format!("subject `{s}` is not registered"));
                    }
                }
                (None, Some(g)) => match group_index.get(g.as_str()) {
                    Some(&gi) => {
                        if let Some(list) = to_group.get_mut(gi as usize) {
                            list.push(assignment);
                        }
                    }
                    None => self.problem(&aloc, format!("group `{g}` is not defined")),
                },
                _ => self.problem(&aloc, "needs exactly one of `subject` and `group`".into()),
            }
        }
        // Nearest scope first (stable, so ties keep document order): an explanation then
        // names the most specific assignment that grants.
        let depth = |scopes: &[Box<str>], a: &Assignment| -> usize {
            scopes.get(a.scope as usize).map_or(0, |s| {
                if s.is_empty() {
                    0
                } else {
                    s.split('/').count()
                }
            })
        };
        for (id, subject) in subjects.iter_mut() {
            if let Some(mut list) = direct.remove(&**id) {
                list.sort_by_key(|a| std::cmp::Reverse(depth(&scopes, a)));
                list.dedup();
                subject.assignments = list.into();
            }
            if let Some(groups) = member_of.remove(&**id) {
                subject.groups = groups.into_boxed_slice();
            }
        }
        let groups: Vec<Group> = t
            .groups
            .iter()
            .zip(to_group)
            .map(|(g, mut list)| {
                list.sort_by_key(|a| std::cmp::Reverse(depth(&scopes, a)));
                list.dedup();
                Group {
                    id: g.id.as_str().into(),
                    members: g.members.iter().map(|m| m.as_str().into()).collect(),
                    assignments: list.into(),
                }
            })
            .collect();

        if self.problems.len() > before {
            return None;
        }
        Some(TenantSnapshot {
            id: t.id.as_str().into(),
            revision,
            builtins: Arc::clone(builtins),
            custom: custom.into(),
            role_index: Arc::new(role_index.into_iter().filter(|(_, i)| *i >= base).collect()),
            permission_holders: Arc::new(permission_holders),
            endpoints,
            endpoint_matcher,
            default_roles: default_roles.into(),
            subjects: Members::new(subjects),
            groups: groups.into_boxed_slice(),
            scopes: scopes.into_boxed_slice(),
            holders: Default::default(),
        })
    }
}

/// A built-in role's own includes, from its compiled closure's first hops.
fn builtin_includes(builtins: Option<&Builtins>, role: RoleIdx) -> Vec<RoleIdx> {
    builtins
        .and_then(|b| b.roles.get(role as usize))
        .map(|b| {
            b.closure
                .iter()
                .skip(1)
                .filter(|(_, parent)| *parent == 0)
                .map(|(r, _)| *r)
                .collect()
        })
        .unwrap_or_default()
}

fn join(outer: &str, inner: &str) -> String {
    if outer.is_empty() {
        inner.to_owned()
    } else {
        format!("{outer}, {inner}")
    }
}

/// What walking the include graph found wrong.
#[derive(Debug, PartialEq, Eq)]
enum GraphError {
    /// An include cycle, as the path `a, b, a`.
    Cycle(Vec<RoleIdx>),
}

/// Walks the include graph of roles `base..base+count` (edges to roles below `base`, the
/// built-in ones, end there with `builtin_depth`) and returns each role's include depth:
/// the longest chain of `includes` edges from it. Iterative depth-first search, linear in
/// roles + includes, with no recursion (a 10,000-role chain must not exhaust the stack).
fn include_depths<'e>(
    base: RoleIdx,
    count: usize,
    edges: &impl Fn(RoleIdx) -> &'e [RoleIdx],
    builtin_depth: &impl Fn(RoleIdx) -> u32,
) -> Result<Vec<u32>, GraphError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; count];
    let mut depth = vec![0u32; count];
    // The current path: a role and how many of its edges were followed.
    let mut stack: Vec<(RoleIdx, usize)> = Vec::new();
    let local = |r: RoleIdx| (r >= base).then(|| (r - base) as usize);
    for start in 0..count {
        if mark.get(start) != Some(&Mark::New) {
            continue;
        }
        let start = base + start as RoleIdx;
        stack.push((start, 0));
        if let Some(m) = local(start).and_then(|i| mark.get_mut(i)) {
            *m = Mark::OnPath;
        }
        while let Some((role, next)) = stack.last_mut() {
            let role = *role;
            let out = edges(role);
            if let Some(&n) = out.get(*next) {
                *next += 1;
                let Some(i) = local(n) else { continue };
                match mark.get(i) {
                    Some(Mark::New) => {
                        if let Some(m) = mark.get_mut(i) {
                            *m = Mark::OnPath;
                        }
                        stack.push((n, 0));
                    }
                    Some(Mark::OnPath) => {
                        let from = stack.iter().position(|&(r, _)| r == n).unwrap_or(0);
                        let mut cycle: Vec<RoleIdx> =
                            stack.iter().skip(from).map(|&(r, _)| r).collect();
                        cycle.push(n);
                        return Err(GraphError::Cycle(cycle));
                    }
                    _ => {}
                }
            } else {
                // Every include is done: this role's depth is known.
                let d = out
                    .iter()
                    .map(|&n| {
                        1 + match local(n) {
                            Some(i) => depth.get(i).copied().unwrap_or(0),
                            None => builtin_depth(n),
                        }
                    })
                    .max()
                    .unwrap_or(0);
                if let Some(i) = local(role) {
                    if let Some(slot) = depth.get_mut(i) {
                        *slot = d;
                    }
                    if let Some(m) = mark.get_mut(i) {
                        *m = Mark::Done;
                    }
                }
                stack.pop();
            }
        }
    }
    Ok(depth)
}
