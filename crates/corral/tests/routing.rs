//! Routing and upstream pools end to end: real backends on 127.0.0.x (killable, drainable),
//! the real `corral` binary in front of them.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{client, eventually, free_port, Corral, Dnsmasq};
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

/// A backend that names itself in every answer, counts requests (health checks apart), can be
/// told to fail its health check (draining) and can be killed and restarted on its address.
struct Backend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    draining: Arc<AtomicBool>,
    /// Answer 503 to everything but `/health`.
    failing: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    async fn start(ip: &str) -> Backend {
        let addr: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
        Self::start_at(addr).await
    }

    async fn start_at(addr: SocketAddr) -> Backend {
        let b = Backend {
            addr,
            served: Arc::default(),
            connections: Arc::default(),
            draining: Arc::default(),
            failing: Arc::default(),
            tasks: Arc::default(),
        };
        b.listen();
        b
    }

    fn listen(&self) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.bind(self.addr).unwrap();
        let listener = sock.listen(256).unwrap();
        let (served, draining, failing, tasks) = (
            self.served.clone(),
            self.draining.clone(),
            self.failing.clone(),
            self.tasks.clone(),
        );
        let connections = self.connections.clone();
        let me = self.addr;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                let (served, draining, failing) =
                    (served.clone(), draining.clone(), failing.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (served, draining, failing) =
                            (served.clone(), draining.clone(), failing.clone());
                        async move {
                            let flags = (&*draining, &*failing);
                            Ok::<_, Infallible>(answer(me, req, &served, flags).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                tasks.lock().push(conn.abort_handle());
            }
        });
        self.tasks.lock().push(accept.abort_handle());
    }

    /// Closes the listener and every connection at once (a crashed process).
    fn kill(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    fn restart(&self) {
        self.listen();
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `/health` (503 while draining), 503 for the rest while failing, `/slow/{ms}/...`,
/// `/plain/...` (no cache headers), anything else `no-store`; `.../cookie/...` sets a cookie. The body and `x-backend` name this backend.
async fn answer(
    me: SocketAddr,
    req: http::Request<Incoming>,
    served: &AtomicU64,
    (draining, failing): (&AtomicBool, &AtomicBool),
) -> http::Response<BoxBody<Bytes, Infallible>> {
    let path = req.uri().path().to_string();
    let mut resp = http::Response::builder().header("x-backend", me.to_string());
    if path == "/health" {
        let status = if draining.load(Ordering::Relaxed) {
            503
        } else {
            200
        };
        return resp.status(status).body(full("")).unwrap();
    }
    served.fetch_add(1, Ordering::Relaxed);
    if failing.load(Ordering::Relaxed) {
        return resp.status(503).body(full("failing")).unwrap();
    }
    if let Some(rest) = path.strip_prefix("/slow/") {
        let ms: u64 = rest.split('/').next().unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(rest) = path.strip_prefix("/drip/") {
        // The head and a first byte at once, the rest of the body `ms` later.
        let ms: u64 = rest.split('/').next().unwrap().parse().unwrap();
        let chunks = futures_util::stream::iter([0, ms]).then(move |wait| async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok::<_, Infallible>(Frame::data(Bytes::from(if wait == 0 {
                "d"
            } else {
                "rip"
            })))
        });
        let body = StreamBody::new(chunks);
        return resp
            .header("cache-control", "no-store")
            .body(BodyExt::boxed(body))
            .unwrap();
    }
    if !path.starts_with("/plain/") {
        resp = resp.header("cache-control", "no-store");
    }
    if path.contains("/cookie/") {
        resp = resp.header("set-cookie", "session=abc");
    }
    resp.body(full(me.to_string())).unwrap()
}

fn full(b: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    BodyExt::boxed(Full::new(b.into()))
}

fn addresses(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One upstream `svc` over `discovery`, with extra upstream lines, and a catch-all route.
fn pool_config(discovery: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"svc\"\ndiscovery = {discovery}\n{extra}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"svc\"\n"
    )
}

/// A corral in front of one static upstream `svc` of `backends`, with extra upstream lines.
async fn static_pool(backends: &[&Backend], extra: &str) -> Corral {
    let d = format!(
        "{{ kind = \"static\", addresses = [{}] }}",
        addresses(backends)
    );
    Corral::start(&pool_config(&d, extra)).await
}

/// GETs `path` `n` times; which backend answered, by address.
async fn spread(c: &Corral, path: &str, n: usize) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for _ in 0..n {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        *by.entry(r.text()).or_insert(0) += 1;
    }
    by
}

/// Load: `workers` loops of GETs over distinct paths until `stop`; every status seen.
fn load(
    c: &Corral,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u16, String)>> {
    let base = c.url("/load/");
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (base, stop) = (base.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let http = client();
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match http.get(format!("{base}{w}-{i}")).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            seen.push((s, r.text().await.unwrap_or_default()));
                        }
                        Err(e) => seen.push((0, e.to_string())),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// Whether `busy` served the next ten requests of a running load while `removed` served none:
/// that `removed` is out of the set, seen from the requests that go on without it (rather
/// than from a pause in which it might merely have been passed over). A request sent to
/// `removed` just before it left may still land: the caller asks again.
async fn serves_alone(busy: &Backend, removed: &Backend) -> bool {
    let (from, n) = (busy.served(), removed.served());
    eventually(Duration::from_secs(5), async || busy.served() >= from + 10).await
        && removed.served() == n
}

async fn upstreams(c: &Corral) -> serde_json::Value {
    c.admin_json("/upstreams").await
}

async fn endpoint(c: &Corral, addr: SocketAddr) -> serde_json::Value {
    let doc = upstreams(c).await;
    doc["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn longest_prefix_then_host_then_order_and_404_for_the_rest() {
    let (a, b, h) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    let config = format!(
        r#"
[[upstreams]]
name = "a"
url = "http://{}"
[[upstreams]]
name = "b"
url = "http://{}"
[[upstreams]]
name = "h"
url = "http://{}"
[[routes]]
path_prefix = "/api/"
upstream = "a"
[[routes]]
path_prefix = "/api/b/"
upstream = "b"
[[routes]]
host = "special.test"
path_prefix = "/api/"
upstream = "h"
"#,
        a.addr, b.addr, h.addr
    );
    let c = Corral::start(&config).await;
    assert_eq!(c.get("/api/x").await.text(), a.addr.to_string());
    assert_eq!(
        c.get("/api/b/x").await.text(),
        b.addr.to_string(),
        "longest prefix wins"
    );
    let r = common::Resp::from(
        client()
            .get(c.url("/api/x"))
            .header("host", "special.test:8080")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.text(), h.addr.to_string(), "host narrows an equal prefix");
    let r = c.get("/other").await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("no route") && r.text().contains("/other"),
        "{}",
        r.text()
    );
    assert_eq!(
        a.served() + b.served() + h.served(),
        3,
        "the 404 reached no upstream"
    );
}

#[tokio::test]
async fn weighted_round_robin_splits_by_weight() {
    let (a, b) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    let d = format!(
        "{{ kind = \"static\", addresses = [{{ address = \"{}\", weight = 3 }}, \"{}\"] }}",
        a.addr, b.addr
    );
    let c = Corral::start(&pool_config(&d, "balance = \"round_robin\"")).await;
    let by = spread(&c, "/x", 200).await;
    assert_eq!(by[&a.addr.to_string()], 150, "{by:?}");
    assert_eq!(by[&b.addr.to_string()], 50, "{by:?}");
    let doc = upstreams(&c).await;
    let u = &doc["upstreams"][0];
    assert_eq!(u["name"], "svc");
    assert_eq!(u["source"], "static");
    assert_eq!(u["balance"], "round_robin");
    assert_eq!(u["routes"], serde_json::json!(["routes[0]"]));
    let heavy = endpoint(&c, a.addr).await;
    assert_eq!(heavy["weight"], 3);
    assert_eq!(heavy["requests"], 150);
    assert_eq!(
        (heavy["healthy"].clone(), heavy["ejected"].clone()),
        (true.into(), false.into())
    );
    // Sequential requests reuse pooled keep-alive connections.
    assert!(
        a.connections.load(Ordering::Relaxed) <= 4,
        "{}",
        a.connections.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn least_request_avoids_the_slow_endpoint() {
    let (slow, fast) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    let c = static_pool(&[&slow, &fast], "balance = \"least_request\"").await;
    // A request in flight on one endpoint for the whole test: every pick that sees both
    // endpoints must choose the other.
    let hold = {
        // Long enough to outlast the 60 requests below on a slow, busy machine.
        let url = c.url("/slow/15000/hold");
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
    };
    assert!(
        eventually(Duration::from_secs(5), async || slow.served()
            + fast.served()
            == 1)
        .await
    );
    let held_by_slow = slow.served() == 1;
    let by = spread(&c, "/x", 60).await;
    let (busy, idle) = if held_by_slow {
        (&slow, &fast)
    } else {
        (&fast, &slow)
    };
    let to_busy = by.get(&busy.addr.to_string()).copied().unwrap_or(0);
    let to_idle = by.get(&idle.addr.to_string()).copied().unwrap_or(0);
    assert_eq!(to_busy + to_idle, 60);
    assert_eq!(
        to_busy, 0,
        "the endpoint with a request in flight loses every choice: {by:?}"
    );
    assert!(!hold.is_finished(), "the request was in flight throughout");
    hold.abort();
}

/// A response whose head has arrived but whose body is still streaming is load too: the
/// endpoint counts it in flight until the body ends.
#[tokio::test]
async fn least_request_counts_a_streaming_body_until_it_ends() {
    let (a, b) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    let c = static_pool(&[&a, &b], "balance = \"least_request\"").await;
    let mut drip = client()
        .get(c.url("/drip/15000"))
        .send()
        .await
        .expect("the head arrives at once");
    assert_eq!(drip.status(), 200);
    assert_eq!(&drip.chunk().await.unwrap().unwrap()[..], b"d");
    let held_by = drip.headers()["x-backend"].to_str().unwrap().to_string();
    let by = spread(&c, "/x", 40).await;
    assert_eq!(
        by.get(&held_by).copied().unwrap_or(0),
        0,
        "the endpoint streaming a body loses every choice: {by:?}"
    );
    let doc = upstreams(&c).await;
    let in_flight: Vec<u64> = doc["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["in_flight"].as_u64().unwrap())
        .collect();
    assert_eq!(in_flight.iter().sum::<u64>(), 1, "{doc}");
    drop(drip);
    let ended = eventually(Duration::from_secs(5), async || {
        let u = upstreams(&c).await;
        u["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["in_flight"] == 0)
    })
    .await;
    assert!(ended, "a dropped body ends its count");
}

#[tokio::test]
async fn consistent_hash_sends_a_key_to_one_endpoint_on_every_gateway() {
    let bs = [
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    ];
    let d = format!(
        "{{ kind = \"static\", addresses = [{}] }}",
        addresses(&[&bs[0], &bs[1], &bs[2]])
    );
    let cfg = pool_config(&d, "balance = \"consistent_hash\"");
    let (g1, g2) = (Corral::start(&cfg).await, Corral::start(&cfg).await);
    let mut owners = HashMap::new();
    for k in 0..30 {
        let path = format!("/item/{k}");
        let first = g1.get(&path).await.text();
        for g in [&g1, &g2, &g1, &g2] {
            assert_eq!(g.get(&path).await.text(), first, "{path} moved");
        }
        *owners.entry(first).or_insert(0) += 1;
    }
    assert_eq!(
        owners.len(),
        3,
        "keys spread over every endpoint: {owners:?}"
    );
}

#[tokio::test]
async fn a_killed_endpoint_is_ejected_without_errors_and_recovers_after_checks() {
    let bs = [
        Backend::start("127.0.0.21").await,
        Backend::start("127.0.0.22").await,
        Backend::start("127.0.0.23").await,
    ];
    let d = format!(
        "{{ kind = \"static\", addresses = [{}] }}",
        addresses(&[&bs[0], &bs[1], &bs[2]])
    );
    let extra = r#"health = { path = "/health", interval = "300ms", unhealthy_interval = "200ms", healthy_after = 3, unhealthy_after = 2, timeout = "200ms" }
outlier = { consecutive_failures = 1, ejection_time = "500ms" }
retries = 2"#;
    let c = Corral::start(&pool_config(&d, extra)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&c, 4, stop.clone());
    // The load is reaching every endpoint, the one about to die among them.
    assert!(
        eventually(Duration::from_secs(10), async || bs
            .iter()
            .all(|b| b.served() >= 5))
        .await,
        "the load never reached every endpoint"
    );
    bs[1].kill();
    let victim = bs[1].addr;
    assert!(
        eventually(Duration::from_secs(10), async || endpoint(&c, victim).await
            ["healthy"]
            == false)
        .await,
        "the dead endpoint is marked unhealthy"
    );
    // The load runs on with the endpoint out, until the others have served it a while.
    let survivors = || bs[0].served() + bs[2].served();
    let after_ejection = survivors();
    assert!(
        eventually(Duration::from_secs(10), async || survivors()
            >= after_ejection + 40)
        .await,
        "the load stalled once the endpoint was out"
    );
    stop.store(true, Ordering::Relaxed);
    let seen = running.await.unwrap();
    let errors: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(seen.len() > 50, "load ran: {}", seen.len());
    assert!(
        errors.is_empty(),
        "{} of {} failed: {:?}",
        errors.len(),
        seen.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(c.metric("corral_upstream_retries_total").await >= 1.0);
    assert!(c.metric("corral_upstream_ejections_total").await >= 1.0);
    assert!(c.metric("corral_upstream_failures_total").await >= 1.0);

    // Back on the same address: healthy again after three good checks, and serving.
    bs[1].restart();
    assert!(
        eventually(Duration::from_secs(10), async || endpoint(&c, victim).await
            ["healthy"]
            == true)
        .await,
        "recovered after healthy_after checks"
    );
    let before = bs[1].served();
    spread(&c, "/after", 30).await;
    assert!(
        bs[1].served() > before,
        "the recovered endpoint takes traffic again"
    );
}

#[tokio::test]
async fn a_draining_endpoint_gets_no_new_requests_while_its_in_flight_one_completes() {
    let (a, b) = (
        Backend::start("127.0.0.24").await,
        Backend::start("127.0.0.25").await,
    );
    let extra = r#"health = { path = "/health", interval = "200ms", unhealthy_interval = "200ms", healthy_after = 2, unhealthy_after = 1, timeout = "150ms" }"#;
    let c = static_pool(&[&a, &b], extra).await;
    // Start one slow request on `a` (round robin: the first request goes to the first endpoint
    // it picks, so keep starting until `a` holds one).
    let mut holds = Vec::new();
    while a.served() == 0 {
        let url = c.url("/slow/2000/inflight");
        let arrived = a.served() + b.served() + 1;
        holds.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
        // It reached one endpoint or the other before the next is sent.
        assert!(
            eventually(Duration::from_secs(5), async || a.served() + b.served()
                >= arrived)
            .await,
            "the slow request reached no endpoint"
        );
    }
    a.draining.store(true, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), async || endpoint(&c, a.addr).await
            ["healthy"]
            == false)
        .await
    );
    let before = a.served();
    let by = spread(&c, "/new", 20).await;
    assert_eq!(
        a.served(),
        before,
        "no new request went to the draining endpoint: {by:?}"
    );
    for h in holds {
        let (status, _) = h.await.unwrap();
        assert_eq!(status, 200, "the in-flight request completed");
    }
}

#[tokio::test]
async fn panic_mode_routes_to_all_when_every_endpoint_is_unhealthy() {
    let (a, b) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    a.draining.store(true, Ordering::Relaxed);
    b.draining.store(true, Ordering::Relaxed);
    let extra = r#"health = { path = "/health", interval = "200ms", unhealthy_after = 1 }"#;
    let c = static_pool(&[&a, &b], extra).await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            endpoint(&c, a.addr).await["healthy"] == false
                && endpoint(&c, b.addr).await["healthy"] == false
        })
        .await
    );
    let by = spread(&c, "/x", 10).await;
    assert_eq!(
        by.values().sum::<usize>(),
        10,
        "served in panic mode: {by:?}"
    );
    assert_eq!(c.metric("corral_upstream_panic{").await, 1.0);
    assert!(c.metric("corral_upstream_panic_requests_total").await >= 10.0);
    assert_eq!(upstreams(&c).await["upstreams"][0]["panic"], true);
}

#[tokio::test]
async fn a_file_source_adds_and_removes_endpoints_under_load() {
    let (a, b) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.json");
    std::fs::write(&file, format!("[\"{}\"]", a.addr)).unwrap();
    let d = format!("{{ kind = \"file\", path = \"{}\" }}", file.display());
    let c = Corral::start(&pool_config(&d, "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&c, 3, stop.clone());
    assert!(
        eventually(Duration::from_secs(5), async || a.served() > 5).await,
        "the load reached a"
    );
    std::fs::write(&file, format!("[\"{}\", \"{}\"]", a.addr, b.addr)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || b.served() > 5).await,
        "b added"
    );
    std::fs::write(&file, format!("{{\"addresses\": [\"{}\"]}}", b.addr)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || serves_alone(&b, &a).await).await,
        "a removed"
    );
    // The load runs on until the bad file has been read and refused.
    let refused = c
        .discovery_fails_after(|| std::fs::write(&file, "not a list").unwrap())
        .await;
    assert!(refused, "the bad file was never refused");
    stop.store(true, Ordering::Relaxed);
    let seen = running.await.unwrap();
    assert!(
        seen.iter().all(|(s, _)| *s == 200),
        "no errors while the set changed"
    );
    assert!(seen.iter().any(|(_, who)| *who == b.addr.to_string()));
    let bad = c.metric("corral_discovery_failures_total{").await;
    assert!(bad >= 1.0, "a broken file is counted and the last set kept");
}

#[tokio::test]
async fn a_dns_source_follows_records_under_load() {
    let ip_a = "127.0.0.26";
    let ip_b = "127.0.0.27";
    let port = free_port(ip_a);
    let a = Backend::start_at(format!("{ip_a}:{port}").parse().unwrap()).await;
    let b = Backend::start_at(format!("{ip_b}:{port}").parse().unwrap()).await;
    let name = "svc.routing.test";
    let dns = Dnsmasq::start(name, &[ip_a]);
    let d = format!(
        "{{ kind = \"dns\", name = \"{name}\", port = {port}, nameserver = \"127.0.0.1:{}\", refresh = \"1s\" }}",
        dns.port
    );
    let c = Corral::start(&pool_config(&d, "")).await;
    assert!(
        eventually(Duration::from_secs(5), async || c.get("/x").await.status
            == 200)
        .await
    );
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&c, 3, stop.clone());
    dns.set(name, &[ip_a, ip_b]);
    assert!(
        eventually(Duration::from_secs(8), async || b.served() > 5).await,
        "b added"
    );
    dns.set(name, &[ip_b]);
    assert!(
        eventually(Duration::from_secs(8), async || serves_alone(&b, &a).await).await,
        "a removed"
    );
    // The resolver dies: the last known set stays, the failures are counted (a lookup gives
    // up after its timeouts and attempts, about 10 s).
    drop(dns);
    assert!(
        c.metric_holds_within(
            "corral_discovery_failures_total{",
            Duration::from_secs(30),
            |n| n >= 1.0
        )
        .await
    );
    let before = b.served();
    assert!(
        eventually(Duration::from_secs(5), async || b.served() > before).await,
        "still serving from the last known set"
    );
    stop.store(true, Ordering::Relaxed);
    let seen = running.await.unwrap();
    assert!(
        seen.iter().all(|(s, _)| *s == 200),
        "no errors while DNS changed or died"
    );
}

#[tokio::test]
async fn routes_override_the_cache_policy() {
    let a = Backend::start("127.0.0.1").await;
    let config = format!(
        r#"
[[upstreams]]
name = "a"
url = "http://{}"
[[routes]]
path_prefix = "/plain/ttl/"
upstream = "a"
cache = {{ default_ttl = "60s", allow_query = ["page"] }}
[[routes]]
path_prefix = "/plain/rfc/"
upstream = "a"
[[routes]]
path_prefix = "/plain/off/"
upstream = "a"
cache = {{ enabled = false }}
[[routes]]
path_prefix = "/plain/gets/"
upstream = "a"
cache = {{ default_ttl = "60s" }}
cache_methods = ["GET"]
[[routes]]
path_prefix = "/plain/strip/"
upstream = "a"
cache = {{ default_ttl = "60s", strip_set_cookie = true, key_headers = ["X-Tenant"] }}
[[routes]]
path_prefix = "/plain/keep/"
upstream = "a"
cache = {{ default_ttl = "60s" }}
"#,
        a.addr
    );
    let c = Corral::start(&config).await;
    c.get("/plain/ttl/x?page=1&session=abc").await;
    let r = c.get("/plain/ttl/x?session=zzz&page=1").await;
    assert!(
        r.is_hit(),
        "default_ttl made it fresh, allow_query dropped session: {}",
        r.cache_status()
    );
    c.get("/plain/rfc/x").await;
    assert!(
        !c.get("/plain/rfc/x").await.is_hit(),
        "no default_ttl: RFC rules (not fresh)"
    );
    let r = c.get("/plain/off/x").await;
    assert!(r.cache_status().contains("bypass"), "{}", r.cache_status());
    c.get("/plain/gets/x").await;
    assert!(c.get("/plain/gets/x").await.is_hit());
    let head = client().head(c.url("/plain/gets/x")).send().await.unwrap();
    let cs = head.headers()["cache-status"].to_str().unwrap().to_string();
    assert!(
        cs.contains("bypass"),
        "HEAD is not a cache method here: {cs}"
    );

    // strip_set_cookie (opt-in) stores without the cookie; by default such responses pass.
    let first = c.get("/plain/strip/cookie/1").await;
    assert_eq!(
        first.header("set-cookie"),
        Some("session=abc"),
        "the fetching client keeps it"
    );
    let r = c.get("/plain/strip/cookie/1").await;
    assert!(
        r.is_hit() && r.header("set-cookie").is_none(),
        "{} {:?}",
        r.cache_status(),
        r.headers
    );
    c.get("/plain/keep/cookie/1").await;
    assert!(
        !c.get("/plain/keep/cookie/1").await.is_hit(),
        "Set-Cookie is not stored by default"
    );
    // key_headers split the key per tenant.
    c.get_with("/plain/strip/t", &[("x-tenant", "a")]).await;
    let a_again = c.get_with("/plain/strip/t", &[("x-tenant", "a")]).await;
    assert!(a_again.is_hit(), "{}", a_again.cache_status());
    let b = c.get_with("/plain/strip/t", &[("x-tenant", "b")]).await;
    assert!(!b.is_hit(), "another tenant, another entry");
}

/// `corral check-config` on `text`: its exit code and stderr.
fn check_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = common::check_config(&common::config_file(dir.path(), text));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_routing_configs_are_rejected_naming_the_route() {
    let up = "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n";
    let cases = [
        (
            format!("{up}[[routes]]\nname = \"catalog\"\nupstream = \"a\"\ncache = {{ enabled = false, default_ttl = \"5s\" }}"),
            vec!["routes[0].cache.enabled", "\"catalog\"", "default_ttl"],
        ),
        (
            format!("{up}[[routes]]\nname = \"q\"\nupstream = \"a\"\ncache = {{ allow_query = [\"a\"], ignore_query = [\"b\"] }}"),
            vec!["routes[0].cache.allow_query", "\"q\"", "not both"],
        ),
        (
            format!("{up}[cache]\nmax_ttl = \"1h\"\n[[routes]]\nupstream = \"a\"\ncache = {{ default_ttl = \"2h\" }}"),
            vec!["routes[0].cache.default_ttl", "max_ttl"],
        ),
        (
            format!("{up}[[routes]]\nname = \"one\"\npath_prefix = \"/x/\"\nupstream = \"a\"\n[[routes]]\npath_prefix = \"/x/\"\nupstream = \"a\""),
            vec!["routes[1].path_prefix", "\"one\"", "never"],
        ),
        (
            format!("{up}[[routes]]\nupstream = \"a\"\ncache_methods = [\"POST\"]"),
            vec!["routes[0].cache_methods", "POST", "GET"],
        ),
        (
            "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\nbalance = \"random\"".into(),
            vec!["upstreams[0].balance", "random", "least_request"],
        ),
        (
            "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\nhealth = { interval = \"1s\", timeout = \"5s\" }".into(),
            vec!["upstreams[0].health.timeout", "interval"],
        ),
        (
            "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\nhealth = { intervl = \"1s\" }".into(),
            vec!["upstreams[0].health.intervl", "allowed"],
        ),
        (
            "[[upstreams]]\nname = \"a\"\ndiscovery = { kind = \"dns\", name = \"x\" }".into(),
            vec!["upstreams[0].discovery.port", "srv"],
        ),
        (
            "[[upstreams]]\nname = \"a\"\ndiscovery = { kind = \"static\", addresses = [{ address = \"127.0.0.1:1\", weight = 0 }] }".into(),
            vec!["upstreams[0].discovery.addresses[0].weight"],
        ),
        (
            "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\nretry_budget = 1.5".into(),
            vec!["upstreams[0].retry_budget", "1.5"],
        ),
    ];
    for (text, wants) in cases {
        let (code, err) = check_config(&text);
        assert_eq!(code, 2, "{text}\n{err}");
        for w in wants {
            assert!(err.contains(w), "{w:?} missing from: {err}");
        }
    }
    // And a good one passes.
    let (code, err) = check_config(&format!(
        "{up}[[upstreams]]\nname = \"b\"\ndiscovery = {{ kind = \"dns\", name = \"_http._tcp.b.test\", srv = true }}\nbalance = \"consistent_hash\"\nhealth = {{ path = \"/health\", interval = \"5s\", statuses = [200] }}\noutlier = {{ consecutive_failures = 3, ejection_time = \"10s\" }}\n[[routes]]\nupstream = \"a\"\n[[routes]]\npath_prefix = \"/b/\"\nupstream = \"b\"\ncache_methods = [\"GET\"]"
    ));
    assert_eq!(code, 0, "{err}");
}

/// A minimal API server or Consul agent: answers every GET with `answer(uri)`; a Kubernetes
/// watch is held open without events.
async fn fake_api(answer: fn(&str) -> serde_json::Value) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| async move {
                    let uri = req.uri().to_string();
                    if uri.contains("watch=true") {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                    }
                    let mut r =
                        http::Response::new(Full::new(Bytes::from(answer(&uri).to_string())));
                    r.headers_mut()
                        .insert("x-consul-index", "7".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// The backends' port for the fake answers (nextest runs each test in its own process).
static K8S_PORT: AtomicU64 = AtomicU64::new(0);

fn endpoint_slices(uri: &str) -> serde_json::Value {
    let port = K8S_PORT.load(Ordering::Relaxed);
    // (ip, ready, serving) per Service.
    let eps: &[(&str, bool, bool)] = if uri.contains("service-name%3Dready") {
        &[("127.0.0.31", true, true), ("127.0.0.32", false, false)]
    } else {
        &[("127.0.0.32", false, true), ("127.0.0.33", false, false)]
    };
    serde_json::json!({
        "kind": "EndpointSliceList", "metadata": {"resourceVersion": "5"},
        "items": [{
            "metadata": {"name": "s1", "resourceVersion": "5"},
            "ports": [{"name": "metrics", "port": 1}, {"name": "web", "port": port}],
            "endpoints": eps.iter().map(|(ip, ready, serving)| serde_json::json!({
                "addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": !ready},
            })).collect::<Vec<_>>(),
        }],
    })
}

#[tokio::test]
async fn kubernetes_endpoints_ready_first_then_serving_on_the_named_port() {
    let port = free_port("127.0.0.31");
    K8S_PORT.store(u64::from(port), Ordering::Relaxed);
    let ready = Backend::start_at(format!("127.0.0.31:{port}").parse().unwrap()).await;
    let draining = Backend::start_at(format!("127.0.0.32:{port}").parse().unwrap()).await;
    let gone = Backend::start_at(format!("127.0.0.33:{port}").parse().unwrap()).await;
    let api = fake_api(endpoint_slices).await;
    for (service, want) in [("ready", &ready), ("draining", &draining)] {
        let d = format!(
            "{{ kind = \"kubernetes\", namespace = \"shop\", service = \"{service}\", port_name = \"web\", api_server = \"http://{api}\" }}"
        );
        let c = Corral::start(&pool_config(&d, "")).await;
        assert!(
            eventually(Duration::from_secs(5), async || c.get("/x").await.status
                == 200)
            .await
        );
        let by = spread(&c, "/y", 20).await;
        assert_eq!(
            by.get(&want.addr.to_string()),
            Some(&20),
            "{service}: {by:?}"
        );
    }
    assert_eq!(gone.served(), 0, "neither ready nor serving: never used");
}

fn consul_services(_uri: &str) -> serde_json::Value {
    let port = K8S_PORT.load(Ordering::Relaxed);
    serde_json::json!([
        {"Node": {"Address": "127.0.0.34"}, "Service": {"Address": "", "Port": port, "Weights": {"Passing": 1}}},
        {"Node": {"Address": "10.9.9.9"}, "Service": {"Address": "127.0.0.35", "Port": port, "Weights": {"Passing": 3}}},
    ])
}

#[tokio::test]
async fn consul_passing_instances_with_their_weights() {
    let port = free_port("127.0.0.34");
    let a = Backend::start_at(format!("127.0.0.34:{port}").parse().unwrap()).await;
    let b = Backend::start_at(format!("127.0.0.35:{port}").parse().unwrap()).await;
    let api = fake_api(|uri| {
        assert!(
            uri.starts_with("/v1/health/service/svc?passing=true"),
            "{uri}"
        );
        consul_services(uri)
    })
    .await;
    K8S_PORT.store(u64::from(port), Ordering::Relaxed);
    let d = format!("{{ kind = \"consul\", address = \"http://{api}\", service = \"svc\" }}");
    let c = Corral::start(&pool_config(&d, "")).await;
    assert!(
        eventually(Duration::from_secs(5), async || upstreams(&c).await
            ["upstreams"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 2))
        .await
    );
    spread(&c, "/x", 80).await;
    assert_eq!((a.served(), b.served()), (20, 60), "weights 1:3");
}

#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    let (pa, pb) = (free_port("127.0.0.36"), free_port("127.0.0.37"));
    let a = Backend::start_at(format!("127.0.0.36:{pa}").parse().unwrap()).await;
    let b = Backend::start_at(format!("127.0.0.37:{pb}").parse().unwrap()).await;
    let dns = Dnsmasq::start_with(
        "127.0.0.36 a.svc.test\n127.0.0.37 b.svc.test\n",
        &[
            format!("--srv-host=_http._tcp.svc.test,a.svc.test,{pa},0,1"),
            format!("--srv-host=_http._tcp.svc.test,b.svc.test,{pb},0,3"),
            // A lower-priority (higher number) record is a fallback and never used while the
            // best priority has records.
            format!("--srv-host=_http._tcp.svc.test,a.svc.test,{},1,100", pa + 1),
        ],
    );
    let port = dns.port;
    let d = format!(
        "{{ kind = \"dns\", name = \"_http._tcp.svc.test\", srv = true, nameserver = \"127.0.0.1:{port}\" }}"
    );
    let c = Corral::start(&pool_config(&d, "")).await;
    assert!(
        eventually(Duration::from_secs(5), async || upstreams(&c).await
            ["upstreams"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 2))
        .await,
        "{}",
        upstreams(&c).await
    );
    spread(&c, "/x", 80).await;
    assert_eq!((a.served(), b.served()), (20, 60), "SRV weights 1:3");
}

/// `GET path` through `c`, which must fail with `status` and an error body naming the
/// upstream (quoted) and `why` it failed. The response, for the caller's `Cache-Status` checks.
async fn failed_upstream(
    c: &Corral,
    path: &str,
    status: u16,
    upstream: &str,
    why: &str,
) -> common::Resp {
    let r = c.get(path).await;
    assert_eq!(r.status, status, "{path}: {}", r.text());
    let body = r.text();
    assert!(
        body.contains(&format!("\"{upstream}\"")) && body.contains(why),
        "{path}: {body}"
    );
    r
}

#[tokio::test]
async fn upstream_failures_say_which_upstream_and_why_and_stale_if_error_still_applies() {
    let dead = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let a = Backend::start("127.0.0.1").await;
    let config = format!(
        r#"
[[upstreams]]
name = "gone"
discovery = {{ kind = "static", addresses = ["{dead}"] }}
[[upstreams]]
name = "empty"
discovery = {{ kind = "file", path = "/nonexistent/corral-endpoints.json" }}
[[upstreams]]
name = "flaky"
discovery = {{ kind = "static", addresses = ["{}"] }}
[[routes]]
path_prefix = "/gone/"
upstream = "gone"
[[routes]]
path_prefix = "/empty/"
upstream = "empty"
[[routes]]
path_prefix = "/plain/"
upstream = "flaky"
cache = {{ default_ttl = "1s", stale_if_error = "60s" }}
"#,
        a.addr
    );
    let c = Corral::start(&config).await;
    let r = failed_upstream(&c, "/gone/x", 502, "gone", "connect").await;
    assert!(
        r.cache_status().contains("detail=connect"),
        "{}",
        r.cache_status()
    );
    let r = failed_upstream(&c, "/empty/x", 503, "empty", "no endpoints").await;
    assert!(
        r.cache_status().starts_with("corral"),
        "{}",
        r.cache_status()
    );

    assert_eq!(c.get("/plain/p").await.status, 200);
    a.kill();
    // Fresh hits until the second-long TTL runs out; then the stored copy is served because
    // the dead endpoint failed (RFC 9211 calls that a hit, with the detail saying why).
    let stale = "detail=stale-if-error";
    let mut r = c.get("/plain/p").await;
    let served_stale = eventually(Duration::from_secs(20), async || {
        if r.cache_status().contains(stale) {
            return true;
        }
        assert!(r.is_hit(), "{}", r.cache_status());
        r = c.get("/plain/p").await;
        false
    })
    .await;
    assert!(
        served_stale || r.cache_status().contains(stale),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        r.status,
        200,
        "stale-if-error serves the stored copy: {}",
        r.text()
    );
    assert_eq!(r.text(), a.addr.to_string());
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_endpoint_and_posts_never() {
    let (bad, good) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    bad.failing.store(true, Ordering::Relaxed);
    let d = format!(
        "{{ kind = \"static\", addresses = [{}] }}",
        addresses(&[&bad, &good])
    );
    // Outlier ejection off, so the failing endpoint keeps its turns.
    let quiet = "outlier = { consecutive_failures = 0, failure_rate = 0 }";
    let config = format!(
        "[[upstreams]]\nname = \"svc\"\ndiscovery = {d}\n{quiet}\n\
         [[upstreams]]\nname = \"once\"\ndiscovery = {d}\nretries = 0\n{quiet}\n\
         [[routes]]\nupstream = \"svc\"\n[[routes]]\npath_prefix = \"/once/\"\nupstream = \"once\"\n"
    );
    let c = Corral::start(&config).await;
    let by = spread(&c, "/get", 20).await;
    assert_eq!(by.get(&good.addr.to_string()), Some(&20), "{by:?}");
    assert_eq!(
        bad.served(),
        10,
        "every other GET met the failing endpoint first"
    );
    assert_eq!(
        c.metric("corral_upstream_retries_total{upstream=\"svc\"}")
            .await,
        10.0
    );

    let (bad0, good0) = (bad.served(), good.served());
    let mut failed = 0;
    for i in 0..20 {
        let r = client()
            .post(c.url(&format!("/post/{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 10,
        "a POST that met the failing endpoint is not retried"
    );
    assert_eq!(
        bad.served() - bad0 + good.served() - good0,
        20,
        "each POST sent once"
    );

    let mut failed = 0;
    for _ in 0..10 {
        if c.get("/once/x").await.status == 503 {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 5,
        "retries = 0: the origin's 503 reaches the client"
    );
}

#[tokio::test]
async fn ejection_never_exceeds_max_ejected_percent() {
    let (a, b) = (
        Backend::start("127.0.0.1").await,
        Backend::start("127.0.0.1").await,
    );
    a.failing.store(true, Ordering::Relaxed);
    b.failing.store(true, Ordering::Relaxed);
    let extra = r#"outlier = { consecutive_failures = 1, ejection_time = "60s", max_ejected_percent = 50 }"#;
    let c = static_pool(&[&a, &b], extra).await;
    for _ in 0..10 {
        let r = c.get("/x").await;
        assert_eq!(r.status, 503, "both endpoints answer 503");
        assert_eq!(
            r.text(),
            "failing",
            "the origin's own answer, not a gateway error"
        );
    }
    let doc = upstreams(&c).await;
    let eps = doc["upstreams"][0]["endpoints"].as_array().unwrap();
    let ejected = eps.iter().filter(|e| e["ejected"] == true).count();
    assert_eq!(ejected, 1, "half of two endpoints: {doc}");
    assert_eq!(c.metric("corral_upstream_ejections_total").await, 1.0);
    let errors = eps
        .iter()
        .map(|e| e["recent_errors"].as_array().unwrap().len())
        .sum::<usize>();
    assert!(errors > 0, "recent errors are listed: {doc}");
}
