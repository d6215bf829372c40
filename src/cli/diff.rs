//! `authzd diff OLD NEW`: the structural and effective-access difference between two
//! policies ([`crate::policy::diff`]), as text, JSON or Markdown (for a pull request).
//!
//! OLD and NEW are policy files, `now` for the database's current state, or `rev:N` for
//! its state at revision N, rebuilt from the change log (both need `--database-url`).
//! Exit codes: 0 (with `--exit-code`: 0 no access change, 1 some), 64 a bad argument
//! (including a revision the database cannot rebuild), 65 an invalid policy, 66 an
//! unreadable file, 69/70 the database.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::PathBuf,
};

use clap::{Args, ValueEnum};

use super::{
    Exit, load_exit,
    migrate::{block_on, report},
};
use crate::{
    config::LimitArgs,
    policy::{
        Limits, Policy, PolicyDocument, compile_with,
        diff::{
            Cause, Changes, Direction, PolicyDiff, RoleChange, RouteChange, ScopedChange, Side,
            SubjectAccess, TenantAccess, Via, diff, role_change_text,
        },
        source::SourceError,
    },
    store::{
        file::LoadError,
        postgres::{StoreError, connect, export_at},
        sync::{SyncError, export_current},
    },
};

/// `authzd diff`.
#[derive(Clone, Debug, Args)]
pub struct DiffArgs {
    /// The old policy: a file, `now` (the database's current state) or `rev:N` (the
    /// database's state at revision N).
    pub old: String,
    /// The new policy: a file, `now` or `rev:N`.
    pub new: String,
    /// PostgreSQL URL, for `now` and `rev:N`.
    #[arg(long, env = "AUTHZ_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = DiffOutput::Text)]
    pub output: DiffOutput,
    /// Exit 1 when someone's effective access changes (0 when not).
    #[arg(long)]
    pub exit_code: bool,
    /// Per-tenant limits policy files are held to.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What `authzd diff` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DiffOutput {
    /// For people, in a terminal.
    #[default]
    Text,
    /// The whole diff as JSON (the shape of `DiffPolicy`'s answer).
    Json,
    /// Markdown, to paste into a pull request.
    Markdown,
}

/// The diff as JSON: its fields, and `access_changed` (whether anyone's effective
/// access changes, as `--exit-code` and DiffPolicy's `access_changed` say).
pub fn json(d: &PolicyDiff) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(d)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "access_changed".to_owned(),
            serde_json::Value::Bool(d.access_changed()),
        );
    }
    Ok(v)
}

/// Subjects named in one block of alike subjects in text and Markdown; the rest are
/// counted.
const LISTED_NAMES: usize = 20;

/// A policy to compare: its label, document and compiled form.
pub type Loaded = (String, PolicyDocument, Policy);

/// Loads one side: `now` or `rev:N` from the database, else a file.
fn load_side(which: &str, args: &DiffArgs) -> Result<Loaded, Exit> {
    if which == "now" {
        let Some(url) = &args.database_url else {
            eprintln!("error: `now` needs `--database-url`");
            return Err(Exit::Usage);
        };
        return database(url);
    }
    if let Some(n) = which.strip_prefix("rev:") {
        let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
        let (true, Ok(revision)) = (digits, n.parse::<u64>()) else {
            eprintln!("error: `{which}`: a revision is `rev:N`, N a whole number (0 or more)");
            return Err(Exit::Usage);
        };
        let Some(url) = &args.database_url else {
            eprintln!("error: `{which}` needs `--database-url`");
            return Err(Exit::Usage);
        };
        return database_at(url, Some(revision)).map(|(loaded, _)| loaded);
    }
    let path = PathBuf::from(which);
    let limits = args.limits.limits();
    let doc = read(&path, limits).map_err(|e| {
        eprintln!("{e}");
        load_exit(&e)
    })?;
    let policy = compile_with(&doc, which, 1, limits).map_err(|e| {
        eprintln!("{e}");
        Exit::DataErr
    })?;
    Ok((which.to_owned(), doc, policy))
}

fn read(path: &std::path::Path, limits: Limits) -> Result<PolicyDocument, LoadError> {
    let file = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SourceError::Io {
        file: file.clone(),
        source,
    })?;
    if meta.len() > limits.document_bytes {
        return Err(SourceError::TooLarge {
            file,
            bytes: meta.len(),
            limit: limits.document_bytes,
        }
        .into());
    }
    Ok(PolicyDocument::read_limited(path, limits.document_bytes)?)
}

/// The database's current state as a side.
pub fn database(url: &str) -> Result<Loaded, Exit> {
    database_with_limits(url).map(|(loaded, _)| loaded)
}

/// [`database`], with the limits the database holds documents to (`authz_limits`).
pub fn database_with_limits(url: &str) -> Result<(Loaded, Limits), Exit> {
    database_at(url, None)
}

/// The database's state at a past revision (`rev:N`, rebuilt from the change log:
/// [`export_at`]), or now (`None`), as a side, with the limits the database holds
/// documents to now. A revision the database cannot rebuild (newer than its own, or
/// older than the retained change log) is a bad argument (exit 64).
fn database_at(url: &str, at: Option<u64>) -> Result<(Loaded, Limits), Exit> {
    // A URL that cannot work is a bad argument, as for every database command.
    super::migrate::check_url(url)?;
    let mut out = None;
    let exit = block_on(async {
        let mut client = match connect(url).await {
            Ok(c) => c,
            Err(e) => return report(&SyncError::from(e)),
        };
        match at {
            None => match export_current(&mut client).await {
                Ok(x) => {
                    out = Some(x);
                    Exit::Ok
                }
                Err(e) => report(&e),
            },
            Some(revision) => match export_at(&mut client, revision).await {
                Ok((doc, limits)) => {
                    out = Some((revision, doc, limits));
                    Exit::Ok
                }
                Err(StoreError::Revision(message)) => {
                    eprintln!("error: `rev:{revision}`: {message}");
                    Exit::Usage
                }
                Err(e) => report(&SyncError::from(e)),
            },
        }
    });
    let Some((revision, doc, limits)) = out else {
        return Err(exit);
    };
    let limits = Limits {
        document_bytes: u64::MAX,
        ..limits
    };
    let label = format!("database revision {revision}");
    match compile_with(&doc, &label, revision, limits) {
        Ok(p) => Ok(((label, doc, p), limits)),
        Err(e) => {
            eprintln!("{e}");
            Err(Exit::DataErr)
        }
    }
}

/// Runs the command.
pub fn run(args: &DiffArgs) -> Exit {
    let old = match load_side(&args.old, args) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let new = match load_side(&args.new, args) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let d = match diff(
        Side {
            label: &old.0,
            doc: &old.1,
            policy: &old.2,
        },
        Side {
            label: &new.0,
            doc: &new.1,
            policy: &new.2,
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::DataErr;
        }
    };
    let text = match args.output {
        DiffOutput::Text => render(&d, false),
        DiffOutput::Markdown => render(&d, true),
        DiffOutput::Json => match json(&d).and_then(|v| serde_json::to_string_pretty(&v)) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Software;
            }
        },
    };
    super::out(&text);
    if args.exit_code && d.access_changed() {
        Exit::Unhealthy
    } else {
        Exit::Ok
    }
}

/// Writing for a terminal or for Markdown: headings, list items and code spans.
struct Style {
    md: bool,
}

impl Style {
    fn code(&self, s: &str) -> String {
        if self.md {
            // A backtick inside a code span would end it: use a longer fence.
            if s.contains('`') {
                format!("`` {s} ``")
            } else {
                format!("`{s}`")
            }
        } else {
            format!("`{s}`")
        }
    }
    fn heading(&self, out: &mut String, level: usize, text: &str) {
        if self.md {
            let _ = writeln!(out, "\n{} {text}\n", "#".repeat(level + 2));
        } else {
            let _ = writeln!(out, "{}{text}", "  ".repeat(level.saturating_sub(1)));
        }
    }
    /// `+`/`-` in a terminal; words in Markdown, where a leading `-` would be a list.
    fn sign(&self, added: bool, verb: bool) -> &'static str {
        match (self.md, added, verb) {
            (false, true, _) => "+",
            (false, false, _) => "-",
            (true, true, true) => "gains",
            (true, false, true) => "loses",
            (true, true, false) => "added",
            (true, false, false) => "removed",
        }
    }
    fn item(&self, out: &mut String, depth: usize, text: &str) {
        if self.md {
            let _ = writeln!(out, "{}- {text}", "  ".repeat(depth));
        } else {
            let _ = writeln!(out, "{}{text}", "  ".repeat(depth + 1));
        }
    }
}

fn scope_words(st: &Style, scopes: &[String]) -> String {
    scopes
        .iter()
        .map(|s| {
            if s.is_empty() {
                "the root".to_owned()
            } else {
                st.code(s)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn via_words(st: &Style, v: &Via) -> String {
    let what = format!("{} {}", v.methods, v.pattern);
    match v.kind {
        "public" => format!("public endpoint {}", st.code(&what)),
        "endpoint" => format!("endpoint {} (role {})", st.code(&what), st.code(&v.role)),
        _ => format!("rule {} of role {}", st.code(&what), st.code(&v.role)),
    }
}

fn route_words(st: &Style, r: &RouteChange, t: &TenantAccess) -> String {
    let (all, other) = (&t.methods, t.other_method.as_str());
    let method_words = |methods: &[&str]| {
        if methods.len() == all.len() {
            "every method".to_owned()
        } else {
            methods
                .iter()
                .map(|m| if *m == other { "other methods" } else { m })
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    // The methods of each path: "GET on 3 paths" only when every path has exactly
    // those, never the union of methods beside the union of paths.
    let mut by_path: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for &q in &r.requests {
        let (m, p) = t.request(q);
        by_path.entry(p).or_default().push(m);
    }
    for methods in by_path.values_mut() {
        methods.sort_unstable();
        methods.dedup();
    }
    let sign = st.sign(r.change == Direction::Gained, true);
    // The example: a path with the fresh segment (any segment no pattern names) reads
    // as the pattern does; a path of literals may look like another rule's.
    let fresh = t.fresh_segment.as_str();
    let example = by_path
        .iter()
        .find(|(p, _)| p.split('/').any(|s| s == fresh))
        .or_else(|| by_path.iter().next());
    let Some((example_path, example_methods)) = example else {
        return format!("{sign} nothing through {}", via_words(st, &r.via));
    };
    let uniform = by_path.values().all(|m| m == example_methods);
    let what = if by_path.len() == 1 {
        format!(
            "{} on {}",
            method_words(example_methods),
            st.code(example_path)
        )
    } else if uniform {
        format!(
            "{} on {} paths, e.g. {}",
            method_words(example_methods),
            by_path.len(),
            st.code(example_path)
        )
    } else {
        format!(
            "{} requests on {} paths (not every method on every path), e.g. {} on {}",
            r.requests.len(),
            by_path.len(),
            method_words(example_methods),
            st.code(example_path)
        )
    };
    format!("{sign} {what} through {}", via_words(st, &r.via))
}

fn changes_line(st: &Style, out: &mut String, depth: usize, what: &str, c: &Changes) {
    for a in &c.added {
        st.item(
            out,
            depth,
            &format!("{} {what} {}", st.sign(true, false), st.code(a)),
        );
    }
    for r in &c.removed {
        st.item(
            out,
            depth,
            &format!("{} {what} {}", st.sign(false, false), st.code(r)),
        );
    }
}

fn role_line(st: &Style, out: &mut String, depth: usize, c: &RoleChange) {
    let text = match c.change {
        crate::policy::diff::ChangeKind::Added => {
            format!("{} role {}", st.sign(true, false), st.code(&c.role))
        }
        crate::policy::diff::ChangeKind::Removed => {
            format!("{} role {}", st.sign(false, false), st.code(&c.role))
        }
        crate::policy::diff::ChangeKind::Changed => role_change_text(c),
    };
    st.item(out, depth, &text);
}

fn scoped(st: &Style, out: &mut String, depth: usize, sc: &ScopedChange, t: &TenantAccess) {
    st.item(out, depth, &format!("at {}:", scope_words(st, &sc.scopes)));
    let Some(c) = t.change_sets.get(sc.change_set) else {
        return;
    };
    for p in &c.permissions_gained {
        let text = format!("{} permission {}", st.sign(true, true), st.code(p));
        st.item(out, depth + 1, &text);
    }
    for p in &c.permissions_lost {
        let text = format!("{} permission {}", st.sign(false, true), st.code(p));
        st.item(out, depth + 1, &text);
    }
    for r in c.routes.iter().filter_map(|&r| t.route_changes.get(r)) {
        st.item(out, depth + 1, &route_words(st, r, t));
    }
}

/// Renders a diff for a terminal (`markdown` false) or a pull request.
pub fn render(d: &PolicyDiff, markdown: bool) -> String {
    let st = Style { md: markdown };
    let mut out = String::new();
    if markdown {
        let _ = writeln!(
            out,
            "## Policy change: {} → {}",
            st.code(&d.old),
            st.code(&d.new)
        );
    } else {
        let _ = writeln!(out, "policy diff: {} -> {}", d.old, d.new);
    }
    let s = &d.structural;
    st.heading(&mut out, 1, "Structure");
    if !d.structure_changed() {
        st.item(&mut out, 0, "no change");
    }
    for r in &s.builtin_roles {
        role_line(&st, &mut out, 0, r);
    }
    changes_line(&st, &mut out, 0, "global endpoint", &s.global_endpoints);
    for t in &s.tenants {
        let how = match t.change {
            crate::policy::diff::ChangeKind::Added => "added",
            crate::policy::diff::ChangeKind::Removed => "removed",
            crate::policy::diff::ChangeKind::Changed => "changed",
        };
        st.item(
            &mut out,
            0,
            &format!("tenant {} ({how})", st.code(&t.tenant)),
        );
        for r in &t.roles {
            role_line(&st, &mut out, 1, r);
        }
        changes_line(&st, &mut out, 1, "endpoint", &t.endpoints);
        changes_line(&st, &mut out, 1, "default role", &t.default_roles);
        changes_line(&st, &mut out, 1, "subject", &t.subjects);
        for x in &t.disabled {
            st.item(&mut out, 1, &format!("subject {} disabled", st.code(x)));
        }
        for x in &t.enabled {
            st.item(&mut out, 1, &format!("subject {} enabled", st.code(x)));
        }
        changes_line(&st, &mut out, 1, "group", &t.groups);
        changes_line(&st, &mut out, 1, "member", &t.members);
        changes_line(&st, &mut out, 1, "assignment", &t.assignments);
    }
    st.heading(&mut out, 1, "Effective access");
    if !d.access_changed() {
        st.item(&mut out, 0, "no one gains or loses anything");
    } else if let Some(t) = d.access.first() {
        // The canonical paths need one line of explanation (docs/policy-diff.md, "Paths").
        let _ = writeln!(
            out,
            "Paths are canonical: {} stands for any segment no rule or entry names at that place, and \"other methods\" for every method none names (docs/policy-diff.md, \"Paths\").",
            st.code(&t.fresh_segment)
        );
    }
    let (mut gain, mut lose, mut groups) = (0usize, 0usize, 0usize);
    for t in &d.access {
        st.heading(&mut out, 2, &format!("tenant {}", st.code(&t.tenant)));
        // Subjects whose changes, unchanged scopes and causes are all alike read as one
        // block naming them (the first 20, then a count): a default role gaining a rule
        // is one block, not one per subject. JSON lists every subject.
        let mut blocks: Vec<Vec<&SubjectAccess>> = Vec::new();
        let mut block_of: HashMap<String, usize> = HashMap::new();
        for s in &t.subjects {
            let key = format!("{:?}|{:?}|{:?}", s.changes, s.unchanged_scopes, s.causes);
            match block_of.get(&key) {
                Some(&i) => {
                    if let Some(b) = blocks.get_mut(i) {
                        b.push(s);
                    }
                }
                None => {
                    block_of.insert(key, blocks.len());
                    blocks.push(vec![s]);
                }
            }
        }
        for block in &blocks {
            let Some(s) = block.first() else { continue };
            let name = |s: &SubjectAccess| {
                if s.subject.is_empty() {
                    "anyone (anonymous or unregistered)".to_owned()
                } else {
                    st.code(&s.subject)
                }
            };
            let who = if block.len() == 1 {
                if s.subject.is_empty() {
                    name(s)
                } else {
                    format!("subject {}", name(s))
                }
            } else {
                let shown: Vec<String> = block.iter().take(LISTED_NAMES).map(|s| name(s)).collect();
                let more = block.len().saturating_sub(LISTED_NAMES);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "{} subjects, alike: {}{more}",
                    block.len(),
                    shown.join(", ")
                )
            };
            let sets = || {
                s.changes
                    .iter()
                    .filter_map(|c| t.change_sets.get(c.change_set))
            };
            let gains = sets().any(|c| {
                !c.permissions_gained.is_empty()
                    || c.routes.iter().any(|&r| {
                        t.route_changes
                            .get(r)
                            .is_some_and(|r| r.change == Direction::Gained)
                    })
            });
            let loses = sets().any(|c| {
                !c.permissions_lost.is_empty()
                    || c.routes.iter().any(|&r| {
                        t.route_changes
                            .get(r)
                            .is_some_and(|r| r.change == Direction::Lost)
                    })
            });
            gain += usize::from(gains) * block.len();
            lose += usize::from(loses) * block.len();
            // A terminal indents subjects under their tenant; Markdown has the heading.
            let base = usize::from(!markdown);
            st.item(&mut out, base, &who);
            entry(
                &st,
                &mut out,
                base + 1,
                t,
                &s.changes,
                &s.unchanged_scopes,
                &s.causes,
            );
        }
        for g in &t.groups {
            groups += 1;
            let base = usize::from(!markdown);
            st.item(
                &mut out,
                base,
                &format!("group {}: what a member gets through it", st.code(&g.group)),
            );
            entry(
                &st,
                &mut out,
                base + 1,
                t,
                &g.changes,
                &g.unchanged_scopes,
                &g.causes,
            );
            if !g.members_changed.is_empty() {
                let members: Vec<String> = g.members_changed.iter().map(|m| st.code(m)).collect();
                st.item(
                    &mut out,
                    base + 1,
                    &format!("members whose own access changes: {}", members.join(", ")),
                );
            }
        }
    }
    if !d.access.is_empty() {
        let _ = write!(
            out,
            "{}{gain} subjects gain access, {lose} lose access",
            if markdown { "\n" } else { "" }
        );
        if groups > 0 {
            let _ = write!(out, "; {groups} groups change what they give a member");
        }
        out.push('\n');
    }
    out
}

/// A subject's or group's changes per scope, its unchanged scopes and its causes.
fn entry(
    st: &Style,
    out: &mut String,
    depth: usize,
    t: &TenantAccess,
    changes: &[ScopedChange],
    unchanged: &[String],
    causes: &[Cause],
) {
    for c in changes {
        scoped(st, out, depth, c, t);
    }
    if !unchanged.is_empty() {
        st.item(
            out,
            depth,
            &format!("unchanged at {}", scope_words(st, unchanged)),
        );
    }
    for c in causes {
        st.item(out, depth, &format!("because {}: {}", c.kind, c.detail));
    }
}
