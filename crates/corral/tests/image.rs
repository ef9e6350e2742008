//! The container image: `scripts/image.sh` builds it (a static binary on `FROM scratch`), and
//! it runs the way a cluster's admission policy expects — read-only root filesystem, no
//! capabilities, uid 65532, no privilege escalation — on the host network, in front of a real
//! origin on loopback that it reaches by the hostname `localhost` (getaddrinfo in a static
//! glibc binary, in an image without NSS libraries). Through it: a miss, then a hit; a purge
//! through the admin API, with the token from the environment, never the command line; then
//! `podman stop` drains it (an in-flight request finishes, `/readyz` turns 503) and it exits 0.
//! The image's size and user come from `podman image inspect`.
//!
//! Where podman cannot be installed or cannot run containers, this test fails and says why:
//! it never passes without having run the image.
//!
//! The binary's cargo profile: `CORRAL_IMAGE_PROFILE`, default `dist`, what ships (the image
//! scripts/test.sh builds before the suite, so that this test finds it up to date).

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{watch, Notify};

use common::{client, eventually, free_port, Resp};

/// The image's size limit, uncompressed, as `podman image inspect` reports it.
const MAX_IMAGE_BYTES: u64 = 20_000_000;
const VERSION: &str = env!("CARGO_PKG_VERSION");
const TOKEN: &str = "image-test-admin-token";
/// A name for the origin that only the container's /etc/hosts knows (`podman run --add-host`).
const APP_HOST: &str = "app.corral-image-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo profile of the image's binary: `CORRAL_IMAGE_PROFILE`, else `dist`.
fn profile() -> String {
    std::env::var("CORRAL_IMAGE_PROFILE").unwrap_or_else(|_| "dist".into())
}

/// Runs `scripts/image.sh` and returns the environment it says podman needs here
/// (`target/image/podman.env`: `CONTAINERS_CONF` where podman's defaults cannot run a
/// container).
async fn build_image() -> Vec<(String, String)> {
    let root = repo_root();
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(root.join("scripts/image.sh"))
        .args(["--profile", &profile()])
        .current_dir(&root);
    // What cargo sets for this test (the package's variables, build.rs's CORRAL_GIT_REV)
    // would look like changed inputs to the image's own cargo build and rebuild it all.
    let set_by_cargo = |k: &str| {
        ["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_MANIFEST_"]
            .iter()
            .any(|p| k.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "CORRAL_GIT_REV",
                "OUT_DIR",
            ]
            .contains(&k)
    };
    for (k, _) in std::env::vars_os() {
        if set_by_cargo(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .expect("bash runs scripts/image.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/image.sh failed ({}): podman could not be installed, or the image could not be \
         built or started; this test needs podman and fails without it.\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    println!("{stdout}scripts/image.sh: {:?}", started.elapsed());
    let env = std::fs::read_to_string(root.join("target/image/podman.env"))
        .expect("scripts/image.sh writes target/image/podman.env");
    env.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// `podman ARGS` with the environment from `build_image`; stdout on success, else a panic that
/// shows what podman said.
async fn podman(env: &[(String, String)], args: &[&str]) -> String {
    let out = tokio::process::Command::new("podman")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("podman runs");
    assert!(
        out.status.success(),
        "podman {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real origin on 127.0.0.1: `/item` is cacheable and tagged `item`; `/slow` is answered
/// only once the test opens its gate, so a request can be held in flight for as long as the
/// test needs; `/invalidate` takes what Corral's `[[forward]]` sends.
struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    forwarded: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

struct OriginState {
    items: AtomicUsize,
    slow_arrived: Notify,
    gate: watch::Sender<bool>,
    forwarded: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (forwarded, forwarded_rx) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(OriginState {
            items: AtomicUsize::new(0),
            slow_arrived: Notify::new(),
            gate: watch::channel(false).0,
            forwarded,
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(st.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            state,
            forwarded: tokio::sync::Mutex::new(forwarded_rx),
        }
    }

    /// The next body `[[forward]]` delivered, waiting at most `within`.
    async fn next_forwarded(&self, within: Duration) -> Option<String> {
        let mut rx = self.forwarded.lock().await;
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }
}

impl OriginState {
    async fn answer(&self, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        let r = http::Response::builder();
        match req.uri().path() {
            "/item" => {
                let n = self.items.fetch_add(1, Ordering::SeqCst) + 1;
                r.header("cache-control", "max-age=300")
                    .header("surrogate-key", "item")
                    .body(Full::new(Bytes::from(format!("item v{n}"))))
            }
            "/slow" => {
                self.slow_arrived.notify_one();
                let _ = self.gate.subscribe().wait_for(|open| *open).await;
                r.header("cache-control", "no-store")
                    .body(Full::new(Bytes::from("done")))
            }
            "/invalidate" => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let _ = self
                    .forwarded
                    .send(String::from_utf8_lossy(&body).into_owned());
                r.body(Full::new(Bytes::new()))
            }
            _ => r.status(404).body(Full::new(Bytes::new())),
        }
        .unwrap()
    }
}

/// Removes the container when the test ends, however it ends.
struct Container {
    name: String,
    env: Vec<(String, String)>,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_purges_and_drains_locked_down() {
    let env = build_image().await;
    let image = format!("localhost/corral:{VERSION}");

    // What the image is: small, non-root, the binary as entrypoint, labelled.
    let inspect = podman(&env, &["image", "inspect", &image]).await;
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let inspect = &inspect[0];
    let size = inspect["Size"].as_u64().unwrap();
    assert!(
        size <= MAX_IMAGE_BYTES,
        "image is {size} bytes, over {MAX_IMAGE_BYTES}"
    );
    let cfg = &inspect["Config"];
    assert_eq!(cfg["User"], "65532:65532", "image user");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/corral"]));
    assert_eq!(
        cfg["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/corral/corral.toml"])
    );
    for port in ["8080/tcp", "9090/tcp"] {
        assert!(cfg["ExposedPorts"].get(port).is_some(), "exposes {port}");
    }
    let labels = &cfg["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert!(labels["org.opencontainers.image.source"]
        .as_str()
        .is_some_and(|s| s.starts_with("https://")));
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap()
        .to_string();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        assert_eq!(revision, head, "the revision label names HEAD");
    }
    let latest = podman(
        &env,
        &[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            "localhost/corral:latest",
        ],
    )
    .await;
    assert_eq!(
        latest,
        inspect["Id"].as_str().unwrap(),
        ":latest is this image"
    );
    let version = podman(
        &env,
        &["run", "--rm", "--network", "host", &image, "--version"],
    )
    .await;
    assert_eq!(version, format!("corral {VERSION} ({revision})"));

    // A real origin on loopback, reached by name twice over: the upstream as `localhost`
    // (Corral's own resolver, which reads /etc/hosts and /etc/resolv.conf), the `[[forward]]`
    // target as a name only the container's /etc/hosts knows (glibc's getaddrinfo, linked
    // statically, in an image without NSS libraries).
    let origin = Origin::start().await;
    let proxy = free_port("127.0.0.1");
    let admin = free_port("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{proxy}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             shutdown_grace = \"20s\"\n\n[upstream]\nurl = \"http://localhost:{port}\"\n\n\
             [[forward]]\nurl = \"http://{APP_HOST}:{port}/invalidate\"\nbody = '{{\"key\": \"{{tag}}\"}}'\n",
            port = origin.addr.port()
        ),
    )
    .unwrap();
    // Readable by the container's uid 65532 (the bind mount exposes the file, not its
    // private directory).
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let name = format!("corral-image-test-{}-{proxy}", std::process::id());
    let container = Container {
        name: name.clone(),
        env: env.clone(),
    };
    let add_host = format!("{APP_HOST}:127.0.0.1");
    let mount = format!("{}:/etc/corral/corral.toml:ro", config.display());
    // `-e CORRAL_ADMIN_TOKEN` without a value: podman takes it from its own environment, so
    // the token is on no command line (podman's, or the container's).
    let args = [
        "run",
        "--rm",
        "--name",
        &name,
        "--read-only",
        "--cap-drop=ALL",
        "--user",
        "65532:65532",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "host",
        "--add-host",
        &add_host,
        "-v",
        &mount,
        "-e",
        "CORRAL_ADMIN_TOKEN",
        "-e",
        "CORRAL_LOG=info",
        &image,
    ];
    assert!(!args.iter().any(|a| a.contains(TOKEN)));
    let mut run = tokio::process::Command::new("podman")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CORRAL_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("podman run starts");
    // Its log, line by line, for the drain check and for failure messages.
    let (log_tx, mut log_rx) = watch::channel(String::new());
    let stderr = run.stderr.take().unwrap();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            log_tx.send_modify(|s| {
                s.push_str(&l);
                s.push('\n');
            });
        }
    });
    let log = |rx: &watch::Receiver<String>| rx.borrow().clone();

    // Ready: this container's /readyz answers 200 (and the container is still running).
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = run.try_wait() {
            panic!("the container exited at start: {status}\n{}", log(&log_rx));
        }
        if let Ok(r) = client().get(&readyz).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the container did not become ready within 60 s\n{}",
            log(&log_rx)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = podman(&env, &["inspect", "--format", "{{.State.Pid}}", &name]).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65532"),
        "the process runs as 65532: {uid}"
    );

    // A miss, then a hit.
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{proxy}{path}");
        async move { Resp::from(client().get(url).send().await.unwrap()).await }
    };
    let first = get("/item").await;
    assert_eq!(first.status, 200, "{}", log(&log_rx));
    assert_eq!(first.text(), "item v1");
    assert!(
        first.cache_status().contains("fwd=miss") && first.cache_status().contains("stored"),
        "first GET: {}",
        first.cache_status()
    );
    let second = get("/item").await;
    assert!(second.is_hit(), "second GET: {}", second.cache_status());
    assert_eq!(second.text(), "item v1");
    assert_eq!(origin.state.items.load(Ordering::SeqCst), 1);

    // A purge through the admin API: refused without the token, done with it.
    let purge_url = format!("http://127.0.0.1:{admin}/purge");
    let body = serde_json::json!({"tags": ["item"]});
    let refused = client().post(&purge_url).json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 401, "a purge without the token");
    let done = client()
        .post(&purge_url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200, "a purge with the token");
    let answer: HashMap<String, serde_json::Value> = done.json().await.unwrap();
    assert_eq!(answer["purged"], 1, "{answer:?}");
    let third = get("/item").await;
    assert!(
        third.cache_status().contains("fwd=miss"),
        "after the purge: {}",
        third.cache_status()
    );
    assert_eq!(third.text(), "item v2");
    // The purge reached the app through `[[forward]]`, by a name from /etc/hosts.
    let forwarded = origin.next_forwarded(Duration::from_secs(30)).await;
    assert_eq!(
        forwarded.as_deref(),
        Some(r#"{"key": "item"}"#),
        "[[forward]] to http://{APP_HOST}:{}/invalidate\n{}",
        origin.addr.port(),
        log(&log_rx)
    );

    // The drain: a request held in flight at the origin, then `podman stop` (SIGTERM).
    let inflight = tokio::spawn(get("/slow"));
    tokio::time::timeout(
        Duration::from_secs(30),
        origin.state.slow_arrived.notified(),
    )
    .await
    .expect("the slow request reaches the origin");
    let stop = {
        let env = env.clone();
        let name = name.clone();
        // Within --time the container must exit by itself; past it podman would SIGKILL it
        // (exit 137).
        tokio::spawn(async move { podman(&env, &["stop", "--time", "40", &name]).await })
    };
    let draining = eventually(
        Duration::from_secs(30),
        async || matches!(client().get(&readyz).send().await, Ok(r) if r.status() == 503),
    )
    .await;
    assert!(
        draining,
        "/readyz did not turn 503 after podman stop\n{}",
        log(&log_rx)
    );
    origin.state.gate.send_replace(true);
    let slow = inflight.await.unwrap();
    assert_eq!(slow.status, 200, "the in-flight request finishes");
    assert_eq!(slow.text(), "done");
    let exit = tokio::time::timeout(Duration::from_secs(60), run.wait())
        .await
        .expect("the container exits after the drain")
        .unwrap();
    stop.await.unwrap();
    // The log is complete once podman's stderr is closed.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        log_rx.wait_for(|l| l.contains("stopped")),
    )
    .await;
    let text = log(&log_rx);
    assert!(
        exit.success(),
        "exit status {exit} after podman stop\n{text}"
    );
    assert!(text.contains("draining"), "the log shows the drain\n{text}");
    assert!(text.contains("stopped"), "the log shows the end\n{text}");
    assert!(!text.contains(TOKEN), "the token is never logged");
    drop(container);
}
