//! Expectation files (`*.expect.yaml`): what a policy must decide, checked by
//! `authzd test` and by the test suite alike (one parser, one comparison).
//!
//! The format is documented in `docs/policy-tests.md`. A file names its policy (relative
//! to the file) and lists check cases (a named permission or a route, with the expected
//! decision, reason and, optionally, the grant Check names), list cases (what
//! ListPermissions answers) and, for a policy that must not load, the expected load
//! error. This module parses and validates a file (errors name `file:line`) and runs it
//! against a compiled [`Policy`] with the evaluator Check uses; it does no I/O but
//! [`ExpectFile::read`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    compile::Policy,
    decision::{Explanation, Reason},
    eval::{Action, Query},
};
use crate::model::{self, Method};

/// The newest format version; a file without `version` is read as version 1.
pub const FORMAT_VERSION: u32 = 1;

/// Largest expectation file read, in bytes: a file is parsed whole, and its cases are
/// held in memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Most cases (check and list cases together) in one file.
pub const MAX_CASES: usize = 100_000;

/// An expectation file as written. See `docs/policy-tests.md`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectFile {
    /// Format version (1, the default when left out).
    #[serde(default)]
    pub version: Option<u32>,
    /// The policy file, relative to this file. Required unless the cases run against a
    /// database.
    #[serde(default)]
    pub policy: Option<String>,
    /// The policy must fail to load, with a message containing this text.
    #[serde(default)]
    pub load_error: Option<String>,
    /// Check cases.
    #[serde(default)]
    pub cases: Vec<Case>,
    /// List cases.
    #[serde(default)]
    pub lists: Vec<ListCase>,
    /// 1-based line of each check case, in order (0 when unknown); filled by
    /// [`ExpectFile::parse`].
    #[serde(skip)]
    pub case_lines: Vec<usize>,
    /// 1-based line of each list case, in order (0 when unknown).
    #[serde(skip)]
    pub list_lines: Vec<usize>,
}

/// One check and what it must answer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Names the case in reports.
    pub name: String,
    /// Tenant id.
    pub tenant: String,
    /// Subject id; empty (the default) is anonymous.
    #[serde(default)]
    pub subject: String,
    /// Scope; empty (the default) is the tenant root.
    #[serde(default)]
    pub scope: String,
    /// A named permission (or `method` and `path`).
    pub permission: Option<String>,
    /// A route's method (with `path`).
    pub method: Option<String>,
    /// A route's path (with `method`).
    pub path: Option<String>,
    /// The expected decision.
    pub allowed: bool,
    /// The expected reason (`granted`, `no_grant`, ...).
    pub reason: String,
    /// The granting role, if given.
    pub role: Option<String>,
    /// The include chain from the assigned role to the granting role, if given.
    pub chain: Option<Vec<String>>,
    /// How the assigned role is held (`direct`, `group`, `default`), if given.
    pub source: Option<String>,
    /// The group it is held through, if given.
    pub group: Option<String>,
    /// The assignment's scope, if given.
    pub grant_scope: Option<String>,
    /// The rule's or entry's pattern that decided a route, if given.
    pub pattern: Option<String>,
    /// For a no-grant on an endpoint entry, the roles it requires, if given.
    pub required_roles: Option<Vec<String>>,
}

/// One listing (ListPermissions) and what it must contain.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListCase {
    /// Names the case in reports.
    pub name: String,
    /// Tenant id.
    pub tenant: String,
    /// Subject id.
    #[serde(default)]
    pub subject: String,
    /// Scope; empty is the tenant root.
    #[serde(default)]
    pub scope: String,
    /// The expected reason, if given (`granted`, `unknown_subject`, ...).
    pub reason: Option<String>,
    /// Exactly these effective roles (any order), if given.
    pub roles: Option<Vec<String>>,
    /// Exactly these named permissions (any order), if given.
    pub permissions: Option<Vec<String>>,
    /// At least these named permissions, if given.
    pub includes_permissions: Option<Vec<String>>,
    /// None of these named permissions, if given.
    pub excludes_permissions: Option<Vec<String>>,
}

/// Why an expectation file is unusable (not a failed expectation).
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is invalid; `line` is 1-based (0 when unknown).
    #[error("{file}:{line}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// Line, 1-based.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// An answer in the terms an expectation uses, whichever way it came (library, gRPC,
/// CLI JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Allowed or not.
    pub allowed: bool,
    /// The reason's name.
    pub reason: String,
    /// The granting role.
    pub role: String,
    /// Assigned role to granting role.
    pub chain: Vec<String>,
    /// `direct`, `group`, `default`, or empty.
    pub source: String,
    /// The group, for `group`.
    pub group: String,
    /// The assignment's scope.
    pub grant_scope: String,
    /// The deciding pattern of a route.
    pub pattern: String,
    /// Roles a denying endpoint entry requires.
    pub required_roles: Vec<String>,
    /// The sentence.
    pub explanation: String,
}

impl From<&Explanation> for Observed {
    fn from(e: &Explanation) -> Self {
        let g = e.grant.as_ref();
        Observed {
            allowed: e.allowed,
            reason: e.reason.as_str().to_owned(),
            role: g.map(|g| g.role.clone()).unwrap_or_default(),
            chain: g.map(|g| g.include_chain.clone()).unwrap_or_default(),
            source: g.map(|g| g.source.to_owned()).unwrap_or_default(),
            group: g.map(|g| g.group_id.clone()).unwrap_or_default(),
            grant_scope: g.map(|g| g.scope.clone()).unwrap_or_default(),
            pattern: e.matched_pattern.clone(),
            required_roles: e.required_roles.clone(),
            explanation: e.explanation.clone(),
        }
    }
}

impl Observed {
    /// From the JSON `authzd check --output json` prints (missing fields are empty).
    pub fn from_json(v: &serde_json::Value) -> Self {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let list = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let g = v.get("grant").cloned().unwrap_or_default();
        let field = |v: &serde_json::Value, k: &str| v.get(k).cloned().unwrap_or_default();
        Observed {
            allowed: v.get("allowed").and_then(|a| a.as_bool()).unwrap_or(false),
            reason: s(&field(v, "reason")),
            role: s(&field(&g, "role")),
            chain: list(&field(&g, "include_chain")),
            source: s(&field(&g, "source")),
            group: s(&field(&g, "group_id")),
            grant_scope: s(&field(&g, "scope")),
            pattern: s(&field(v, "matched_pattern")),
            required_roles: list(&field(v, "required_roles")),
            explanation: s(&field(v, "explanation")),
        }
    }
}

/// A reason by its name in expectation files.
pub fn reason_named(name: &str) -> Option<Reason> {
    [
        Reason::Granted,
        Reason::Public,
        Reason::UnknownTenant,
        Reason::UnknownSubject,
        Reason::SubjectDisabled,
        Reason::NoGrant,
        Reason::NoMatchingRule,
        Reason::MethodNotAllowed,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
}

impl Case {
    /// The validated action, or what is wrong with it.
    pub fn action(&self) -> Result<Action<'_>, String> {
        match (&self.permission, &self.method, &self.path) {
            (Some(p), None, None) => model::name(p)
                .map(Action::Permission)
                .map_err(|e| format!("invalid `permission`: {e}")),
            (None, Some(m), Some(p)) => {
                let method = Method::parse(m).map_err(|e| format!("invalid `method`: {e}"))?;
                let path = model::request_path(p).map_err(|e| format!("invalid `path`: {e}"))?;
                Ok(Action::Route { method, path })
            }
            _ => Err("give `permission`, or `method` and `path` (not both)".to_owned()),
        }
    }

    /// Checks the case's values (ids, scope, action, reason), as a request would be.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("a case needs a `name`".to_owned());
        }
        model::tenant_id(&self.tenant).map_err(|e| format!("invalid `tenant`: {e}"))?;
        if !self.subject.is_empty() {
            model::subject_id(&self.subject).map_err(|e| format!("invalid `subject`: {e}"))?;
        }
        model::scope(&self.scope).map_err(|e| format!("invalid `scope`: {e}"))?;
        self.action()?;
        let reason = reason_named(&self.reason)
            .ok_or_else(|| format!("unknown `reason: {}`", self.reason))?;
        if reason.allowed() != self.allowed {
            return Err(format!(
                "`allowed: {}` contradicts `reason: {}`",
                self.allowed, self.reason
            ));
        }
        if let Some(s) = &self.source
            && !matches!(s.as_str(), "direct" | "group" | "default")
        {
            return Err(format!("unknown `source: {s}` (direct, group or default)"));
        }
        Ok(())
    }

    /// The explanation a compiled policy gives for this case, through the evaluator
    /// Check uses. Errors if the case is invalid ([`Case::validate`]).
    pub fn explain(&self, policy: &Policy) -> Result<Explanation, String> {
        let action = self.action()?;
        let scope = model::scope(&self.scope).map_err(|e| format!("invalid `scope`: {e}"))?;
        let q = Query {
            subject: &self.subject,
            scope,
            action,
        };
        Ok(
            match policy.tenants.iter().find(|t| *t.id == *self.tenant) {
                Some(t) => t.explain(&q, &t.check(&q)),
                None => Explanation::unknown_tenant(
                    &self.tenant,
                    policy.tenants.first().map_or(1, |t| t.revision),
                ),
            },
        )
    }

    /// Compares an answer with the case; a message listing every difference, or `None`.
    pub fn mismatch(&self, got: &Observed) -> Option<String> {
        let mut diffs = Vec::new();
        if got.allowed != self.allowed {
            diffs.push(format!(
                "allowed: want {} got {}",
                self.allowed, got.allowed
            ));
        }
        if got.reason != self.reason {
            diffs.push(format!("reason: want {} got {}", self.reason, got.reason));
        }
        let mut opt = |name: &str, want: &Option<String>, got: &str| {
            if let Some(w) = want
                && w != got
            {
                diffs.push(format!("{name}: want `{w}` got `{got}`"));
            }
        };
        opt("role", &self.role, &got.role);
        opt("source", &self.source, &got.source);
        opt("group", &self.group, &got.group);
        opt("grant_scope", &self.grant_scope, &got.grant_scope);
        opt("pattern", &self.pattern, &got.pattern);
        if let Some(c) = &self.chain
            && *c != got.chain
        {
            diffs.push(format!("chain: want {c:?} got {:?}", got.chain));
        }
        if let Some(r) = &self.required_roles
            && *r != got.required_roles
        {
            diffs.push(format!(
                "required_roles: want {r:?} got {:?}",
                got.required_roles
            ));
        }
        if got.explanation.is_empty()
            || !got
                .explanation
                .starts_with(if got.allowed { "allowed" } else { "denied" })
        {
            diffs.push(format!(
                "explanation does not state the decision: `{}`",
                got.explanation
            ));
        }
        (!diffs.is_empty()).then(|| format!("case `{}`: {}", self.name, diffs.join("; ")))
    }
}

impl ListCase {
    /// Checks the case's values.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("a list case needs a `name`".to_owned());
        }
        model::tenant_id(&self.tenant).map_err(|e| format!("invalid `tenant`: {e}"))?;
        if !self.subject.is_empty() {
            model::subject_id(&self.subject).map_err(|e| format!("invalid `subject`: {e}"))?;
        }
        model::scope(&self.scope).map_err(|e| format!("invalid `scope`: {e}"))?;
        if let Some(r) = &self.reason
            && reason_named(r).is_none()
        {
            return Err(format!("unknown `reason: {r}`"));
        }
        Ok(())
    }

    /// Runs the listing on a compiled policy; a message listing every difference, or
    /// `None`.
    pub fn mismatch(&self, policy: &Policy) -> Option<String> {
        let listing = policy
            .tenants
            .iter()
            .find(|t| *t.id == *self.tenant)
            .map(|t| t.list(&self.subject, &self.scope));
        let (reason, mut roles, permissions) = match &listing {
            Some(l) => (
                l.reason.map_or("", |r| r.as_str()),
                l.roles.iter().map(|r| r.role.clone()).collect::<Vec<_>>(),
                l.permissions.clone(),
            ),
            None => (Reason::UnknownTenant.as_str(), Vec::new(), Vec::new()),
        };
        roles.sort();
        let mut diffs = Vec::new();
        if let Some(r) = &self.reason
            && r != reason
        {
            diffs.push(format!("reason: want {r} got {reason}"));
        }
        let sorted = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v.dedup();
            v
        };
        if let Some(want) = &self.roles
            && sorted(want) != roles
        {
            diffs.push(format!("roles: want {:?} got {roles:?}", sorted(want)));
        }
        if let Some(want) = &self.permissions
            && sorted(want) != permissions
        {
            diffs.push(format!(
                "permissions: want {:?} got {permissions:?}",
                sorted(want)
            ));
        }
        if let Some(want) = &self.includes_permissions {
            let missing: Vec<&String> = want.iter().filter(|p| !permissions.contains(p)).collect();
            if !missing.is_empty() {
                diffs.push(format!("permissions lack {missing:?}"));
            }
        }
        if let Some(want) = &self.excludes_permissions {
            let present: Vec<&String> = want.iter().filter(|p| permissions.contains(p)).collect();
            if !present.is_empty() {
                diffs.push(format!("permissions include {present:?}"));
            }
        }
        (!diffs.is_empty()).then(|| format!("list `{}`: {}", self.name, diffs.join("; ")))
    }
}

impl ExpectFile {
    /// Reads and parses a file (at most [`MAX_FILE_BYTES`]).
    pub fn read(path: &Path) -> Result<Self, ExpectError> {
        let file = path.display().to_string();
        let io = |source| ExpectError::Io {
            file: file.clone(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(io)?.len();
        if bytes > MAX_FILE_BYTES {
            return Err(ExpectError::Invalid {
                file,
                line: 0,
                message: format!("{bytes} bytes is more than the limit of {MAX_FILE_BYTES}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, &file)
    }

    /// Parses and validates a file's text; `file` names it in errors. Every case is
    /// validated as a request would be, so a typo in a method or a reason is an error
    /// naming its line, never a failed (or passed) expectation.
    pub fn parse(text: &str, file: &str) -> Result<Self, ExpectError> {
        let invalid = |line: usize, message: String| ExpectError::Invalid {
            file: file.to_owned(),
            line,
            message,
        };
        if let Some((line, _)) = super::nesting::too_deep(text, super::nesting::MAX_NESTING) {
            return Err(invalid(
                line,
                format!(
                    "nested deeper than {} levels; refused before parsing",
                    super::nesting::MAX_NESTING
                ),
            ));
        }
        let mut doc: ExpectFile =
            super::source::yaml_limited(text, super::Limits::default().document_bytes).map_err(
                |e| {
                    let line = e.location().map_or(0, |l| l.line());
                    let msg = e.to_string();
                    let msg = match msg.rfind(" at line ") {
                        Some(i) => msg.get(..i).unwrap_or(&msg).to_owned(),
                        None => msg,
                    };
                    invalid(line, msg)
                },
            )?;
        let version = doc.version.unwrap_or(FORMAT_VERSION);
        if version != FORMAT_VERSION {
            return Err(invalid(
                key_line(text, "version"),
                format!("unsupported `version: {version}` (expected {FORMAT_VERSION})"),
            ));
        }
        if doc.cases.len() + doc.lists.len() > MAX_CASES {
            return Err(invalid(
                0,
                format!(
                    "{} cases is more than the limit of {MAX_CASES}",
                    doc.cases.len() + doc.lists.len()
                ),
            ));
        }
        if doc.load_error.is_none() && doc.cases.is_empty() && doc.lists.is_empty() {
            return Err(invalid(
                0,
                "no `cases`, `lists` or `load_error`: nothing to test".to_owned(),
            ));
        }
        if doc.load_error.is_some() && !(doc.cases.is_empty() && doc.lists.is_empty()) {
            return Err(invalid(
                key_line(text, "load_error"),
                "`load_error` expects the policy not to load: it cannot have cases".to_owned(),
            ));
        }
        doc.case_lines = item_lines(text, "cases", doc.cases.len());
        doc.list_lines = item_lines(text, "lists", doc.lists.len());
        for (i, c) in doc.cases.iter().enumerate() {
            c.validate()
                .map_err(|m| invalid(doc.case_lines.get(i).copied().unwrap_or(0), m))?;
        }
        for (i, c) in doc.lists.iter().enumerate() {
            c.validate()
                .map_err(|m| invalid(doc.list_lines.get(i).copied().unwrap_or(0), m))?;
        }
        Ok(doc)
    }

    /// The policy file this file names, relative to the file's directory.
    pub fn policy_path(&self, expect_file: &Path) -> Option<PathBuf> {
        let p = self.policy.as_ref()?;
        Some(match expect_file.parent() {
            Some(dir) => dir.join(p),
            None => PathBuf::from(p),
        })
    }

    /// Runs every expectation against `policy` (or its load error), in file order.
    pub fn run(&self, policy: Result<&Policy, &str>) -> Vec<CaseResult> {
        let mut out = Vec::new();
        match (&self.load_error, policy) {
            (Some(want), Err(got)) => out.push(CaseResult {
                name: "policy fails to load".to_owned(),
                kind: CaseKind::LoadError,
                line: 0,
                failure: (!got.contains(want.as_str()))
                    .then(|| format!("load error: want a message containing `{want}` got `{got}`")),
            }),
            (Some(want), Ok(_)) => out.push(CaseResult {
                name: "policy fails to load".to_owned(),
                kind: CaseKind::LoadError,
                line: 0,
                failure: Some(format!(
                    "load error: want a message containing `{want}`, but the policy loads"
                )),
            }),
            (None, Err(got)) => out.push(CaseResult {
                name: "policy loads".to_owned(),
                kind: CaseKind::LoadError,
                line: 0,
                failure: Some(format!("the policy does not load: {got}")),
            }),
            (None, Ok(policy)) => {
                for (i, c) in self.cases.iter().enumerate() {
                    let failure = match c.explain(policy) {
                        Ok(e) => c.mismatch(&Observed::from(&e)),
                        Err(e) => Some(e),
                    };
                    out.push(CaseResult {
                        name: c.name.clone(),
                        kind: CaseKind::Check,
                        line: self.case_lines.get(i).copied().unwrap_or(0),
                        failure,
                    });
                }
                for (i, c) in self.lists.iter().enumerate() {
                    out.push(CaseResult {
                        name: c.name.clone(),
                        kind: CaseKind::List,
                        line: self.list_lines.get(i).copied().unwrap_or(0),
                        failure: c.mismatch(policy),
                    });
                }
            }
        }
        out
    }
}

/// What kind of expectation a result is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseKind {
    /// A check case.
    Check,
    /// A list case.
    List,
    /// Whether the policy loads (or fails to, as expected).
    LoadError,
}

/// The outcome of one expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// What kind of case.
    pub kind: CaseKind,
    /// 1-based line of the case in its file (0 when unknown).
    pub line: usize,
    /// What differed; `None` when the case passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The 1-based line of the first top-level `key:` (0 if not found).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map_or(0, |i| i + 1)
}

/// The 1-based lines where the items of the top-level sequence `key:` start, in order;
/// `count` zeros when they cannot be found (a flow-style or JSON file), so errors then
/// name line 0 and the case's name.
fn item_lines(text: &str, key: &str, count: usize) -> Vec<usize> {
    let start = key_line(text, key);
    let mut lines = Vec::with_capacity(count);
    let mut indent: Option<usize> = None;
    if start > 0 {
        for (i, l) in text.lines().enumerate().skip(start) {
            let trimmed = l.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let ind = l.len() - trimmed.len();
            if ind == 0 && !trimmed.starts_with('-') {
                break; // the next top-level key
            }
            if trimmed == "-" || trimmed.starts_with("- ") {
                match indent {
                    None => {
                        indent = Some(ind);
                        lines.push(i + 1);
                    }
                    Some(n) if n == ind => lines.push(i + 1),
                    Some(_) => {}
                }
            }
        }
    }
    if lines.len() != count {
        return vec![0; count];
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: 1\nroles:\n  - id: r\n    permissions: [p.x]\ntenants:\n  - id: t\n    subjects: [{id: a}]\n    assignments: [{subject: a, role: r}]\n";

    fn policy() -> Policy {
        let doc =
            super::super::PolicyDocument::parse(POLICY, super::super::source::Format::Yaml, "p")
                .unwrap();
        super::super::compile(&doc, "p", 1).unwrap()
    }

    #[test]
    fn cases_pass_and_fail_with_their_lines() {
        let text = "policy: p.yaml\ncases:\n  - name: a holds p.x\n    tenant: t\n    subject: a\n    permission: p.x\n    allowed: true\n    reason: granted\n    role: r\n  # a comment\n  - name: wrong\n    tenant: t\n    subject: a\n    permission: p.y\n    allowed: true\n    reason: granted\nlists:\n  - name: a lists\n    tenant: t\n    subject: a\n    roles: [r]\n    permissions: [p.x]\n";
        let f = ExpectFile::parse(text, "x.expect.yaml").unwrap();
        assert_eq!(f.case_lines, [3, 11]);
        assert_eq!(f.list_lines, [18]);
        let r = f.run(Ok(&policy()));
        assert_eq!(r.len(), 3);
        assert!(r[0].failure.is_none(), "{r:?}");
        let fail = r[1].failure.as_deref().unwrap();
        assert!(fail.contains("allowed: want true got false"), "{fail}");
        assert_eq!(r[1].line, 11);
        assert!(r[2].failure.is_none(), "{r:?}");
    }

    #[test]
    fn invalid_cases_name_file_and_line() {
        let text = "cases:\n  - name: a\n    tenant: t\n    permission: p\n    allowed: true\n    reason: granted\n  - name: b\n    tenant: t\n    method: get\n    path: /x\n    allowed: false\n    reason: no_grant\n";
        let e = ExpectFile::parse(text, "f.yaml").unwrap_err().to_string();
        assert!(e.starts_with("f.yaml:7: invalid `method`"), "{e}");
        let text = "cases:\n  - name: a\n    tenant: t\n    permission: p\n    allowed: true\n    reason: denied\n";
        let e = ExpectFile::parse(text, "f.yaml").unwrap_err().to_string();
        assert!(e.starts_with("f.yaml:2: unknown `reason: denied`"), "{e}");
        let text = "cases:\n  - name: a\n    tenant: t\n    permission: p\n    allowed: true\n    reason: no_grant\n";
        let e = ExpectFile::parse(text, "f.yaml").unwrap_err().to_string();
        assert!(e.contains("contradicts"), "{e}");
        let e = ExpectFile::parse("cases:\n  - name: a\n    tennant: t\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.yaml:3: "), "{e}");
        assert!(e.contains("unknown field `tennant`"), "{e}");
        let e = ExpectFile::parse("version: 2\ncases: []\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.yaml:1: unsupported `version: 2`"), "{e}");
        let e = ExpectFile::parse("policy: p.yaml\n", "f.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to test"), "{e}");
    }

    #[test]
    fn load_error_expectations() {
        let f = ExpectFile::parse("policy: p.yaml\nload_error: include cycle\n", "f").unwrap();
        let ok = f.run(Err("p.yaml: tenant `t`: include cycle `a -> b -> a`"));
        assert!(ok[0].failure.is_none());
        let other = f.run(Err("p.yaml: unknown role"));
        assert!(other[0].failure.is_some());
        let loads = f.run(Ok(&policy()));
        assert!(
            loads[0]
                .failure
                .as_deref()
                .unwrap()
                .contains("the policy loads")
        );
    }
}
