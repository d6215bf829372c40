//! LookupSubjects at scale: one tenant of 100,000 subjects (200,000 assignments over 60
//! roles, plus a role `auditor` held by 100 subjects through a group of 50 and 50 direct
//! assignments), timing lookups for a permission only `auditor` holds (cost should
//! follow its 100 holders, not the 100,000 subjects) and for one a default role holds
//! (every subject is a candidate).
//!
//! ```text
//! cargo run --release --example lookup_scale [SUBJECTS]
//! ```
//!
//! Prints the median and range of 21 runs of each (the first lookup on a snapshot also
//! builds its role → holders index, shown separately).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement tool: a broken fixture should stop it loudly"
)]

use std::time::{Duration, Instant};

use authz::policy::{
    Action, PolicyDocument, compile,
    source::{AssignmentDoc, GroupDoc, RoleDoc, SubjectDoc, TenantDoc},
};

fn role(id: &str, permissions: &[&str]) -> RoleDoc {
    RoleDoc {
        id: id.into(),
        permissions: permissions.iter().map(|p| (*p).into()).collect(),
        ..RoleDoc::default()
    }
}

fn assign(subject: Option<String>, group: Option<String>, role: &str) -> AssignmentDoc {
    AssignmentDoc {
        subject,
        group,
        role: role.into(),
        scope: String::new(),
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("SUBJECTS: a number"));
    let mut t = TenantDoc {
        id: "big".into(),
        default_roles: vec!["member".into()],
        ..TenantDoc::default()
    };
    t.roles.push(role("member", &["chat.use"]));
    t.roles.push(role("auditor", &["audit.read"]));
    for r in 0..60 {
        t.roles.push(role(&format!("r{r}"), &[&format!("p{r}")]));
    }
    let mut auditors = GroupDoc {
        id: "auditors".into(),
        ..GroupDoc::default()
    };
    for i in 0..n {
        let id = format!("user-{i:07}");
        t.subjects.push(SubjectDoc {
            id: id.clone(),
            disabled: i % 1000 == 999,
        });
        for j in 0..2 {
            t.assignments.push(assign(
                Some(id.clone()),
                None,
                &format!("r{}", (i * 7 + j) % 60),
            ));
        }
        if i % (n / 50).max(1) == 3 {
            auditors.members.push(id.clone());
        } else if i % (n / 50).max(1) == 7 {
            t.assignments
                .push(assign(Some(id.clone()), None, "auditor"));
        }
    }
    t.groups.push(auditors);
    t.assignments
        .push(assign(None, Some("auditors".into()), "auditor"));
    let doc = PolicyDocument {
        version: 1,
        tenants: vec![t],
        ..PolicyDocument::default()
    };
    let policy = compile(&doc, "lookup_scale", 1).unwrap();
    let snap = &policy.tenants[0];
    let time = |action: Action<'_>| -> (Duration, usize) {
        let started = Instant::now();
        let mut found = 0;
        let mut after = String::new();
        loop {
            let (page, more) = snap.lookup_subjects("", action, &after, 1000);
            found += page.len();
            if !more {
                break;
            }
            after = page.last().unwrap().subject.to_owned();
        }
        (started.elapsed(), found)
    };
    let (first, _) = time(Action::Permission("audit.read"));
    println!("subjects: {n}; first lookup (builds the holder index): {first:?}");
    for (name, action) in [
        (
            "audit.read (100 holders), all pages",
            Action::Permission("audit.read"),
        ),
        (
            "chat.use (default role: everyone), all pages",
            Action::Permission("chat.use"),
        ),
    ] {
        let mut runs: Vec<(Duration, usize)> = (0..21).map(|_| time(action)).collect();
        runs.sort();
        println!(
            "{name}: {} found; median {:?} (range {:?} - {:?})",
            runs[10].1, runs[10].0, runs[0].0, runs[20].0
        );
    }
    // First page only, the usual UI question.
    let mut runs: Vec<Duration> = (0..21)
        .map(|_| {
            let s = Instant::now();
            let _ = snap.lookup_subjects("", Action::Permission("chat.use"), "", 100);
            s.elapsed()
        })
        .collect();
    runs.sort();
    println!(
        "chat.use, first page of 100: median {:?} (range {:?} - {:?})",
        runs[10], runs[0], runs[20]
    );
}
