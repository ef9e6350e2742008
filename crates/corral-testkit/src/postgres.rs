//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory, started on a
//! free loopback port with `wal_level = logical`, stopped and removed on drop.
//!
//! The binaries are found in `/usr/lib/postgresql/<version>/bin` (Debian's layout: they are
//! not on `PATH`). PostgreSQL refuses to run as root; under root (CI) the server runs as the
//! `postgres` user the package creates, by setting the child's uid rather than through
//! `runuser`, so the child killed is the server itself.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The role Corral connects as (`LOGIN REPLICATION`, password [`Postgres::PASSWORD`], SCRAM).
pub const USER: &str = "corral";
/// The database the tests use, owned by [`USER`].
pub const DATABASE: &str = "shop";

/// A running server.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

/// The newest installed version's `bin` directory.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The uid and gid of `postgres` when we are root (from /etc/passwd), else `None`.
fn run_as() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

fn command(bin: &Path, name: &str, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin.join(name));
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c.env("LC_ALL", "C").env_remove("PGPASSWORD");
    c
}

impl Postgres {
    pub const PASSWORD: &'static str = "s3cret-for-tests";

    /// Initialises and starts a server, waits until it accepts connections, and creates the
    /// role and the database. Panics with the server's output when it cannot.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// [`Postgres::start`] with `ssl = on` and `cert` as the server's certificate; [`USER`]
    /// may connect only over TLS (`hostnossl ... reject`), so a session in clear is refused.
    pub fn start_tls(cert: &crate::tls::CertFiles) -> Postgres {
        Postgres::start_with(Some(cert))
    }

    fn start_with(cert: Option<&crate::tls::CertFiles>) -> Postgres {
        let bin = bin_dir().expect("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres); scripts/test.sh installs it");
        let user = run_as();
        let dir = std::env::temp_dir().join(format!(
            "corral-pg-{}-{}",
            std::process::id(),
            crate::free_port("127.0.0.1")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the data directory");
        }
        let data = dir.join("data");
        let out = command(&bin, "initdb", user)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::free_port("127.0.0.1");
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 8\nmax_wal_senders = 8\n\
             fsync = off\nsynchronous_commit = off\nwal_sender_timeout = '60s'\n",
            dir.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        let mut hba = "local all all trust\nhost all postgres 127.0.0.1/32 trust\n".to_string();
        if let Some(cert) = cert {
            // The server reads its key only if no one else may (0600, its own user's).
            let (crt, key) = (data.join("server.crt"), data.join("server.key"));
            std::fs::copy(&cert.cert, &crt).expect("copy the certificate");
            std::fs::copy(&cert.key, &key).expect("copy the key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod the key");
            if let Some((uid, gid)) = user {
                for f in [&crt, &key] {
                    std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown");
                }
            }
            append(
                &data.join("postgresql.conf"),
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            hba.push_str(&format!("hostnossl all {USER} 127.0.0.1/32 reject\n"));
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        if let Some((uid, gid)) = user {
            for f in ["server.log", "data/pg_hba.conf"] {
                let _ = std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid));
            }
        }
        let child = command(&bin, "postgres", user)
            .args(["-D", data.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let mut pg = Postgres {
            port,
            dir,
            bin,
            child: Some(child),
        };
        pg.wait_ready();
        let role = format!(
            "CREATE ROLE {USER} LOGIN REPLICATION PASSWORD '{}'",
            Self::PASSWORD
        );
        pg.psql_as("postgres", "postgres", &role);
        // Alone: CREATE DATABASE cannot run in the transaction psql makes of several statements.
        pg.psql_as(
            "postgres",
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        );
        pg
    }

    /// Polls `pg_isready` until the server accepts connections (an observable state), failing
    /// if the server exits or a minute passes.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within a minute: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs SQL with psql as the superuser in [`DATABASE`] (a plain SQL client, as an
    /// application would); returns its unaligned output. Panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_as("postgres", DATABASE, sql)
    }

    pub fn psql_as(&self, user: &str, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                database,
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `host=... port=... user=... dbname=...`, without the password.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname={DATABASE}",
            self.port
        )
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open postgresql.conf");
    f.write_all(text.as_bytes()).expect("write postgresql.conf");
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown (its backends go too).
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
