//! Three booking-service replicas on 127.0.0.11, .12, .13, each with its Corral sidecar (real
//! `corral` processes, clustered), one SQLite database: a price update on one replica is
//! visible on all three.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SECRET: &str = "booking-test-secret-0123456789";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `corral` binary next to this package's binary, built first if it is missing.
fn corral_bin() -> PathBuf {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_booking-service"));
    let path = own.with_file_name("corral");
    if !path.exists() {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let status = Command::new(cargo)
            .args(["build", "-p", "corral", "--bin", "corral"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building corral failed");
    }
    assert!(path.exists(), "no corral binary at {}", path.display());
    path
}

use corral_testkit::{eventually, replica_port};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn wait_ok(url: &str) {
    let ok = eventually(Duration::from_secs(30), async || {
        client()
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok, "{url} never answered 200");
}

struct Deployment {
    _procs: Vec<Proc>,
    services: Vec<SocketAddr>,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

async fn deploy(verify_every_secs: u64) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("booking.db");
    let admin_port = replica_port();
    let proxy_port = replica_port();
    let svc_port = replica_port();
    let peers: Vec<String> = (0..3)
        .map(|i| format!("\"127.0.0.{}:{admin_port}\"", 11 + i))
        .collect();
    let mut procs = Vec::new();
    let mut services = Vec::new();
    for i in 0..3 {
        let ip = format!("127.0.0.{}", 11 + i);
        let cfg = dir.path().join(format!("corral-{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"{ip}:{proxy_port}\"\nadmin_listen = \"{ip}:{admin_port}\"\n\
                 [upstream]\nurl = \"http://{ip}:{svc_port}\"\n\
                 [cluster]\ndiscovery = {{ kind = \"static\", addresses = [{}] }}\nheartbeat = \"300ms\"\n",
                peers.join(", ")
            ),
        )
        .unwrap();
        procs.push(Proc(
            Command::new(corral_bin())
                .args(["serve", "--config", cfg.to_str().unwrap()])
                .env("CORRAL_CLUSTER_SECRET", SECRET)
                .env("CORRAL_LOG", "warn")
                .env_remove("CORRAL_ADMIN_TOKEN")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        wait_ok(&format!("http://{ip}:{admin_port}/readyz")).await;
    }
    for i in 0..3 {
        let ip = format!("127.0.0.{}", 11 + i);
        let mut cmd = service_command(i, &ip, svc_port, &db);
        cmd.args([
            "--sidecar",
            &format!("http://{ip}:{admin_port}"),
            "--verify-every-secs",
            &verify_every_secs.to_string(),
        ]);
        let (proc, addr) = start_service(cmd, &ip, svc_port).await;
        procs.push(proc);
        services.push(addr);
    }
    Deployment {
        _procs: procs,
        services,
        db,
        _dir: dir,
    }
}

/// The booking service replica `i` on `ip:port` over the shared database `db`; replica 0 seeds
/// it. The caller adds how the replica hears of invalidations (sidecar or cluster).
fn service_command(i: usize, ip: &str, port: u16, db: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_booking-service"));
    cmd.args([
        "--listen",
        &format!("{ip}:{port}"),
        "--db",
        db.to_str().unwrap(),
        "--name",
        &format!("booking-{i}"),
    ])
    .env("BOOKING_LOG", "warn")
    .stdout(Stdio::null());
    if i == 0 {
        cmd.arg("--seed");
    }
    cmd
}

/// Spawns `cmd` and waits until the service it starts on `ip:port` is ready.
async fn start_service(mut cmd: Command, ip: &str, port: u16) -> (Proc, SocketAddr) {
    let proc = Proc(cmd.spawn().unwrap());
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    wait_ok(&format!("http://{addr}/readyz")).await;
    (proc, addr)
}

/// `GET path` on the service `svc`.
async fn get(svc: SocketAddr, path: &str) -> reqwest::Response {
    client()
        .get(format!("http://{svc}{path}"))
        .send()
        .await
        .unwrap()
}

/// `PUT /admin/packages/{id}/price` on `svc` with the JSON `body`: the write that must reach
/// every replica's cache.
async fn put_price(svc: SocketAddr, id: &str, body: Value) -> reqwest::Response {
    client()
        .put(format!("http://{svc}/admin/packages/{id}/price"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The service's `/metrics` text (its in-process cache's and sidecar's counters).
async fn metrics(svc: SocketAddr) -> String {
    get(svc, "/metrics").await.text().await.unwrap()
}

/// Waits (up to `within`) until `svc` serves package `id` at `price_cents`. Whether it did.
async fn shows_price(svc: SocketAddr, id: u64, price_cents: u64, within: Duration) -> bool {
    eventually(within, async || {
        package(svc, id).await.0["price_cents"] == price_cents
    })
    .await
}

async fn package(svc: SocketAddr, id: u64) -> (Value, String) {
    let r = get(svc, &format!("/packages/{id}")).await;
    assert_eq!(r.status(), 200);
    let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
    (r.json().await.unwrap(), cache)
}

#[tokio::test]
async fn a_price_update_on_one_replica_is_visible_on_all_three() {
    let d = deploy(3600).await;
    for &s in &d.services {
        let (p, _) = package(s, 1).await;
        assert_eq!(p["price_cents"], 4900);
        assert_eq!(p["inclusions"].as_array().unwrap().len(), 3);
        assert_eq!(p["providers"][0]["name"], "North Lab");
        let (_, cache) = package(s, 1).await;
        assert_eq!(cache, "hit", "served from the in-process cache on {s}");
    }
    let r = put_price(d.services[1], "1", json!({"price_cents": 5500})).await;
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (p["price_cents"].clone(), p["version"].clone()),
        (json!(5500), json!(2))
    );
    let start = Instant::now();
    for &s in &d.services {
        assert!(
            shows_price(s, 1, 5500, Duration::from_secs(10)).await,
            "{s} shows the new price"
        );
    }
    eprintln!(
        "new price visible on all three replicas after {:?}",
        start.elapsed()
    );
    // Another package was not disturbed.
    for &s in &d.services {
        assert_eq!(package(s, 2).await.1, "hit");
        let m = metrics(s).await;
        assert!(m.contains("corral_library_sidecar_connected 1"), "{m}");
        assert!(
            m.contains("corral_library_sidecar_events_applied_total"),
            "{m}"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let d = deploy(3600).await;
    let s = d.services[0];
    let r = get(s, "/packages/abc").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not a number"));
    assert_eq!(get(s, "/packages/999").await.status(), 404);
    let r = put_price(s, "1", json!({"price_cents": -5})).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("price_cents"));
    let r = put_price(s, "1", json!({"price": 5})).await;
    assert_eq!(r.status(), 400);
    let r = put_price(s, "999", json!({"price_cents": 5})).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn the_verifier_finds_and_fixes_a_write_that_bypassed_the_cache() {
    let d = deploy(1).await;
    for &s in &d.services {
        package(s, 3).await;
    }
    // A deliberate drift: the database changes behind the service's back.
    let conn = rusqlite::Connection::open(&d.db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute("UPDATE packages SET price_cents = 3333 WHERE id = 3", [])
        .unwrap();
    for &s in &d.services {
        assert!(
            shows_price(s, 3, 3333, Duration::from_secs(20)).await,
            "{s}: the verifier invalidated the drifted entry"
        );
        let m = metrics(s).await;
        let drifted: f64 = m
            .lines()
            .find(|l| l.starts_with("corral_library_verifier_drifted_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        assert!(drifted >= 1.0, "{m}");
    }
}

/// The same, with the replicas joining the cluster themselves (`--cluster-listen`, signed
/// fan-out between the services, no sidecar).
#[tokio::test]
async fn replicas_that_join_the_cluster_directly_stay_coherent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("booking.db");
    let svc_port = replica_port();
    let cluster_port = replica_port();
    let mut procs = Vec::new();
    let mut services = Vec::new();
    for i in 0..3 {
        let ip = format!("127.0.0.{}", 11 + i);
        let mut cmd = service_command(i, &ip, svc_port, &db);
        cmd.args(["--cluster-listen", &format!("{ip}:{cluster_port}")])
            .env("CORRAL_CLUSTER_SECRET", SECRET);
        for j in 0..3 {
            cmd.args(["--peer", &format!("127.0.0.{}:{cluster_port}", 11 + j)]);
        }
        let (proc, addr) = start_service(cmd, &ip, svc_port).await;
        procs.push(proc);
        services.push(addr);
    }
    for &s in &services {
        assert_eq!(package(s, 4).await.0["price_cents"], 12900);
    }
    let r = put_price(services[2], "4", json!({"price_cents": 9900})).await;
    assert_eq!(r.status(), 200);
    for &s in &services {
        assert!(
            shows_price(s, 4, 9900, Duration::from_secs(10)).await,
            "{s} shows the new price"
        );
    }
    let m = metrics(services[0]).await;
    assert!(m.contains("corral_peer_events_received_total"), "{m}");
    drop(procs);
}

#[test]
fn a_bad_flag_is_refused_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_booking-service"))
        .args(["--cluster-listen", "127.0.0.1:0"])
        .env_remove("CORRAL_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CORRAL_CLUSTER_SECRET"), "{err}");
}
