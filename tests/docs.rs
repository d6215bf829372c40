//! The operations guide and the README keep up with the command line: every flag and
//! environment variable of every subcommand is documented in `docs/operations.md`, and
//! every `serve` flag in the README's configuration table.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use authz::config::Cli;
use clap::CommandFactory;
use common::repo;

/// `(command path, --flag, env)` for every argument of every subcommand.
fn arguments() -> Vec<(String, String, Option<String>)> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, Option<String>)>) {
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            out.push((path.to_owned(), format!("--{long}"), env));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), "authzd", &mut out);
    out
}

#[test]
fn operations_guide_documents_every_flag_and_variable() {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let args = arguments();
    assert!(args.len() > 20, "found the flags: {args:?}");
    let missing: Vec<String> = args
        .iter()
        .flat_map(|(cmd, flag, env)| {
            let mut m = Vec::new();
            if !doc.contains(&format!("`{flag}")) {
                m.push(format!("{cmd}: {flag}"));
            }
            if let Some(env) = env
                && !doc.contains(&format!("`{env}`"))
            {
                m.push(format!("{cmd}: {env}"));
            }
            m
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md does not mention:\n{}",
        missing.join("\n")
    );
}

#[test]
fn readme_table_lists_every_serve_flag() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let missing: Vec<String> = arguments()
        .into_iter()
        .filter(|(cmd, _, _)| cmd == "authzd serve")
        .filter(|(_, flag, env)| {
            !readme.contains(&format!("| `{flag}"))
                || env
                    .as_ref()
                    .is_some_and(|e| !readme.contains(&format!("| `{e}` |")))
        })
        .map(|(_, flag, env)| format!("{flag} ({})", env.unwrap_or_default()))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's configuration table lacks:\n{}",
        missing.join("\n")
    );
}
