//! Test harness: a real origin server (scripted per test, counting requests) and the real
//! `corral` binary, talking HTTP over loopback.
#![allow(dead_code)]

pub mod replicas;
pub mod sources;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

/// What the origin answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
    /// Stream this many bytes in 64 KiB chunks instead of `body` (for huge bodies).
    pub stream_len: Option<u64>,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            body: body.into(),
            delay: Duration::ZERO,
            stream_len: None,
        }
    }
    pub fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }
    pub fn header(mut self, n: &str, v: &str) -> Reply {
        self.headers.push((n.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn stream(mut self, n: u64) -> Reply {
        self.stream_len = Some(n);
        self
    }
}

/// A request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A real HTTP origin on loopback.
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Mutex<Handler>>,
    conns: Arc<Conns>,
}

/// TCP connections the origin accepted, and how many of them have ended (closed by either side).
#[derive(Debug, Default)]
pub struct Conns {
    pub accepted: std::sync::atomic::AtomicUsize,
    pub closed: std::sync::atomic::AtomicUsize,
}

impl Origin {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        Self::start_on("127.0.0.1:0", handler).await
    }

    pub async fn start_on(
        addr: &str,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Arc::new(handler)));
        let conns: Arc<Conns> = Arc::default();
        let (s, h, c) = (seen.clone(), handler.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (s, h, c) = (s.clone(), h.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (s, h) = (s.clone(), h.clone());
                        async move { Ok::<_, Infallible>(answer(req, &s, &h).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    c.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Origin {
            addr,
            seen,
            handler,
            conns,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.conns
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections that have ended so far.
    pub fn closed(&self) -> usize {
        self.conns.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the handler.
    pub fn set(&self, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.handler.lock() = Arc::new(handler);
    }

    /// Requests seen whose path and query start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.uri.starts_with(prefix))
            .count()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    pub fn last(&self, prefix: &str) -> Option<Seen> {
        self.seen
            .lock()
            .iter()
            .rev()
            .find(|s| s.uri.starts_with(prefix))
            .cloned()
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: http::Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    handler: &Mutex<Handler>,
) -> http::Response<OriginBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body_len = body.len();
    let s = Seen {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        headers: parts.headers,
        body_len,
        body,
    };
    seen.lock().push(s.clone());
    let h = handler.lock().clone();
    let reply = h(&s);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut b = http::Response::builder().status(reply.status);
    for (n, v) in &reply.headers {
        b = b.header(n, v);
    }
    let body: OriginBody = match reply.stream_len {
        Some(n) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..take as usize))),
                        left - take,
                    ))
                }
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
        None => BodyExt::boxed(Full::new(reply.body)),
    };
    b.body(body).unwrap()
}

// Not every test binary uses both.
#[allow(unused_imports)]
pub use corral_testkit::{free_port, replica_port};

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

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

impl Corral {
    /// Starts corral with `config` (TOML); `{proxy}` and `{admin}` in it are replaced by free
    /// loopback addresses unless the config sets them itself.
    pub async fn start(config: &str) -> Corral {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Corral {
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap();
        Self::start_on(proxy, admin, config, env).await
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

    /// `GET` on the admin listener, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        self.admin_access
            .client
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET` on the admin listener, as text.
    pub async fn admin_text(&self, path: &str) -> String {
        self.admin_access
            .client
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Reads one metric's value (the sum over its series matching `filter`).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.admin_text("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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

/// A config with one upstream and extra `[cache]` lines.
pub fn config(origin: &Origin, cache: &str) -> String {
    format!("[upstream]\nurl = \"{}\"\n[cache]\n{cache}\n", origin.url())
}

pub fn map<const N: usize>(pairs: [(&str, usize); N]) -> HashMap<String, usize> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A real DNS server (dnsmasq) answering for a headless-service name from a hosts file,
/// reloaded on SIGHUP.
pub struct Dnsmasq {
    child: Child,
    hosts: std::path::PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub fn start<S: AsRef<str>>(name: &str, ips: &[S]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        Self::write(&hosts, name, ips);
        let port = free_port("127.0.0.1");
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={port}"),
                &format!("--addn-hosts={}", hosts.display()),
                "--local-ttl=1",
                &format!("--pid-file={}", dir.path().join("pid").display()),
                "--user=root",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (scripts/test.sh installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq {
            child,
            hosts,
            port,
            _dir: dir,
        }
    }

    fn write<S: AsRef<str>>(path: &std::path::Path, name: &str, ips: &[S]) {
        let text: String = ips
            .iter()
            .map(|ip| format!("{} {name}\n", ip.as_ref()))
            .collect();
        std::fs::write(path, text).unwrap();
    }

    /// Rewrites the records and tells dnsmasq to reread them.
    pub fn set<S: AsRef<str>>(&self, name: &str, ips: &[S]) {
        Self::write(&self.hosts, name, ips);
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Polls until `f` holds or `within` passes (corral-testkit's, shared with the crates' tests).
pub use corral_testkit::eventually;

/// A real redis-server on loopback, killed on drop. No persistence: a restart is empty.
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["ping"]).trim() == "PONG" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        panic!("redis-server on {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

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

/// Ports for cluster nodes: the cluster bus takes port + 10000.
pub fn cluster_port() -> u16 {
    loop {
        let p = 20000 + (rand_u16() % 10000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (t ^ std::process::id()) as u16
}

/// A Redis Cluster of `masters` nodes on loopback, made by `redis-cli --cluster create`, every
/// node reporting `cluster_state:ok`.
pub async fn redis_cluster(masters: usize) -> Vec<Redis> {
    let mut nodes = Vec::new();
    for _ in 0..masters {
        nodes.push(Redis::start_on(cluster_port(), true).await);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ok = eventually(Duration::from_secs(30), async || {
        nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
    })
    .await;
    assert!(ok, "the Redis Cluster formed");
    nodes
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
