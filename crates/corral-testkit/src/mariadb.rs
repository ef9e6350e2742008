//! A throwaway MariaDB server for tests: `mariadb-install-db` into a temporary directory,
//! `mariadbd` on a free loopback port with a row-based binlog (GTIDs are always on in
//! MariaDB), stopped and removed on drop.
//!
//! The binlog settings are the ones Corral's follower needs and documents: `binlog_format =
//! ROW`, `binlog_row_image = FULL`, `binlog_row_metadata = FULL` (so TABLE_MAP events carry
//! column names). `mariadbd` refuses to run as root unless told to; under root (CI) it is
//! given `--user=root`, so the child killed is the server itself and the files it writes stay
//! removable by the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user Corral connects as (`mysql_native_password`, password [`MariaDb::PASSWORD`]).
pub const USER: &str = "corral";
/// The database the tests use.
pub const DATABASE: &str = "shop";

/// A running server.
pub struct MariaDb {
    pub port: u16,
    /// The server's own `server_id` (a follower must register with a different one).
    pub server_id: u32,
    dir: PathBuf,
    child: Option<Child>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl MariaDb {
    pub const PASSWORD: &'static str = "s3cret-for-tests";

    /// Initialises and starts a server, waits until it accepts connections, and creates the
    /// user and the database. Panics with the server's log when it cannot.
    pub fn start() -> MariaDb {
        MariaDb::start_with(None)
    }

    /// [`MariaDb::start`] with TLS, `cert` as the server's certificate; [`USER`] may log in
    /// only over TLS (`REQUIRE SSL`), so a login in clear is refused.
    pub fn start_tls(cert: &crate::tls::CertFiles) -> MariaDb {
        MariaDb::start_with(Some(cert))
    }

    fn start_with(cert: Option<&crate::tls::CertFiles>) -> MariaDb {
        assert!(
            Command::new("mariadbd").arg("--version").output().is_ok(),
            "MariaDB is not installed (mariadbd); scripts/test.sh installs mariadb-server"
        );
        let dir = std::env::temp_dir().join(format!(
            "corral-mariadb-{}-{}",
            std::process::id(),
            crate::free_port("127.0.0.1")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let data = dir.join("data");
        // A temporary directory of its own: mariadbd removes every `#sql*` file in its tmpdir
        // when it starts, so servers sharing /tmp delete each other's temporary tables.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmpdir");
        let user = if is_root() { "root" } else { "" };
        let mut install = Command::new("mariadb-install-db");
        install.args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            // Several servers start at once in a test run: InnoDB's native AIO would reserve
            // kernel AIO slots for each, and the system's limit (fs.aio-max-nr) runs out.
            "--innodb-use-native-aio=0",
        ]);
        install.arg(format!("--tmpdir={}", tmp.display()));
        if !user.is_empty() {
            install.arg(format!("--user={user}"));
        }
        let out = install.output().expect("run mariadb-install-db");
        if !out.status.success() {
            panic!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let port = crate::free_port("127.0.0.1");
        let server_id = 1;
        let mut server = Command::new("mariadbd");
        server.args([
            "--no-defaults".to_string(),
            format!("--datadir={}", data.display()),
            "--bind-address=127.0.0.1".into(),
            format!("--port={port}"),
            format!("--socket={}", dir.join("mysqld.sock").display()),
            format!("--pid-file={}", dir.join("mysqld.pid").display()),
            format!("--log-error={}", dir.join("server.log").display()),
            format!("--log-bin={}", data.join("binlog").display()),
            "--binlog-format=ROW".into(),
            "--binlog-row-image=FULL".into(),
            "--binlog-row-metadata=FULL".into(),
            format!("--server-id={server_id}"),
            "--skip-name-resolve".into(),
            "--character-set-server=utf8mb4".into(),
            "--collation-server=utf8mb4_general_ci".into(),
            "--innodb-buffer-pool-size=16M".into(),
            "--innodb-use-native-aio=0".into(),
            format!("--tmpdir={}", tmp.display()),
            "--innodb-flush-log-at-trx-commit=0".into(),
            "--sync-binlog=0".into(),
        ]);
        if !user.is_empty() {
            server.arg(format!("--user={user}"));
        }
        if let Some(cert) = cert {
            server.arg(format!("--ssl-cert={}", cert.cert.display()));
            server.arg(format!("--ssl-key={}", cert.key.display()));
        }
        let require = if cert.is_some() { " REQUIRE SSL" } else { "" };
        let child = server
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let mut db = MariaDb {
            port,
            server_id,
            dir,
            child: Some(child),
        };
        db.wait_ready();
        db.sql_as(
            "root",
            "",
            &format!(
                "CREATE DATABASE {DATABASE}; \
                 CREATE USER '{USER}'@'%' IDENTIFIED BY '{}'{require}; \
                 GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{USER}'@'%'; \
                 GRANT SELECT ON {DATABASE}.* TO '{USER}'@'%'; \
                 GRANT ALL ON corral.* TO '{USER}'@'%';",
                Self::PASSWORD
            ),
        );
        db
    }

    /// Runs a trivial query until the server answers it (an observable state), failing if
    /// the server exits or a minute passes.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_sql_as("root", "", "SELECT 1").is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mariadbd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd not ready within a minute: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs SQL with the `mariadb` client as root in [`DATABASE`] (a plain SQL client, as an
    /// application would); returns its tab-separated output without column names. Panics if
    /// the client fails.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_as("root", DATABASE, sql)
    }

    pub fn sql_as(&self, user: &str, database: &str, sql: &str) -> String {
        self.try_sql_as(user, database, sql)
            .unwrap_or_else(|e| panic!("mariadb {sql:?}: {e}"))
    }

    /// `host=... port=... user=... dbname=...` (Corral's DSN form), without the password.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname={DATABASE}",
            self.port
        )
    }

    fn try_sql_as(&self, user: &str, database: &str, sql: &str) -> Result<String, String> {
        let mut c = Command::new("mariadb");
        c.args([
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-P",
            &self.port.to_string(),
            "-u",
            user,
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
        ]);
        if !database.is_empty() {
            c.arg(database);
        }
        let out = c.env_remove("MYSQL_PWD").output().expect("run mariadb");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: the data directory is thrown away, nothing needs a clean shutdown.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
