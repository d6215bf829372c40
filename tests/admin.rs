//! The admin API over real gRPC and a real PostgreSQL: every write seen by Check at the
//! revision it returned, invalid inputs named, conflicts and missing rows, references
//! refused by the database, every authentication failure, tenant-limited tokens, and the
//! audit log read back through the API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::time::Duration;

use authz::{
    grpc::{
        PolicyAdmin, ServiceConfig,
        auth::{AdminTokens, file_line},
    },
    pb::{self, policy_admin_service_client::PolicyAdminServiceClient},
    server::ServerConfig,
    store::{admin::AdminStore, follow::FollowConfig, follow::Follower, postgres},
};
use common::{TestServer, pg::TestDb};
use tonic::{Code, Request, transport::Channel};

const ROOT: &str = "root-secret-token";
const ACME: &str = "acme-secret-token";

const SEED: &str = "
INSERT INTO roles (tenant_id, id) VALUES ('', 'viewer'), ('', 'editor');
INSERT INTO role_permissions VALUES ('', 'viewer', 'docs.read'), ('', 'editor', 'docs.write');
INSERT INTO role_includes VALUES ('', 'editor', 'viewer', 0);
INSERT INTO tenants VALUES ('acme'), ('globex');
";

struct Env {
    db: TestDb,
    server: TestServer,
    _follower: Follower,
    admin: PolicyAdminServiceClient<Channel>,
}

impl Env {
    async fn start(tag: &str) -> Env {
        let db = TestDb::create(tag).await;
        db.client().await.batch_execute(SEED).await.unwrap();
        let tokens = AdminTokens::parse(
            &format!(
                "{}\n{}\n",
                file_line(ROOT, "*", Some("root")),
                file_line(ACME, "acme", Some("acme-admin"))
            ),
            "tokens",
        )
        .unwrap();
        let admin = PolicyAdmin::new(AdminStore::new(postgres::pool(&db.url, 4).unwrap()), tokens);
        let mut follow = FollowConfig::new(db.url.clone());
        follow.poll_interval = Duration::from_millis(100);
        follow.max_backoff = Duration::from_millis(200);
        let config = ServerConfig {
            service: ServiceConfig {
                revision_wait: Duration::from_secs(10),
                ..ServiceConfig::default()
            },
            shutdown_grace: Duration::from_secs(5),
            admin: Some(admin),
            ..ServerConfig::default()
        };
        let (server, follower) = TestServer::start_db_configured(follow, config).await;
        let admin = PolicyAdminServiceClient::new(server.channel.clone());
        Env {
            db,
            server,
            _follower: follower,
            admin,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
        self.db.drop_db().await;
    }

    fn admin(&self) -> PolicyAdminServiceClient<Channel> {
        self.admin.clone()
    }

    async fn check(
        &self,
        subject: &str,
        scope: &str,
        permission: &str,
        min_revision: u64,
    ) -> pb::CheckResponse {
        self.server
            .client
            .clone()
            .check(pb::CheckRequest {
                tenant_id: "acme".into(),
                subject_id: subject.into(),
                scope: scope.into(),
                action: Some(pb::check_request::Action::Permission(permission.into())),
                min_revision,
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// A request carrying `authorization: Bearer <token>`.
fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn root<T>(msg: T) -> Request<T> {
    authed(ROOT, msg)
}

fn reason(r: &pb::CheckResponse) -> pb::Reason {
    pb::Reason::try_from(r.reason).unwrap()
}

fn grant(subject: &str, group: &str, role: &str, scope: &str) -> pb::GrantRoleRequest {
    pb::GrantRoleRequest {
        tenant_id: "acme".into(),
        assignment: Some(assignment(subject, group, role, scope)),
    }
}

fn assignment(subject: &str, group: &str, role: &str, scope: &str) -> pb::Assignment {
    pb::Assignment {
        subject_id: subject.into(),
        group_id: group.into(),
        role_id: role.into(),
        scope: scope.into(),
    }
}

fn register(subject: &str) -> pb::RegisterSubjectRequest {
    pb::RegisterSubjectRequest {
        tenant_id: "acme".into(),
        subject_id: subject.into(),
        disabled: false,
    }
}

fn custom_role(id: &str, includes: &[&str], permissions: &[&str]) -> pb::Role {
    pb::Role {
        id: id.into(),
        description: format!("{id} role"),
        includes: includes.iter().map(|s| s.to_string()).collect(),
        permissions: permissions.iter().map(|s| s.to_string()).collect(),
        routes: vec![pb::RoleRoute {
            methods: vec!["PUT".into()],
            path: "/workspaces/{id}".into(),
        }],
        built_in: false,
    }
}

fn create_role(role: pb::Role) -> pb::CreateRoleRequest {
    pb::CreateRoleRequest {
        tenant_id: "acme".into(),
        role: Some(role),
    }
}

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = r.expect_err("the call fails");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "`{}` does not mention `{needle}`",
        status.message()
    );
}

#[tokio::test]
async fn every_admin_write_is_seen_by_check_at_its_revision() {
    let env = Env::start("admin_writes").await;
    let mut admin = env.admin();
    for s in ["alice", "bob", "carol"] {
        admin.register_subject(root(register(s))).await.unwrap();
    }

    // A custom role granted in one workspace.
    admin
        .create_role(root(create_role(custom_role(
            "ws-manager",
            &["viewer"],
            &["ws.manage"],
        ))))
        .await
        .unwrap();
    let rev = admin
        .grant_role(root(grant("alice", "", "ws-manager", "workspaces/ws-1")))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r = env
        .check("alice", "workspaces/ws-1", "ws.manage", rev)
        .await;
    assert!(r.allowed, "{r:?}");
    assert!(r.revision >= rev);
    assert_eq!(r.grant.as_ref().unwrap().role, "ws-manager");
    let r = env
        .check("alice", "workspaces/ws-1", "docs.read", rev)
        .await;
    assert!(r.allowed, "included built-in role: {r:?}");
    assert!(
        !env.check("alice", "workspaces/ws-2", "ws.manage", rev)
            .await
            .allowed
    );

    // Disabling a user denies her.
    let rev = admin
        .set_subject_disabled(root(pb::SetSubjectDisabledRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            disabled: true,
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r = env
        .check("alice", "workspaces/ws-1", "ws.manage", rev)
        .await;
    assert!(!r.allowed);
    assert_eq!(reason(&r), pb::Reason::SubjectDisabled);

    // A group's role reaches a member once added.
    admin
        .create_group(root(pb::CreateGroupRequest {
            tenant_id: "acme".into(),
            group_id: "writers".into(),
        }))
        .await
        .unwrap();
    let rev = admin
        .grant_role(root(grant("", "writers", "editor", "")))
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(!env.check("bob", "", "docs.write", rev).await.allowed);
    let rev = admin
        .add_group_member(root(pb::AddGroupMemberRequest {
            tenant_id: "acme".into(),
            group_id: "writers".into(),
            subject_id: "bob".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r = env.check("bob", "", "docs.write", rev).await;
    assert!(r.allowed, "{r:?}");
    let g = r.grant.unwrap();
    assert_eq!(
        (g.source(), g.group_id.as_str()),
        (pb::GrantSource::Group, "writers")
    );
    let rev = admin
        .remove_group_member(root(pb::RemoveGroupMemberRequest {
            tenant_id: "acme".into(),
            group_id: "writers".into(),
            subject_id: "bob".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(!env.check("bob", "", "docs.write", rev).await.allowed);

    // Default roles.
    let rev = admin
        .set_default_roles(root(pb::SetDefaultRolesRequest {
            tenant_id: "acme".into(),
            role_ids: vec!["viewer".into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r = env.check("carol", "", "docs.read", rev).await;
    assert!(r.allowed);
    assert_eq!(r.grant.unwrap().source(), pb::GrantSource::Default);

    // Updating a role changes what it grants; a grant then revoke.
    let rev = admin
        .grant_role(root(grant("carol", "", "ws-manager", "")))
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(env.check("carol", "", "ws.manage", rev).await.allowed);
    let rev = admin
        .update_role(root(pb::UpdateRoleRequest {
            tenant_id: "acme".into(),
            role: Some(custom_role("ws-manager", &[], &["ws.read"])),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(!env.check("carol", "", "ws.manage", rev).await.allowed);
    assert!(env.check("carol", "", "ws.read", rev).await.allowed);

    // A role still assigned cannot be deleted; revoked everywhere, it can.
    assert_code(
        admin
            .delete_role(root(pb::DeleteRoleRequest {
                tenant_id: "acme".into(),
                role_id: "ws-manager".into(),
            }))
            .await,
        Code::FailedPrecondition,
        "tenant `acme`: role `ws-manager` is still in use (assigned 2 times); remove those references first",
    );
    admin
        .revoke_role(root(pb::RevokeRoleRequest {
            tenant_id: "acme".into(),
            assignment: Some(assignment("carol", "", "ws-manager", "")),
        }))
        .await
        .unwrap();
    let rev = admin
        .revoke_role(root(pb::RevokeRoleRequest {
            tenant_id: "acme".into(),
            assignment: Some(assignment("alice", "", "ws-manager", "workspaces/ws-1")),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(!env.check("carol", "", "ws.read", rev).await.allowed);
    let rev = admin
        .delete_role(root(pb::DeleteRoleRequest {
            tenant_id: "acme".into(),
            role_id: "ws-manager".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(rev, env.db.revision().await);

    // Deleting a subject and a group.
    admin
        .delete_group(root(pb::DeleteGroupRequest {
            tenant_id: "acme".into(),
            group_id: "writers".into(),
        }))
        .await
        .unwrap();
    let rev = admin
        .delete_subject(root(pb::DeleteSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "carol".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r = env.check("carol", "", "docs.read", rev).await;
    assert_eq!(reason(&r), pb::Reason::UnknownSubject);

    env.stop().await;
}

#[tokio::test]
async fn listings_are_paginated() {
    let env = Env::start("admin_lists").await;
    let mut admin = env.admin();
    for s in ["s1", "s2", "s3", "s4", "s5"] {
        admin.register_subject(root(register(s))).await.unwrap();
    }
    for (id, inc) in [("c1", &["viewer"][..]), ("c2", &[])] {
        admin
            .create_role(root(create_role(custom_role(id, inc, &["x.y"]))))
            .await
            .unwrap();
    }
    for g in ["g1", "g2"] {
        admin
            .create_group(root(pb::CreateGroupRequest {
                tenant_id: "acme".into(),
                group_id: g.into(),
            }))
            .await
            .unwrap();
    }
    for s in ["s2", "s1"] {
        admin
            .add_group_member(root(pb::AddGroupMemberRequest {
                tenant_id: "acme".into(),
                group_id: "g1".into(),
                subject_id: s.into(),
            }))
            .await
            .unwrap();
    }
    for s in ["s3", "s1", "s2"] {
        admin
            .grant_role(root(grant(s, "", "c1", "")))
            .await
            .unwrap();
    }

    // Subjects, two per page.
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_subjects(root(pb::ListSubjectsRequest {
                tenant_id: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.subjects.len() <= 2);
        ids.extend(page.subjects.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, ["s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(pages, 3);

    // Roles: built-in and custom, one per page.
    let mut roles = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_roles(root(pb::ListRolesRequest {
                tenant_id: "acme".into(),
                page_size: 1,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        roles.extend(page.roles);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let summary: Vec<(&str, bool)> = roles.iter().map(|r| (&*r.id, r.built_in)).collect();
    assert_eq!(
        summary,
        [
            ("c1", false),
            ("c2", false),
            ("editor", true),
            ("viewer", true)
        ]
    );
    assert_eq!(roles[0].includes, ["viewer"]);
    assert_eq!(roles[0].permissions, ["x.y"]);
    assert_eq!(roles[0].routes[0].path, "/workspaces/{id}");
    assert_eq!(roles[2].includes, ["viewer"]);

    let groups = admin
        .list_groups(root(pb::ListGroupsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(groups.groups.len(), 2);
    assert_eq!(groups.groups[0].member_ids, ["s1", "s2"]);
    assert!(groups.groups[1].member_ids.is_empty());
    assert!(groups.next_page_token.is_empty());

    let first = admin
        .list_assignments(root(pb::ListAssignmentsRequest {
            tenant_id: "acme".into(),
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let subjects: Vec<&str> = first
        .assignments
        .iter()
        .map(|a| a.subject_id.as_str())
        .collect();
    assert_eq!(subjects, ["s3", "s1"], "in the order they were made");
    let second = admin
        .list_assignments(root(pb::ListAssignmentsRequest {
            tenant_id: "acme".into(),
            page_size: 2,
            page_token: first.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.assignments.len(), 1);
    assert_eq!(second.assignments[0].subject_id, "s2");
    assert!(second.next_page_token.is_empty());

    assert_code(
        admin
            .list_subjects(root(pb::ListSubjectsRequest {
                tenant_id: "acme".into(),
                page_size: 2,
                page_token: "!!not-ours".into(),
            }))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    // Well-formed base64 of a key no id can be: refused before the database (a NUL byte
    // reached PostgreSQL once and came back FAILED_PRECONDITION), and so is a token
    // longer than any this server issues.
    use base64::Engine as _;
    for key in ["s1\0".to_owned(), "s\n1".to_owned(), "s".repeat(1000)] {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key);
        assert_code(
            admin
                .list_subjects(root(pb::ListSubjectsRequest {
                    tenant_id: "acme".into(),
                    page_size: 2,
                    page_token: token.clone(),
                }))
                .await,
            Code::InvalidArgument,
            "page_token",
        );
        assert_code(
            admin
                .list_roles(root(pb::ListRolesRequest {
                    tenant_id: "acme".into(),
                    page_size: 2,
                    page_token: token,
                }))
                .await,
            Code::InvalidArgument,
            "page_token",
        );
    }
    assert_code(
        admin
            .list_subjects(root(pb::ListSubjectsRequest {
                tenant_id: "acme".into(),
                page_size: -1,
                page_token: String::new(),
            }))
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    env.stop().await;
}

#[tokio::test]
async fn invalid_inputs_are_refused_naming_the_field() {
    let env = Env::start("admin_invalid").await;
    let mut admin = env.admin();
    let before = env.db.revision().await;
    let mut bad_route = custom_role("r", &[], &[]);
    bad_route.routes[0].path = "no-slash".into();
    let mut bad_method = custom_role("r", &[], &[]);
    bad_method.routes[0].methods = vec!["get".into()];
    for (role, field) in [
        (custom_role("bad id", &[], &[]), "role.id"),
        (custom_role("r", &["ok", "no way"], &[]), "role.includes[1]"),
        (custom_role("r", &[], &["a b"]), "role.permissions[0]"),
        (custom_role("r", &[], &["p", "p"]), "role.permissions[1]"),
        (bad_route, "role.routes[0].path"),
        (bad_method, "role.routes[0].methods"),
    ] {
        assert_code(
            admin.create_role(root(create_role(role))).await,
            Code::InvalidArgument,
            &format!("`{field}`"),
        );
    }
    assert_code(
        admin
            .create_role(root(pb::CreateRoleRequest {
                tenant_id: "acme".into(),
                role: None,
            }))
            .await,
        Code::InvalidArgument,
        "`role`",
    );
    assert_code(
        admin
            .register_subject(root(pb::RegisterSubjectRequest {
                tenant_id: String::new(),
                subject_id: "x".into(),
                disabled: false,
            }))
            .await,
        Code::InvalidArgument,
        "`tenant_id`",
    );
    assert_code(
        admin.register_subject(root(register("a b"))).await,
        Code::InvalidArgument,
        "`subject_id`",
    );
    for (req, field) in [
        (grant("", "", "viewer", ""), "assignment.subject_id"),
        (grant("a", "g", "viewer", ""), "assignment.subject_id"),
        (grant("a", "", "", ""), "assignment.role_id"),
        (
            grant("a", "", "viewer", "/workspaces/ws-1"),
            "assignment.scope",
        ),
        (
            grant("a", "", "viewer", "workspaces/../x"),
            "assignment.scope",
        ),
    ] {
        assert_code(
            admin.grant_role(root(req)).await,
            Code::InvalidArgument,
            &format!("`{field}`"),
        );
    }
    assert_code(
        admin
            .set_default_roles(root(pb::SetDefaultRolesRequest {
                tenant_id: "acme".into(),
                role_ids: vec!["viewer".into(), "viewer".into()],
            }))
            .await,
        Code::InvalidArgument,
        "`role_ids[1]`",
    );
    assert_code(
        admin
            .apply_policy(root(pb::ApplyPolicyRequest {
                document: "version: 1\nroles: [{id: a, includes: [nope]}]\n".into(),
                format: pb::DocumentFormat::Yaml as i32,
                force: false,
            }))
            .await,
        Code::InvalidArgument,
        "nope",
    );
    assert_code(
        admin
            .apply_policy(root(pb::ApplyPolicyRequest {
                document: "{not json".into(),
                format: pb::DocumentFormat::Json as i32,
                force: false,
            }))
            .await,
        Code::InvalidArgument,
        "`document`",
    );
    assert_eq!(env.db.revision().await, before, "nothing was written");
    env.stop().await;
}

/// ApplyPolicy holds a document to the database's limits (authz_limits), not to the
/// compiled-in defaults: a raised limit admits it, the default refuses it.
#[tokio::test]
async fn apply_policy_is_held_to_the_databases_limits() {
    let env = Env::start("admin_db_limits").await;
    let mut admin = env.admin();
    // A chain of 35 custom roles: depth 34, over the default 32.
    let mut doc = String::from("version: 1\ntenants:\n  - id: globex\n    roles:\n");
    for i in 0..35 {
        if i + 1 < 35 {
            doc.push_str(&format!("      - {{id: c{i}, includes: [c{}]}}\n", i + 1));
        } else {
            doc.push_str(&format!("      - {{id: c{i}}}\n"));
        }
    }
    let apply = |doc: &str| {
        root(pb::ApplyPolicyRequest {
            document: doc.to_owned(),
            format: pb::DocumentFormat::Yaml as i32,
            force: true,
        })
    };
    assert_code(
        admin.apply_policy(apply(&doc)).await,
        Code::InvalidArgument,
        "max_include_depth = 32",
    );
    env.db
        .client()
        .await
        .batch_execute("UPDATE authz_limits SET max_include_depth = 40")
        .await
        .unwrap();
    admin.apply_policy(apply(&doc)).await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn conflicts_missing_rows_and_refused_references() {
    let env = Env::start("admin_conflicts").await;
    let mut admin = env.admin();
    admin
        .register_subject(root(register("alice")))
        .await
        .unwrap();
    admin
        .create_role(root(create_role(custom_role("a", &[], &[]))))
        .await
        .unwrap();
    admin
        .grant_role(root(grant("alice", "", "a", "")))
        .await
        .unwrap();
    admin
        .create_group(root(pb::CreateGroupRequest {
            tenant_id: "acme".into(),
            group_id: "g".into(),
        }))
        .await
        .unwrap();
    let before = env.db.revision().await;
    let audited = audit_count(&env).await;

    // ALREADY_EXISTS
    assert_code(
        admin.register_subject(root(register("alice"))).await,
        Code::AlreadyExists,
        "subject `alice` is already registered",
    );
    assert_code(
        admin
            .create_role(root(create_role(custom_role("a", &[], &[]))))
            .await,
        Code::AlreadyExists,
        "role `a` already exists",
    );
    assert_code(
        admin.grant_role(root(grant("alice", "", "a", ""))).await,
        Code::AlreadyExists,
        "already holds role `a`",
    );
    assert_code(
        admin
            .create_group(root(pb::CreateGroupRequest {
                tenant_id: "acme".into(),
                group_id: "g".into(),
            }))
            .await,
        Code::AlreadyExists,
        "group `g` already exists",
    );

    // NOT_FOUND
    assert_code(
        admin
            .update_role(root(pb::UpdateRoleRequest {
                tenant_id: "acme".into(),
                role: Some(custom_role("missing", &[], &[])),
            }))
            .await,
        Code::NotFound,
        "role `missing` does not exist",
    );
    assert_code(
        admin
            .delete_subject(root(pb::DeleteSubjectRequest {
                tenant_id: "acme".into(),
                subject_id: "zed".into(),
            }))
            .await,
        Code::NotFound,
        "subject `zed` is not registered",
    );
    assert_code(
        admin
            .set_subject_disabled(root(pb::SetSubjectDisabledRequest {
                tenant_id: "acme".into(),
                subject_id: "zed".into(),
                disabled: true,
            }))
            .await,
        Code::NotFound,
        "subject `zed`",
    );
    assert_code(
        admin
            .revoke_role(root(pb::RevokeRoleRequest {
                tenant_id: "acme".into(),
                assignment: Some(assignment("alice", "", "a", "workspaces/ws-1")),
            }))
            .await,
        Code::NotFound,
        "does not hold role `a`",
    );
    assert_code(
        admin
            .remove_group_member(root(pb::RemoveGroupMemberRequest {
                tenant_id: "acme".into(),
                group_id: "g".into(),
                subject_id: "alice".into(),
            }))
            .await,
        Code::NotFound,
        "not a member",
    );
    assert_code(
        admin
            .add_group_member(root(pb::AddGroupMemberRequest {
                tenant_id: "acme".into(),
                group_id: "nope".into(),
                subject_id: "alice".into(),
            }))
            .await,
        Code::NotFound,
        "group `nope` does not exist",
    );

    // FAILED_PRECONDITION: built-in roles are read-only; references the database refuses.
    for r in [
        admin
            .update_role(root(pb::UpdateRoleRequest {
                tenant_id: "acme".into(),
                role: Some(custom_role("viewer", &[], &[])),
            }))
            .await
            .map(drop),
        admin
            .delete_role(root(pb::DeleteRoleRequest {
                tenant_id: "acme".into(),
                role_id: "editor".into(),
            }))
            .await
            .map(drop),
        admin
            .create_role(root(create_role(custom_role("viewer", &[], &[]))))
            .await
            .map(drop),
    ] {
        assert_code(r, Code::FailedPrecondition, "built-in roles are read-only");
    }
    assert_code(
        admin
            .grant_role(root(grant("alice", "", "ghost", "")))
            .await,
        Code::FailedPrecondition,
        "tenant `acme`, assignment",
    );
    assert_code(
        admin.grant_role(root(grant("zed", "", "a", ""))).await,
        Code::FailedPrecondition,
        "zed",
    );
    assert_code(
        admin
            .add_group_member(root(pb::AddGroupMemberRequest {
                tenant_id: "acme".into(),
                group_id: "g".into(),
                subject_id: "zed".into(),
            }))
            .await,
        Code::FailedPrecondition,
        "subject `zed` is not registered",
    );
    assert_code(
        admin
            .create_role(root(create_role(custom_role("b", &["ghost"], &[]))))
            .await,
        Code::FailedPrecondition,
        "tenant `acme`, role `b`: includes unknown role `ghost`",
    );
    assert_code(
        admin
            .set_default_roles(root(pb::SetDefaultRolesRequest {
                tenant_id: "acme".into(),
                role_ids: vec!["ghost".into()],
            }))
            .await,
        Code::FailedPrecondition,
        "tenant `acme`: default role `ghost` is not defined",
    );
    // An include cycle: b includes a, then a includes b.
    admin
        .create_role(root(create_role(custom_role("b", &["a"], &[]))))
        .await
        .unwrap();
    let before_cycle = env.db.revision().await;
    assert_code(
        admin
            .update_role(root(pb::UpdateRoleRequest {
                tenant_id: "acme".into(),
                role: Some(custom_role("a", &["b"], &[])),
            }))
            .await,
        Code::FailedPrecondition,
        "include cycle",
    );
    // Nothing half-written: no refused write moved the revision or left an audit row.
    assert_eq!(env.db.revision().await, before_cycle);
    assert!(before_cycle > before);
    assert_eq!(audit_count(&env).await, audited + 1, "only role `b`");
    // A role still included says so (not "role `a` is not defined").
    assert_code(
        admin
            .delete_role(root(pb::DeleteRoleRequest {
                tenant_id: "acme".into(),
                role_id: "a".into(),
            }))
            .await,
        Code::FailedPrecondition,
        "role `a` is still in use (",
    );
    let refused = admin
        .delete_role(root(pb::DeleteRoleRequest {
            tenant_id: "acme".into(),
            role_id: "a".into(),
        }))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("included by role `b`"),
        "{}",
        refused.message()
    );
    env.stop().await;
}

async fn audit_count(env: &Env) -> i64 {
    env.db
        .client()
        .await
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_authentication_failure_is_refused() {
    let env = Env::start("admin_auth").await;
    let mut admin = env.admin();
    let list = || pb::ListSubjectsRequest {
        tenant_id: "acme".into(),
        ..Default::default()
    };
    // No header.
    assert_code(
        admin.list_subjects(Request::new(list())).await,
        Code::Unauthenticated,
        "Bearer",
    );
    // Malformed headers.
    for value in ["Basic cm9vdDpyb290", "Bearer", "Bearer ", ROOT] {
        let mut r = Request::new(list());
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        assert_code(
            admin.list_subjects(r).await,
            Code::Unauthenticated,
            "malformed",
        );
    }
    // Wrong token, and a near miss.
    for token in ["wrong", &ROOT[..ROOT.len() - 1]] {
        assert_code(
            admin.list_subjects(authed(token, list())).await,
            Code::Unauthenticated,
            "invalid admin token",
        );
    }
    // Writes are refused the same way, and write nothing.
    let before = env.db.revision().await;
    assert_code(
        admin
            .register_subject(authed("wrong", register("mallory")))
            .await,
        Code::Unauthenticated,
        "invalid",
    );
    assert_eq!(env.db.revision().await, before);

    // A token limited to acme: fine there, refused elsewhere and for whole-policy work.
    admin
        .register_subject(authed(ACME, register("ann")))
        .await
        .unwrap();
    assert_code(
        admin
            .register_subject(authed(
                ACME,
                pb::RegisterSubjectRequest {
                    tenant_id: "globex".into(),
                    subject_id: "ann".into(),
                    disabled: false,
                },
            ))
            .await,
        Code::PermissionDenied,
        "tenant `globex`",
    );
    assert_code(
        admin
            .list_subjects(authed(
                ACME,
                pb::ListSubjectsRequest {
                    tenant_id: "globex".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "tenant `globex`",
    );
    assert_code(
        admin
            .apply_policy(authed(
                ACME,
                pb::ApplyPolicyRequest {
                    document: "version: 1\n".into(),
                    format: 0,
                    force: false,
                },
            ))
            .await,
        Code::PermissionDenied,
        "all tenants",
    );
    assert_code(
        admin
            .export_policy(authed(ACME, pb::ExportPolicyRequest::default()))
            .await,
        Code::PermissionDenied,
        "all tenants",
    );
    assert_code(
        admin
            .export_policy(authed(
                ACME,
                pb::ExportPolicyRequest {
                    tenant_ids: vec!["acme".into(), "globex".into()],
                    format: 0,
                },
            ))
            .await,
        Code::PermissionDenied,
        "tenant `globex`",
    );
    assert_code(
        admin
            .list_audit_events(authed(ACME, pb::ListAuditEventsRequest::default()))
            .await,
        Code::PermissionDenied,
        "all tenants",
    );
    let own = admin
        .list_audit_events(authed(
            ACME,
            pb::ListAuditEventsRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.events.len(), 1);
    assert_eq!(own.events[0].actor, "acme-admin");
    env.stop().await;

    // Admin off: a server without admin tokens does not serve the admin API, and its
    // calls say so.
    let server = TestServer::start(&common::example("console.yaml")).await;
    let mut off = PolicyAdminServiceClient::new(server.channel.clone());
    assert_code(
        off.list_subjects(root(list())).await,
        Code::Unimplemented,
        "the admin API is off on this server",
    );
    server.stop().await;
}

#[tokio::test]
async fn audit_events_are_readable_through_the_api() {
    let env = Env::start("admin_audit").await;
    let mut admin = env.admin();
    let r1 = admin
        .register_subject(root(register("alice")))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r2 = admin
        .grant_role(root(grant("alice", "", "viewer", "workspaces/ws-1")))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r3 = admin
        .register_subject(authed(
            ACME,
            pb::RegisterSubjectRequest {
                tenant_id: "acme".into(),
                subject_id: "bob".into(),
                disabled: true,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .revision;
    admin
        .register_subject(root(pb::RegisterSubjectRequest {
            tenant_id: "globex".into(),
            subject_id: "gus".into(),
            disabled: false,
        }))
        .await
        .unwrap();

    let page = admin
        .list_audit_events(root(pb::ListAuditEventsRequest {
            tenant_id: "acme".into(),
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<(&str, &str, u64)> = page
        .events
        .iter()
        .map(|e| (&*e.actor, &*e.action, e.revision))
        .collect();
    assert_eq!(
        seen,
        [
            ("acme-admin", "RegisterSubject", r3),
            ("root", "GrantRole", r2)
        ],
        "newest first"
    );
    let detail: serde_json::Value = serde_json::from_str(&page.events[1].detail_json).unwrap();
    assert_eq!(detail["assignment"]["subject"], "alice");
    assert_eq!(detail["assignment"]["scope"], "workspaces/ws-1");
    assert!(page.events[0].at.ends_with('Z'), "{}", page.events[0].at);
    let rest = admin
        .list_audit_events(root(pb::ListAuditEventsRequest {
            tenant_id: "acme".into(),
            page_size: 2,
            page_token: page.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].revision, r1);
    assert!(rest.next_page_token.is_empty());

    let all = admin
        .list_audit_events(root(pb::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.events.len(), 4);
    assert_eq!(all.events[0].tenant_id, "globex");
    env.stop().await;
}

#[tokio::test]
async fn apply_and_export_policy_documents() {
    let env = Env::start("admin_apply").await;
    let mut admin = env.admin();
    let doc = "
version: 1
roles:
  - {id: viewer, permissions: [docs.read]}
  - {id: editor, includes: [viewer], permissions: [docs.write]}
tenants:
  - id: initech
    subjects: [{id: peter}]
    assignments: [{subject: peter, role: editor}]
";
    let applied = admin
        .apply_policy(root(pb::ApplyPolicyRequest {
            document: doc.into(),
            format: pb::DocumentFormat::Yaml as i32,
            force: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(applied.changed);
    assert!(applied.rows_inserted >= 3, "{applied:?}");
    let r = env
        .server
        .client
        .clone()
        .check(pb::CheckRequest {
            tenant_id: "initech".into(),
            subject_id: "peter".into(),
            scope: String::new(),
            action: Some(pb::check_request::Action::Permission("docs.write".into())),
            min_revision: applied.revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed, "{r:?}");
    let again = admin
        .apply_policy(root(pb::ApplyPolicyRequest {
            document: doc.into(),
            format: 0,
            force: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    assert_eq!(again.revision, applied.revision);

    let exported = admin
        .export_policy(root(pb::ExportPolicyRequest {
            tenant_ids: vec!["initech".into()],
            format: pb::DocumentFormat::Json as i32,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exported.revision, applied.revision);
    let v: serde_json::Value = serde_json::from_str(&exported.document).unwrap();
    assert_eq!(v["tenants"][0]["id"], "initech");
    assert_eq!(v["tenants"][0]["assignments"][0]["role"], "editor");
    let events = admin
        .list_audit_events(root(pb::ListAuditEventsRequest {
            tenant_id: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events.len(), 2);
    assert_eq!(events.events[0].action, "ApplyPolicy");
    env.stop().await;
}

#[test]
fn admin_token_command_prints_a_token_and_its_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["admin-token", "--tenants", "acme,globex", "--name", "ci"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("line: ")).unwrap();
    assert!(line.ends_with(" acme,globex ci"), "{line}");
    assert!(!line.contains(token), "the file holds only the hash");
    let tokens = AdminTokens::parse(line, "printed").unwrap();
    let admin = tokens.authenticate(token).unwrap();
    assert_eq!(admin.name, "ci");
    assert!(admin.may("globex") && !admin.may("initech"));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["admin-token", "--tenants", "a b"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
}

/// Runs `authzd serve ARGS` and returns its JSON log lines until one has `message`
/// (then stops the process), or its exit code if it exits first. Bounded by 30s.
fn serve_until(args: &[&str], message: &str) -> (Vec<serde_json::Value>, Option<i32>) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let found = v["message"] == message;
                lines.push(v);
                if found {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return (lines, None);
                }
            }
            // The process exited (stderr closed) or the time is up.
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                return (lines, status.code());
            }
        }
    }
}

#[tokio::test]
async fn serve_admin_tokens_file_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let policy = common::example("console.yaml");
    let policy = policy.to_str().unwrap();

    // A missing file marked optional (an absent optional Secret): served without the
    // admin API. (Not marked optional, it is an error: tests/startup.rs.)
    let (lines, code) = serve_until(
        &[
            "--policy",
            policy,
            "--admin-tokens-file",
            missing.to_str().unwrap(),
            "--admin-tokens-optional",
        ],
        "serving",
    );
    assert_eq!(code, None, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "admin API off: the tokens file does not exist"),
        "{lines:?}"
    );

    // An existing file without a database, or a malformed file: refused before binding.
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("{}\n", file_line(ROOT, "*", Some("root")))).unwrap();
    let (lines, code) = serve_until(
        &[
            "--policy",
            policy,
            "--admin-tokens-file",
            file.to_str().unwrap(),
        ],
        "serving",
    );
    assert_eq!(code, Some(64), "{lines:?}");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "sha256:nothex *\n").unwrap();
    let db = TestDb::create("admin_flag").await;
    let (lines, code) = serve_until(
        &[
            "--database-url",
            &db.url,
            "--admin-tokens-file",
            bad.to_str().unwrap(),
        ],
        "serving",
    );
    assert_eq!(code, Some(64), "{lines:?}");
    assert!(
        lines.iter().any(|l| l["cause"]
            .as_str()
            .is_some_and(|c| c.contains("bad:1: expected"))),
        "{lines:?}"
    );

    // With a database and a good file: on.
    let (lines, code) = serve_until(
        &[
            "--database-url",
            &db.url,
            "--admin-tokens-file",
            file.to_str().unwrap(),
        ],
        "serving",
    );
    assert_eq!(code, None, "{lines:?}");
    assert!(
        lines.iter().any(|l| l["message"] == "admin API on"),
        "{lines:?}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn watch_streams_committed_changes_from_a_revision() {
    let env = Env::start("admin_watch").await;
    let mut admin = env.admin();
    let r0 = admin
        .register_subject(root(register("alice")))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let watch = |after: u64, tenant: &str, token: &str| {
        let mut admin = env.admin();
        let req = authed(
            token,
            pb::WatchRequest {
                tenant_id: tenant.into(),
                after_revision: after,
            },
        );
        async move { admin.watch(req).await }
    };
    let mut stream = watch(r0, "acme", ROOT).await.unwrap().into_inner();
    let next = async |s: &mut tonic::Streaming<pb::WatchResponse>| {
        tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("a change within 10s")
            .unwrap()
            .expect("the stream is open")
    };

    // A billing system learns when someone gains and loses a role.
    let r1 = admin
        .grant_role(root(grant("alice", "", "viewer", "")))
        .await
        .unwrap()
        .into_inner()
        .revision;
    admin
        .register_subject(root(pb::RegisterSubjectRequest {
            tenant_id: "globex".into(),
            subject_id: "gus".into(),
            disabled: false,
        }))
        .await
        .unwrap();
    let r2 = admin
        .revoke_role(root(pb::RevokeRoleRequest {
            tenant_id: "acme".into(),
            assignment: Some(assignment("alice", "", "viewer", "")),
        }))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let m = next(&mut stream).await;
    assert_eq!(m.revision, r1);
    assert_eq!(m.changes.len(), 1);
    let c = &m.changes[0];
    assert_eq!(
        (&*c.tenant_id, &*c.entity, c.operation()),
        ("acme", "assignments", pb::ChangeOperation::Insert)
    );
    let row: serde_json::Value = serde_json::from_str(&c.new_json).unwrap();
    assert_eq!(
        (&row["subject_id"], &row["role_id"]),
        (&"alice".into(), &"viewer".into())
    );
    let m = next(&mut stream).await;
    assert_eq!(m.revision, r2, "globex's change is not in acme's stream");
    assert_eq!(m.changes[0].operation(), pb::ChangeOperation::Delete);
    assert!(m.changes[0].old_json.contains("alice") && m.changes[0].new_json.is_empty());
    drop(stream);

    // From an older revision it replays what followed, then goes on.
    let mut all = watch(r0 - 1, "", ROOT).await.unwrap().into_inner();
    let m = next(&mut all).await;
    assert_eq!(m.revision, r0);
    assert_eq!(m.changes[0].entity, "subjects");
    let revisions = [
        next(&mut all).await,
        next(&mut all).await,
        next(&mut all).await,
    ]
    .map(|m| m.revision);
    assert_eq!(revisions[0], r1);
    assert_eq!(revisions[2], r2, "every tenant's changes: {revisions:?}");
    drop(all);

    // Tenant limits apply.
    assert_code(
        watch(0, "", ACME).await,
        Code::PermissionDenied,
        "all tenants",
    );
    assert_code(
        watch(0, "globex", ACME).await,
        Code::PermissionDenied,
        "tenant `globex`",
    );
    assert!(watch(r2, "acme", ACME).await.is_ok());

    // A revision older than the retained change log is refused, with what to do.
    env.db
        .client()
        .await
        .execute(
            "DELETE FROM authz_changes WHERE revision <= $1",
            &[&(r1 as i64)],
        )
        .await
        .unwrap();
    assert_code(
        watch(r0, "acme", ROOT).await,
        Code::OutOfRange,
        &format!("revision {r0} is older than the retained change log"),
    );
    let mut from_r1 = watch(r1, "acme", ROOT).await.unwrap().into_inner();
    assert_eq!(next(&mut from_r1).await.revision, r2);

    // An open stream does not hold up shutdown for the grace period.
    let started = std::time::Instant::now();
    env.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stopped in {:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), from_r1.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "the stream ended: {end:?}");
}

#[tokio::test]
async fn reflection_lists_the_admin_service_when_it_is_served() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1;
    let env = Env::start("admin_reflection").await;
    let mut c =
        v1::server_reflection_client::ServerReflectionClient::new(env.server.channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = c
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("{resp:?}")
    };
    for name in [
        "authz.v1.AuthorizationService",
        "authz.v1.PolicyAdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.service.iter().any(|s| s.name == name),
            "{name}: {list:?}"
        );
    }
    drop(stream);
    env.stop().await;
}

/// A TCP proxy to PostgreSQL that a test can cut: while down it closes every connection,
/// open or new, as an outage would.
struct Proxy {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let task = {
            let (up, conns) = (up.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let target = target.clone();
                    let h = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(h.abort_handle());
                }
            })
        };
        Proxy {
            addr,
            up,
            conns,
            task,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }
}

/// Log lines written while the test runs (a subscriber for this thread only: the
/// current-thread runtime runs the server's tasks here too).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn a_database_outage_is_logged_once_with_a_count() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::create("admin_outage").await;
    db.client().await.batch_execute(SEED).await.unwrap();
    let pg: tokio_postgres::Config = db.url.parse().unwrap();
    let (tokio_postgres::config::Host::Tcp(host), Some(port)) =
        (&pg.get_hosts()[0], pg.get_ports().first())
    else {
        panic!("a TCP database url with a port: {}", db.url)
    };
    let target = format!("{host}:{port}");
    assert!(db.url.contains(&target), "{}", db.url);
    let proxy = Proxy::start(target.clone()).await;
    let admin_url = db.url.replacen(&target, &proxy.addr.to_string(), 1);
    let tokens = AdminTokens::parse(
        &format!("{}\n", file_line(ROOT, "*", Some("root"))),
        "tokens",
    )
    .unwrap();
    let admin = PolicyAdmin::new(
        AdminStore::new(postgres::pool(&admin_url, 4).unwrap()),
        tokens,
    );
    let config = ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        admin: Some(admin),
        ..ServerConfig::default()
    };
    let (server, _follower) =
        TestServer::start_db_configured(FollowConfig::new(db.url.clone()), config).await;
    let mut client = PolicyAdminServiceClient::new(server.channel.clone());
    let register = |n: u32| {
        root(pb::RegisterSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: format!("s{n}"),
            disabled: false,
        })
    };
    client.register_subject(register(0)).await.unwrap();

    proxy.set_up(false);
    for n in 1..=50 {
        let s = client.register_subject(register(n)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    }
    proxy.set_up(true);
    // Pooled connections cut by the outage may fail a few more requests; bounded.
    let mut n = 100;
    loop {
        match client.register_subject(register(n)).await {
            Ok(_) => break,
            Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        }
        n += 1;
        assert!(n < 200, "the database answers again through the proxy");
    }

    let began = logs.lines("admin requests refused: the database is unavailable");
    assert_eq!(began.len(), 1, "one ERROR line per outage: {began:?}");
    assert!(began[0].contains("ERROR"), "{}", began[0]);
    let ended = logs.lines("admin requests served again");
    assert_eq!(ended.len(), 1, "{ended:?}");
    let refused = 50 + (n - 100);
    assert!(
        ended[0].contains(&format!("refused={refused}")),
        "{} (expected refused={refused})",
        ended[0]
    );
    assert!(logs.lines("ERROR").len() <= 2, "{:?}", logs.lines("ERROR"));
    server.stop().await;
    proxy.task.abort();
    db.drop_db().await;
}
