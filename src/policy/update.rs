//! Incremental changes to a tenant's members: subjects, group memberships and role
//! assignments. The frequent changes of a running system (a grant, a revoke, a new or
//! disabled member) are applied to a copy of the member data, sharing every role-level
//! part of the snapshot; nothing is read back from the source.
//!
//! Changes that touch role definitions, the endpoint table, default roles or the set of
//! groups are not applied here: [`UpdateError::NeedsReload`] tells the caller to rebuild
//! the tenant from its source instead.

use std::sync::Arc;

use super::snapshot::{
    Assignment, Assignments, GroupIdx, Members, ScopeIdx, Subject, TenantSnapshot,
};
use crate::model;

/// A change to a tenant's members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// A subject registered, or its disabled flag changed.
    UpsertSubject {
        /// Subject id.
        id: String,
        /// Disabled flag.
        disabled: bool,
    },
    /// A subject removed (with its assignments and memberships).
    DeleteSubject {
        /// Subject id.
        id: String,
    },
    /// A subject joined a group.
    AddMember {
        /// Group id.
        group: String,
        /// Subject id.
        subject: String,
    },
    /// A subject left a group.
    RemoveMember {
        /// Group id.
        group: String,
        /// Subject id.
        subject: String,
    },
    /// A role assigned to a subject or group at a scope.
    Grant(AssignmentChange),
    /// An assignment removed.
    Revoke(AssignmentChange),
}

/// The assignment a grant or revoke is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignmentChange {
    /// Assigned to this subject (exactly one of `subject` and `group`).
    pub subject: Option<String>,
    /// Assigned to this group.
    pub group: Option<String>,
    /// The role.
    pub role: String,
    /// The scope.
    pub scope: String,
}

/// Why a change could not be applied incrementally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The change refers to something this snapshot does not know (a role or group
    /// created in the same transaction, say): rebuild the tenant from the source.
    #[error("tenant `{tenant}` needs a reload: {why}")]
    NeedsReload {
        /// Tenant id.
        tenant: String,
        /// What was missing.
        why: String,
    },
}

impl TenantSnapshot {
    /// A new snapshot at `revision` with `changes` applied in order. The role-level parts
    /// are shared with `self`; member data is copied.
    pub fn with_member_changes(
        &self,
        changes: &[MemberChange],
        revision: u64,
    ) -> Result<TenantSnapshot, UpdateError> {
        let reload = |why: String| UpdateError::NeedsReload {
            tenant: self.id.to_string(),
            why,
        };
        let mut subjects = self.subjects.to_map();
        let mut groups = self.groups.to_vec();
        let mut scopes = self.scopes.to_vec();
        let group_idx = |groups: &[super::snapshot::Group], id: &str| -> Option<GroupIdx> {
            groups
                .iter()
                .position(|g| &*g.id == id)
                .map(|i| i as GroupIdx)
        };
        for change in changes {
            match change {
                MemberChange::UpsertSubject { id, disabled } => match subjects.get_mut(id.as_str())
                {
                    Some(s) => s.disabled = *disabled,
                    None => {
                        subjects.insert(
                            id.as_str().into(),
                            Subject {
                                disabled: *disabled,
                                assignments: Assignments::default(),
                                groups: Box::new([]),
                            },
                        );
                    }
                },
                MemberChange::DeleteSubject { id } => {
                    if let Some(s) = subjects.remove(id.as_str()) {
                        for &gi in s.groups.iter() {
                            if let Some(g) = groups.get_mut(gi as usize) {
                                g.members =
                                    g.members.iter().filter(|m| ***m != **id).cloned().collect();
                            }
                        }
                    }
                }
                MemberChange::AddMember { group, subject }
                | MemberChange::RemoveMember { group, subject } => {
                    let adding = matches!(change, MemberChange::AddMember { .. });
                    // Removing from a group or subject deleted earlier in the same
                    // transaction (a cascade) leaves nothing to do.
                    let (gi, s) = match (
                        group_idx(&groups, group),
                        subjects.get_mut(subject.as_str()),
                    ) {
                        (Some(gi), Some(s)) => (gi, s),
                        _ if !adding => continue,
                        (None, _) => return Err(reload(format!("unknown group `{group}`"))),
                        (_, None) => return Err(reload(format!("unknown subject `{subject}`"))),
                    };
                    let mut list = s.groups.to_vec();
                    list.retain(|&g| g != gi);
                    if adding {
                        // In group order, as a fresh compile lists memberships (explanations
                        // name the first group that grants).
                        let at = list.partition_point(|&g| g < gi);
                        list.insert(at, gi);
                    }
                    s.groups = list.into_boxed_slice();
                    if let Some(g) = groups.get_mut(gi as usize) {
                        let mut members: Vec<Box<str>> = g
                            .members
                            .iter()
                            .filter(|m| ***m != **subject)
                            .cloned()
                            .collect();
                        if adding {
                            members.push(subject.as_str().into());
                        }
                        g.members = members.into_boxed_slice();
                    }
                }
                MemberChange::Grant(a) | MemberChange::Revoke(a) => {
                    let granting = matches!(change, MemberChange::Grant(_));
                    let role = self
                        .role_named(&a.role)
                        .ok_or_else(|| reload(format!("unknown role `{}`", a.role)))?;
                    let scope = match scopes.iter().position(|s| **s == *a.scope) {
                        Some(i) => i as ScopeIdx,
                        None if granting => {
                            model::scope(&a.scope)
                                .map_err(|e| reload(format!("scope `{}` {e}", a.scope)))?;
                            scopes.push(a.scope.as_str().into());
                            (scopes.len() - 1) as ScopeIdx
                        }
                        // Revoking at a scope nothing was ever assigned at: nothing to do.
                        None => continue,
                    };
                    let assignment = Assignment { role, scope };
                    let list = match (&a.subject, &a.group) {
                        (Some(s), None) => match subjects.get_mut(s.as_str()) {
                            Some(subject) => &mut subject.assignments,
                            // Revoked along with a subject deleted in the same transaction.
                            None if !granting => continue,
                            None => return Err(reload(format!("unknown subject `{s}`"))),
                        },
                        (None, Some(g)) => {
                            match group_idx(&groups, g).and_then(|gi| groups.get_mut(gi as usize)) {
                                Some(group) => &mut group.assignments,
                                None if !granting => continue,
                                None => return Err(reload(format!("unknown group `{g}`"))),
                            }
                        }
                        _ => {
                            return Err(reload(
                                "assignment needs exactly one of subject and group".into(),
                            ));
                        }
                    };
                    let mut v = list.to_vec();
                    v.retain(|x| *x != assignment);
                    if granting {
                        v.push(assignment);
                        // Keep nearest scope first (stable: ties stay in grant order).
                        v.sort_by_key(|x| std::cmp::Reverse(scope_depth(&scopes, x.scope)));
                    }
                    *list = v.into();
                }
            }
        }
        Ok(TenantSnapshot {
            id: self.id.clone(),
            revision,
            builtins: Arc::clone(&self.builtins),
            custom: Arc::clone(&self.custom),
            role_index: Arc::clone(&self.role_index),
            permission_holders: Arc::clone(&self.permission_holders),
            endpoints: Arc::clone(&self.endpoints),
            endpoint_matcher: Arc::clone(&self.endpoint_matcher),
            default_roles: Arc::clone(&self.default_roles),
            subjects: Members::new(subjects),
            groups: groups.into_boxed_slice(),
            scopes: scopes.into_boxed_slice(),
            holders: Default::default(),
        })
    }
}

fn scope_depth(scopes: &[Box<str>], idx: ScopeIdx) -> usize {
    scopes.get(idx as usize).map_or(0, |s| {
        if s.is_empty() {
            0
        } else {
            s.split('/').count()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::Method,
        policy::{Action, PolicyDocument, Query, Reason, compile, source::Format},
    };

    const DOC: &str = "version: 1
roles:
  - id: viewer
    permissions: [read]
  - id: editor
    includes: [viewer]
    permissions: [write]
tenants:
  - id: t
    subjects: [{id: a}, {id: b}]
    groups: [{id: g, members: [a]}]
    assignments:
      - {subject: a, role: viewer}
";

    fn snapshot() -> TenantSnapshot {
        let doc = PolicyDocument::parse(DOC, Format::Yaml, "t.yaml").unwrap();
        compile(&doc, "t.yaml", 1).unwrap().tenants.remove(0)
    }

    fn can(s: &TenantSnapshot, subject: &str, scope: &str, p: &str) -> bool {
        s.check(&Query {
            subject,
            scope,
            action: Action::Permission(p),
        })
        .allowed()
    }

    fn grant(
        subject: Option<&str>,
        group: Option<&str>,
        role: &str,
        scope: &str,
    ) -> AssignmentChange {
        AssignmentChange {
            subject: subject.map(Into::into),
            group: group.map(Into::into),
            role: role.into(),
            scope: scope.into(),
        }
    }

    #[test]
    fn grants_and_revokes_apply_without_touching_the_old_snapshot() {
        let s1 = snapshot();
        assert!(!can(&s1, "b", "w/1", "write"));
        let s2 = s1
            .with_member_changes(
                &[MemberChange::Grant(grant(Some("b"), None, "editor", "w/1"))],
                2,
            )
            .unwrap();
        assert_eq!(s2.revision, 2);
        assert!(can(&s2, "b", "w/1", "write"));
        assert!(can(&s2, "b", "w/1/x", "read"));
        assert!(!can(&s2, "b", "", "write"), "the grant is scoped");
        assert!(
            !can(&s1, "b", "w/1", "write"),
            "a published snapshot is never changed"
        );
        assert!(
            Arc::ptr_eq(&s1.custom, &s2.custom)
                && Arc::ptr_eq(&s1.endpoint_matcher, &s2.endpoint_matcher)
        );
        let s3 = s2
            .with_member_changes(
                &[MemberChange::Revoke(grant(
                    Some("b"),
                    None,
                    "editor",
                    "w/1",
                ))],
                3,
            )
            .unwrap();
        assert!(!can(&s3, "b", "w/1", "write"));
        // Granting twice is idempotent; revoking what is not there is a no-op.
        let g = MemberChange::Grant(grant(Some("a"), None, "viewer", ""));
        let s4 = s3.with_member_changes(&[g.clone(), g], 4).unwrap();
        assert_eq!(s4.subjects.get("a").unwrap().assignments.len(), 1);
        let s5 = s4
            .with_member_changes(
                &[MemberChange::Revoke(grant(
                    Some("a"),
                    None,
                    "editor",
                    "nowhere",
                ))],
                5,
            )
            .unwrap();
        assert_eq!(s5.subjects.get("a").unwrap().assignments.len(), 1);
    }

    #[test]
    fn subjects_memberships_and_group_grants() {
        let s = snapshot()
            .with_member_changes(
                &[
                    MemberChange::UpsertSubject {
                        id: "c".into(),
                        disabled: false,
                    },
                    MemberChange::AddMember {
                        group: "g".into(),
                        subject: "c".into(),
                    },
                    MemberChange::Grant(grant(None, Some("g"), "editor", "")),
                ],
                2,
            )
            .unwrap();
        assert!(can(&s, "c", "", "write"));
        assert!(can(&s, "a", "", "write"));
        let s = s
            .with_member_changes(
                &[
                    MemberChange::RemoveMember {
                        group: "g".into(),
                        subject: "c".into(),
                    },
                    MemberChange::UpsertSubject {
                        id: "a".into(),
                        disabled: true,
                    },
                ],
                3,
            )
            .unwrap();
        assert!(!can(&s, "c", "", "write"));
        let d = s.check(&Query {
            subject: "a",
            scope: "",
            action: Action::Route {
                method: Method::parse("GET").unwrap(),
                path: "/x",
            },
        });
        assert_eq!(d.reason, Reason::SubjectDisabled);
        let s = s
            .with_member_changes(&[MemberChange::DeleteSubject { id: "a".into() }], 4)
            .unwrap();
        assert!(!s.subjects.contains_key("a"));
        assert!(s.groups[0].members.is_empty());
    }

    #[test]
    fn unknown_roles_and_groups_ask_for_a_reload() {
        let s = snapshot();
        for change in [
            MemberChange::Grant(grant(Some("a"), None, "brand-new-role", "")),
            MemberChange::Grant(grant(None, Some("new-group"), "viewer", "")),
            MemberChange::AddMember {
                group: "new-group".into(),
                subject: "a".into(),
            },
        ] {
            assert!(matches!(
                s.with_member_changes(&[change], 2),
                Err(UpdateError::NeedsReload { .. })
            ));
        }
    }
}
