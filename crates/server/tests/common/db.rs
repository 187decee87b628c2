//! Throwaway database servers for tests: PostgreSQL (`initdb` + `postgres`)
//! and MariaDB (`mariadb-install-db` + `mariadbd`), each in its own temp
//! dir, on a free loopback port, with its unix socket in the temp dir, run
//! as `nobody` when the tests run as root (both servers refuse root), and
//! stopped on drop.
//!
//! When a server binary is missing, `start()` prints a `SKIP:` line and
//! returns `None` — except under `CI=true`, where a missing binary fails
//! the test (CI installs them through `.ci/run`: nothing may skip there).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Time a server gets to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn find(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for d in dirs {
        if d.contains('*') {
            // /usr/lib/postgresql/*/bin: newest version first.
            let (base, rest) = d.split_once('*').unwrap();
            let mut found: Vec<PathBuf> = std::fs::read_dir(base)
                .map(|it| {
                    it.filter_map(Result::ok)
                        .map(|e| e.path().join(rest.trim_start_matches('/')))
                        .collect()
                })
                .unwrap_or_default();
            found.sort_by_key(|p| {
                p.components()
                    .filter_map(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
                    .next()
                    .unwrap_or(0)
            });
            candidates.extend(found.into_iter().rev());
        } else {
            candidates.push(PathBuf::from(d));
        }
    }
    candidates
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn skip(what: &str, package: &str) -> Option<()> {
    let msg = format!(
        "SKIP: {what} not found; install the Debian package `{package}` (CI installs it via .ci/run)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} — nothing may skip in CI");
    }
    eprintln!("{msg}");
    None
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `nobody`'s uid/gid from /etc/passwd (65534 on Debian).
fn nobody() -> (u32, u32) {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find(|l| l.starts_with("nobody:")).and_then(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
            })
        })
        .unwrap_or((65534, 65534))
}

/// A command for `bin`, as `nobody` when we are root.
fn command(bin: &Path) -> Command {
    if is_root() {
        let (uid, gid) = nobody();
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// A temp dir the server's user owns.
fn server_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("relayapi-db-")
        .tempdir()
        .unwrap();
    if is_root() {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    dir
}

fn chown_to_server(p: &Path) {
    if is_root() {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).unwrap();
    hex::encode(b)
}

/// Waits until `log` contains `needle` (the server's own "ready" line).
fn wait_ready(child: &mut Child, log: &Path, needle: &str, what: &str) {
    let start = Instant::now();
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(log) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains(needle) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before it was ready:\n{text}");
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "{what} not ready after {READY_TIMEOUT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

fn stop_child(child: &mut Option<Child>, sig: &str) {
    if let Some(mut c) = child.take() {
        signal(&c, sig);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `server.crt`/`server.key` (owner-only, the server's user) in `dir`, via
/// the openssl CLI; false when it is not installed (then no TLS).
fn self_signed_cert(dir: &Path) -> bool {
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.crt"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        use std::os::unix::fs::PermissionsExt;
        for f in ["server.key", "server.crt"] {
            chown_to_server(&dir.join(f));
        }
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    } else {
        eprintln!("note: openssl not found; the test PostgreSQL runs without TLS");
    }
    ok
}

/// A running throwaway PostgreSQL.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    /// The server has a (self-signed) certificate: `sslmode=require` works.
    pub tls: bool,
    child: Option<Child>,
}

impl Postgres {
    /// The server binaries are installed.
    pub fn available() -> bool {
        let dirs = ["/usr/lib/postgresql/*/bin"];
        find("initdb", &dirs).is_some() && find("postgres", &dirs).is_some()
    }

    /// initdb + postgres on a free port; `None` (after a SKIP line) when
    /// the binaries are missing.
    pub fn start() -> Option<Postgres> {
        let dirs = ["/usr/lib/postgresql/*/bin"];
        let (Some(initdb), Some(bin)) = (find("initdb", &dirs), find("postgres", &dirs)) else {
            skip("PostgreSQL (initdb, postgres)", "postgresql")?;
            return None;
        };
        let dir = server_dir();
        let password = format!("pg-pw-{}", random_hex(8));
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        chown_to_server(&pwfile);
        let mut c = command(&initdb);
        c.arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "relay", "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(c, "initdb");
        let tls = self_signed_cert(dir.path());
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            password,
            tls,
            child: None,
        };
        pg.run();
        Some(pg)
    }

    fn run(&mut self) {
        let log = self.dir.path().join("postgres.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut c = command(&self.bin);
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB"])
            .args(["-c", "max_connections=30"])
            .args(if self.tls {
                &[
                    "-c",
                    "ssl=on",
                    "-c",
                    "ssl_cert_file=../server.crt",
                    "-c",
                    "ssl_key_file=../server.key",
                ][..]
            } else {
                &[][..]
            })
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let mut child = c.spawn().unwrap();
        self.wait(&mut child, &log);
        self.child = Some(child);
    }

    fn wait(&self, child: &mut Child, log: &Path) {
        // Count earlier "ready" lines so a restart waits for a new one.
        let needle = "ready to accept connections";
        let before = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(needle)
            .count();
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.matches(needle).count() > before {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("postgres exited with {status}:\n{text}");
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "postgres not ready:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://relay:<password>@127.0.0.1:<port>/postgres`, with
    /// `?sslmode=require` when the server has TLS.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// [`Postgres::url`] of another database (`relay` may create one).
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://relay:{}@127.0.0.1:{}/{database}{}",
            self.password,
            self.port,
            if self.tls { "?sslmode=require" } else { "" }
        )
    }

    /// Fast shutdown (SIGINT): clients are disconnected.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, "-INT");
    }

    /// Starts again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url())
            .await
            .unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_child(&mut self.child, "-INT");
    }
}

/// A running throwaway MariaDB.
pub struct MariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    child: Option<Child>,
}

impl MariaDb {
    /// mariadb-install-db + mariadbd on a free port, with a database `logs`
    /// and a user `relay`; `None` (after a SKIP line) when missing.
    pub fn start() -> Option<MariaDb> {
        let dirs = ["/usr/sbin", "/usr/bin"];
        let (Some(install), Some(server)) =
            (find("mariadb-install-db", &dirs), find("mariadbd", &dirs))
        else {
            skip("MariaDB (mariadb-install-db, mariadbd)", "mariadb-server")?;
            return None;
        };
        let dir = server_dir();
        let data = dir.path().join("data");
        let mut c = command(&install);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(["--skip-name-resolve", "--innodb-buffer-pool-size=16M"]);
        run(c, "mariadb-install-db");
        let port = free_port();
        let socket = dir.path().join("mysql.sock");
        let log = dir.path().join("mariadb.log");
        let mut c = command(&server);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadb.pid").display()
            ))
            .arg(format!("--tmpdir={}", dir.path().display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
            ])
            .args(["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M"])
            .args(["--innodb-flush-log-at-trx-commit=0", "--max-connections=50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        wait_ready(&mut child, &log, "ready for connections", "mariadbd");
        let db = MariaDb {
            dir,
            port,
            password: format!("my-pw-{}", random_hex(8)),
            child: Some(child),
        };
        db.setup(&socket);
        Some(db)
    }

    /// As root over the socket: the `logs` database and the `relay` user.
    /// On a thread of its own: callers may be inside a runtime.
    fn setup(&self, socket: &Path) {
        let (socket, password) = (socket.to_path_buf(), self.password.clone());
        std::thread::spawn(move || Self::setup_blocking(&socket, &password))
            .join()
            .unwrap();
    }

    fn setup_blocking(socket: &Path, password: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let opts = sqlx::mysql::MySqlConnectOptions::new()
                .socket(socket)
                .username("root");
            let mut conn = sqlx::MySqlConnection::connect_with(&opts).await.unwrap();
            for stmt in [
                "CREATE DATABASE logs".to_string(),
                "CREATE DATABASE race".to_string(),
                format!("CREATE USER 'relay'@'%' IDENTIFIED BY '{password}'"),
                "GRANT ALL ON logs.* TO 'relay'@'%'".to_string(),
                "GRANT ALL ON race.* TO 'relay'@'%'".to_string(),
            ] {
                sqlx::raw_sql(&stmt).execute(&mut conn).await.unwrap();
            }
            conn.close().await.unwrap();
        });
    }

    /// `mysql://relay:<password>@127.0.0.1:<port>/logs`.
    pub fn url(&self) -> String {
        self.url_for("logs")
    }

    /// [`MariaDb::url`] of the other database the harness made, `race`.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "mysql://relay:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    pub async fn pool(&self) -> sqlx::MySqlPool {
        sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .connect(&self.url())
            .await
            .unwrap()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        stop_child(&mut self.child, "-TERM");
    }
}
