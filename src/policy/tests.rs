//! Unit tests of the compiler and the evaluator, rule by rule of `SPEC.md`.
//!
//! Every decision is asserted exactly, through [`summary`]: the reason, then for a grant
//! the granting role, the include chain from the assigned role, the source (with the
//! group) and the assignment's scope, then the matched pattern and the required roles.
//! Compile errors are asserted as the exact lines of the error's text.

use super::{
    Action, Explanation, Policy, PolicyDocument, Query, Reason, TenantSnapshot, compile,
    decision::GrantView, list::Listing, source::Format,
};
use crate::model::{self, Method};

// ---------------------------------------------------------------------------------------
// Fixture builders
// ---------------------------------------------------------------------------------------

/// Parses and compiles a YAML document at revision 1; panics with the errors if it does
/// not compile.
fn policy(yaml: &str) -> Policy {
    let doc = PolicyDocument::parse(yaml, Format::Yaml, "test.yaml").unwrap();
    match compile(&doc, "test.yaml", 1) {
        Ok(p) => p,
        Err(e) => panic!("fixture does not compile:\n{e}"),
    }
}

/// The lines of the compile error of a YAML document that must not compile.
fn errors(yaml: &str) -> Vec<String> {
    let doc = PolicyDocument::parse(yaml, Format::Yaml, "test.yaml").unwrap();
    match compile(&doc, "test.yaml", 1) {
        Ok(_) => panic!("document compiled, but must not:\n{yaml}"),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

fn tenant<'p>(p: &'p Policy, id: &str) -> &'p TenantSnapshot {
    p.tenants
        .iter()
        .find(|t| &*t.id == id)
        .unwrap_or_else(|| panic!("no tenant `{id}`"))
}

/// A query validated like the service validates one. `action` is `"METHOD /path"` for a
/// route, else a permission name.
fn query<'a>(subject: &'a str, scope: &'a str, action: &'a str) -> Query<'a> {
    let action = match action.split_once(' ') {
        Some((method, path)) => Action::Route {
            method: Method::parse(method).unwrap(),
            path: model::request_path(path).unwrap(),
        },
        None => Action::Permission(model::name(action).unwrap()),
    };
    Query {
        subject,
        scope: model::scope(scope).unwrap(),
        action,
    }
}

/// Checks and explains, as the service does.
fn check(p: &Policy, tenant_id: &str, subject: &str, scope: &str, action: &str) -> Explanation {
    let t = tenant(p, tenant_id);
    let q = query(subject, scope, action);
    let ex = t.explain(&q, &t.check(&q));
    assert_eq!(ex.allowed, ex.reason.allowed(), "{ex:?}");
    assert_eq!(ex.revision, 1);
    ex
}

/// A grant in one line: `role=R chain=A>B source=S scope="X"`.
fn grant_text(g: &GrantView) -> String {
    assert_eq!(
        g.include_chain.last(),
        Some(&g.role),
        "the chain ends at the granting role"
    );
    let source = match g.source {
        "group" => format!("group:{}", g.group_id),
        other => {
            assert!(g.group_id.is_empty(), "{g:?}");
            other.to_owned()
        }
    };
    format!(
        "role={} chain={} source={source} scope={:?}",
        g.role,
        g.include_chain.join(">"),
        g.scope
    )
}

/// A decision in one line: reason, grant, matched pattern, required roles.
fn summary(ex: &Explanation) -> String {
    let mut s = ex.reason.as_str().to_owned();
    if let Some(g) = &ex.grant {
        s.push(' ');
        s.push_str(&grant_text(g));
    }
    if !ex.matched_pattern.is_empty() {
        s.push_str(&format!(" pattern={}", ex.matched_pattern));
    }
    if !ex.required_roles.is_empty() {
        s.push_str(&format!(" required={}", ex.required_roles.join(",")));
    }
    s
}

/// Runs a table of `(subject, scope, action, expected summary)` in one tenant.
fn table(p: &Policy, tenant_id: &str, cases: &[(&str, &str, &str, &str)]) {
    for &(subject, scope, action, expected) in cases {
        let ex = check(p, tenant_id, subject, scope, action);
        assert_eq!(
            summary(&ex),
            expected,
            "tenant `{tenant_id}`, subject `{subject}`, scope `{scope}`, `{action}`: {}",
            ex.explanation
        );
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// Named permissions, includes, scopes, groups, default roles, disabled subjects.
const CONSOLE: &str = r#"
version: 1
roles:
  - id: user
    permissions: [chat.use]
  - id: developer
    includes: [user]
    permissions: [api_keys.manage]
  - id: billing
    permissions: [usage.view]
  - id: admin
    includes: [developer, billing]
    permissions: [members.manage]
tenants:
  - id: acme
    roles:
      - id: auditor
        includes: [billing]
        permissions: [audit.read]
    default_roles: [user]
    subjects:
      - id: alice
      - id: bob
      - id: carol
      - id: dave
      - id: erin
        disabled: true
      - id: frank
    groups:
      - id: eng
        members: [carol, erin]
    assignments:
      - {subject: alice, role: admin}
      - {subject: bob, role: developer, scope: workspaces/ws-1}
      - {group: eng, role: developer, scope: workspaces/ws-2}
      - {subject: erin, role: admin}
      - {subject: frank, role: auditor, scope: workspaces/ws-1}
  - id: other
    subjects:
      - id: alice
"#;

// ---------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------

#[test]
fn scope_assignment_applies_at_its_scope_and_below_by_whole_segments() {
    let p = policy(CONSOLE);
    let dev = r#"granted role=developer chain=developer source=direct scope="workspaces/ws-1""#;
    table(
        &p,
        "acme",
        &[
            ("bob", "workspaces/ws-1", "api_keys.manage", dev),
            ("bob", "workspaces/ws-1/projects/p", "api_keys.manage", dev),
            ("bob", "workspaces/ws-1/a/b/c", "api_keys.manage", dev),
            // Segment prefix, not string prefix.
            ("bob", "workspaces/ws-10", "api_keys.manage", "no_grant"),
            (
                "bob",
                "workspaces/ws-1x/projects/p",
                "api_keys.manage",
                "no_grant",
            ),
            // A sibling and the levels above the assignment.
            ("bob", "workspaces/ws-2", "api_keys.manage", "no_grant"),
            ("bob", "workspaces", "api_keys.manage", "no_grant"),
            ("bob", "", "api_keys.manage", "no_grant"),
        ],
    );
}

#[test]
fn root_assignment_covers_every_scope() {
    let p = policy(CONSOLE);
    let admin = r#"granted role=admin chain=admin source=direct scope="""#;
    table(
        &p,
        "acme",
        &[
            ("alice", "", "members.manage", admin),
            ("alice", "workspaces", "members.manage", admin),
            ("alice", "workspaces/ws-1", "members.manage", admin),
            ("alice", "environments/test/x/y", "members.manage", admin),
        ],
    );
}

#[test]
fn nothing_crosses_tenants() {
    let p = policy(CONSOLE);
    // alice is an admin in acme; in `other` she is a member without roles.
    table(
        &p,
        "other",
        &[
            ("alice", "", "members.manage", "no_grant"),
            ("alice", "", "chat.use", "no_grant"),
            ("bob", "", "chat.use", "unknown_subject"),
        ],
    );
    // A custom role of one tenant does not exist in another.
    let lines = errors(
        r#"
version: 1
tenants:
  - id: a
    roles: [{id: auditor}]
  - id: b
    subjects: [{id: s}]
    assignments: [{subject: s, role: auditor}]
"#,
    );
    assert_eq!(
        lines,
        ["test.yaml: tenant `b`, assignment 1 (role `auditor`): role `auditor` is not defined"]
    );
}

// ---------------------------------------------------------------------------------------
// Subjects
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_and_anonymous_subjects_are_unknown_subject() {
    let p = policy(CONSOLE);
    table(
        &p,
        "acme",
        &[
            ("mallory", "", "chat.use", "unknown_subject"),
            ("mallory", "workspaces/ws-1", "chat.use", "unknown_subject"),
            ("", "", "chat.use", "unknown_subject"),
            ("", "", "GET /anything", "unknown_subject"),
            ("mallory", "", "GET /anything", "unknown_subject"),
            // Subject ids are exact.
            ("Alice", "", "chat.use", "unknown_subject"),
        ],
    );
    let ex = check(&p, "acme", "", "", "chat.use");
    assert_eq!(
        ex.explanation,
        "denied, because the request names no subject and is not for a public endpoint"
    );
    let ex = check(&p, "acme", "mallory", "", "chat.use");
    assert_eq!(
        ex.explanation,
        "denied, because subject `mallory` is not a member of tenant `acme`"
    );
}

#[test]
fn disabled_subject_keeps_nothing() {
    let p = policy(CONSOLE);
    // erin: direct admin at the root, member of eng (developer in ws-2), default `user`.
    table(
        &p,
        "acme",
        &[
            ("erin", "", "members.manage", "subject_disabled"),
            ("erin", "", "chat.use", "subject_disabled"),
            (
                "erin",
                "workspaces/ws-2",
                "api_keys.manage",
                "subject_disabled",
            ),
            ("erin", "workspaces/ws-2", "chat.use", "subject_disabled"),
            ("erin", "", "no.such.permission", "subject_disabled"),
            ("erin", "", "GET /anything", "subject_disabled"),
        ],
    );
    let ex = check(&p, "acme", "erin", "", "chat.use");
    assert_eq!(ex.explanation, "denied, because subject `erin` is disabled");
}

#[test]
fn default_roles_apply_to_enabled_members_at_every_scope() {
    let p = policy(CONSOLE);
    let default = r#"granted role=user chain=user source=default scope="""#;
    table(
        &p,
        "acme",
        &[
            ("dave", "", "chat.use", default),
            ("dave", "workspaces/ws-1", "chat.use", default),
            ("dave", "workspaces/ws-1/projects/p/q", "chat.use", default),
            ("dave", "", "api_keys.manage", "no_grant"),
        ],
    );
    // A tenant without default roles gives a member nothing.
    table(&p, "other", &[("alice", "", "chat.use", "no_grant")]);
}

// ---------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------

#[test]
fn group_roles_apply_to_members_at_the_group_assignments_scope() {
    let p = policy(CONSOLE);
    let group =
        r#"granted role=developer chain=developer source=group:eng scope="workspaces/ws-2""#;
    table(
        &p,
        "acme",
        &[
            ("carol", "workspaces/ws-2", "api_keys.manage", group),
            (
                "carol",
                "workspaces/ws-2/projects/p",
                "api_keys.manage",
                group,
            ),
            ("carol", "workspaces/ws-1", "api_keys.manage", "no_grant"),
            ("carol", "", "api_keys.manage", "no_grant"),
            // Not a member of eng.
            ("dave", "workspaces/ws-2", "api_keys.manage", "no_grant"),
        ],
    );
    let ex = check(&p, "acme", "carol", "workspaces/ws-2", "api_keys.manage");
    assert_eq!(
        ex.explanation,
        "allowed, because role `developer`, assigned to group `eng` in `workspaces/ws-2`, \
         holds permission `api_keys.manage`"
    );
}

// ---------------------------------------------------------------------------------------
// Includes
// ---------------------------------------------------------------------------------------

#[test]
fn includes_are_transitive_and_the_chain_runs_from_assigned_to_granting_role() {
    let p = policy(CONSOLE);
    table(
        &p,
        "acme",
        &[
            (
                "alice",
                "",
                "members.manage",
                r#"granted role=admin chain=admin source=direct scope="""#,
            ),
            (
                "alice",
                "",
                "api_keys.manage",
                r#"granted role=developer chain=admin>developer source=direct scope="""#,
            ),
            (
                "alice",
                "",
                "usage.view",
                r#"granted role=billing chain=admin>billing source=direct scope="""#,
            ),
            // Two hops: admin includes developer, which includes user.
            (
                "alice",
                "",
                "chat.use",
                r#"granted role=user chain=admin>developer>user source=direct scope="""#,
            ),
            // A custom role including a built-in role.
            (
                "frank",
                "workspaces/ws-1",
                "usage.view",
                r#"granted role=billing chain=auditor>billing source=direct scope="workspaces/ws-1""#,
            ),
            (
                "frank",
                "workspaces/ws-1",
                "audit.read",
                r#"granted role=auditor chain=auditor source=direct scope="workspaces/ws-1""#,
            ),
            // Includes go one way: developer does not hold admin's or billing's permissions.
            ("bob", "workspaces/ws-1", "members.manage", "no_grant"),
            ("bob", "workspaces/ws-1", "usage.view", "no_grant"),
        ],
    );
    let ex = check(&p, "acme", "alice", "", "chat.use");
    assert_eq!(
        ex.explanation,
        "allowed, because role `user` (through `admin -> developer -> user`), assigned \
         directly at the tenant root, holds permission `chat.use`"
    );
}

#[test]
fn custom_role_chain_runs_through_built_in_includes() {
    let p = policy(
        r#"
version: 1
roles:
  - id: base
    permissions: [p.base]
  - id: mid
    includes: [base]
tenants:
  - id: t
    roles:
      - id: top
        includes: [mid]
      - id: outer
        includes: [top]
    subjects: [{id: s}]
    assignments: [{subject: s, role: outer}]
"#,
    );
    table(
        &p,
        "t",
        &[(
            "s",
            "",
            "p.base",
            r#"granted role=base chain=outer>top>mid>base source=direct scope="""#,
        )],
    );
}

/// Route fixture for includes: `b` includes `a`, each judged on its own rules.
const SEPARATE_RULES: &str = r#"
version: 1
roles:
  - id: reader
    routes:
      - {methods: [GET], path: /x/**}
  - id: writer
    includes: [reader]
    routes:
      - {methods: [PUT], path: /x/y}
  - id: both
    routes:
      - {methods: [GET], path: /x/**}
      - {methods: [PUT], path: /x/y}
  - id: narrow
    routes:
      - {methods: [GET], path: /x/z}
tenants:
  - id: t
    subjects: [{id: w}, {id: o}, {id: r}, {id: rn}]
    assignments:
      - {subject: w, role: writer}
      - {subject: o, role: both}
      - {subject: r, role: reader}
      - {subject: rn, role: reader}
      - {subject: rn, role: narrow}
"#;

#[test]
fn includes_do_not_merge_rule_sets() {
    let p = policy(SEPARATE_RULES);
    table(
        &p,
        "t",
        &[
            // writer's own most specific rule for /x/y is `PUT /x/y`, but the included
            // reader is judged on its own rules, where `GET /x/**` decides.
            (
                "w",
                "",
                "GET /x/y",
                r#"granted role=reader chain=writer>reader source=direct scope="" pattern=/x/**"#,
            ),
            (
                "w",
                "",
                "PUT /x/y",
                r#"granted role=writer chain=writer source=direct scope="" pattern=/x/y"#,
            ),
            (
                "w",
                "",
                "GET /x/q",
                r#"granted role=reader chain=writer>reader source=direct scope="" pattern=/x/**"#,
            ),
            // The same rules in one role: the most specific rule decides for that role.
            ("o", "", "GET /x/y", "method_not_allowed pattern=/x/y"),
            (
                "o",
                "",
                "PUT /x/y",
                r#"granted role=both chain=both source=direct scope="" pattern=/x/y"#,
            ),
            (
                "o",
                "",
                "GET /x/q",
                r#"granted role=both chain=both source=direct scope="" pattern=/x/**"#,
            ),
        ],
    );
}

#[test]
fn adding_a_role_never_removes_access() {
    let p = policy(SEPARATE_RULES);
    // r holds reader; rn holds reader and narrow, whose own rule `GET /x/z` is more
    // specific than reader's `/x/**`: across roles, grants are unioned.
    let by_reader = r#"granted role=reader chain=reader source=direct scope="" pattern=/x/**"#;
    table(
        &p,
        "t",
        &[
            ("r", "", "GET /x/z", by_reader),
            ("r", "", "GET /x/other", by_reader),
            ("rn", "", "GET /x/other", by_reader),
            ("rn", "", "GET /x/z", by_reader),
            ("r", "", "PUT /x/z", "method_not_allowed pattern=/x/**"),
        ],
    );
    // Every route reader grants, writer (which includes reader) grants too.
    for path in ["/x", "/x/y", "/x/z", "/x/a/b"] {
        let action = format!("GET {path}");
        assert!(check(&p, "t", "r", "", &action).allowed, "{action}");
        assert!(check(&p, "t", "w", "", &action).allowed, "{action}");
        assert!(check(&p, "t", "rn", "", &action).allowed, "{action}");
    }
}

// ---------------------------------------------------------------------------------------
// Route rules
// ---------------------------------------------------------------------------------------

/// One role whose rules each allow a different method, so the deciding rule shows.
const SPECIFICITY: &str = r#"
version: 1
roles:
  - id: r
    routes:
      - {methods: [GET], path: /a/b}
      - {methods: [PUT], path: /a/*}
      - {methods: [POST], path: /a/**}
      - {methods: [PATCH], path: /*/b}
      - {methods: [DELETE], path: /**}
      - {methods: [OPTIONS], path: /*}
      - {methods: [PUT], path: /c/*}
      - {methods: [PATCH], path: /*/d}
      - {methods: [GET], path: /y}
      - {methods: [PUT], path: /y/**}
      - {methods: [GET], path: "/items/{id}"}
      - {methods: [PUT], path: /items/*}
      - {methods: [DELETE], path: "/items/{item_id}/"}
tenants:
  - id: t
    subjects: [{id: s}]
    assignments: [{subject: s, role: r}]
"#;

#[test]
fn most_specific_rule_wins_per_role() {
    let p = policy(SPECIFICITY);
    let g = |pattern: &str| {
        format!(r#"granted role=r chain=r source=direct scope="" pattern={pattern}"#)
    };
    let cases: Vec<(&str, String)> = vec![
        // literal > `*`
        ("GET /a/b", g("/a/b")),
        ("PUT /a/b", "method_not_allowed pattern=/a/b".into()),
        ("PUT /a/c", g("/a/*")),
        // `*` > `**`
        ("POST /a/c", "method_not_allowed pattern=/a/*".into()),
        ("POST /a/c/d", g("/a/**")),
        // `**` matches zero segments; `/a/**` beats `/**` at the first segment.
        ("POST /a", g("/a/**")),
        ("DELETE /a", "method_not_allowed pattern=/a/**".into()),
        // The first segment decides before the end: `/a/**` (literal) beats `/*`.
        ("OPTIONS /a", "method_not_allowed pattern=/a/**".into()),
        ("OPTIONS /y", "method_not_allowed pattern=/y".into()),
        ("OPTIONS /q", g("/*")),
        ("OPTIONS /q/r", "method_not_allowed pattern=/**".into()),
        // The leftmost difference decides: `/a/b` beats `/*/b`, `/c/*` beats `/*/d`.
        ("PATCH /a/b", "method_not_allowed pattern=/a/b".into()),
        ("PATCH /z/b", g("/*/b")),
        ("PATCH /c/d", "method_not_allowed pattern=/c/*".into()),
        ("PUT /c/d", g("/c/*")),
        ("PATCH /e/d", g("/*/d")),
        // `/**` catches the rest, including the root.
        ("DELETE /zzz/1/2", g("/**")),
        ("DELETE /", g("/**")),
        ("GET /", "method_not_allowed pattern=/**".into()),
        // end of pattern > `**`: `/y` beats `/y/**` for the path `/y`.
        ("GET /y", g("/y")),
        ("PUT /y", "method_not_allowed pattern=/y".into()),
        ("PUT /y/z", g("/y/**")),
        ("GET /y/z", "method_not_allowed pattern=/y/**".into()),
        // Equally specific rules are unioned; the reported rule is one that allows.
        ("GET /items/7", g("/items/{id}")),
        ("PUT /items/7", g("/items/*")),
        ("DELETE /items/7", g("/items/{item_id}/")),
        // None of them allows POST: the first of the equally specific rules is named.
        (
            "POST /items/7",
            "method_not_allowed pattern=/items/{id}".into(),
        ),
    ];
    for (action, expected) in &cases {
        let ex = check(&p, "t", "s", "", action);
        assert_eq!(&summary(&ex), expected, "{action}: {}", ex.explanation);
    }
}

#[test]
fn gateway_seed_user_may_deploy_to_test_only() {
    let p = policy(
        r#"
version: 1
roles:
  - id: user
    routes:
      - methods: [GET]
        path: /environments/*/applications/*/revisions/*/deployments
      - methods: [GET, PUT, DELETE]
        path: /environments/test/applications/*/revisions/*/deployments
tenants:
  - id: org
    subjects: [{id: u}]
    assignments: [{subject: u, role: user}]
"#,
    );
    let any = "/environments/*/applications/*/revisions/*/deployments";
    let test = "/environments/test/applications/*/revisions/*/deployments";
    let g = |pattern: &str| {
        format!(r#"granted role=user chain=user source=direct scope="" pattern={pattern}"#)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "PUT /environments/test/applications/a/revisions/3/deployments",
            g(test),
        ),
        (
            "DELETE /environments/test/applications/a/revisions/3/deployments",
            g(test),
        ),
        (
            "GET /environments/test/applications/a/revisions/3/deployments",
            g(test),
        ),
        (
            "GET /environments/prod/applications/a/revisions/3/deployments",
            g(any),
        ),
        (
            "PUT /environments/prod/applications/a/revisions/3/deployments",
            format!("method_not_allowed pattern={any}"),
        ),
        (
            "DELETE /environments/prod/applications/a/revisions/3/deployments",
            format!("method_not_allowed pattern={any}"),
        ),
        (
            "POST /environments/test/applications/a/revisions/3/deployments",
            format!("method_not_allowed pattern={test}"),
        ),
        (
            "GET /environments/prod/applications/a/revisions/3",
            "no_matching_rule".into(),
        ),
    ];
    for (action, expected) in &cases {
        let ex = check(&p, "org", "u", "", action);
        assert_eq!(&summary(&ex), expected, "{action}: {}", ex.explanation);
    }
    let ex = check(
        &p,
        "org",
        "u",
        "",
        "PUT /environments/prod/applications/a/revisions/3/deployments",
    );
    assert_eq!(
        ex.explanation,
        format!(
            "denied, because the most specific match for the path, rule `GET {any}` of role \
             `user`, does not allow method `PUT`"
        )
    );
}

#[test]
fn method_not_allowed_even_when_a_less_specific_rule_of_the_role_allows() {
    let p = policy(
        r#"
version: 1
roles:
  - id: r
    routes:
      - {methods: [PUT], path: /a/**}
      - {methods: [GET], path: /a/b}
  - id: other
    routes:
      - {methods: [GET], path: /a/b}
  - id: helper
    routes:
      - {methods: [PUT], path: /a/b}
tenants:
  - id: t
    subjects: [{id: one}, {id: two}, {id: three}]
    assignments:
      - {subject: one, role: r}
      - {subject: two, role: r}
      - {subject: two, role: other}
      - {subject: three, role: r}
      - {subject: three, role: helper}
"#,
    );
    table(
        &p,
        "t",
        &[
            ("one", "", "PUT /a/b", "method_not_allowed pattern=/a/b"),
            (
                "one",
                "",
                "PUT /a/c",
                r#"granted role=r chain=r source=direct scope="" pattern=/a/**"#,
            ),
            // Every matching role's most specific rule lacks PUT.
            ("two", "", "PUT /a/b", "method_not_allowed pattern=/a/b"),
            // Another role whose own rule allows it: grants are unioned across roles.
            (
                "three",
                "",
                "PUT /a/b",
                r#"granted role=helper chain=helper source=direct scope="" pattern=/a/b"#,
            ),
        ],
    );
}

#[test]
fn route_rule_basics() {
    let p = policy(
        r#"
version: 1
roles:
  - id: r
    routes:
      - {methods: ["*"], path: /files/**}
      - {methods: [GET], path: /docs}
      - {methods: [GET], path: /chats/}
      - {methods: [GET], path: /a/*}
      - {methods: [GET], path: /p/q}
      - {methods: [PROPFIND], path: /dav}
tenants:
  - id: t
    subjects: [{id: s}, {id: nobody}]
    assignments: [{subject: s, role: r}]
"#,
    );
    let g = |pattern: &str| {
        format!(r#"granted role=r chain=r source=direct scope="" pattern={pattern}"#)
    };
    let cases: Vec<(&str, &str, String)> = vec![
        // `*` in a rule is every method, extension methods too.
        ("s", "GET /files/a", g("/files/**")),
        ("s", "PROPFIND /files/a/b/c", g("/files/**")),
        ("s", "HEAD /files/a", g("/files/**")),
        // `**` matches zero segments, and only whole segments.
        ("s", "DELETE /files", g("/files/**")),
        ("s", "GET /filesx", "no_matching_rule".into()),
        // HEAD is not implied by GET.
        ("s", "GET /docs", g("/docs")),
        ("s", "HEAD /docs", "method_not_allowed pattern=/docs".into()),
        // Extension methods by name.
        ("s", "PROPFIND /dav", g("/dav")),
        ("s", "MKCOL /dav", "method_not_allowed pattern=/dav".into()),
        // Case-sensitive segments.
        ("s", "GET /Docs", "no_matching_rule".into()),
        ("s", "GET /P/q", "no_matching_rule".into()),
        // A trailing slash is insignificant in patterns and requests; the query is ignored.
        ("s", "GET /chats", g("/chats/")),
        ("s", "GET /chats/", g("/chats/")),
        ("s", "GET /chats?limit=5", g("/chats/")),
        ("s", "GET /docs/?x=/y", g("/docs")),
        ("s", "GET /chats/1", "no_matching_rule".into()),
        // Raw segments: no percent-decoding, `*` is exactly one segment.
        ("s", "GET /a/x%2Fy", g("/a/*")),
        ("s", "GET /p%2Fq", "no_matching_rule".into()),
        ("s", "GET /a", "no_matching_rule".into()),
        ("s", "GET /a/x/y", "no_matching_rule".into()),
        // Nothing matches the path at all.
        ("s", "GET /nowhere", "no_matching_rule".into()),
        ("s", "GET /", "no_matching_rule".into()),
        // A member without roles: no rule of any held role matches.
        ("nobody", "GET /docs", "no_matching_rule".into()),
    ];
    for (subject, action, expected) in &cases {
        let ex = check(&p, "t", subject, "", action);
        assert_eq!(
            &summary(&ex),
            expected,
            "{subject} {action}: {}",
            ex.explanation
        );
    }
    let ex = check(&p, "t", "s", "", "GET /nowhere");
    assert_eq!(
        ex.explanation,
        "denied, because no rule or endpoint matches path `/nowhere`"
    );
}

#[test]
fn route_rules_respect_scopes() {
    let p = policy(
        r#"
version: 1
roles:
  - id: deployer
    routes: [{methods: [PUT], path: /deployments/*}]
tenants:
  - id: t
    subjects: [{id: s}]
    assignments: [{subject: s, role: deployer, scope: environments/test}]
"#,
    );
    table(
        &p,
        "t",
        &[
            (
                "s",
                "environments/test",
                "PUT /deployments/1",
                r#"granted role=deployer chain=deployer source=direct scope="environments/test" pattern=/deployments/*"#,
            ),
            (
                "s",
                "environments/prod",
                "PUT /deployments/1",
                "no_matching_rule",
            ),
            ("s", "", "PUT /deployments/1", "no_matching_rule"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Endpoint table
// ---------------------------------------------------------------------------------------

/// The chat API seed's model: a global endpoint table, default alan-user.
const CHAT: &str = r#"
version: 1
roles:
  - id: alan-user
  - id: alan-contributor
    includes: [alan-user]
  - id: alan-editor
    includes: [alan-contributor]
  - id: alan-admin
endpoints:
  - {path: /health/, methods: [GET], public: true}
  - {path: /status, methods: [GET], public: true}
  - {path: /chats/, methods: [GET, POST], roles: [alan-user]}
  - {path: "/chats/{chat_id}", methods: [GET, PUT, DELETE], roles: [alan-user]}
  - {path: /experts/, methods: [POST], roles: [alan-editor]}
  - {path: "/experts/{expert_id}", methods: [DELETE], roles: [alan-admin, alan-editor]}
  - {path: /groups/, methods: [GET], roles: [alan-admin]}
  - {path: /connectors/, methods: [GET], roles: [alan-user]}
  - {path: /connectors/knowledge-bases, methods: [GET], roles: [alan-user]}
  - {path: "/connectors/{connector_id}", methods: [GET, DELETE], roles: [alan-admin]}
  - {path: /a/b, methods: [GET], roles: [alan-admin]}
  - {path: "/a/{x}", methods: [GET, DELETE], roles: [alan-editor]}
  - {path: /reports, methods: [GET, POST], roles: [alan-admin]}
tenants:
  - id: acme
    default_roles: [alan-user]
    subjects:
      - id: ann
      - id: adm
      - id: ed
      - id: off
        disabled: true
    assignments:
      - {subject: adm, role: alan-admin}
      - {subject: ed, role: alan-editor}
      - {subject: off, role: alan-admin}
  - id: beta
    roles:
      - id: auditor
      - id: ops
        routes:
          - {methods: [GET], path: /groups/**}
          - {methods: [PUT], path: /chats/*}
          - {methods: [POST], path: /connectors/*}
    endpoints:
      - {path: /reports, methods: [GET], roles: [auditor]}
      - {path: /status, methods: [GET], roles: [auditor]}
    default_roles: [alan-user]
    subjects: [{id: adm}, {id: aud}, {id: op}]
    assignments:
      - {subject: adm, role: alan-admin}
      - {subject: aud, role: auditor}
      - {subject: op, role: ops}
"#;

#[test]
fn endpoint_table_resolves_like_a_router() {
    let p = policy(CHAT);
    let user_default = r#"granted role=alan-user chain=alan-user source=default scope="""#;
    table(
        &p,
        "acme",
        &[
            // A member with no assignment may GET /chats/ (default alan-user).
            (
                "ann",
                "",
                "GET /chats/",
                &format!("{user_default} pattern=/chats/"),
            ),
            (
                "ann",
                "",
                "GET /chats",
                &format!("{user_default} pattern=/chats/"),
            ),
            (
                "ann",
                "",
                "DELETE /chats/42",
                &format!("{user_default} pattern=/chats/{{chat_id}}"),
            ),
            // The literal entry is its own endpoint, never `/connectors/{connector_id}`.
            (
                "ann",
                "",
                "GET /connectors/knowledge-bases",
                &format!("{user_default} pattern=/connectors/knowledge-bases"),
            ),
            (
                "ann",
                "",
                "GET /connectors/c-1",
                "no_grant pattern=/connectors/{connector_id} required=alan-admin",
            ),
            // An admin holds the item endpoint's role, but the literal entry decides for
            // knowledge-bases; admins hold alan-user only through the default role.
            (
                "adm",
                "",
                "GET /connectors/c-1",
                r#"granted role=alan-admin chain=alan-admin source=direct scope="" pattern=/connectors/{connector_id}"#,
            ),
            (
                "adm",
                "",
                "GET /connectors/knowledge-bases",
                &format!("{user_default} pattern=/connectors/knowledge-bases"),
            ),
            // Through includes: editor > contributor > user.
            (
                "ed",
                "",
                "GET /chats/",
                r#"granted role=alan-user chain=alan-editor>alan-contributor>alan-user source=direct scope="" pattern=/chats/"#,
            ),
            // alan-admin does not include alan-editor.
            (
                "ed",
                "",
                "POST /experts/",
                r#"granted role=alan-editor chain=alan-editor source=direct scope="" pattern=/experts/"#,
            ),
            (
                "adm",
                "",
                "POST /experts/",
                "no_grant pattern=/experts/ required=alan-editor",
            ),
            (
                "adm",
                "",
                "GET /groups/",
                r#"granted role=alan-admin chain=alan-admin source=direct scope="" pattern=/groups/"#,
            ),
            (
                "ed",
                "",
                "GET /groups/",
                "no_grant pattern=/groups/ required=alan-admin",
            ),
            // Path matches, no entry has the method.
            (
                "ann",
                "",
                "PATCH /chats/",
                "method_not_allowed pattern=/chats/",
            ),
            (
                "ann",
                "",
                "HEAD /chats/1",
                "method_not_allowed pattern=/chats/{chat_id}",
            ),
            // Nothing matches.
            ("ann", "", "GET /nowhere", "no_matching_rule"),
            ("ann", "", "GET /chats/1/messages", "no_matching_rule"),
        ],
    );
}

#[test]
fn endpoint_resolution_falls_through_to_a_less_specific_entry_with_the_method() {
    let p = policy(CHAT);
    // `/a/b` has GET only (alan-admin); `/a/{x}` has GET and DELETE (alan-editor).
    table(
        &p,
        "acme",
        &[
            (
                "ed",
                "",
                "DELETE /a/b",
                r#"granted role=alan-editor chain=alan-editor source=direct scope="" pattern=/a/{x}"#,
            ),
            (
                "adm",
                "",
                "DELETE /a/b",
                "no_grant pattern=/a/{x} required=alan-editor",
            ),
            // For GET the literal entry decides, so the editor is denied there.
            (
                "ed",
                "",
                "GET /a/b",
                "no_grant pattern=/a/b required=alan-admin",
            ),
            (
                "ed",
                "",
                "GET /a/c",
                r#"granted role=alan-editor chain=alan-editor source=direct scope="" pattern=/a/{x}"#,
            ),
            // No entry on the path has PUT: the most specific one is named.
            ("ed", "", "PUT /a/b", "method_not_allowed pattern=/a/b"),
            ("ed", "", "PUT /a/c", "method_not_allowed pattern=/a/{x}"),
        ],
    );
}

#[test]
fn no_grant_names_the_required_roles_in_the_order_written() {
    let p = policy(CHAT);
    let ex = check(&p, "acme", "ann", "", "DELETE /experts/9");
    assert_eq!(
        summary(&ex),
        "no_grant pattern=/experts/{expert_id} required=alan-admin,alan-editor"
    );
    assert_eq!(
        ex.explanation,
        "denied, because endpoint `DELETE /experts/{expert_id}` requires one of roles \
         `alan-admin`, `alan-editor`, which subject `ann` does not hold at the tenant root"
    );
    let ex = check(&p, "acme", "ann", "workspaces/w", "GET /groups/");
    assert_eq!(
        ex.explanation,
        "denied, because endpoint `GET /groups/` requires role `alan-admin`, which \
         subject `ann` does not hold in `workspaces/w`"
    );
}

#[test]
fn public_entries_are_allowed_for_anyone_in_an_existing_tenant() {
    let p = policy(CHAT);
    for subject in ["", "ann", "adm", "nobody", "off"] {
        let ex = check(&p, "acme", subject, "", "GET /health/");
        assert_eq!(summary(&ex), "public pattern=/health/", "`{subject}`");
        assert_eq!(
            ex.explanation,
            "allowed, because endpoint `GET /health/` is public"
        );
        let ex = check(&p, "acme", subject, "any/scope", "GET /health?probe=1");
        assert_eq!(summary(&ex), "public pattern=/health/", "`{subject}`");
    }
    // Public is a property of the entry for its methods only; for other methods the
    // subject checks come first, then the path's entry is named.
    table(
        &p,
        "acme",
        &[
            ("", "", "HEAD /health/", "unknown_subject"),
            ("nobody", "", "HEAD /health/", "unknown_subject"),
            ("off", "", "HEAD /health/", "subject_disabled"),
            (
                "ann",
                "",
                "HEAD /health/",
                "method_not_allowed pattern=/health/",
            ),
            ("ann", "", "GET /health/x", "no_matching_rule"),
        ],
    );
}

#[test]
fn unknown_tenant_is_denied_even_for_a_public_endpoint() {
    // The snapshot is per tenant, so an unknown tenant is decided by whoever looks the
    // tenant up: the service, through the cache.
    use crate::{
        cache::Cache,
        grpc::{AuthzService, ServiceConfig},
        pb,
    };
    let cache = Cache::new();
    cache.replace_all(policy(CHAT), 1);
    let service = AuthzService::new(cache, ServiceConfig::default());
    let q = query("", "", "GET /health/");
    let known = service.decide("acme", &q).unwrap();
    assert!(known.allowed);
    assert_eq!(known.reason, pb::Reason::Public as i32);
    let unknown = service.decide("nope", &q).unwrap();
    assert!(!unknown.allowed);
    assert_eq!(unknown.reason, pb::Reason::UnknownTenant as i32);
    assert_eq!(unknown.revision, 1);
    assert!(unknown.grant.is_none());
    assert_eq!(
        unknown.explanation,
        "denied, because tenant `nope` does not exist"
    );
    let unknown = service
        .decide("nope", &query("ann", "", "chat.use"))
        .unwrap();
    assert_eq!(unknown.reason, pb::Reason::UnknownTenant as i32);
}

#[test]
fn tenant_entry_shadows_a_global_entry_of_the_same_pattern_and_method() {
    let p = policy(CHAT);
    table(
        &p,
        "beta",
        &[
            // beta's own `GET /reports` (auditor) replaces the global one (alan-admin).
            (
                "adm",
                "",
                "GET /reports",
                "no_grant pattern=/reports required=auditor",
            ),
            (
                "aud",
                "",
                "GET /reports",
                r#"granted role=auditor chain=auditor source=direct scope="" pattern=/reports"#,
            ),
            // POST is not in beta's entry, so the global entry still applies to it.
            (
                "adm",
                "",
                "POST /reports",
                r#"granted role=alan-admin chain=alan-admin source=direct scope="" pattern=/reports"#,
            ),
            (
                "aud",
                "",
                "POST /reports",
                "no_grant pattern=/reports required=alan-admin",
            ),
            // A public global entry replaced by a tenant entry with roles.
            ("", "", "GET /status", "unknown_subject"),
            (
                "adm",
                "",
                "GET /status",
                "no_grant pattern=/status required=auditor",
            ),
            (
                "aud",
                "",
                "GET /status",
                r#"granted role=auditor chain=auditor source=direct scope="" pattern=/status"#,
            ),
        ],
    );
    // Other tenants still see the global entries.
    table(
        &p,
        "acme",
        &[
            (
                "adm",
                "",
                "GET /reports",
                r#"granted role=alan-admin chain=alan-admin source=direct scope="" pattern=/reports"#,
            ),
            ("", "", "GET /status", "public pattern=/status"),
        ],
    );
}

#[test]
fn a_route_is_allowed_by_either_the_endpoint_table_or_role_rules() {
    let p = policy(CHAT);
    table(
        &p,
        "beta",
        &[
            // The entry requires alan-admin, which op lacks; op's own rule allows it.
            (
                "op",
                "",
                "GET /groups/",
                r#"granted role=ops chain=ops source=direct scope="" pattern=/groups/**"#,
            ),
            (
                "op",
                "",
                "GET /groups/7/members",
                r#"granted role=ops chain=ops source=direct scope="" pattern=/groups/**"#,
            ),
            // The endpoint table allows via the default role; op's rule does not matter.
            (
                "op",
                "",
                "GET /chats/1",
                r#"granted role=alan-user chain=alan-user source=default scope="" pattern=/chats/{chat_id}"#,
            ),
            // PUT is in the entry too (alan-user): the entry grants first.
            (
                "op",
                "",
                "PUT /chats/1",
                r#"granted role=alan-user chain=alan-user source=default scope="" pattern=/chats/{chat_id}"#,
            ),
            // Neither grants: the entry's denial names its roles, even though a rule of op
            // matched the path (for another method).
            (
                "op",
                "",
                "DELETE /connectors/c-1",
                "no_grant pattern=/connectors/{connector_id} required=alan-admin",
            ),
            (
                "op",
                "",
                "POST /connectors/c-1",
                r#"granted role=ops chain=ops source=direct scope="" pattern=/connectors/*"#,
            ),
            // No entry has the method, a rule matched the path for another method: the
            // endpoint entry is named.
            (
                "op",
                "",
                "POST /groups/",
                "method_not_allowed pattern=/groups/",
            ),
            (
                "op",
                "",
                "POST /groups/7",
                "method_not_allowed pattern=/groups/**",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Named permissions
// ---------------------------------------------------------------------------------------

#[test]
fn named_permissions() {
    let p = policy(CONSOLE);
    table(
        &p,
        "acme",
        &[
            // Held by the role itself and through includes (covered above); not held.
            ("dave", "", "members.manage", "no_grant"),
            // A permission no role has.
            ("alice", "", "no.such.permission", "no_grant"),
            ("dave", "", "no.such.permission", "no_grant"),
            // Permission names are exact (case-sensitive).
            ("alice", "", "Chat.use", "no_grant"),
        ],
    );
    let ex = check(&p, "acme", "dave", "workspaces/ws-1", "members.manage");
    assert_eq!(
        ex.explanation,
        "denied, because no role that subject `dave` holds in `workspaces/ws-1` has permission \
         `members.manage`"
    );
    // Named permissions and routes are separate: a route check never consults them.
    table(
        &p,
        "acme",
        &[("alice", "", "GET /chat.use", "no_matching_rule")],
    );
}

// ---------------------------------------------------------------------------------------
// Evaluation order
// ---------------------------------------------------------------------------------------

#[test]
fn evaluation_order() {
    let p = policy(CHAT);
    // Public before the subject checks: a disabled or unknown subject still gets it.
    table(
        &p,
        "acme",
        &[
            ("off", "", "GET /health/", "public pattern=/health/"),
            ("nobody", "", "GET /health/", "public pattern=/health/"),
            // Disabled before grants: off holds alan-admin and the default alan-user.
            ("off", "", "GET /groups/", "subject_disabled"),
            ("off", "", "GET /chats/", "subject_disabled"),
            ("off", "", "GET /nowhere", "subject_disabled"),
            // Unknown subject before no_grant / method / matching.
            ("nobody", "", "GET /groups/", "unknown_subject"),
            ("nobody", "", "PATCH /chats/", "unknown_subject"),
            ("nobody", "", "GET /nowhere", "unknown_subject"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Explanation order
// ---------------------------------------------------------------------------------------

const ORDER: &str = r#"
version: 1
roles:
  - id: viewer
    permissions: [p]
    routes: [{methods: [GET], path: /r}]
  - id: editor
    includes: [viewer]
tenants:
  - id: t
    default_roles: [viewer]
    subjects: [{id: d}, {id: g}, {id: n}, {id: s}]
    groups:
      - {id: g1, members: [d, g]}
      - {id: g2, members: [s]}
    assignments:
      - {group: g1, role: editor}
      - {subject: d, role: viewer}
      - {subject: d, role: editor, scope: ws}
      - {group: g2, role: viewer}
      - {group: g2, role: editor, scope: ws}
"#;

#[test]
fn explanation_names_direct_before_group_before_default() {
    let p = policy(ORDER);
    table(
        &p,
        "t",
        &[
            // d: direct at the root, group g1 at the root, default.
            (
                "d",
                "",
                "p",
                r#"granted role=viewer chain=viewer source=direct scope="""#,
            ),
            // g: group g1 at the root, default.
            (
                "g",
                "",
                "p",
                r#"granted role=viewer chain=editor>viewer source=group:g1 scope="""#,
            ),
            // n: default only.
            (
                "n",
                "",
                "p",
                r#"granted role=viewer chain=viewer source=default scope="""#,
            ),
            (
                "n",
                "",
                "GET /r",
                r#"granted role=viewer chain=viewer source=default scope="" pattern=/r"#,
            ),
            (
                "g",
                "",
                "GET /r",
                r#"granted role=viewer chain=editor>viewer source=group:g1 scope="" pattern=/r"#,
            ),
        ],
    );
}

#[test]
fn explanation_names_the_nearest_scope_first() {
    let p = policy(ORDER);
    table(
        &p,
        "t",
        &[
            // d's root assignment is written first, the one in `ws` wins in `ws`.
            (
                "d",
                "ws",
                "p",
                r#"granted role=viewer chain=editor>viewer source=direct scope="ws""#,
            ),
            (
                "d",
                "ws/deeper",
                "GET /r",
                r#"granted role=viewer chain=editor>viewer source=direct scope="ws" pattern=/r"#,
            ),
            (
                "d",
                "other",
                "p",
                r#"granted role=viewer chain=viewer source=direct scope="""#,
            ),
            // Within a group's assignments too.
            (
                "s",
                "ws",
                "p",
                r#"granted role=viewer chain=editor>viewer source=group:g2 scope="ws""#,
            ),
            (
                "s",
                "",
                "p",
                r#"granted role=viewer chain=viewer source=group:g2 scope="""#,
            ),
        ],
    );
    let ex = check(&p, "t", "s", "ws", "p");
    assert_eq!(
        ex.explanation,
        "allowed, because role `viewer` (through `editor -> viewer`), assigned to group `g2` \
         in `ws`, holds permission `p`"
    );
    let ex = check(&p, "t", "n", "", "GET /r");
    assert_eq!(
        ex.explanation,
        "allowed, because role `viewer`, a default role of the tenant, matched rule `GET /r` \
         of role `viewer`"
    );
}

// ---------------------------------------------------------------------------------------
// ListPermissions
// ---------------------------------------------------------------------------------------

const LISTING: &str = r#"
version: 1
roles:
  - id: user
    permissions: [chat.use]
    routes: [{methods: [GET], path: /chats/**}]
  - id: developer
    includes: [user]
    permissions: [usage.view, api_keys.manage]
    routes: [{methods: [POST, GET], path: /keys}]
  - id: admin
    includes: [developer]
    permissions: [members.manage]
endpoints:
  - {path: /health, methods: [GET], public: true}
  - {path: "/keys/{id}", methods: [DELETE], roles: [developer]}
  - {path: /members, methods: [GET], roles: [admin]}
tenants:
  - id: acme
    default_roles: [user]
    subjects: [{id: lee}, {id: off, disabled: true}]
    groups: [{id: eng, members: [lee, off]}]
    assignments:
      - {group: eng, role: developer, scope: workspaces/ws-1}
      - {subject: lee, role: admin, scope: workspaces/ws-1/projects/p}
      - {subject: lee, role: developer, scope: workspaces/ws-2}
      - {subject: off, role: admin}
"#;

fn roles_of(l: &Listing) -> Vec<String> {
    l.roles
        .iter()
        .map(|r| {
            assert_eq!(r.role, r.grant.role);
            if r.included_through.is_empty() {
                grant_text(&r.grant)
            } else {
                format!("{} via={}", grant_text(&r.grant), r.included_through)
            }
        })
        .collect()
}

type RouteRow = (String, Vec<String>, String);
type EndpointRow = (String, Vec<String>, bool);

fn route(role: &str, methods: &[&str], path: &str) -> RouteRow {
    (
        role.into(),
        methods.iter().map(|m| m.to_string()).collect(),
        path.into(),
    )
}

fn endpoint(path: &str, methods: &[&str], public: bool) -> EndpointRow {
    (
        path.into(),
        methods.iter().map(|m| m.to_string()).collect(),
        public,
    )
}

#[test]
fn list_at_the_root() {
    let p = policy(LISTING);
    let l = tenant(&p, "acme").list("lee", "");
    assert_eq!(l.reason, Some(Reason::Granted));
    assert_eq!(l.revision, 1);
    assert_eq!(
        roles_of(&l),
        [r#"role=user chain=user source=default scope="""#]
    );
    assert_eq!(l.permissions, ["chat.use"]);
    assert_eq!(l.routes, [route("user", &["GET"], "/chats/**")]);
    assert_eq!(l.endpoints, [endpoint("/health", &["GET"], true)]);
    assert_eq!(
        l.scopes_below,
        [
            ("workspaces/ws-1".to_owned(), vec!["developer".to_owned()]),
            (
                "workspaces/ws-1/projects/p".to_owned(),
                vec!["admin".to_owned()]
            ),
            ("workspaces/ws-2".to_owned(), vec!["developer".to_owned()]),
        ]
    );
}

#[test]
fn list_at_a_scope() {
    let p = policy(LISTING);
    let t = tenant(&p, "acme");
    let l = t.list("lee", "workspaces/ws-1");
    assert_eq!(l.reason, Some(Reason::Granted));
    // Sorted by role id; each held the first way Check would name it.
    assert_eq!(
        roles_of(&l),
        [
            r#"role=developer chain=developer source=group:eng scope="workspaces/ws-1""#,
            r#"role=user chain=developer>user source=group:eng scope="workspaces/ws-1" via=developer"#,
        ]
    );
    assert_eq!(l.permissions, ["api_keys.manage", "chat.use", "usage.view"]);
    assert_eq!(
        l.routes,
        [
            route("developer", &["GET", "POST"], "/keys"),
            route("user", &["GET"], "/chats/**"),
        ]
    );
    assert_eq!(
        l.endpoints,
        [
            endpoint("/health", &["GET"], true),
            endpoint("/keys/{id}", &["DELETE"], false),
        ]
    );
    assert_eq!(
        l.scopes_below,
        [(
            "workspaces/ws-1/projects/p".to_owned(),
            vec!["admin".to_owned()]
        )]
    );

    let l = t.list("lee", "workspaces/ws-1/projects/p");
    assert_eq!(
        roles_of(&l),
        [
            r#"role=admin chain=admin source=direct scope="workspaces/ws-1/projects/p""#,
            r#"role=developer chain=admin>developer source=direct scope="workspaces/ws-1/projects/p" via=admin"#,
            r#"role=user chain=admin>user source=direct scope="workspaces/ws-1/projects/p" via=developer"#,
        ]
    );
    assert_eq!(
        l.permissions,
        [
            "api_keys.manage",
            "chat.use",
            "members.manage",
            "usage.view"
        ]
    );
    assert_eq!(
        l.endpoints,
        [
            endpoint("/health", &["GET"], true),
            endpoint("/keys/{id}", &["DELETE"], false),
            endpoint("/members", &["GET"], false),
        ]
    );
    assert!(l.scopes_below.is_empty());

    // A listing agrees with Check, permission by permission and role by role.
    for scope in [
        "",
        "workspaces/ws-1",
        "workspaces/ws-1/projects/p",
        "workspaces/ws-2",
        "workspaces/ws-10",
    ] {
        let l = t.list("lee", scope);
        for perm in [
            "chat.use",
            "usage.view",
            "api_keys.manage",
            "members.manage",
        ] {
            let ex = check(&p, "acme", "lee", scope, perm);
            assert_eq!(
                l.permissions.iter().any(|x| x == perm),
                ex.allowed,
                "{scope} {perm}"
            );
            if let Some(g) = &ex.grant {
                let listed = l.roles.iter().find(|r| r.role == g.role).unwrap();
                // Same assignment; the chain comes back by following `included_through`.
                let mut chain = vec![listed.role.clone()];
                let mut cur = listed;
                while !cur.included_through.is_empty() {
                    chain.insert(0, cur.included_through.clone());
                    cur = l
                        .roles
                        .iter()
                        .find(|r| r.role == cur.included_through)
                        .unwrap();
                    assert_eq!(cur.grant.scope, listed.grant.scope);
                    assert_eq!(cur.grant.source, listed.grant.source);
                }
                assert_eq!(chain, g.include_chain, "{scope} {perm}");
                let ends: Vec<String> = if chain.len() > 1 {
                    vec![chain[0].clone(), listed.role.clone()]
                } else {
                    chain.clone()
                };
                assert_eq!(listed.grant.include_chain, ends, "{scope} {perm}");
                assert_eq!(
                    (
                        &listed.grant.role,
                        &listed.grant.scope,
                        listed.grant.source,
                        &listed.grant.group_id
                    ),
                    (&g.role, &g.scope, g.source, &g.group_id),
                    "{scope} {perm}"
                );
            }
        }
    }
}

#[test]
fn list_for_unknown_anonymous_and_disabled_subjects_has_only_public_endpoints() {
    let p = policy(LISTING);
    let t = tenant(&p, "acme");
    for (subject, reason) in [
        ("nobody", Reason::UnknownSubject),
        ("", Reason::UnknownSubject),
        ("off", Reason::SubjectDisabled),
    ] {
        for scope in ["", "workspaces/ws-1"] {
            let l = t.list(subject, scope);
            assert_eq!(
                l,
                Listing {
                    reason: Some(reason),
                    roles: vec![],
                    permissions: vec![],
                    routes: vec![],
                    endpoints: vec![endpoint("/health", &["GET"], true)],
                    scopes_below: vec![],
                    revision: 1,
                },
                "`{subject}` at `{scope}`"
            );
        }
    }
}

#[test]
fn list_shows_endpoints_as_resolved_after_tenant_shadowing() {
    let p = policy(CHAT);
    let t = tenant(&p, "beta");
    // In beta, `GET /status` is the tenant's own (auditor) entry, not the public global
    // one, and `GET /reports` requires auditor, not alan-admin.
    let l = t.list("", "");
    assert_eq!(l.endpoints, [endpoint("/health/", &["GET"], true)]);
    let l = t.list("adm", "");
    assert!(
        !l.endpoints.contains(&endpoint("/status", &["GET"], true)),
        "{:?}",
        l.endpoints
    );
    assert!(
        l.endpoints
            .contains(&endpoint("/reports", &["POST"], false)),
        "{:?}",
        l.endpoints
    );
    assert!(
        !l.endpoints
            .iter()
            .any(|(path, methods, _)| path == "/reports" && methods.iter().any(|m| m == "GET")),
        "{:?}",
        l.endpoints
    );
    let l = t.list("aud", "");
    assert!(l.endpoints.contains(&endpoint("/status", &["GET"], false)));
    assert!(l.endpoints.contains(&endpoint("/reports", &["GET"], false)));
}

// ---------------------------------------------------------------------------------------
// Revision and invalid input
// ---------------------------------------------------------------------------------------

#[test]
fn every_answer_carries_the_revision_it_was_computed_on() {
    let doc = PolicyDocument::parse(CONSOLE, Format::Yaml, "test.yaml").unwrap();
    let p = compile(&doc, "test.yaml", 7).unwrap();
    let t = tenant(&p, "acme");
    for (subject, action) in [
        ("alice", "chat.use"),
        ("mallory", "chat.use"),
        ("erin", "chat.use"),
        ("dave", "GET /x"),
    ] {
        let q = query(subject, "", action);
        assert_eq!(
            t.explain(&q, &t.check(&q)).revision,
            7,
            "{subject} {action}"
        );
    }
    assert_eq!(t.list("alice", "").revision, 7);
    assert_eq!(t.list("mallory", "").revision, 7);
}

#[test]
fn invalid_input_is_rejected_before_evaluation() {
    // The validators every request passes through before it reaches `check`.
    assert!(Method::parse("get").is_err(), "lower-case method");
    assert!(Method::parse("G ET").is_err());
    assert!(
        Method::parse("*").is_err(),
        "`*` is for rules, not requests"
    );
    assert!(model::request_path("chats").is_err(), "not absolute");
    assert!(model::request_path("/a//b").is_err(), "empty segment");
    assert!(model::request_path("/a/./b").is_err());
    assert!(model::request_path("/a/../b").is_err());
    assert!(model::scope("/workspaces/ws-1").is_err());
    assert!(model::scope("workspaces/../ws-1").is_err());
    assert!(model::name("api keys").is_err(), "permission name");
    assert!(model::tenant_id("").is_err(), "empty tenant");
    assert!(
        model::subject_id(&"s".repeat(257)).is_err(),
        "subject over the limit"
    );
    assert_eq!(model::request_path("/a/b/?q=1"), Ok("/a/b"));
}

// ---------------------------------------------------------------------------------------
// Compile errors
// ---------------------------------------------------------------------------------------

/// `(what, document, the error's exact lines)`.
type ErrorCase = (&'static str, &'static str, &'static [&'static str]);

const ERROR_CASES: &[ErrorCase] = &[
    // Include cycles, named by their path.
    (
        "built-in include cycle",
        "version: 1\nroles: [{id: a, includes: [b]}, {id: b, includes: [a]}]\n",
        &["test.yaml: role `a`: include cycle `a -> b -> a`"],
    ),
    (
        "built-in self include",
        "version: 1\nroles: [{id: a, includes: [a]}]\n",
        &["test.yaml: role `a`: include cycle `a -> a`"],
    ),
    (
        "custom include cycle",
        "version: 1\nroles: [{id: base}]\ntenants:\n  - id: t\n    roles: [{id: x, includes: [base, y]}, {id: y, includes: [z]}, {id: z, includes: [x]}]\n",
        &["test.yaml: tenant `t`, role `x`: include cycle `x -> y -> z -> x`"],
    ),
    // Undefined roles.
    (
        "custom role includes an undefined role",
        "version: 1\ntenants:\n  - id: t\n    roles: [{id: r, includes: [nope]}]\n",
        &["test.yaml: tenant `t`, role `r`: includes unknown role `nope`"],
    ),
    (
        "built-in role includes an undefined role",
        "version: 1\nroles: [{id: r, includes: [nope]}]\n",
        &["test.yaml: role `r`: built-in role includes `nope`, which is not a built-in role"],
    ),
    (
        "built-in role includes a custom role",
        "version: 1\nroles: [{id: r, includes: [c]}]\ntenants:\n  - id: t\n    roles: [{id: c}]\n",
        &["test.yaml: role `r`: built-in role includes `c`, which is not a built-in role"],
    ),
    (
        "undefined default role",
        "version: 1\ntenants:\n  - id: t\n    default_roles: [nope]\n",
        &["test.yaml: tenant `t`: default role `nope` is not defined"],
    ),
    (
        "tenant endpoint names an undefined role",
        "version: 1\ntenants:\n  - id: t\n    endpoints: [{path: /x, methods: [GET], roles: [nope]}]\n",
        &["test.yaml: tenant `t`, endpoint `GET /x`: names unknown role `nope`"],
    ),
    (
        "assignment of an undefined role",
        "version: 1\ntenants:\n  - id: t\n    subjects: [{id: s}]\n    assignments: [{subject: s, role: nope}]\n",
        &["test.yaml: tenant `t`, assignment 1 (role `nope`): role `nope` is not defined"],
    ),
    (
        "global endpoint names a custom role",
        "version: 1\nendpoints: [{path: /x, methods: [GET, PUT], roles: [c]}]\ntenants:\n  - id: t\n    roles: [{id: c}]\n",
        &[
            "test.yaml: endpoint `GET,PUT /x`: names `c`, which is not a built-in role (entries for all tenants may only name built-in roles)",
        ],
    ),
    // Duplicates.
    (
        "duplicate built-in role",
        "version: 1\nroles: [{id: a}, {id: a}]\n",
        &["test.yaml: role `a`: duplicate role id"],
    ),
    (
        "duplicate custom role",
        "version: 1\ntenants:\n  - id: t\n    roles: [{id: c}, {id: c}]\n",
        &["test.yaml: tenant `t`, role `c`: duplicate role id"],
    ),
    (
        "custom role reuses a built-in id",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    roles: [{id: a}]\n",
        &["test.yaml: tenant `t`, role `a`: custom role reuses the id of a built-in role"],
    ),
    (
        "duplicate tenant",
        "version: 1\ntenants: [{id: t}, {id: t}]\n",
        &["test.yaml: tenant `t`: duplicate tenant id"],
    ),
    (
        "duplicate subject",
        "version: 1\ntenants:\n  - id: t\n    subjects: [{id: s}, {id: s, disabled: true}]\n",
        &["test.yaml: tenant `t`, subject `s`: duplicate subject id"],
    ),
    (
        "duplicate group",
        "version: 1\ntenants:\n  - id: t\n    groups: [{id: g}, {id: g}]\n",
        &["test.yaml: tenant `t`, group `g`: duplicate group id"],
    ),
    // Membership and assignments.
    (
        "group member not registered",
        "version: 1\ntenants:\n  - id: t\n    subjects: [{id: s}]\n    groups: [{id: g, members: [s, ghost]}]\n",
        &["test.yaml: tenant `t`, group `g`: member `ghost` is not a registered subject"],
    ),
    (
        "assigned subject not registered",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    assignments: [{subject: ghost, role: a}]\n",
        &["test.yaml: tenant `t`, assignment 1 (role `a`): subject `ghost` is not registered"],
    ),
    (
        "assignment to an unknown group",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    assignments: [{group: nope, role: a}]\n",
        &["test.yaml: tenant `t`, assignment 1 (role `a`): group `nope` is not defined"],
    ),
    (
        "assignment with both subject and group",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    subjects: [{id: s}]\n    groups: [{id: g, members: [s]}]\n    assignments: [{subject: s, group: g, role: a}]\n",
        &[
            "test.yaml: tenant `t`, assignment 1 (role `a`): needs exactly one of `subject` and `group`",
        ],
    ),
    (
        "assignment with neither subject nor group",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    assignments: [{role: a}]\n",
        &[
            "test.yaml: tenant `t`, assignment 1 (role `a`): needs exactly one of `subject` and `group`",
        ],
    ),
    // Scopes.
    (
        "scope with a leading slash",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    subjects: [{id: s}]\n    assignments: [{subject: s, role: a, scope: /workspaces/ws-1}]\n",
        &[
            "test.yaml: tenant `t`, assignment 1 (role `a`): scope `/workspaces/ws-1` is written without leading or trailing slash, e.g. `workspaces/ws-1`; the tenant root is the empty string",
        ],
    ),
    (
        "scope with an empty segment",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    subjects: [{id: s}]\n    assignments: [{subject: s, role: a, scope: a//b}]\n",
        &[
            "test.yaml: tenant `t`, assignment 1 (role `a`): scope `a//b` has an empty, `.` or `..` segment",
        ],
    ),
    (
        "scope with a `..` segment",
        "version: 1\nroles: [{id: a}]\ntenants:\n  - id: t\n    subjects: [{id: s}]\n    assignments: [{subject: s, role: a, scope: a/../b}]\n",
        &[
            "test.yaml: tenant `t`, assignment 1 (role `a`): scope `a/../b` has an empty, `.` or `..` segment",
        ],
    ),
    // Patterns.
    (
        "`**` not last in a rule",
        "version: 1\nroles: [{id: a, routes: [{methods: [GET], path: /**/x}]}]\n",
        &[
            "test.yaml: role `a`, rule 1 (`/**/x`): pattern `/**/x` has `**` before its last segment",
        ],
    ),
    (
        "segment mixing text and `*` in a custom role's rule",
        "version: 1\ntenants:\n  - id: t\n    roles: [{id: c, routes: [{methods: [GET], path: /ok}, {methods: [GET], path: /api/v*}]}]\n",
        &[
            "test.yaml: tenant `t`, role `c`, rule 2 (`/api/v*`): pattern `/api/v*` has segment `v*` mixing text with `*` or `{}`",
        ],
    ),
    (
        "segment mixing text and a parameter in an endpoint",
        "version: 1\nroles: [{id: a}]\nendpoints: [{path: \"/files/{id}.json\", methods: [GET], roles: [a]}]\n",
        &[
            "test.yaml: endpoint `GET /files/{id}.json`: pattern `/files/{id}.json` has segment `{id}.json` mixing text with `*` or `{}`",
        ],
    ),
    (
        "relative pattern",
        "version: 1\nroles: [{id: a, routes: [{methods: [GET], path: x/y}]}]\n",
        &["test.yaml: role `a`, rule 1 (`x/y`): pattern `x/y` must be absolute (start with `/`)"],
    ),
    (
        "pattern with an empty segment",
        "version: 1\nroles: [{id: a, routes: [{methods: [GET], path: /x//y}]}]\n",
        &[
            "test.yaml: role `a`, rule 1 (`/x//y`): pattern `/x//y` has an empty, `.` or `..` segment",
        ],
    ),
    // Methods.
    (
        "empty methods in a rule",
        "version: 1\nroles: [{id: a, routes: [{methods: [], path: /x}]}]\n",
        &["test.yaml: role `a`, rule 1 (`/x`): empty `methods` list"],
    ),
    (
        "empty methods in an endpoint",
        "version: 1\nroles: [{id: a}]\nendpoints: [{path: /x, methods: [], roles: [a]}]\n",
        &["test.yaml: endpoint ` /x`: empty `methods` list"],
    ),
    (
        "lower-case method",
        "version: 1\nroles: [{id: a, routes: [{methods: [GET, get], path: /x}]}]\n",
        &[
            "test.yaml: role `a`, rule 1 (`/x`): method `get` has a character that is not allowed (an upper-case HTTP method token such as `GET`)",
        ],
    ),
    (
        "lower-case method in a tenant endpoint",
        "version: 1\ntenants:\n  - id: t\n    endpoints: [{path: /x, methods: [Get], public: true}]\n",
        &[
            "test.yaml: tenant `t`, endpoint `Get /x`: method `Get` has a character that is not allowed (an upper-case HTTP method token such as `GET`)",
        ],
    ),
    // Endpoint entries.
    (
        "endpoint both public and with roles",
        "version: 1\nroles: [{id: a}]\nendpoints: [{path: /x, methods: [GET], roles: [a], public: true}]\n",
        &["test.yaml: endpoint `GET /x`: entry is `public` and names `roles`; choose one"],
    ),
    (
        "endpoint neither public nor with roles",
        "version: 1\ntenants:\n  - id: t\n    endpoints: [{path: /x, methods: [GET]}]\n",
        &["test.yaml: tenant `t`, endpoint `GET /x`: entry needs `roles` or `public: true`"],
    ),
    (
        "conflicting endpoint entries (same pattern up to parameter names, common method)",
        "version: 1\nroles: [{id: a}]\nendpoints:\n  - {path: \"/a/{id}\", methods: [GET, PUT], roles: [a]}\n  - {path: \"/a/*/\", methods: [PUT, DELETE], roles: [a]}\n",
        &[
            "test.yaml: endpoint `PUT,DELETE /a/*/`: conflicts with endpoint `GET,PUT /a/{id}`: same pattern, common method",
        ],
    ),
    (
        "conflicting tenant endpoint entries through `*`",
        "version: 1\ntenants:\n  - id: t\n    endpoints:\n      - {path: /x, methods: [PROPFIND], public: true}\n      - {path: /x, methods: [\"*\"], public: true}\n",
        &[
            "test.yaml: tenant `t`, endpoint `* /x`: conflicts with endpoint `PROPFIND /x`: same pattern, common method",
        ],
    ),
    // Ids and names.
    (
        "invalid role id and permission name",
        "version: 1\nroles: [{id: a b, permissions: [ok, not ok]}]\n",
        &[
            "test.yaml: role `a b`: id has a character that is not allowed (letters, digits, `_`, `.`, `:` and `-`)",
            "test.yaml: role `a b`: permission `not ok` has a character that is not allowed (letters, digits, `_`, `.`, `:` and `-`)",
        ],
    ),
    (
        "invalid tenant id",
        "version: 1\ntenants: [{id: \"a b\"}]\n",
        &[
            "test.yaml: tenant `a b`: id has a character that is not allowed (no whitespace or control characters)",
        ],
    ),
];

#[test]
fn compile_errors_name_the_tenant_and_the_role_entry_or_rule() {
    for (what, yaml, expected) in ERROR_CASES {
        assert_eq!(&errors(yaml), expected, "{what}");
    }
}

#[test]
fn compile_collects_every_problem() {
    // Two problems in one tenant, one in another: three lines, in document order.
    let lines = errors(
        r#"
version: 1
roles: [{id: a}]
tenants:
  - id: t1
    default_roles: [nope]
    subjects: [{id: s}]
    assignments: [{subject: ghost, role: a}]
  - id: t2
    groups: [{id: g, members: [ghost]}]
"#,
    );
    assert_eq!(
        lines,
        [
            "test.yaml: tenant `t1`: default role `nope` is not defined",
            "test.yaml: tenant `t1`, assignment 1 (role `a`): subject `ghost` is not registered",
            "test.yaml: tenant `t2`, group `g`: member `ghost` is not a registered subject",
        ]
    );
    // Two problems in one rule: the pattern and the methods.
    let lines = errors("version: 1\nroles: [{id: a, routes: [{methods: [], path: /v*}]}]\n");
    assert_eq!(
        lines,
        [
            "test.yaml: role `a`, rule 1 (`/v*`): pattern `/v*` has segment `v*` mixing text with `*` or `{}`",
            "test.yaml: role `a`, rule 1 (`/v*`): empty `methods` list",
        ]
    );
}

#[test]
fn documents_that_compile() {
    // Same pattern with disjoint methods, a tenant entry equal to a global one, and an
    // unused custom role are not conflicts.
    let p = policy(
        r#"
version: 1
roles: [{id: a}]
endpoints:
  - {path: "/x/{id}", methods: [GET], roles: [a]}
  - {path: /x/*, methods: [DELETE], roles: [a]}
tenants:
  - id: t
    roles: [{id: c, includes: [a]}]
    endpoints:
      - {path: "/x/{other}", methods: [GET, DELETE], roles: [c]}
"#,
    );
    assert_eq!(p.tenants.len(), 1);
    // A diamond of includes is not a cycle; the chain is the shortest path.
    let p = policy(
        r#"
version: 1
roles:
  - {id: base, permissions: [p]}
  - {id: left, includes: [base]}
  - {id: right, includes: [base]}
  - {id: top, includes: [left, right]}
tenants:
  - id: t
    subjects: [{id: s}]
    assignments: [{subject: s, role: top}]
"#,
    );
    table(
        &p,
        "t",
        &[(
            "s",
            "",
            "p",
            r#"granted role=base chain=top>left>base source=direct scope="""#,
        )],
    );
}
