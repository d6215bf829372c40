//! `authzd test [PATHS...]`: runs expectation files ([`crate::policy::expect`]) against
//! their policies, or against the database's current state, and reports as text, JSON or
//! JUnit XML.
//!
//! Exit codes: 0 every expectation passed; 1 at least one failed; 65 an expectation file
//! is invalid (named `file:line`) or a path holds no expectation file; 66 a file cannot be
//! read; 69/70 the database cannot be read.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{
    Exit,
    migrate::{block_on, report},
};
use crate::{
    policy::{
        Limits, Policy, compile_with,
        expect::{CaseResult, ExpectError, ExpectFile},
    },
    store::{
        file::load_with,
        postgres::connect,
        sync::{SyncError, export_current},
    },
};

/// Most expectation files one run reads (a directory with more is refused).
pub const MAX_FILES: usize = 10_000;

/// The suffix that marks an expectation file.
pub const SUFFIX: &str = ".expect.yaml";

/// `authzd test`.
#[derive(Clone, Debug, Args)]
pub struct TestArgs {
    /// Expectation files (`*.expect.yaml`), directories (every `*.expect.yaml` in them,
    /// not recursively) or policy files (the `NAME.expect.yaml` next to `NAME.yaml`).
    /// Default: the current directory.
    pub paths: Vec<PathBuf>,
    /// Run every file against the database's current state instead of its `policy`.
    #[arg(long, env = "AUTHZ_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = TestOutput::Text)]
    pub output: TestOutput,
    /// Per-tenant limits policy files are held to.
    #[command(flatten)]
    pub limits: crate::config::LimitArgs,
}

/// What `authzd test` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TestOutput {
    /// A line per failure and a summary, for people.
    #[default]
    Text,
    /// Every result as JSON.
    Json,
    /// JUnit XML (a test suite per file, a test case per expectation), for CI systems.
    Junit,
}

/// One file's results.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// The expectation file.
    pub file: String,
    /// The policy it ran against (a file, or `database (revision N)`).
    pub policy: String,
    /// Each expectation's result, in file order.
    pub results: Vec<CaseResult>,
}

/// A whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// Each file, in the order found.
    pub files: Vec<FileReport>,
    /// Expectations that passed.
    pub passed: usize,
    /// Expectations that failed.
    pub failed: usize,
    /// Files that could not be run (invalid, unreadable), with the error.
    pub errors: Vec<String>,
}

/// Finds the expectation files `paths` name (see [`TestArgs::paths`]), sorted within a
/// directory; errors name the path.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let default = [PathBuf::from(".")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && is_expect_file(f))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(format!("{}: no `*{SUFFIX}` file in it", p.display()));
            }
            out.extend(found);
        } else if is_expect_file(p) {
            out.push(p.clone());
        } else {
            // A policy file: its expectations sit next to it.
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sibling = p.with_file_name(format!("{stem}{SUFFIX}"));
            if !sibling.is_file() {
                return Err(format!(
                    "{}: no expectation file `{}` next to it",
                    p.display(),
                    sibling.display()
                ));
            }
            out.push(sibling);
        }
        if out.len() > MAX_FILES {
            return Err(format!("more than {MAX_FILES} expectation files"));
        }
    }
    out.dedup();
    Ok(out)
}

fn is_expect_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(SUFFIX))
}

/// Runs the command.
pub fn run(args: &TestArgs) -> Exit {
    let files = match discover(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::DataErr;
        }
    };
    // The database's state, read once for every file.
    let database = match &args.database_url {
        None => None,
        Some(url) => match block_on_policy(url) {
            Ok(p) => Some(p),
            Err(exit) => return exit,
        },
    };
    let mut worst = Exit::Ok;
    let mut run = RunReport::default();
    for path in &files {
        let file = path.display().to_string();
        let expect = match ExpectFile::read(path) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{e}");
                worst = match e {
                    ExpectError::Io { .. } if worst == Exit::Ok => Exit::NoInput,
                    _ => Exit::DataErr,
                };
                run.errors.push(e.to_string());
                continue;
            }
        };
        let (results, policy) = match &database {
            Some((revision, policy)) => (
                expect.run(Ok(policy)),
                format!("database (revision {revision})"),
            ),
            None => {
                let Some(policy_path) = expect.policy_path(path) else {
                    let e = format!("{file}:0: no `policy` (or give `--database-url`)");
                    eprintln!("{e}");
                    worst = Exit::DataErr;
                    run.errors.push(e);
                    continue;
                };
                let loaded = load_with(&policy_path, 1, args.limits.limits());
                let results = match &loaded {
                    Ok((p, _)) => expect.run(Ok(p)),
                    Err(e) => expect.run(Err(&e.to_string())),
                };
                (results, policy_path.display().to_string())
            }
        };
        let failed = results.iter().filter(|r| r.failure.is_some()).count();
        run.failed += failed;
        run.passed += results.len() - failed;
        run.files.push(FileReport {
            file,
            policy,
            results,
        });
    }
    if run.failed > 0 && worst == Exit::Ok {
        worst = Exit::Unhealthy;
    }
    let text = match args.output {
        TestOutput::Text => text(&run),
        TestOutput::Json => match serde_json::to_string_pretty(&run) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Software;
            }
        },
        TestOutput::Junit => junit(&run),
    };
    super::out(&text);
    worst
}

/// Reads and compiles the database's current state (the limits it holds itself to).
fn block_on_policy(url: &str) -> Result<(u64, Policy), Exit> {
    let mut out = None;
    let exit = block_on(async {
        let mut client = match connect(url).await {
            Ok(c) => c,
            Err(e) => return report(&SyncError::from(e)),
        };
        match export_current(&mut client).await {
            Ok(x) => {
                out = Some(x);
                Exit::Ok
            }
            Err(e) => report(&e),
        }
    });
    let Some((revision, doc, limits)) = out else {
        return Err(exit);
    };
    let limits = Limits {
        document_bytes: u64::MAX,
        ..limits
    };
    match compile_with(&doc, "database", revision, limits) {
        Ok(p) => Ok((revision, p)),
        Err(e) => {
            eprintln!("{e}");
            Err(Exit::DataErr)
        }
    }
}

/// The text report: each failure with its file and line, then one line per file and a
/// total.
pub fn text(run: &RunReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for f in &run.files {
        let failed = f.results.iter().filter(|r| r.failure.is_some()).count();
        for r in &f.results {
            if let Some(why) = &r.failure {
                let _ = writeln!(s, "FAIL {}:{}: {}: {why}", f.file, r.line, r.name);
            }
        }
        let _ = writeln!(
            s,
            "{}: {} passed, {failed} failed (policy {})",
            f.file,
            f.results.len() - failed,
            f.policy
        );
    }
    let _ = writeln!(
        s,
        "{} passed, {} failed, {} files{}",
        run.passed,
        run.failed,
        run.files.len(),
        if run.errors.is_empty() {
            String::new()
        } else {
            format!(", {} invalid", run.errors.len())
        }
    );
    s
}

/// The JUnit XML report: `<testsuites>` with a `<testsuite>` per file and a `<testcase>`
/// per expectation (`classname` the file, `name` the case), a `<failure>` for each failed
/// one, and an `<error>` test case per file that could not be run.
pub fn junit(run: &RunReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tests = run.passed + run.failed + run.errors.len();
    let _ = writeln!(
        s,
        "<testsuites name=\"authzd test\" tests=\"{tests}\" failures=\"{}\" errors=\"{}\">",
        run.failed,
        run.errors.len()
    );
    for f in &run.files {
        let failed = f.results.iter().filter(|r| r.failure.is_some()).count();
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\">",
            xml(&f.file),
            f.results.len()
        );
        for r in &f.results {
            let _ = write!(
                s,
                "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\"",
                xml(&f.file),
                xml(&r.name),
                xml(&f.file),
                r.line
            );
            match &r.failure {
                None => s.push_str("/>\n"),
                Some(why) => {
                    let _ = writeln!(
                        s,
                        ">\n      <failure message=\"{}\">{}:{}: {}</failure>\n    </testcase>",
                        xml(why),
                        xml(&f.file),
                        r.line,
                        xml(why)
                    );
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    if !run.errors.is_empty() {
        let _ = writeln!(
            s,
            "  <testsuite name=\"invalid files\" tests=\"{0}\" failures=\"0\" errors=\"{0}\">",
            run.errors.len()
        );
        for e in &run.errors {
            let _ = writeln!(
                s,
                "    <testcase classname=\"invalid files\" name=\"{0}\">\n      <error message=\"{0}\"/>\n    </testcase>",
                xml(e)
            );
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}

/// Escapes text for an XML attribute or element; characters XML 1.0 cannot hold
/// (control characters but tab, newline and carriage return) become `?`.
pub fn xml(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            '\n' => s.push_str("&#10;"),
            '\r' => s.push_str("&#13;"),
            '\t' => s.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => s.push('?'),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::xml;

    #[test]
    fn xml_escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(xml("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(xml("x\u{1}y\nz"), "x?y&#10;z");
    }
}
