//! The effective-access diff is exact: for seeded random policy pairs, every change Check
//! sees between the two policies (for every subject, permission, method and path at a set
//! of scopes, including scopes and paths no policy names) is the change the diff lists,
//! and the diff lists nothing Check does not see.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::collections::BTreeSet;

use authz::{
    model::{Method, scope_covers},
    policy::{
        Action, Policy, PolicyDocument, Query, compile,
        diff::{Direction, PolicyDiff, ProbePattern, Side, diff, fresh_segment, probe_paths},
        pattern::Pattern,
        source::{AssignmentDoc, EndpointDoc, GroupDoc, RoleDoc, RouteDoc, SubjectDoc, TenantDoc},
    },
};

/// splitmix64: a small, seeded, reproducible generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SEGMENTS: [&str; 6] = ["a", "b", "c", "*", "{id}", "a"];
const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PROPFIND"];
const PERMISSIONS: [&str; 5] = ["p1", "p2", "p3", "p4", "p5"];
const SCOPES: [&str; 4] = ["", "w/1", "w/1/p", "w/2"];
const SUBJECTS: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];

fn pattern(rng: &mut Rng) -> String {
    let n = rng.below(4);
    let mut p = String::new();
    for _ in 0..n {
        p.push('/');
        p.push_str(SEGMENTS[rng.below(SEGMENTS.len())]);
    }
    if rng.chance(30) {
        p.push_str("/**");
    }
    if p.is_empty() {
        p.push('/');
    }
    p
}

fn methods(rng: &mut Rng) -> Vec<String> {
    if rng.chance(15) {
        return vec!["*".into()];
    }
    let mut m: Vec<String> = (0..1 + rng.below(2))
        .map(|_| rng.pick(&METHODS).to_string())
        .collect();
    m.sort();
    m.dedup();
    m
}

fn route(rng: &mut Rng) -> RouteDoc {
    RouteDoc {
        methods: methods(rng),
        path: pattern(rng),
    }
}

fn role(rng: &mut Rng, id: String, includable: &[String]) -> RoleDoc {
    let mut includes = Vec::new();
    if !includable.is_empty() && rng.chance(40) {
        includes.push(rng.pick(includable).clone());
    }
    includes.dedup();
    RoleDoc {
        id,
        description: String::new(),
        includes,
        permissions: (0..rng.below(3))
            .map(|_| rng.pick(&PERMISSIONS).to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        routes: (0..rng.below(4)).map(|_| route(rng)).collect(),
    }
}

fn endpoint(rng: &mut Rng, roles: &[String]) -> EndpointDoc {
    let public = rng.chance(25);
    EndpointDoc {
        path: pattern(rng),
        methods: methods(rng),
        roles: if public {
            Vec::new()
        } else {
            vec![rng.pick(roles).clone()]
        },
        public,
    }
}

fn tenant(rng: &mut Rng, id: &str, builtins: &[String]) -> TenantDoc {
    let mut roles = Vec::new();
    let mut ids: Vec<String> = builtins.to_vec();
    for i in 0..rng.below(4) {
        let r = role(rng, format!("{id}-c{i}"), &ids);
        ids.push(r.id.clone());
        roles.push(r);
    }
    let mut subjects: Vec<SubjectDoc> = Vec::new();
    for s in SUBJECTS {
        if rng.chance(80) {
            subjects.push(SubjectDoc {
                id: s.to_string(),
                disabled: rng.chance(10),
            });
        }
    }
    let names: Vec<String> = subjects.iter().map(|s| s.id.clone()).collect();
    let groups: Vec<GroupDoc> = if names.is_empty() {
        Vec::new()
    } else {
        (0..rng.below(3))
            .map(|g| GroupDoc {
                id: format!("g{g}"),
                members: names.iter().filter(|_| rng.chance(40)).cloned().collect(),
            })
            .collect()
    };
    let mut assignments = Vec::new();
    for s in &names {
        for _ in 0..rng.below(3) {
            assignments.push(AssignmentDoc {
                subject: Some(s.clone()),
                group: None,
                role: rng.pick(&ids).clone(),
                scope: rng.pick(&SCOPES).to_string(),
            });
        }
    }
    for g in &groups {
        for _ in 0..rng.below(3) {
            assignments.push(AssignmentDoc {
                subject: None,
                group: Some(g.id.clone()),
                role: rng.pick(&ids).clone(),
                scope: rng.pick(&SCOPES).to_string(),
            });
        }
    }
    TenantDoc {
        id: id.to_owned(),
        endpoints: (0..rng.below(3)).map(|_| endpoint(rng, &ids)).collect(),
        roles,
        default_roles: if rng.chance(40) {
            vec![rng.pick(&ids).clone()]
        } else {
            Vec::new()
        },
        subjects,
        groups,
        assignments,
    }
}

fn document(rng: &mut Rng) -> PolicyDocument {
    let mut roles = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for i in 0..1 + rng.below(3) {
        let r = role(rng, format!("b{i}"), &ids);
        ids.push(r.id.clone());
        roles.push(r);
    }
    PolicyDocument {
        version: 1,
        endpoints: (0..rng.below(3)).map(|_| endpoint(rng, &ids)).collect(),
        tenants: {
            let mut tenants = Vec::new();
            for t in ["t1", "t2"] {
                if rng.chance(85) {
                    tenants.push(tenant(rng, t, &ids));
                }
            }
            tenants
        },
        roles,
    }
}

/// A few random edits: the kind of change a pull request makes.
fn mutate(rng: &mut Rng, doc: &PolicyDocument) -> PolicyDocument {
    let mut d = doc.clone();
    let builtins: Vec<String> = d.roles.iter().map(|r| r.id.clone()).collect();
    for _ in 0..1 + rng.below(4) {
        match rng.below(12) {
            0 if !d.roles.is_empty() => {
                let i = rng.below(d.roles.len());
                let p = rng.pick(&PERMISSIONS).to_string();
                let perms = &mut d.roles[i].permissions;
                if let Some(at) = perms.iter().position(|x| *x == p) {
                    perms.remove(at);
                } else {
                    perms.push(p);
                }
            }
            1 if !d.roles.is_empty() => {
                let i = rng.below(d.roles.len());
                let r = route(rng);
                let routes = &mut d.roles[i].routes;
                if !routes.is_empty() && rng.chance(50) {
                    let at = rng.below(routes.len());
                    routes.remove(at);
                } else {
                    routes.push(r);
                }
            }
            2 if !d.roles.is_empty() => {
                let i = rng.below(d.roles.len());
                let r = &mut d.roles[i];
                if let Some(rule) = r.routes.first_mut() {
                    rule.methods = methods(rng);
                }
            }
            3 => {
                d.endpoints = (0..rng.below(3))
                    .map(|_| endpoint(rng, &builtins))
                    .collect()
            }
            4 if d.tenants.len() > 1 && rng.chance(30) => {
                d.tenants.pop();
            }
            _ if !d.tenants.is_empty() => {
                let ti = rng.below(d.tenants.len());
                let t = &mut d.tenants[ti];
                let mut ids = builtins.clone();
                ids.extend(t.roles.iter().map(|r| r.id.clone()));
                match rng.below(7) {
                    0 if !t.assignments.is_empty() => {
                        let at = rng.below(t.assignments.len());
                        t.assignments.remove(at);
                    }
                    1 if !t.subjects.is_empty() => {
                        let s = rng.pick(&t.subjects).id.clone();
                        t.assignments.push(AssignmentDoc {
                            subject: Some(s),
                            group: None,
                            role: rng.pick(&ids).clone(),
                            scope: rng.pick(&SCOPES).to_string(),
                        });
                    }
                    2 if !t.subjects.is_empty() => {
                        let i = rng.below(t.subjects.len());
                        t.subjects[i].disabled = !t.subjects[i].disabled;
                    }
                    3 if !t.groups.is_empty() && !t.subjects.is_empty() => {
                        let g = rng.below(t.groups.len());
                        let s = rng.pick(&t.subjects).id.clone();
                        let members = &mut t.groups[g].members;
                        if let Some(at) = members.iter().position(|m| *m == s) {
                            members.remove(at);
                        } else {
                            members.push(s);
                        }
                    }
                    4 => {
                        t.default_roles = if rng.chance(50) {
                            vec![rng.pick(&ids).clone()]
                        } else {
                            Vec::new()
                        }
                    }
                    5 if !t.roles.is_empty() => {
                        let i = rng.below(t.roles.len());
                        let includable: Vec<String> = builtins
                            .iter()
                            .cloned()
                            .chain(t.roles[..i].iter().map(|r| r.id.clone()))
                            .collect();
                        t.roles[i] = role(rng, t.roles[i].id.clone(), &includable);
                    }
                    _ => {
                        // A subject registered or removed, with its assignments and
                        // memberships.
                        let s = rng.pick(&SUBJECTS).to_string();
                        if let Some(at) = t.subjects.iter().position(|x| x.id == s) {
                            t.subjects.remove(at);
                            t.assignments.retain(|a| a.subject.as_deref() != Some(&s));
                            for g in &mut t.groups {
                                g.members.retain(|m| *m != s);
                            }
                        } else {
                            t.subjects.push(SubjectDoc {
                                id: s.clone(),
                                disabled: false,
                            });
                            t.assignments.push(AssignmentDoc {
                                subject: Some(s),
                                group: None,
                                role: rng.pick(&ids).clone(),
                                scope: rng.pick(&SCOPES).to_string(),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    d
}

/// A pair of compiling documents: the second an edit of the first, or (one time in
/// five) unrelated.
fn pair(rng: &mut Rng) -> (PolicyDocument, Policy, PolicyDocument, Policy) {
    loop {
        let old = document(rng);
        let Ok(op) = compile(&old, "old", 1) else {
            continue;
        };
        for _ in 0..20 {
            let new = if rng.chance(20) {
                document(rng)
            } else {
                mutate(rng, &old)
            };
            if let Ok(np) = compile(&new, "new", 2) {
                return (old, op, new, np);
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Lit(String),
    Wild,
}

/// The test's own canonical form of a path (docs/policy-diff.md, "Paths"): keep a
/// segment that is a literal of a pattern still matching at that position, else the
/// fresh segment; stop one segment after no pattern can match a longer path.
fn canonical(patterns: &[(Vec<Seg>, bool)], path: &[&str], fresh: &str) -> String {
    let mut alive: Vec<usize> = (0..patterns.len()).collect();
    let mut out: Vec<String> = Vec::new();
    for i in 0..=path.len() {
        let longer: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&p| patterns[p].0.len() > i)
            .collect();
        if longer.is_empty() {
            if i < path.len() {
                out.push(fresh.to_owned());
            }
            break;
        }
        if i == path.len() {
            break;
        }
        let seg = path[i];
        let lit = Seg::Lit(seg.to_owned());
        if longer.iter().any(|&p| patterns[p].0[i] == lit) {
            out.push(seg.to_owned());
            alive = longer
                .into_iter()
                .filter(|&p| patterns[p].0[i] == lit || patterns[p].0[i] == Seg::Wild)
                .collect();
        } else {
            out.push(fresh.to_owned());
            alive = longer
                .into_iter()
                .filter(|&p| patterns[p].0[i] == Seg::Wild)
                .collect();
        }
    }
    if out.is_empty() {
        "/".to_owned()
    } else {
        format!("/{}", out.join("/"))
    }
}

fn parse_pattern(p: &str) -> (Vec<Seg>, bool) {
    let mut segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    let rest = segs.last() == Some(&"**");
    if rest {
        segs.pop();
    }
    let segs = segs
        .into_iter()
        .map(|s| {
            if s == "*" || s.starts_with('{') {
                Seg::Wild
            } else {
                Seg::Lit(s.to_owned())
            }
        })
        .collect();
    (segs, rest)
}

fn tenant_patterns(doc: &PolicyDocument, tenant: &str, out: &mut Vec<(Vec<Seg>, bool)>) {
    let Some(t) = doc.tenants.iter().find(|t| t.id == tenant) else {
        return;
    };
    let roles = doc.roles.iter().chain(&t.roles);
    for r in roles {
        for rule in &r.routes {
            out.push(parse_pattern(&rule.path));
        }
    }
    for e in doc.endpoints.iter().chain(&t.endpoints) {
        out.push(parse_pattern(&e.path));
    }
}

fn allowed(policy: &Policy, tenant: &str, subject: &str, scope: &str, action: Action<'_>) -> bool {
    let q = Query {
        subject,
        scope,
        action,
    };
    policy
        .tenants
        .iter()
        .find(|t| *t.id == *tenant)
        .is_some_and(|t| t.check(&q).allowed())
}

/// The subject standing for group `g`'s new member in the exactness test.
fn member_of(g: &str) -> String {
    format!("member-of-{g}")
}

/// The groups of `tenant` on either side.
fn tenant_groups(docs: [&PolicyDocument; 2], tenant: &str) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d.tenants.iter().find(|t| t.id == tenant))
        .flat_map(|t| t.groups.iter().map(|g| g.id.clone()))
        .collect()
}

/// Adds to both documents, in each tenant, a registered subject per group of either
/// side ([`member_of`]): a member of only that group (where the group exists), with no
/// assignments. Its access is what the diff's entry for the group describes.
fn add_group_members(old: &mut PolicyDocument, new: &mut PolicyDocument) {
    for tenant in ["t1", "t2", "t3"] {
        let groups = tenant_groups([old, new], tenant);
        for d in [&mut *old, &mut *new] {
            let Some(t) = d.tenants.iter_mut().find(|t| t.id == tenant) else {
                continue;
            };
            for g in &groups {
                t.subjects.push(SubjectDoc {
                    id: member_of(g),
                    disabled: false,
                });
                if let Some(group) = t.groups.iter_mut().find(|x| x.id == *g) {
                    group.members.push(member_of(g));
                }
            }
        }
    }
}

/// The change the diff claims for (tenant, subject, scope): the scoped change at the
/// deepest listed scope covering `scope`, if any.
fn claimed<'d>(
    d: &'d PolicyDiff,
    tenant: &str,
    subject: &str,
    scope: &str,
) -> Option<&'d authz::policy::diff::ChangeSet> {
    let t = d.access.iter().find(|t| t.tenant == tenant)?;
    let s = t.subjects.iter().find(|s| s.subject == subject)?;
    let mut best: Option<(&str, Option<&authz::policy::diff::ChangeSet>)> = None;
    for c in &s.changes {
        for sc in &c.scopes {
            if scope_covers(sc, scope) && best.is_none_or(|(b, _)| sc.len() > b.len()) {
                best = Some((sc, Some(&t.change_sets[c.change_set])));
            }
        }
    }
    for sc in &s.unchanged_scopes {
        if scope_covers(sc, scope) && best.is_none_or(|(b, _)| sc.len() > b.len()) {
            best = Some((sc, None));
        }
    }
    best.expect("the root is always listed").1
}

#[test]
fn the_diff_matches_check_on_random_policy_pairs() {
    let test_scopes = ["", "w/1", "w/1/p", "w/1/p/q", "w/2", "w/10", "x"];
    let test_methods = ["GET", "PUT", "POST", "DELETE", "PROPFIND", "PATCH"];
    let alphabet = ["a", "b", "c", "zz"];
    let mut paths: Vec<Vec<&str>> = vec![vec![]];
    let mut frontier: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..3 {
        let mut next = Vec::new();
        for p in &frontier {
            for s in alphabet {
                let mut q = p.clone();
                q.push(s);
                next.push(q);
            }
        }
        paths.extend(next.iter().cloned());
        frontier = next;
    }
    paths.push(vec!["a", "b", "c", "a", "b"]);
    // Deeper than any probe path (patterns have at most 3 segments before a `**`, probes
    // at most one more): 3 to 5 segments past each path of 1 to 3 segments.
    let tails: [&[&str]; 3] = [
        &["zz", "a", "b"],
        &["c", "zz", "zz", "a"],
        &["b", "a", "c", "zz", "a"],
    ];
    let deeper: Vec<Vec<&str>> = paths
        .iter()
        .filter(|p| (1..=3).contains(&p.len()))
        .enumerate()
        .map(|(i, p)| [p.as_slice(), tails[i % tails.len()]].concat())
        .collect();
    paths.extend(deeper);

    let (mut compared, mut gains, mut losses) = (0u64, 0u64, 0u64);
    let (mut groups_changed, mut groups_unchanged) = (0u64, 0u64);
    let mut rng = Rng(0x5EED_D1FF);
    for round in 0..30 {
        let (mut old_doc, _, mut new_doc, _) = pair(&mut rng);
        add_group_members(&mut old_doc, &mut new_doc);
        let (old, new) = (
            compile(&old_doc, "old", 1).unwrap(),
            compile(&new_doc, "new", 2).unwrap(),
        );
        let d = diff(
            Side {
                label: "old",
                doc: &old_doc,
                policy: &old,
            },
            Side {
                label: "new",
                doc: &new_doc,
                policy: &new,
            },
        )
        .unwrap();
        let ctx = |what: &str| {
            format!("round {round}: {what}\nold: {old_doc:#?}\nnew: {new_doc:#?}\ndiff: {d:#?}")
        };
        for tenant in ["t1", "t2", "t3"] {
            let mut patterns = Vec::new();
            tenant_patterns(&old_doc, tenant, &mut patterns);
            tenant_patterns(&new_doc, tenant, &mut patterns);
            let access = d.access.iter().find(|t| t.tenant == tenant);
            // A group's entry is its synthetic member's entry: same scopes, equal change
            // sets, so the Check comparison below covers groups too.
            let groups = tenant_groups([&old_doc, &new_doc], tenant);
            for g in &groups {
                let member = member_of(g);
                let group = access.and_then(|a| a.groups.iter().find(|x| x.group == *g));
                let subject = access.and_then(|a| a.subjects.iter().find(|x| x.subject == member));
                let (Some(group), Some(subject), Some(a)) = (group, subject, access) else {
                    assert!(
                        group.is_none() && subject.is_none(),
                        "{}",
                        ctx(&format!(
                            "{tenant}: group {g} listed {}, its member {}",
                            group.is_some(),
                            subject.is_some()
                        ))
                    );
                    groups_unchanged += 1;
                    continue;
                };
                groups_changed += 1;
                let contents = |cs: &[authz::policy::diff::ScopedChange]| {
                    cs.iter()
                        .map(|c| (c.scopes.clone(), a.change_sets[c.change_set].clone()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    contents(&group.changes),
                    contents(&subject.changes),
                    "{}",
                    ctx(&format!("{tenant}: group {g}"))
                );
                assert_eq!(
                    group.unchanged_scopes,
                    subject.unchanged_scopes,
                    "{}",
                    ctx(g)
                );
                assert!(!group.causes.is_empty(), "{}", ctx(g));
                // Its members (either side) whose own access changes: its synthetic
                // member among them.
                let listed: BTreeSet<&str> =
                    a.subjects.iter().map(|s| s.subject.as_str()).collect();
                let members: BTreeSet<String> = [&old_doc, &new_doc]
                    .iter()
                    .filter_map(|d| d.tenants.iter().find(|t| t.id == tenant))
                    .flat_map(|t| t.groups.iter().filter(|x| x.id == *g))
                    .flat_map(|x| x.members.iter().cloned())
                    .filter(|m| listed.contains(m.as_str()))
                    .collect();
                assert_eq!(
                    group.members_changed,
                    members.into_iter().collect::<Vec<_>>(),
                    "{}",
                    ctx(g)
                );
                assert!(group.members_changed.contains(&member), "{}", ctx(g));
            }
            if let Some(a) = access {
                assert!(
                    a.groups.iter().all(|x| groups.contains(&x.group)),
                    "{}",
                    ctx(tenant)
                );
            }
            let members: Vec<String> = groups.iter().map(|g| member_of(g)).collect();
            let mut subjects: Vec<&str> = vec!["", "nobody"];
            subjects.extend(SUBJECTS);
            subjects.extend(members.iter().map(String::as_str));
            for subject in subjects {
                let registered = |doc: &PolicyDocument| {
                    doc.tenants
                        .iter()
                        .find(|t| t.id == tenant)
                        .is_some_and(|t| t.subjects.iter().any(|s| s.id == subject))
                };
                // Unregistered on both sides: the diff's "anyone" entry.
                let listed_as = if registered(&old_doc) || registered(&new_doc) {
                    subject
                } else {
                    ""
                };
                for scope in test_scopes {
                    let claim = claimed(&d, tenant, listed_as, scope);
                    for p in PERMISSIONS.iter().chain(&["zz"]) {
                        let (a, b) = (
                            allowed(&old, tenant, subject, scope, Action::Permission(p)),
                            allowed(&new, tenant, subject, scope, Action::Permission(p)),
                        );
                        let said_gain =
                            claim.is_some_and(|c| c.permissions_gained.iter().any(|x| x == p));
                        let said_loss =
                            claim.is_some_and(|c| c.permissions_lost.iter().any(|x| x == p));
                        assert_eq!(
                            (said_gain, said_loss),
                            (!a && b, a && !b),
                            "{}",
                            ctx(&format!(
                                "{tenant} {subject:?} at {scope:?}: permission {p}"
                            ))
                        );
                        compared += 1;
                    }
                    for m in test_methods {
                        for path in &paths {
                            let text = format!("/{}", path.join("/"));
                            let action = Action::Route {
                                method: Method::parse(m).unwrap(),
                                path: &text,
                            };
                            let (a, b) = (
                                allowed(&old, tenant, subject, scope, action),
                                allowed(&new, tenant, subject, scope, action),
                            );
                            compared += 1;
                            gains += u64::from(!a && b);
                            losses += u64::from(a && !b);
                            let Some(access) = access else {
                                assert_eq!(
                                    a,
                                    b,
                                    "{}",
                                    ctx(&format!(
                                        "{tenant}: no access change listed, but {m} {text} for {subject:?} at {scope:?} changed"
                                    ))
                                );
                                continue;
                            };
                            let probe = canonical(&patterns, path, &access.fresh_segment);
                            let method = if access.methods.iter().any(|x| x == m) {
                                m.to_owned()
                            } else {
                                access.other_method.clone()
                            };
                            let said = |dir: Direction| {
                                claim
                                    .into_iter()
                                    .flat_map(|c| &c.routes)
                                    .map(|&r| &access.route_changes[r])
                                    .find(|r| {
                                        r.change == dir
                                            && r.requests.iter().any(|&q| {
                                                access.request(q)
                                                    == (method.as_str(), probe.as_str())
                                            })
                                    })
                            };
                            let (g, l) = (said(Direction::Gained), said(Direction::Lost));
                            assert_eq!(
                                (g.is_some(), l.is_some()),
                                (!a && b, a && !b),
                                "{}",
                                ctx(&format!(
                                    "{tenant} {subject:?} at {scope:?}: {m} {text} (probe {method} {probe})"
                                ))
                            );
                            // What the diff names as allowing it does match the path.
                            if let Some(r) = g.or(l) {
                                assert!(
                                    Pattern::parse(&r.via.pattern).unwrap().matches(&text),
                                    "{}",
                                    ctx(&format!("via {:?} does not match {text}", r.via))
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    // Not vacuous: the pairs changed access both ways, many times.
    assert!(
        gains > 100 && losses > 100,
        "gains {gains}, losses {losses}"
    );
    assert!(compared > 1_000_000, "{compared}");
    assert!(
        groups_changed > 20 && groups_unchanged > 5,
        "groups changed {groups_changed}, unchanged {groups_unchanged}"
    );
}

#[test]
fn an_example_change_reads_as_a_reviewer_needs() {
    let old = PolicyDocument::read(&common::example("gateway.yaml")).unwrap();
    let mut new = old.clone();
    // Role `user` may now deploy to prod, and olga loses orgadmin.
    let user = new.roles.iter_mut().find(|r| r.id == "user").unwrap();
    user.routes.push(RouteDoc {
        methods: vec!["PUT".into()],
        path: "/environments/prod/applications/*/revisions/*/deployments".into(),
    });
    let acme = new.tenants.iter_mut().find(|t| t.id == "acme").unwrap();
    acme.assignments
        .retain(|a| !(a.subject.as_deref() == Some("olga") && a.role == "orgadmin"));
    let (op, np) = (
        compile(&old, "old", 1).unwrap(),
        compile(&new, "new", 2).unwrap(),
    );
    let d = diff(
        Side {
            label: "old",
            doc: &old,
            policy: &op,
        },
        Side {
            label: "new",
            doc: &new,
            policy: &np,
        },
    )
    .unwrap();
    let acme = d.access.iter().find(|t| t.tenant == "acme").unwrap();
    let ulli = acme.subjects.iter().find(|s| s.subject == "ulli").unwrap();
    let gained: Vec<_> = acme.change_sets[ulli.changes[0].change_set]
        .routes
        .iter()
        .map(|&r| &acme.route_changes[r])
        .collect();
    assert!(
        gained.iter().any(|r| r.change == Direction::Gained
            && r.via.role == "user"
            && r.via.pattern == "/environments/prod/applications/*/revisions/*/deployments"
            && r.requests.iter().all(|&q| acme.request(q).0 == "PUT")),
        "{gained:#?}"
    );
    assert!(
        ulli.causes
            .iter()
            .any(|c| c.kind == "role_changed" && c.detail.contains("+rules PUT /environments/prod")),
        "{:?}",
        ulli.causes
    );
    let olga = acme.subjects.iter().find(|s| s.subject == "olga").unwrap();
    assert!(
        acme.change_sets[olga.changes[0].change_set]
            .routes
            .iter()
            .all(|&r| acme.route_changes[r].change == Direction::Lost)
    );
    assert!(
        olga.causes
            .iter()
            .any(|c| c.kind == "assignment_removed" && c.detail == "orgadmin at the root"),
        "{:?}",
        olga.causes
    );
    // Structure: the rule and the assignment.
    let user = d
        .structural
        .builtin_roles
        .iter()
        .find(|r| r.role == "user")
        .unwrap();
    assert_eq!(
        user.routes.added,
        ["PUT /environments/prod/applications/*/revisions/*/deployments"]
    );
    // globex's subjects do not hold `user`... unless they do: every listed subject holds
    // it or is olga.
    for t in &d.access {
        for s in &t.subjects {
            assert!(
                !s.causes.is_empty(),
                "{} {} has no cause",
                t.tenant,
                s.subject
            );
        }
    }
    // The same policy on both sides: nothing.
    let same = diff(
        Side {
            label: "a",
            doc: &old,
            policy: &op,
        },
        Side {
            label: "b",
            doc: &old,
            policy: &op,
        },
    )
    .unwrap();
    assert!(!same.access_changed() && !same.structure_changed());
}

#[test]
fn the_cli_prints_text_json_and_markdown_and_exit_code_says_whether_access_changed() {
    let dir = tempfile::tempdir().unwrap();
    let old = common::example("gateway.yaml");
    let text = std::fs::read_to_string(&old).unwrap();
    let removed = "      - subject: olga\n        role: orgadmin\n";
    assert!(text.contains(removed));
    let new = dir.path().join("new.yaml");
    std::fs::write(&new, text.replacen(removed, "", 1)).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
            .arg("diff")
            .args(args)
            .output()
            .unwrap()
    };
    let (o, n) = (old.to_str().unwrap(), new.to_str().unwrap());
    let out = run(&[o, n]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("subject `olga`"), "{stdout}");
    assert!(
        stdout.contains("- assignment `subject olga: orgadmin at the root`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("because assignment_removed: orgadmin at the root"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 subjects gain access, 1 lose access"),
        "{stdout}"
    );

    let out = run(&[o, n, "--output", "json", "--exit-code"]);
    assert_eq!(out.status.code(), Some(1), "access changed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["access"][0]["tenant"], "acme");
    assert_eq!(v["access"][0]["subjects"][0]["subject"], "olga");
    let set = v["access"][0]["subjects"][0]["changes"][0]["change_set"]
        .as_u64()
        .unwrap();
    assert_eq!(
        v["access"][0]["route_changes"][v["access"][0]["change_sets"][set as usize]["routes"][0]
            .as_u64()
            .unwrap() as usize]["change"],
        "lost"
    );

    let out = run(&[o, n, "--output", "markdown"]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.starts_with("## Policy change"), "{md}");
    assert!(
        md.contains("- subject `olga`") && md.contains("loses every method"),
        "{md}"
    );

    // The same file twice: no change, exit 0 even with --exit-code.
    let out = run(&[o, o, "--exit-code"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no one gains or loses anything"));
    // Bad input: an invalid policy is 65 naming it; `now` without a database is 64.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nroles:\n  - id: a\n    includes: [a]\n").unwrap();
    let out = run(&[o, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
    let out = run(&[o, "now"]);
    assert_eq!(out.status.code(), Some(64));
    let out = run(&["rev:3", o]);
    assert_eq!(out.status.code(), Some(64));
}

/// Diffs two documents that compile.
fn diff_docs(old: &PolicyDocument, new: &PolicyDocument) -> PolicyDiff {
    let (op, np) = (
        compile(old, "old", 1).unwrap(),
        compile(new, "new", 2).unwrap(),
    );
    diff(
        Side {
            label: "old",
            doc: old,
            policy: &op,
        },
        Side {
            label: "new",
            doc: new,
            policy: &np,
        },
    )
    .unwrap()
}

/// The console example with two group changes: `ws10-admins` is given
/// workspace_developer instead of workspace_admin at ws-10, and a new, empty group
/// `auditors` gets billing at the root.
fn console_with_group_changes() -> (PolicyDocument, PolicyDocument) {
    let old = PolicyDocument::read(&common::example("console.yaml")).unwrap();
    let mut new = old.clone();
    let acme = new.tenants.iter_mut().find(|t| t.id == "acme").unwrap();
    let a = acme
        .assignments
        .iter_mut()
        .find(|a| a.group.as_deref() == Some("ws10-admins"))
        .unwrap();
    assert_eq!(a.role, "workspace_admin");
    a.role = "workspace_developer".into();
    acme.groups.push(GroupDoc {
        id: "auditors".into(),
        members: Vec::new(),
    });
    acme.assignments.push(AssignmentDoc {
        subject: None,
        group: Some("auditors".into()),
        role: "billing".into(),
        scope: String::new(),
    });
    (old, new)
}

#[test]
fn a_group_reads_as_what_a_member_gets_through_it() {
    let (old, new) = console_with_group_changes();
    let d = diff_docs(&old, &new);
    let acme = d.access.iter().find(|t| t.tenant == "acme").unwrap();
    let ids: Vec<&str> = acme.groups.iter().map(|g| g.group.as_str()).collect();
    // `finance` does not change.
    assert_eq!(ids, ["auditors", "ws10-admins"]);

    let ws10 = &acme.groups[1];
    assert_eq!(ws10.changes.len(), 1);
    assert_eq!(ws10.changes[0].scopes, ["workspaces/ws-10"]);
    assert_eq!(ws10.unchanged_scopes, [""]);
    let set = &acme.change_sets[ws10.changes[0].change_set];
    assert!(set.permissions_gained.is_empty(), "{set:?}");
    assert!(
        set.permissions_lost
            .iter()
            .any(|p| p == "workspace.members.manage"),
        "{set:?}"
    );
    let kinds: Vec<(&str, &str)> = ws10
        .causes
        .iter()
        .map(|c| (c.kind, c.detail.as_str()))
        .collect();
    assert!(
        kinds.contains(&(
            "group_assignment_added",
            "group `ws10-admins`: workspace_developer at `workspaces/ws-10`"
        )) && kinds.contains(&(
            "group_assignment_removed",
            "group `ws10-admins`: workspace_admin at `workspaces/ws-10`"
        )),
        "{kinds:?}"
    );
    assert_eq!(ws10.members_changed, ["wes"]);
    // wes (org `user` besides the group) changes as the group does: one change set.
    let wes = acme.subjects.iter().find(|s| s.subject == "wes").unwrap();
    assert_eq!(wes.changes.len(), 1);
    assert_eq!(wes.changes[0].change_set, ws10.changes[0].change_set);

    // A new group no one is in: what a member would get, and no subject changes by it.
    let auditors = &acme.groups[0];
    assert_eq!(auditors.changes[0].scopes, [""]);
    assert!(
        !acme.change_sets[auditors.changes[0].change_set]
            .permissions_gained
            .is_empty()
    );
    assert!(
        auditors
            .causes
            .iter()
            .any(|c| c.kind == "group_added" && c.detail == "group `auditors` is new"),
        "{:?}",
        auditors.causes
    );
    assert!(auditors.members_changed.is_empty());

    // DiffPolicy's answer carries the same groups.
    let pb = authz::grpc::convert::diff_to_pb(&d, 7);
    let t = pb.access.iter().find(|t| t.tenant_id == "acme").unwrap();
    let g = t
        .groups
        .iter()
        .find(|g| g.group_id == "ws10-admins")
        .unwrap();
    assert_eq!(g.members_changed, ["wes"]);
    assert_eq!(g.changes[0].scopes, ["workspaces/ws-10"]);
    assert_eq!(g.changes[0].change_set as usize, ws10.changes[0].change_set);
    assert_eq!(g.unchanged_scopes, [""]);
    assert!(
        g.causes
            .iter()
            .any(|c| c.kind == "group_assignment_removed")
    );

    // Only the empty group changes: no one's access changes, but the group is reported.
    let mut only_new_group = old.clone();
    let acme = only_new_group
        .tenants
        .iter_mut()
        .find(|t| t.id == "acme")
        .unwrap();
    acme.groups.push(GroupDoc {
        id: "auditors".into(),
        members: Vec::new(),
    });
    acme.assignments.push(AssignmentDoc {
        subject: None,
        group: Some("auditors".into()),
        role: "billing".into(),
        scope: String::new(),
    });
    let d = diff_docs(&old, &only_new_group);
    assert!(!d.access_changed());
    assert_eq!(d.access.len(), 1);
    assert!(d.access[0].subjects.is_empty());
    assert_eq!(d.access[0].groups[0].group, "auditors");
}

#[test]
fn the_cli_prints_groups_in_text_json_and_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = console_with_group_changes();
    let (o, n) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
    std::fs::write(&o, old.to_yaml().unwrap()).unwrap();
    std::fs::write(&n, new.to_yaml().unwrap()).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
            .arg("diff")
            .args([o.to_str().unwrap(), n.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(&[]);
    for want in [
        "  group `ws10-admins`: what a member gets through it",
        "    at `workspaces/ws-10`:",
        "      - permission `workspace.members.manage`",
        "    unchanged at the root",
        "    because group_assignment_removed: group `ws10-admins`: workspace_admin at `workspaces/ws-10`",
        "    members whose own access changes: `wes`",
        "  group `auditors`: what a member gets through it",
        "    because group_added: group `auditors` is new",
        "; 2 groups change what they give a member",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let md = run(&["--output", "markdown"]);
    assert!(
        md.contains("- group `ws10-admins`: what a member gets through it")
            && md.contains("  - members whose own access changes: `wes`"),
        "{md}"
    );
    let v: serde_json::Value = serde_json::from_str(&run(&["--output", "json"])).unwrap();
    let groups = &v["access"][0]["groups"];
    assert_eq!(groups[1]["group"], "ws10-admins");
    assert_eq!(groups[1]["members_changed"][0], "wes");
    assert_eq!(groups[1]["changes"][0]["scopes"][0], "workspaces/ws-10");
    assert_eq!(groups[0]["causes"][0]["kind"], "group_added");
}

#[test]
fn subjects_whose_access_changes_alike_share_one_change_set() {
    // ann and bob hold different roles; only `base`, which both hold, changes.
    let yaml = |base_permissions: &str, base_routes: &str| {
        format!(
            "version: 1
roles:
  - id: base
    permissions: [{base_permissions}]
    routes: [{base_routes}]
  - id: x
    permissions: [x.only]
  - id: y
    permissions: [y.only]
    routes: [{{methods: [GET], path: /y/**}}]
tenants:
  - id: acme
    subjects: [{{id: ann}}, {{id: bob}}]
    assignments:
      - {{subject: ann, role: base}}
      - {{subject: ann, role: x}}
      - {{subject: bob, role: base}}
      - {{subject: bob, role: y}}
"
        )
    };
    let old: PolicyDocument =
        serde_yaml_ng::from_str(&yaml("docs.read", "{methods: [GET], path: /docs/*}")).unwrap();
    let new: PolicyDocument = serde_yaml_ng::from_str(&yaml(
        "docs.read, docs.write",
        "{methods: [GET, PUT], path: /docs/*}",
    ))
    .unwrap();
    let d = diff_docs(&old, &new);
    let acme = &d.access[0];
    let change = |id: &str| {
        let s = acme.subjects.iter().find(|s| s.subject == id).unwrap();
        assert_eq!(s.changes.len(), 1, "{s:?}");
        s.changes[0].change_set
    };
    assert_eq!(change("ann"), change("bob"), "{acme:#?}");
    assert_eq!(acme.change_sets.len(), 1, "{acme:#?}");
    let set = &acme.change_sets[0];
    assert_eq!(set.permissions_gained, ["docs.write"]);
    assert_eq!(set.routes.len(), 1);
    let r = &acme.route_changes[set.routes[0]];
    assert_eq!((r.change, r.via.role.as_str()), (Direction::Gained, "base"));
}

#[test]
fn probe_paths_stop_one_fresh_segment_past_the_patterns() {
    let patterns: Vec<Pattern> = ["/a/**", "/a/{id}/b", "/c"]
        .iter()
        .map(|p| Pattern::parse(p).unwrap())
        .collect();
    let probes: Vec<ProbePattern<'_>> = patterns
        .iter()
        .map(|p| ProbePattern::new(p.segments()))
        .collect();
    let fresh = fresh_segment(&probes);
    assert_eq!(fresh, "~");
    let paths = probe_paths(&probes, &fresh, 1000).unwrap();
    // Past `/a/~/b` no pattern names a segment: `/a/**` matches `/a/~/b/~` as it matches
    // every longer path, so that one path stands for them all.
    assert_eq!(
        paths,
        [
            "/", "/a", "/a/~", "/a/~/b", "/a/~/b/~", "/a/~/~", "/a/~/~/~", "/c", "/c/~", "/~",
            "/~/~"
        ]
    );
}

/// Subjects whose access changes alike (here: a default role gains a permission and a
/// rule, so every registered subject gains the same) read as one block in text and
/// Markdown, naming the first 20 and counting the rest; JSON lists each, with
/// `access_changed`. A block never reads as "every method on every path" when only
/// some methods change on some paths.
#[test]
fn alike_subjects_read_as_one_block_and_json_says_access_changed() {
    let dir = tempfile::tempdir().unwrap();
    let subjects: String = (0..25).map(|i| format!("      - id: s{i:02}\n")).collect();
    // Role `base` allows GET below /docs on both sides; role `extra` gains `GET,PUT /**`:
    // below /docs only PUT is new, elsewhere GET and PUT.
    let policy = |extra: &str| {
        format!(
            "version: 1\ntenants:\n  - id: t\n    roles:\n      - id: base\n        permissions: [a.read]\n        routes:\n          - methods: [GET]\n            path: /docs/**\n      - id: extra\n{extra}    default_roles: [base, extra]\n    subjects:\n{subjects}"
        )
    };
    let (old, new) = (dir.path().join("old.yaml"), dir.path().join("new.yaml"));
    std::fs::write(&old, policy("")).unwrap();
    std::fs::write(
        &new,
        policy("        routes:\n          - methods: [GET, PUT]\n            path: /**\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
            .arg("diff")
            .args([old.to_str().unwrap(), new.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("25 subjects, alike: `s00`, `s01`") && text.contains(" and 5 more"),
        "{text}"
    );
    assert_eq!(text.matches("subjects, alike").count(), 1, "{text}");
    assert!(text.contains("25 subjects gain access"), "{text}");
    // PUT below /docs, GET and PUT elsewhere: not "GET,PUT on N paths".
    assert!(
        text.contains("requests on") && text.contains("(not every method on every path)"),
        "{text}"
    );
    let out = run(&["--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["access_changed"], true);
    assert_eq!(v["access"][0]["subjects"].as_array().unwrap().len(), 25);
}

/// A role whose description alone changes: the structural part says so (an apply
/// writes it), no one's access changes, and it is nobody's cause.
#[test]
fn a_description_change_is_structure_not_access() {
    let doc = |description: &str| {
        PolicyDocument::parse(
            &format!(
                "version: 1\ntenants:\n  - id: t\n    roles:\n      - id: r\n        description: {description}\n        permissions: [x]\n    subjects:\n      - id: a\n    assignments:\n      - subject: a\n        role: r\n"
            ),
            authz::policy::source::Format::Yaml,
            "p.yaml",
        )
        .unwrap()
    };
    let (old, new) = (doc("before"), doc("after"));
    let (op, np) = (
        compile(&old, "old", 1).unwrap(),
        compile(&new, "new", 1).unwrap(),
    );
    let d = diff(
        Side {
            label: "old",
            doc: &old,
            policy: &op,
        },
        Side {
            label: "new",
            doc: &new,
            policy: &np,
        },
    )
    .unwrap();
    assert!(d.structure_changed());
    assert!(!d.access_changed());
    let roles = &d.structural.tenants[0].roles;
    assert_eq!(roles.len(), 1);
    assert!(roles[0].description_changed && !roles[0].decides_differently());
    assert_eq!(
        authz::policy::diff::role_change_text(&roles[0]),
        "role `r`: description changed"
    );
}
