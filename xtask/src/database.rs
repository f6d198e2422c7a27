//! Data stores on 127.0.0.1 for the demo and the benchmark: a throwaway PostgreSQL server with
//! the shop's tables, a Redis server for the gateway's sessions, and a MariaDB server.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Debian's PostgreSQL server binaries (`postgresql-15`, installed by `cargo xtask setup`).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The shop: products, carts, and the product views recommendations are computed from.
const SCHEMA: &str = "CREATE TABLE products (id int PRIMARY KEY, name text, price numeric); \
     INSERT INTO products SELECT i, 'product ' || i, 9.99 + i FROM generate_series(1, 100) i; \
     CREATE TABLE cart_items (cart_id int, product_id int REFERENCES products, qty int); \
     CREATE INDEX ON cart_items (cart_id); \
     INSERT INTO cart_items VALUES (42, 7, 1), (42, 13, 2); \
     CREATE TABLE views (user_id int, product_id int); \
     INSERT INTO views SELECT i % 1000, i % 100 + 1 FROM generate_series(1, 20000) i;";

/// A running server; stopped (fast shutdown) and its directory removed when dropped.
pub struct Database {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    pub user: &'static str,
    pub name: &'static str,
}

/// `program` from [`PG_BIN`], run as the `postgres` user (the server refuses root).
fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "postgres", "--regid", "postgres", "--clear-groups", "--"])
        .arg(Path::new(PG_BIN).join(program));
    cmd
}

fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Database {
    /// Starts a server on a free port and creates the shop's database.
    pub fn start() -> Result<Database> {
        // Under the system's temporary directory: the server's user must reach it, which a
        // clone under a private home directory would not allow.
        let dir = std::env::temp_dir().join(format!("tracewire-demo-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        check(Command::new("chown").arg("postgres:postgres").arg(&dir), "chown")?;
        let data = dir.join("data");
        check(
            as_postgres("initdb")
                .args(["--auth=trust", "--username=shop", "--encoding=UTF8", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "ssl=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        let db = Database { child, dir, port, user: "shop", name: "shop" };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
        {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        db.psql("postgres", "CREATE DATABASE shop")?;
        db.psql("shop", SCHEMA)?;
        Ok(db)
    }

    /// Where a client connects: host, port and user options (psql's and pgbench's).
    pub fn client_args(&self) -> Vec<String> {
        ["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", self.user].map(str::to_string).to_vec()
    }

    /// pgbench, from Debian's server binaries.
    pub fn pgbench() -> PathBuf {
        Path::new(PG_BIN).join("pgbench")
    }

    fn psql(&self, database: &str, sql: &str) -> Result<()> {
        check(
            Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .args(self.client_args())
                .args(["-d", database, "-c", sql]),
            "psql",
        )
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (SIGTERM waits for every client to leave).
        // SAFETY: a signal to our own child.
        unsafe { crate::libc_kill(self.child.id() as i32, 2) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway Redis server on 127.0.0.1 (nothing persisted); stopped when dropped.
pub struct Cache {
    child: Child,
    pub port: u16,
}

impl Cache {
    pub fn start() -> Result<Cache> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let cache = Cache { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The gateway's session, which every page load looks up.
        while check(
            Command::new("redis-cli").args(["-p", &port.to_string(), "SET", "session:42", "user=42"]),
            "redis-cli",
        )
        .is_err()
        {
            if Instant::now() > deadline {
                bail!("Redis did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(cache)
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway MariaDB server without grant tables (any user connects); stopped and its
/// directory removed when dropped.
pub struct MariaDb {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl MariaDb {
    pub fn start() -> Result<MariaDb> {
        let dir = std::env::temp_dir().join(format!("tracewire-mariadb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        check(
            Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=root",
                    "--skip-test-db",
                    "--auth-root-authentication-method=normal",
                ])
                .arg(format!("--datadir={}", data.display())),
            "mariadb-install-db",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("/usr/sbin/mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--bind-address=127.0.0.1",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mariadbd")?;
        let db = MariaDb { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.selects().is_err() {
            if Instant::now() > deadline {
                bail!("MariaDB did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(db)
    }

    /// Where a client connects: host, port and user options (the mariadb client's and
    /// mariadb-slap's).
    pub fn client_args(&self) -> Vec<String> {
        ["--no-defaults", "-h", "127.0.0.1", "-u", "app", "-P", &self.port.to_string()]
            .map(str::to_string)
            .to_vec()
    }

    /// The SELECT statements the server has run so far (its `Com_select` status).
    pub fn selects(&self) -> Result<u64> {
        let out = Command::new("mariadb")
            .args(self.client_args())
            .args(["-N", "-B", "-e", "SHOW GLOBAL STATUS LIKE 'Com_select'"])
            .output()
            .context("running mariadb")?;
        if !out.status.success() {
            bail!("mariadb: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().nth(1).and_then(|n| n.parse().ok()).context("no Com_select status")
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { crate::libc_kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
