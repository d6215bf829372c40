//! Real PostgreSQL topologies for replica tests: a primary of our own (initdb), a
//! streaming standby of it (`pg_basebackup -R`), and PgBouncer in transaction mode, each
//! on a free port of 127.0.0.1, run as an unprivileged user when the tests run as root
//! (PostgreSQL and PgBouncer refuse root). Every process is stopped when its handle drops,
//! whatever the test's outcome.
//!
//! The PostgreSQL server binaries come from `PATH` or `/usr/lib/postgresql/*/bin`;
//! PgBouncer from `PATH` or `/usr/sbin`. Missing binaries fail the test with a message
//! saying what to install ([`require`]), except that outside CI (`CI` unset or not
//! `true`) a test needing PgBouncer may skip with a printed reason ([`pgbouncer_or_skip`]).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio_postgres::{Client, NoTls};

/// The unprivileged user servers run as when the tests run as root (scripts/test.sh
/// uses the same one).
const RUN_AS: &str = "authz-test";

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // `id -u` rather than libc: no unsafe code in the tests either.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as the unprivileged user when we are root.
fn command(program: &Path) -> Command {
    if is_root() {
        let exists = Command::new("id")
            .arg(RUN_AS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            let ok = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    RUN_AS,
                ])
                .status()
                .is_ok_and(|s| s.success());
            // Another test process may have created it meanwhile.
            assert!(
                ok || Command::new("id")
                    .arg(RUN_AS)
                    .status()
                    .is_ok_and(|s| s.success()),
                "cannot create the unprivileged user `{RUN_AS}` to run PostgreSQL as"
            );
        }
        let mut c = Command::new("runuser");
        c.args(["-u", RUN_AS, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A directory the servers' user owns, removed on drop.
fn owned_dir(tag: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("authz-{tag}-"))
        .tempdir()
        .unwrap();
    if is_root() {
        // Make sure the user exists, then hand it the directory.
        let _ = command(Path::new("true")).status();
        let ok = Command::new("chown")
            .args(["-R", RUN_AS])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot chown {} to {RUN_AS}", dir.path().display());
    }
    dir
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory of the PostgreSQL server binaries (`initdb`, `pg_ctl`,
/// `pg_basebackup`), or a panic saying what to install.
pub fn pg_bin() -> PathBuf {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "pg_basebackup"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    // Through symbolic links: a distribution may link only some of them into PATH.
    if let Some(dir) = which("initdb")
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| complete(d))
    {
        return dir;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| complete(b))
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) in PATH or \
             /usr/lib/postgresql/*/bin: install PostgreSQL (Debian: apt-get install postgresql)"
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether the tests run in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The PgBouncer binary. Missing: in CI a failure saying what to install; elsewhere
/// `None` after printing why the test is skipped.
pub fn pgbouncer_or_skip(test: &str) -> Option<PathBuf> {
    let found = which("pgbouncer").or_else(|| {
        let p = PathBuf::from("/usr/sbin/pgbouncer");
        p.exists().then_some(p)
    });
    if found.is_none() {
        let msg = "PgBouncer is not installed (Debian: apt-get install pgbouncer; \
                   scripts/test.sh installs it)";
        assert!(!in_ci(), "{test}: {msg}");
        eprintln!("SKIPPED {test}: {msg}; with CI=true this fails instead");
    }
    found
}

/// A PostgreSQL server of our own: a primary or a streaming standby.
pub struct Pg {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pg {
    /// A new primary (trust authentication on 127.0.0.1; replication allowed).
    pub fn primary() -> Pg {
        let dir = owned_dir("primary");
        let data = dir.path().join("data");
        run(
            command(&pg_bin().join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"]),
            "initdb",
        );
        let pg = Pg {
            port: free_port(),
            log: dir.path().join("log"),
            data,
            _dir: dir,
        };
        pg.start();
        pg
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`: it follows the primary,
    /// answering read-only queries while it replays).
    pub fn standby_of(primary: &Pg) -> Pg {
        let dir = owned_dir("standby");
        let data = dir.path().join("data");
        run(
            command(&pg_bin().join("pg_basebackup"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ])
                .arg("-p")
                .arg(primary.port.to_string())
                .arg("-D")
                .arg(&data),
            "pg_basebackup",
        );
        let pg = Pg {
            port: free_port(),
            log: dir.path().join("log"),
            data,
            _dir: dir,
        };
        pg.start();
        pg
    }

    fn start(&self) {
        let socket_dir = self.data.parent().unwrap();
        run(
            command(&pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off \
                     -c wal_receiver_status_interval=1s -c max_connections=200",
                    self.port,
                    socket_dir.display()
                ))
                .arg("start"),
            "pg_ctl start",
        );
    }

    /// Stops the server (`fast`: sessions are cut, as in a restart of a pod).
    pub fn stop(&self) {
        run(
            command(&pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    /// Stops and starts the server again, on the same port.
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A client of `db`.
    pub async fn client(&self, db: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url(db), NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url(db)));
        tokio::spawn(conn);
        client
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = command(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits until `standby` has replayed everything `primary` has written (its WAL
/// position), for at most `limit`.
pub async fn wait_replayed(primary: &Client, standby: &Client, limit: Duration) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + limit;
    loop {
        let done: bool = standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not replay {lsn} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PgBouncer in transaction mode in front of one server's database.
pub struct Bouncer {
    pub port: u16,
    binary: PathBuf,
    config: PathBuf,
    pidfile: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Bouncer {
    /// PgBouncer at a free port, pooling `db` on the server at `server_port` in
    /// transaction mode (a server connection per transaction, at most 4).
    pub fn start(binary: PathBuf, server_port: u16, db: &str) -> Bouncer {
        let dir = owned_dir("pgbouncer");
        let port = free_port();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n{db} = host=127.0.0.1 port={server_port} dbname={db}\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
                 pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n\
                 logfile = {}\npidfile = {}\nserver_reset_query =\n\
                 ignore_startup_parameters = extra_float_digits\n",
                users.display(),
                dir.path().join("pgbouncer.log").display(),
                dir.path().join("pgbouncer.pid").display()
            ),
        )
        .unwrap();
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", RUN_AS])
                .arg(dir.path())
                .status();
        }
        let mut b = Bouncer {
            port,
            binary,
            config,
            pidfile: dir.path().join("pgbouncer.pid"),
            child: None,
            _dir: dir,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let child = command(&self.binary)
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Ready when it accepts connections and has written its pid.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || !self.pidfile.exists()
        {
            assert!(
                Instant::now() < deadline,
                "PgBouncer did not listen within 20s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills PgBouncer (SIGKILL): every client connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Under runuser, the child is runuser, which does not pass SIGKILL on: kill
            // pgbouncer itself, by the process id in its pid file.
            if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pidfile);
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.kill();
    }
}
