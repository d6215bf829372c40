//! `authzd check` and `authzd list`: one decision (or listing) offline, against a
//! policy file, worded exactly as the server words it.

use super::{Exit, load_exit};
use crate::{
    config::{CheckArgs, ListArgs, Output, Target},
    model::{self, Method},
    policy::{Action, Explanation, Policy, Query},
    store::file::load,
};

fn usage(field: &str, e: model::InputError) -> Exit {
    eprintln!("error: invalid `--{field}`: {e}");
    Exit::Usage
}

/// Validates the target's values, then loads its policy.
fn load_target(t: &Target) -> Result<Policy, Exit> {
    model::tenant_id(&t.tenant).map_err(|e| usage("tenant", e))?;
    if !t.subject.is_empty() {
        model::subject_id(&t.subject).map_err(|e| usage("subject", e))?;
    }
    model::scope(&t.scope).map_err(|e| usage("scope", e))?;
    match load(&t.policy, 1) {
        Ok((p, _)) => Ok(p),
        Err(e) => {
            eprintln!("{e}");
            Err(load_exit(&e))
        }
    }
}

/// Runs `check`.
pub fn run(args: &CheckArgs) -> Exit {
    let action = match (&args.permission, &args.method, &args.path) {
        (Some(p), _, _) => match model::name(p) {
            Ok(p) => Action::Permission(p),
            Err(e) => return usage("permission", e),
        },
        (None, Some(m), Some(p)) => match (Method::parse(m), model::request_path(p)) {
            (Ok(method), Ok(path)) => Action::Route { method, path },
            (Err(e), _) => return usage("method", e),
            (_, Err(e)) => return usage("path", e),
        },
        _ => {
            eprintln!("error: give `--permission`, or `--method` and `--path`");
            return Exit::Usage;
        }
    };
    let t = &args.target;
    let policy = match load_target(t) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let query = Query {
        subject: &t.subject,
        scope: &t.scope,
        action,
    };
    let explanation = match policy.tenants.iter().find(|s| *s.id == *t.tenant) {
        Some(t) => t.explain(&query, &t.check(&query)),
        None => Explanation::unknown_tenant(&t.tenant, 1),
    };
    match args.output {
        Output::Text => super::say!("{}", explanation.explanation),
        Output::Json => match serde_json::to_string_pretty(&explanation) {
            Ok(s) => super::say!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Software;
            }
        },
    }
    if explanation.allowed {
        Exit::Ok
    } else {
        Exit::Denied
    }
}

/// Runs `list`.
pub fn list(args: &ListArgs) -> Exit {
    let t = &args.target;
    let policy = match load_target(t) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let Some(tenant) = policy.tenants.iter().find(|s| *s.id == *t.tenant) else {
        super::say!("tenant `{}` does not exist", t.tenant);
        return Exit::Denied;
    };
    let listing = tenant.list(&t.subject, &t.scope);
    match args.output {
        Output::Json => match serde_json::to_string_pretty(&listing) {
            Ok(s) => super::say!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Software;
            }
        },
        Output::Text => {
            super::say!("reason: {}", listing.reason.map_or("", |r| r.as_str()));
            for r in &listing.roles {
                let (role, g) = (&r.role, &r.grant);
                let via = match g.include_chain.first() {
                    Some(assigned) if !r.included_through.is_empty() => {
                        format!(" through {assigned} (included by {})", r.included_through)
                    }
                    _ => String::new(),
                };
                let from = if g.source == "group" {
                    format!("group {}", g.group_id)
                } else {
                    g.source.to_owned()
                };
                let at = if g.scope.is_empty() {
                    "the tenant root".to_owned()
                } else {
                    format!("`{}`", g.scope)
                };
                super::say!("role {role}: {from} at {at}{via}");
            }
            super::say!("permissions: {}", listing.permissions.join(", "));
            for (role, methods, path) in &listing.routes {
                super::say!("rule {} {path} (role {role})", methods.join(","));
            }
            for (path, methods, public) in &listing.endpoints {
                super::say!(
                    "endpoint {} {path}{}",
                    methods.join(","),
                    if *public { " (public)" } else { "" }
                );
            }
            for (scope, roles) in &listing.scopes_below {
                super::say!("below `{scope}`: {}", roles.join(", "));
            }
        }
    }
    Exit::Ok
}
