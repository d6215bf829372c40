//! `authzd diff` at scale: two versions of one tenant with 10,000 subjects and 200 custom
//! roles (each with permissions, a few route rules with wildcards, some including
//! others), 2–4 assignments per subject at the root or one of 50 workspaces, 100 groups;
//! the new version changes 10 roles' rules and permissions, 500 assignments and the
//! default role. Times the diff (the library call `authzd diff` makes, after both
//! policies are compiled) and prints what it found.
//!
//! ```text
//! cargo run --release --example diff_scale [SUBJECTS] [ROLES] [DIR]
//! ```
//!
//! With DIR, also writes the two versions there as `old.yaml` and `new.yaml`, to time
//! `authzd diff` itself on them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement tool: a broken fixture should stop it loudly"
)]

use std::time::Instant;

use authz::policy::{
    PolicyDocument, compile,
    diff::{Side, diff},
    source::{AssignmentDoc, GroupDoc, RoleDoc, RouteDoc, SubjectDoc, TenantDoc},
};

/// splitmix64, seeded: the same fixture every run.
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
}

const RESOURCES: [&str; 10] = [
    "apis",
    "apps",
    "developers",
    "environments",
    "reports",
    "companies",
    "keys",
    "users",
    "deployments",
    "products",
];
const METHODS: [&str; 4] = ["GET", "PUT", "POST", "DELETE"];

fn role(rng: &mut Rng, i: usize) -> RoleDoc {
    let mut routes = Vec::new();
    for _ in 0..3 {
        let res = RESOURCES[rng.below(RESOURCES.len())];
        let path = match rng.below(4) {
            0 => format!("/{res}/**"),
            1 => format!("/{res}/*"),
            2 => format!("/{res}/*/items/{{id}}"),
            _ => format!("/{res}/r{}/**", rng.below(20)),
        };
        routes.push(RouteDoc {
            methods: vec![METHODS[rng.below(4)].into(), METHODS[rng.below(4)].into()],
            path,
        });
    }
    RoleDoc {
        id: format!("role-{i}"),
        includes: if i > 0 && rng.below(4) == 0 {
            vec![format!("role-{}", rng.below(i))]
        } else {
            Vec::new()
        },
        permissions: (0..3).map(|_| format!("perm.{}", rng.below(500))).collect(),
        routes,
        ..RoleDoc::default()
    }
}

fn tenant(subjects: usize, roles: usize, rng: &mut Rng) -> TenantDoc {
    let roles: Vec<RoleDoc> = (0..roles).map(|i| role(rng, i)).collect();
    let mut t = TenantDoc {
        id: "acme".into(),
        default_roles: vec!["role-0".into()],
        ..TenantDoc::default()
    };
    for s in 0..subjects {
        t.subjects.push(SubjectDoc {
            id: format!("user-{s:05}"),
            disabled: false,
        });
        for _ in 0..2 + rng.below(3) {
            t.assignments.push(AssignmentDoc {
                subject: Some(format!("user-{s:05}")),
                group: None,
                role: roles[rng.below(roles.len())].id.clone(),
                scope: if rng.below(2) == 0 {
                    String::new()
                } else {
                    format!("workspaces/ws-{}", rng.below(50))
                },
            });
        }
    }
    for g in 0..100 {
        t.groups.push(GroupDoc {
            id: format!("group-{g}"),
            members: (0..20)
                .map(|_| format!("user-{:05}", rng.below(subjects)))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        });
        t.assignments.push(AssignmentDoc {
            subject: None,
            group: Some(format!("group-{g}")),
            role: roles[rng.below(roles.len())].id.clone(),
            scope: String::new(),
        });
    }
    t.roles = roles;
    t
}

fn main() {
    let mut args = std::env::args().skip(1);
    let subjects: usize = args.next().map_or(10_000, |a| a.parse().unwrap());
    let roles: usize = args.next().map_or(200, |a| a.parse().unwrap());
    let mut rng = Rng(42);
    let old = PolicyDocument {
        version: 1,
        tenants: vec![tenant(subjects, roles, &mut rng)],
        ..PolicyDocument::default()
    };
    let mut new = old.clone();
    let t = &mut new.tenants[0];
    for _ in 0..10 {
        let i = rng.below(roles);
        let id = t.roles[i].id.clone();
        let mut r = role(&mut rng, i);
        r.id = id;
        r.includes = t.roles[i].includes.clone();
        t.roles[i] = r;
    }
    for _ in 0..500 {
        let i = rng.below(t.assignments.len());
        if t.assignments[i].subject.is_some() {
            t.assignments[i].role = format!("role-{}", rng.below(roles));
        }
    }
    t.default_roles = vec!["role-1".into()];

    if let Some(dir) = args.next() {
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join("old.yaml"), old.to_yaml().unwrap()).unwrap();
        std::fs::write(dir.join("new.yaml"), new.to_yaml().unwrap()).unwrap();
    }
    let started = Instant::now();
    let (op, np) = (
        compile(&old, "old", 1).unwrap(),
        compile(&new, "new", 2).unwrap(),
    );
    let compiled = started.elapsed();
    let started = Instant::now();
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
    let took = started.elapsed();
    let a = &d.access[0];
    let requests: usize = a.route_changes.iter().map(|r| r.requests.len()).sum();
    println!(
        "{subjects} subjects, {roles} roles, {} assignments: compiled both in {compiled:.2?}; diff in {took:.2?}",
        old.tenants[0].assignments.len()
    );
    println!(
        "{} probe paths x {} methods; {} subjects and {} groups changed; {} distinct change sets naming {} distinct route changes of {requests} requests in all; {} structural role changes",
        a.probe_paths,
        a.methods.len(),
        a.subjects.len(),
        a.groups.len(),
        a.change_sets.len(),
        a.route_changes.len(),
        d.structural.tenants[0].roles.len()
    );
}
