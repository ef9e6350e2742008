//! Throwaway `redis-server` processes on loopback: one server, or a Redis Cluster made by
//! `redis-cli --cluster create`. No persistence, so a restart is empty; killed on drop (and
//! sent `SIGCONT` first, so a server a test paused does not outlive it).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port, quiet_port_below};

/// A real redis-server on loopback, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
    /// Extra redis-server arguments (auth, TLS).
    extra: Vec<String>,
    password: Option<String>,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_on(free_port("127.0.0.1"), false).await
    }

    /// A server on `port`; with `cluster`, a node of a Redis Cluster (its bus port is
    /// `port + 10000`: see [`cluster_port`]).
    pub async fn start_on(port: u16, cluster: bool) -> Redis {
        Self::start_with(port, cluster, Vec::new(), None).await
    }

    pub async fn start_with(
        port: u16,
        cluster: bool,
        extra: Vec<String>,
        password: Option<String>,
    ) -> Redis {
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            cluster,
            extra,
            password,
        };
        r.spawn().await;
        r
    }

    /// Starts the process (again, after [`Redis::kill`]) and waits until it answers `PING`.
    pub async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path());
        cmd.args(&self.extra);
        if let Some(p) = &self.password {
            cmd.arg("--requirepass").arg(p);
        }
        if self.cluster {
            cmd.arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"))
                .arg("--cluster-node-timeout")
                .arg("5000");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        let answering = eventually(Duration::from_secs(30), async || {
            self.cli(&["ping"]).trim() == "PONG"
        })
        .await;
        assert!(answering, "redis-server on {port} did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server (with its password); its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        if let Some(p) = &self.password {
            cmd.env("REDISCLI_AUTH", p);
        }
        let out = cmd
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli is installed (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill();
    }
}

/// `redis-cli` with `args` (no server implied: name it with `-p`), asserting it succeeded;
/// its standard output.
pub fn cli(args: &[String]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port for a cluster node: free on 127.0.0.1 with its bus port (`port + 10000`), both
/// below the kernel's ephemeral range (see the crate's doc).
pub fn cluster_port() -> u16 {
    loop {
        let p = quiet_port_below(10_000, &["127.0.0.1".to_string()]);
        if std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A Redis Cluster of `masters` nodes on loopback, made by `redis-cli --cluster create`, every
/// node reporting `cluster_state:ok`.
pub async fn redis_cluster(masters: usize) -> Vec<Redis> {
    let mut nodes = Vec::new();
    for _ in 0..masters {
        nodes.push(Redis::start_on(cluster_port(), true).await);
    }
    let mut args = vec!["--cluster".to_string(), "create".into()];
    args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
    cli(&args);
    let ok = eventually(Duration::from_secs(30), async || {
        nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
    })
    .await;
    assert!(ok, "the Redis Cluster formed");
    nodes
}
