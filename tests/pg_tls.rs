//! TLS to PostgreSQL with libpq's `sslmode` semantics, against a throwaway PostgreSQL
//! cluster this test starts on its own port with certificates from its own CA (as an
//! unprivileged user when run as root: PostgreSQL refuses to run as root).
//!
//! The server binaries come from `AUTHZ_TEST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`; the test fails loudly without them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use authz::store::postgres::{self, StoreError};
use common::pki::Pki;

/// The unprivileged user the cluster runs as when the test runs as root.
const PG_USER: &str = "authz-test";

fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("AUTHZ_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = dirs.pop() {
        return dir;
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .unwrap();
    let initdb = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !initdb.is_empty(),
        "no PostgreSQL server binaries (initdb): install PostgreSQL or set AUTHZ_TEST_PG_BIN"
    );
    Path::new(&initdb).parent().unwrap().to_owned()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `(uid, gid)` of [`PG_USER`], created if missing.
fn pg_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, PG_USER]).output().unwrap();
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .unwrap()
        })
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ])
            .status()
            .unwrap();
        // Another test process may have created it meanwhile.
        assert!(status.success() || id("-u").is_some(), "useradd {PG_USER}");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

/// A PostgreSQL cluster with `ssl = on`, stopped on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    root: bool,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a cluster whose server certificate (for `localhost` only) is signed by
    /// `pki`, which also signs the client certificates it accepts (role `certuser`
    /// must present one).
    fn start(pki: &Pki) -> Cluster {
        let bin = pg_bin();
        let root = is_root();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (cert, key) = pki.issue_for("postgres", &["localhost"]);
        let files = dir.path().join("tls");
        std::fs::create_dir(&files).unwrap();
        std::fs::write(files.join("server.crt"), cert).unwrap();
        std::fs::write(files.join("server.key"), key).unwrap();
        std::fs::write(files.join("ca.crt"), pki.ca_pem()).unwrap();
        std::fs::set_permissions(
            files.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if root {
            let (uid, gid) = pg_user();
            for p in [
                dir.path().to_owned(),
                files.clone(),
                files.join("server.crt"),
                files.join("server.key"),
                files.join("ca.crt"),
            ] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
            }
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cluster = Cluster {
            bin,
            data,
            port,
            root,
            _dir: dir,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        // `certuser` needs a client certificate; everyone else is trusted.
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             host all certuser 127.0.0.1/32 reject\n\
             host all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let tls = files.to_str().unwrap();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {socket} -c ssl=on \
             -c ssl_cert_file={tls}/server.crt -c ssl_key_file={tls}/server.key \
             -c ssl_ca_file={tls}/ca.crt -c fsync=off",
            socket = files.parent().unwrap().display(),
        );
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-l",
                files.parent().unwrap().join("log").to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
        cluster
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, user: &str, host: &str, params: &str) -> String {
        format!("postgres://{user}@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_owned();
        let path = self.bin.join("pg_ctl");
        let mut command = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// Whether the session is encrypted, from the server's point of view.
async fn ssl_in_use(url: &str) -> Result<bool, StoreError> {
    let client = postgres::connect(url).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn sslmodes_against_a_tls_cluster() {
    let pki = Pki::new("authz test PostgreSQL CA");
    let cluster = Cluster::start(&pki);
    let files = pki.dir.path();
    let ca = write(files, "ca.pem", &pki.ca_pem());
    let other = Pki::new("another CA");
    let wrong_ca = write(files, "wrong-ca.pem", &other.ca_pem());

    // disable, prefer, require: no verification; prefer and require encrypt.
    assert!(
        !ssl_in_use(&cluster.url("postgres", "localhost", "sslmode=disable"))
            .await
            .unwrap()
    );
    assert!(
        ssl_in_use(&cluster.url("postgres", "localhost", ""))
            .await
            .unwrap(),
        "prefer by default"
    );
    assert!(
        ssl_in_use(&cluster.url("postgres", "127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
    );

    // verify-full: the right CA and the certificate's host.
    let full = |host: &str, ca: &str| {
        cluster.url(
            "postgres",
            host,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        )
    };
    assert!(ssl_in_use(&full("localhost", &ca)).await.unwrap());
    // The wrong CA: refused, naming the cause.
    let err = ssl_in_use(&full("localhost", &wrong_ca))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // The wrong host (the certificate names only localhost).
    let err = ssl_in_use(&full("127.0.0.1", &ca))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid for name"), "{err}");
    // verify-ca checks the chain, not the name.
    let ca_only = |host: &str, ca: &str| {
        cluster.url(
            "postgres",
            host,
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        )
    };
    assert!(ssl_in_use(&ca_only("127.0.0.1", &ca)).await.unwrap());
    let err = ssl_in_use(&ca_only("127.0.0.1", &wrong_ca))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // require with a root certificate verifies the chain, as libpq does.
    let err = ssl_in_use(&cluster.url(
        "postgres",
        "localhost",
        &format!("sslmode=require&sslrootcert={wrong_ca}"),
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // A CA file that is not there.
    let err = ssl_in_use(&full("localhost", "/nonexistent/ca.pem"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Tls(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    // A client certificate (sslcert, sslkey) for `cert` authentication.
    let admin = postgres::connect(&cluster.url("postgres", "localhost", "sslmode=disable"))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE ROLE certuser LOGIN")
        .await
        .unwrap();
    let (cert, key) = pki.issue_for("certuser", &["certuser"]);
    let cert = write(files, "client.pem", &cert);
    let key = write(files, "client-key.pem", &key);
    let with_cert = cluster.url(
        "certuser",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
    );
    assert!(ssl_in_use(&with_cert).await.unwrap());
    let err = ssl_in_use(&full("localhost", &ca).replace("postgres@", "certuser@"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");

    // Every path authzd connects through: migrate, the admin pool, the follower, and
    // the command line.
    let url = full("localhost", &ca);
    postgres::migrate(&url).await.unwrap();
    let pool = postgres::pool(&url, 1).unwrap();
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    drop(conn);
    let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "schema up to date"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["policy", "apply"])
        .arg(common::example("console.yaml"))
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args([
            "policy",
            "export",
            "--tenant",
            "acme",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_authzd"))
        .args(["migrate", "--database-url", &full("localhost", &wrong_ca)])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    let cache = authz::cache::Cache::new();
    let follower = authz::store::follow::spawn_follower(
        authz::store::follow::FollowConfig::new(url),
        cache.clone(),
    );
    let mut loaded = cache.subscribe();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        loaded.wait_for(Option::is_some),
    )
    .await
    .expect("the follower loaded over TLS")
    .unwrap();
    assert!(cache.tenant_count() >= 1);
    drop(follower);
    drop(cluster);
}
