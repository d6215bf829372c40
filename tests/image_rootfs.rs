//! The container image's filesystem is self-sufficient: `deploy/rootfs.sh` (what
//! deploy/Dockerfile copies into its empty `FROM scratch` image) is assembled from the
//! binary under test, and authzd runs with nothing but that filesystem as its root: it
//! prints `--version` and `--help`, serves the chat API example policy, answers
//! `authzd health` (run from inside as well) with SERVING, resolves `localhost` through
//! the `/etc/hosts` a container runtime writes, and drains on SIGTERM. Then one library
//! is deleted from the filesystem and authzd must fail to start: the host's libraries
//! are out of its reach.
//!
//! The root is changed with `chroot --userspec=65532:65532` (the image's user) when the
//! test runs as root, else with `unshare --user --map-root-user --root` (unprivileged
//! user namespaces). With neither it is skipped with the reason, except under CI=true,
//! where it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{cluster::in_ci, example, repo};

/// The image's PATH, for the child (and for finding chroot or unshare on the host).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const AUTHZD: &str = "/usr/local/bin/authzd";

/// How authzd is started with `root` as its root directory.
#[derive(Clone, Copy, Debug)]
enum Jail {
    /// As root: `chroot --userspec=65532:65532 ROOT`, the image's user.
    Chroot,
    /// Not root: `unshare --user --map-root-user --root=ROOT`.
    Unshare,
}

impl Jail {
    /// authzd with `args`, inside `root`, with the image's environment only.
    fn authzd(self, root: &Path, args: &[&str]) -> Command {
        let mut c = match self {
            Jail::Chroot => {
                let mut c = Command::new("chroot");
                c.arg("--userspec=65532:65532").arg(root);
                c
            }
            Jail::Unshare => {
                let mut c = Command::new("unshare");
                c.args(["--user", "--map-root-user"])
                    .arg(format!("--root={}", root.display()));
                c
            }
        };
        c.arg(AUTHZD)
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null());
        c
    }
}

/// `Chroot` as root; `Unshare` when this user may create user namespaces; else `None`,
/// after printing why the test is skipped (a failure in CI).
fn jail() -> Option<Jail> {
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        return Some(Jail::Chroot);
    }
    // Tried with the host's `true`, not with authzd in the root: that is what is tested.
    let tried = run({
        let mut c = Command::new("unshare");
        c.args(["--user", "--map-root-user", "true"]);
        c
    });
    if tried.status.success() {
        return Some(Jail::Unshare);
    }
    let msg = format!(
        "not root (chroot), and `unshare --user --map-root-user` (an unprivileged user namespace) fails here: {}",
        String::from_utf8_lossy(&tried.stderr).trim()
    );
    assert!(!in_ci(), "image_rootfs: {msg}");
    eprintln!("SKIPPED image_rootfs: {msg}; run as root, or with CI=true to fail instead");
    None
}

/// Runs `c` to completion; fails the test after 30 s.
fn run(mut c: Command) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{c:?} did not finish within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The only file named `name` under `dir`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// `authzd serve` inside `root`; returns it and its address once it logs `serving`.
fn serve(jail: Jail, root: &Path) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = jail
        .authzd(
            root,
            &[
                "--log-format",
                "json",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--policy",
                "/etc/authz/policy.yaml",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let Ok(line) = logs.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let rest: Vec<String> = logs.try_iter().collect();
            panic!("authzd did not log `serving` within 30s ({status}): {rest:?}");
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "serving" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    (child, addr, logs)
}

#[test]
fn authzd_runs_with_only_the_image_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let built = run({
        let mut c = Command::new("bash");
        c.arg(repo().join("deploy/rootfs.sh"))
            .arg(env!("CARGO_BIN_EXE_authzd"))
            .arg(&root);
        c
    });
    assert!(
        built.status.success(),
        "deploy/rootfs.sh failed: {}",
        text(&built.stderr)
    );

    // What the image holds, and what it does not.
    assert!(root.join("usr/local/bin/authzd").is_file());
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("\nnonroot:x:65532:65532:"), "{passwd}");
    let tmp_mode = std::fs::metadata(root.join("tmp")).unwrap().permissions();
    assert_eq!(tmp_mode.mode() & 0o7777, 0o1777);
    for absent in ["bin/sh", "usr/bin/sh", "etc/ssl", "etc/hosts", "etc/authz"] {
        assert!(!root.join(absent).exists(), "the image holds /{absent}");
    }

    // What the container runtime adds: the policy (a volume or the ConfigMap) and
    // /etc/hosts.
    std::fs::create_dir_all(root.join("etc/authz")).unwrap();
    std::fs::copy(example("chat-api.yaml"), root.join("etc/authz/policy.yaml")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();

    let Some(jail) = jail() else { return };

    let out = run(jail.authzd(&root, &["--version"]));
    assert!(out.status.success(), "--version: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("authzd "),
        "{}",
        text(&out.stdout)
    );
    let out = run(jail.authzd(&root, &["--help"]));
    assert!(out.status.success(), "--help: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Usage: authzd"));

    let (mut server, addr, logs) = serve(jail, &root);
    let port = addr.rsplit_once(':').unwrap().1;
    for target in [addr.clone(), format!("localhost:{port}")] {
        let out = run(jail.authzd(
            &root,
            &[
                "health",
                "--addr",
                &target,
                "--service",
                "authz.v1.AuthorizationService",
            ],
        ));
        assert_eq!(
            (out.status.code(), text(&out.stdout).trim_end()),
            (Some(0), "SERVING"),
            "authzd health --addr {target}: {}",
            text(&out.stderr)
        );
    }
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            panic!("authzd did not exit within 15s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let logs: Vec<String> = logs.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("drained")), "{logs:?}");

    // Without one of its libraries authzd cannot start: nothing outside the root helps.
    let lib = find(&root, "libgcc_s.so.1").expect("the image holds libgcc_s.so.1");
    std::fs::remove_file(&lib).unwrap();
    let out = run(jail.authzd(&root, &["--version"]));
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error while loading shared libraries: libgcc_s.so.1"),
        "{stderr}"
    );
}
