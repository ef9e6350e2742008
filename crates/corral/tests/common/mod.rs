//! Test harness: the real `corral` binary ([`Corral`]) and a client for it, in front of
//! corral-testkit's scripted origin, Redis and dnsmasq (re-exported here), over loopback.
#![allow(dead_code)]

pub mod replicas;
pub mod sources;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

// The scripted origin, Redis and dnsmasq are corral-testkit's, shared with the crates' tests;
// not every test binary uses each.
#[allow(unused_imports)]
pub use corral_testkit::dnsmasq::Dnsmasq;
#[allow(unused_imports)]
pub use corral_testkit::origin::{Conns, Origin, Reply, Seen};
#[allow(unused_imports)]
pub use corral_testkit::redis::{cluster_port, redis_cluster, Redis};

// Not every test binary uses both.
#[allow(unused_imports)]
pub use corral_testkit::{free_port, replica_port, wait_for_process_state};

/// A running `corral serve` process, killed on drop.
pub struct Corral {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// How this test reaches the admin listener (plain, or TLS: `tls::admin_access`).
    pub admin_access: AdminAccess,
    pub dir: tempfile::TempDir,
    /// The last lines the process logged, shown when a test fails.
    log: LogTail,
}

/// Reads a child's stderr to its end and keeps the newest lines. A pipe nobody reads fills at
/// 64 KiB and then blocks the writer: a test that made corral log a few hundred warnings would
/// stall it mid-request.
#[derive(Clone, Default)]
pub struct LogTail(Arc<parking_lot::Mutex<std::collections::VecDeque<String>>>);

impl LogTail {
    const LINES: usize = 200;

    pub fn follow(stderr: impl std::io::Read + Send + 'static) -> LogTail {
        let tail = LogTail::default();
        let lines = tail.0.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let mut l = lines.lock();
                if l.len() == Self::LINES {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        tail
    }

    pub fn text(&self) -> String {
        self.0.lock().iter().map(|l| format!("{l}\n")).collect()
    }
}

/// The admin listener's base URL and a client that can talk to it.
#[derive(Clone)]
pub struct AdminAccess {
    pub base: String,
    pub client: reqwest::Client,
}

impl AdminAccess {
    pub fn plain(admin: SocketAddr) -> AdminAccess {
        AdminAccess {
            base: format!("http://{admin}"),
            client: client(),
        }
    }
}

/// A free loopback address for one listener (proxy, admin or TLS) of a test's corral.
pub fn loopback_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

/// Writes `text` as the config file `c.toml` in `dir` (a test's temporary directory): its path.
pub fn config_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `[server]` table of a config run by hand rather than through [`Corral`]: both
/// listeners on fresh loopback ports.
pub fn loopback_server_table() -> String {
    format!(
        "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\n",
        loopback_addr(),
        loopback_addr()
    )
}

/// `corral serve --config path`, run to its exit: for the configs it must refuse at start
/// (exit 2, the reason on stderr).
pub fn serve_to_exit(path: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .args(["serve", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// `corral check-config path`, run to its exit: what it printed and its status (2 for a
/// refused file).
pub fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

impl Corral {
    /// Starts corral with `config` (TOML); `{proxy}` and `{admin}` in it are replaced by free
    /// loopback addresses unless the config sets them itself.
    pub async fn start(config: &str) -> Corral {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Corral {
        Self::start_on(loopback_addr(), loopback_addr(), config, env).await
    }

    /// Starts corral on the given listeners.
    pub async fn start_on(
        proxy: SocketAddr,
        admin: SocketAddr,
        config: &str,
        env: &[(&str, &str)],
    ) -> Corral {
        Self::start_as(proxy, admin, config, env, AdminAccess::plain(admin)).await
    }

    /// Starts corral on the given listeners, its admin listener reached through `access`.
    pub async fn start_as(
        proxy: SocketAddr,
        admin: SocketAddr,
        config: &str,
        env: &[(&str, &str)],
        admin_access: AdminAccess,
    ) -> Corral {
        let mut c = Self::spawn_as(proxy, admin, config, env, admin_access);
        c.wait_ready().await;
        c
    }

    /// Starts corral on the given listeners without waiting for it to be ready (for tests of
    /// what happens while it starts; [`Corral::wait_ready_within`] waits after).
    pub fn spawn_on(
        proxy: SocketAddr,
        admin: SocketAddr,
        config: &str,
        env: &[(&str, &str)],
    ) -> Corral {
        Self::spawn_as(proxy, admin, config, env, AdminAccess::plain(admin))
    }

    fn spawn_as(
        proxy: SocketAddr,
        admin: SocketAddr,
        config: &str,
        env: &[(&str, &str)],
        admin_access: AdminAccess,
    ) -> Corral {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.toml");
        let text = format!("[server]\nlisten = \"{proxy}\"\nadmin_listen = \"{admin}\"\n{config}");
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env_remove("CORRAL_ADMIN_TOKEN")
            .env("CORRAL_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("corral binary runs");
        let log = LogTail::follow(child.stderr.take().expect("stderr is piped"));
        Corral {
            child,
            proxy,
            admin,
            admin_access,
            dir,
            log,
        }
    }

    async fn wait_ready(&mut self) {
        self.wait_ready_within(Duration::from_secs(20)).await;
    }

    /// Waits for `/readyz`, from this process: one that exited (its address taken) must not
    /// pass for ready because another process answers there.
    pub async fn wait_ready_within(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("corral on {} exited at start: {status}", self.admin);
            }
            if let Ok(r) = self
                .admin_access
                .client
                .get(self.admin_url("/readyz"))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        panic!("corral did not become ready on {}", self.admin);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin_access.base)
    }

    pub async fn get(&self, path: &str) -> Resp {
        Resp::from(client().get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut r = client().get(self.url(path));
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        Resp::from(r.send().await.unwrap()).await
    }

    /// `GET` on the admin listener.
    async fn admin_get(&self, path: &str) -> reqwest::Response {
        let url = self.admin_url(path);
        self.admin_access.client.get(url).send().await.unwrap()
    }

    /// `GET` on the admin listener, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        self.admin_get(path).await.json().await.unwrap()
    }

    /// `GET` on the admin listener, as text.
    pub async fn admin_text(&self, path: &str) -> String {
        self.admin_get(path).await.text().await.unwrap()
    }

    /// Reads one metric's value (the sum over its series matching `filter`).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.admin_text("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (up to 15 s) until one metric, read as [`Corral::metric`] reads it, satisfies
    /// `holds`: the wait for a state only `/metrics` shows (a gauge falling back as well as a
    /// counter moving). Whether it did.
    pub async fn metric_holds(&self, name_and_labels: &str, holds: impl Fn(f64) -> bool) -> bool {
        self.metric_holds_within(name_and_labels, Duration::from_secs(15), holds)
            .await
    }

    /// [`Corral::metric_holds`] with its own limit, for states that take longer to reach (a
    /// discovery source retrying on its refresh interval).
    pub async fn metric_holds_within(
        &self,
        name_and_labels: &str,
        within: Duration,
        holds: impl Fn(f64) -> bool,
    ) -> bool {
        eventually(within, async || holds(self.metric(name_and_labels).await)).await
    }

    /// Does `break_it` (makes a discovery source's input bad), then waits up to 30 s (a
    /// source retries on its refresh interval) until discovery has counted a failure since:
    /// the source has tried what was broken. Whether it did.
    pub async fn discovery_fails_after(&self, break_it: impl FnOnce()) -> bool {
        let metric = "corral_discovery_failures_total";
        let before = self.metric(metric).await;
        break_it();
        self.metric_holds_within(metric, Duration::from_secs(30), |n| n > before)
            .await
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- corral on {} logged:\n{}", self.admin, self.log.text());
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub async fn from(r: reqwest::Response) -> Resp {
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap(),
        }
    }
    pub fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
    pub fn is_hit(&self) -> bool {
        self.cache_status().split(';').any(|p| p.trim() == "hit")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client that never uses proxies from the environment and keeps connections alive.
pub fn client() -> reqwest::Client {
    // reqwest's rustls (for the TLS admin tests) asks for a process-wide provider even for
    // plain HTTP; ring, the one Corral uses. Installed once; later calls are no-ops.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET url` with one request header, needing no [`Corral`] borrowed (for requests spawned
/// as tasks, many at once): the status and the body's text.
pub async fn get_text_with(url: &str, header: (&str, &str)) -> (u16, String) {
    let resp = client()
        .get(url)
        .header(header.0, header.1)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A config with one upstream and extra `[cache]` lines.
pub fn config(origin: &Origin, cache: &str) -> String {
    format!("[upstream]\nurl = \"{}\"\n[cache]\n{cache}\n", origin.url())
}

pub fn map<const N: usize>(pairs: [(&str, usize); N]) -> HashMap<String, usize> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// `POST /purge` on `c`'s admin API with a JSON body; asserts 200 and returns the answer.
pub async fn purge(c: &Corral, body: serde_json::Value) -> serde_json::Value {
    let r = c
        .admin_access
        .client
        .post(c.admin_url("/purge"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The peers that acknowledged a purge sent with `"wait": true` (its answer `v`), sorted.
pub fn acknowledged(v: &serde_json::Value) -> Vec<String> {
    let mut acked: Vec<String> = v["acknowledged"]
        .as_array()
        .expect("a waited purge lists who acknowledged it")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    acked.sort();
    acked
}

/// Polls until `f` holds or `within` passes (corral-testkit's, shared with the crates' tests).
pub use corral_testkit::eventually;
