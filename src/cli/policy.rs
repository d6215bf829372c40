//! `authzd policy apply` and `authzd policy export`: policy documents in and out of
//! PostgreSQL (see [`crate::store::sync`]).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{
    Exit,
    migrate::{block_on, report},
};
use crate::{
    policy::{
        Limits, PolicyDocument, compile,
        source::{Format, SourceError},
    },
    store::{
        postgres::connect,
        sync::{self, SyncError},
    },
};

/// `authzd policy`.
#[derive(Clone, Debug, Subcommand)]
pub enum PolicyCommand {
    /// Make the database match a policy document, writing only what differs.
    ///
    /// The built-in roles, the global endpoint table and every tenant the document names
    /// (created if missing) are made to match it, in one transaction; tenants it does
    /// not name are left alone. Applying the same file twice changes nothing.
    Apply(ApplyArgs),
    /// Write the policy in the database as a document that applies cleanly.
    Export(ExportArgs),
}

/// `authzd policy apply`.
#[derive(Clone, Debug, Args)]
pub struct ApplyArgs {
    /// Policy file (YAML, or JSON if it ends in `.json`).
    pub file: PathBuf,
    /// PostgreSQL URL, e.g. `postgres://user@host:5432/authz`.
    #[arg(long, env = "AUTHZ_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Largest policy file, in bytes: a larger one is refused (exit 65) before it is read.
    #[arg(long, env = "AUTHZ_MAX_POLICY_BYTES", default_value_t = Limits::default().document_bytes)]
    pub max_policy_bytes: u64,
    /// Print what the apply would change (the structural and effective-access diff,
    /// as `authzd diff now FILE`) and exit without writing; the exit code is the
    /// apply's (65 when it would be refused without `--force`).
    #[arg(long)]
    pub dry_run: bool,
    /// Delete or overwrite rows even when their last write came through the admin API
    /// or SQL, and re-create rows those deleted (without it such an apply refuses,
    /// listing them, exit 65).
    #[arg(long)]
    pub force: bool,
    /// With `--dry-run`: the diff's format.
    #[arg(long, value_enum, default_value_t = super::diff::DiffOutput::Text)]
    pub output: super::diff::DiffOutput,
}

/// Document formats `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// `authzd policy export`.
#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    /// PostgreSQL URL, e.g. `postgres://user@host:5432/authz`.
    #[arg(long, env = "AUTHZ_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Export only this tenant (repeatable); the built-in roles and the global endpoint
    /// table are always exported. Default: every tenant.
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Output format (default: JSON if `--output` ends in `.json`, else YAML).
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
}

/// Runs a `policy` subcommand.
pub fn run(command: &PolicyCommand) -> Exit {
    match command {
        PolicyCommand::Apply(args) => apply(args),
        PolicyCommand::Export(args) => export(args),
    }
}

fn apply(args: &ApplyArgs) -> Exit {
    let file = args.file.display().to_string();
    let doc = match PolicyDocument::read_limited(&args.file, args.max_policy_bytes) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("{e}");
            return match e {
                SourceError::Io { .. } => Exit::NoInput,
                SourceError::Syntax { .. } | SourceError::TooLarge { .. } => Exit::DataErr,
            };
        }
    };
    // Refused before the database is even contacted (`sync::apply` checks again, against
    // the database's own limits: a document over the default limits only is left to it).
    if let Err(e) = compile(&doc, &file, 0)
        && !e.only_limits()
    {
        eprintln!("{e}");
        return Exit::DataErr;
    }
    if let Err(exit) = super::migrate::check_url(&args.database_url) {
        return exit;
    }
    if args.dry_run {
        return dry_run(args, &file, &doc);
    }
    block_on(async {
        let mut client = match connect(&args.database_url).await {
            Ok(c) => c,
            Err(e) => return report(&SyncError::from(e)),
        };
        match sync::apply_with(&mut client, &doc, &file, args.force).await {
            Ok(r) => {
                let t = r.total();
                if !r.overridden.is_empty() {
                    eprintln!(
                        "{file}: --force: deleted, overwrote or re-created {} rows the admin API or SQL wrote or deleted: {}",
                        r.overridden.len(),
                        sync::listed(&r.overridden)
                    );
                }
                match r.revision {
                    Some(rev) => {
                        let adopted = if t.adopted > 0 {
                            format!(
                                ", {} rows the admin API wrote now the document's",
                                t.adopted
                            )
                        } else {
                            String::new()
                        };
                        super::say!(
                            "applied {file}: revision {rev} ({} rows inserted, {} updated, {} deleted{adopted})",
                            t.inserted,
                            t.updated,
                            t.deleted
                        )
                    }
                    None => super::say!("{file}: no changes (revision {})", r.previous_revision),
                }
                Exit::Ok
            }
            Err(SyncError::Invalid(e)) => {
                eprintln!("{e}");
                Exit::DataErr
            }
            Err(e @ (SyncError::Rejected { .. } | SyncError::Protected { .. })) => {
                eprintln!("{file}: {e}");
                Exit::DataErr
            }
            Err(e) => report(&e),
        }
    })
}

/// `apply --dry-run`: the database's state against the state the apply would leave (the
/// document's built-in section and tenants, the other tenants as they are); nothing is
/// written.
fn dry_run(args: &ApplyArgs, file: &str, doc: &PolicyDocument) -> Exit {
    let ((label, current, old), limits) =
        match super::diff::database_with_limits(&args.database_url) {
            Ok(x) => x,
            Err(e) => return e,
        };
    let new_doc = crate::policy::diff::after_apply(&current, doc);
    // Compiled as the apply compiles the document: held to the database's limits.
    let new = match crate::policy::compile_with(&new_doc, file, 0, limits) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Exit::DataErr;
        }
    };
    let d = match crate::policy::diff::diff(
        crate::policy::diff::Side {
            label: &label,
            doc: &current,
            policy: &old,
        },
        crate::policy::diff::Side {
            label: file,
            doc: &new_doc,
            policy: &new,
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::DataErr;
        }
    };
    // Would the apply be refused for rows the admin API wrote or deleted? The apply's
    // own check, in a transaction that writes nothing.
    let mut protected = Vec::new();
    let exit = block_on(async {
        let mut client = match connect(&args.database_url).await {
            Ok(c) => c,
            Err(e) => return report(&SyncError::from(e)),
        };
        match sync::protected_rows(&mut client, doc).await {
            Ok(rows) => {
                protected = rows;
                Exit::Ok
            }
            Err(e) => report(&e),
        }
    });
    if exit != Exit::Ok {
        return exit;
    }
    // In the report itself too (a pull request comment made from it shows it): what the
    // apply will refuse, or override with --force.
    let apply_section = |markdown: bool| {
        if protected.is_empty() {
            return String::new();
        }
        let (head, item) = if markdown {
            ("\n### Apply\n", "- ")
        } else {
            ("Apply\n", "  ")
        };
        let verdict = if args.force {
            format!(
                "with --force, the apply deletes, overwrites or re-creates {} rows the admin API or SQL wrote or deleted:",
                protected.len()
            )
        } else {
            format!(
                "refused without --force: {} rows the admin API or SQL wrote or deleted since a document did:",
                protected.len()
            )
        };
        let mut out = format!("{head}{item}{verdict}\n");
        for row in protected.iter().take(100) {
            out.push_str(&format!("{item}  {row}\n"));
        }
        if protected.len() > 100 {
            out.push_str(&format!("{item}  and {} more\n", protected.len() - 100));
        }
        out
    };
    let text = match args.output {
        super::diff::DiffOutput::Text => super::diff::render(&d, false) + &apply_section(false),
        super::diff::DiffOutput::Markdown => super::diff::render(&d, true) + &apply_section(true),
        super::diff::DiffOutput::Json => {
            // The diff, and the rows the apply would refuse to write unforced.
            let mut v = match super::diff::json(&d) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Software;
                }
            };
            if let Some(obj) = v.as_object_mut() {
                obj.insert("protected_rows".to_owned(), serde_json::json!(protected));
            }
            match serde_json::to_string_pretty(&v) {
                Ok(s) => s + "\n",
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Software;
                }
            }
        }
    };
    super::out(&text);
    eprintln!("dry run: nothing written ({label})");
    if !protected.is_empty() {
        if args.force {
            eprintln!(
                "note: with --force the apply will delete, overwrite or re-create {} rows the admin API or SQL wrote or deleted: {}",
                protected.len(),
                sync::listed(&protected)
            );
        } else {
            // Exits as the apply would: refused.
            eprintln!(
                "note: without --force the apply will be refused: {}",
                SyncError::Protected { rows: protected }
            );
            return Exit::DataErr;
        }
    }
    Exit::Ok
}

fn export(args: &ExportArgs) -> Exit {
    let format = args.format.unwrap_or_else(|| match &args.output {
        Some(p) if Format::from_path(p) == Format::Json => ExportFormat::Json,
        _ => ExportFormat::Yaml,
    });
    if let Err(exit) = super::migrate::check_url(&args.database_url) {
        return exit;
    }
    block_on(async {
        let mut client = match connect(&args.database_url).await {
            Ok(c) => c,
            Err(e) => return report(&SyncError::from(e)),
        };
        let only = (!args.tenants.is_empty()).then_some(args.tenants.as_slice());
        let (revision, doc) = match sync::export(&mut client, only).await {
            Ok(x) => x,
            Err(e) => return report(&e),
        };
        for t in &args.tenants {
            if !doc.tenants.iter().any(|d| d.id == *t) {
                eprintln!("warning: tenant `{t}` does not exist");
            }
        }
        let text = match format {
            ExportFormat::Yaml => doc
                .to_yaml()
                .map(|y| {
                    format!("# exported by `authzd policy export` at revision {revision}\n{y}")
                })
                .map_err(|e| e.to_string()),
            ExportFormat::Json => serde_json::to_string_pretty(&doc)
                .map(|j| j + "\n")
                .map_err(|e| e.to_string()),
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot render the document: {e}");
                return Exit::Software;
            }
        };
        match &args.output {
            None => {
                // A closed pipe (`... | head`) is not an error.
                super::out(&text);
                Exit::Ok
            }
            Some(path) => match std::fs::write(path, text) {
                Ok(()) => {
                    super::say!(
                        "exported revision {revision} to {} ({} tenants)",
                        path.display(),
                        doc.tenants.len()
                    );
                    Exit::Ok
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    Exit::Software
                }
            },
        }
    })
}
