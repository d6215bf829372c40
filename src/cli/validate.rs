//! `authzd validate FILE...`: compile each file and report every problem.

use super::{Exit, load_exit};
use crate::{config::ValidateArgs, store::file::load_with};

/// Runs the command.
pub fn run(args: &ValidateArgs) -> Exit {
    let mut worst = Exit::Ok;
    for file in &args.files {
        match load_with(file, 1, args.limits.limits()) {
            Ok((policy, _)) => {
                let roles: usize = policy.tenants.iter().map(|t| t.custom.len()).sum();
                let builtin = policy.tenants.first().map_or(0, |t| t.builtins.roles.len());
                let assignments: usize = policy.tenants.iter().map(|t| t.assignment_count()).sum();
                super::say!(
                    "{}: ok ({} tenants, {} built-in and {} custom roles, {} assignments)",
                    file.display(),
                    policy.tenants.len(),
                    builtin,
                    roles,
                    assignments
                );
            }
            Err(e) => {
                eprintln!("{e}");
                worst = load_exit(&e);
            }
        }
    }
    worst
}
