//! The chat API seed's endpoint table (`tests/data/chat-endpoints.tsv`) and a policy
//! with one member per role combination, shared by every test that runs the table.

use std::collections::BTreeSet;

use authz::policy::{PolicyDocument, source::AssignmentDoc, source::SubjectDoc, source::TenantDoc};

use super::{example, repo};

pub struct Row {
    pub pattern: String,
    pub method: String,
    pub roles: BTreeSet<String>,
    pub request_path: String,
}

pub fn rows() -> Vec<Row> {
    let text = std::fs::read_to_string(repo().join("tests/data/chat-endpoints.tsv")).unwrap();
    let rows: Vec<Row> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "bad row: {l}");
            Row {
                pattern: f[0].into(),
                method: f[1].into(),
                roles: f[2]
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|r| format!("alan-{r}"))
                    .collect(),
                request_path: f[3].into(),
            }
        })
        .collect();
    assert_eq!(rows.len(), 89, "the seed table has 89 rows");
    rows
}

pub const ASSIGNABLE: [&str; 3] = ["alan-contributor", "alan-editor", "alan-admin"];

/// The seed's role concept: every member holds alan-user; contributor includes user,
/// editor includes contributor; admin includes nothing.
pub fn held(mask: usize) -> BTreeSet<String> {
    let mut h = BTreeSet::from(["alan-user".to_owned()]);
    for (i, r) in ASSIGNABLE.iter().enumerate() {
        if mask & (1 << i) != 0 {
            h.insert((*r).to_owned());
            if *r == "alan-editor" {
                h.insert("alan-contributor".into());
            }
        }
    }
    h
}

/// chat-api.yaml plus a tenant `matrix` with one member per role combination.
pub fn matrix_document() -> PolicyDocument {
    let mut doc = PolicyDocument::read(&example("chat-api.yaml")).unwrap();
    let mut t = TenantDoc {
        id: "matrix".into(),
        default_roles: vec!["alan-user".into()],
        ..Default::default()
    };
    for mask in 0..8 {
        let id = format!("m{mask}");
        t.subjects.push(SubjectDoc {
            id: id.clone(),
            disabled: false,
        });
        for (i, r) in ASSIGNABLE.iter().enumerate() {
            if mask & (1 << i) != 0 {
                t.assignments.push(AssignmentDoc {
                    subject: Some(id.clone()),
                    role: (*r).into(),
                    ..Default::default()
                });
            }
        }
    }
    doc.tenants.push(t);
    doc
}

/// Expected (allowed, reason) for a row and a subject holding `held` (None: unknown or
/// anonymous).
pub fn expected(row: &Row, held: Option<&BTreeSet<String>>) -> (bool, &'static str) {
    if row.roles.is_empty() {
        return (true, "public");
    }
    match held {
        None => (false, "unknown_subject"),
        Some(h) if h.intersection(&row.roles).next().is_some() => (true, "granted"),
        Some(_) => (false, "no_grant"),
    }
}

pub fn subjects() -> Vec<(String, Option<BTreeSet<String>>)> {
    let mut s: Vec<_> = (0..8).map(|m| (format!("m{m}"), Some(held(m)))).collect();
    s.push(("stranger".into(), None));
    s.push((String::new(), None));
    s
}
