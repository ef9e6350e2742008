//! The invalidation feed for co-located apps, end to end with real `corral` processes on
//! 127.0.0.11, .12, .13: the SSE stream (`GET /_corral/v1/subscribe`), `[[forward]]` webhooks
//! against a real receiving HTTP server, and the `corral-cache` library kept coherent through
//! each pod's sidecar.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use serde_json::{json, Value};

const SECRET: &str = "feed-test-secret-0123456789";

/// `n` clustered replicas on 127.0.0.11.. sharing ports; `extra(i)` is appended to replica i's
/// config.
async fn cluster(n: usize, origin: &Origin, extra: impl Fn(usize) -> String) -> Vec<Corral> {
    let proxy_port = replica_port();
    let admin_port = replica_port();
    let peers: Vec<String> = (0..n)
        .map(|i| format!("\"127.0.0.{}:{admin_port}\"", 11 + i))
        .collect();
    let mut nodes = Vec::new();
    for i in 0..n {
        let ip = format!("127.0.0.{}", 11 + i);
        let proxy: SocketAddr = format!("{ip}:{proxy_port}").parse().unwrap();
        let admin: SocketAddr = format!("{ip}:{admin_port}").parse().unwrap();
        let config = format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\ndiscovery = {{ kind = \"static\", addresses = [{}] }}\nheartbeat = \"300ms\"\n{}\n",
            origin.url(),
            peers.join(", "),
            extra(i)
        );
        nodes.push(
            Corral::start_on(proxy, admin, &config, &[("CORRAL_CLUSTER_SECRET", SECRET)]).await,
        );
    }
    nodes
}

/// An SSE subscriber: collects `(event, data)` pairs in the background.
struct Subscriber {
    events: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(c: &Corral) -> Subscriber {
        let mut resp = client()
            .get(c.admin_url("/_corral/v1/subscribe"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let out = events.clone();
        let task = tokio::spawn(async move {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut event = String::new();
                    let mut data = String::new();
                    for l in block.lines() {
                        if let Some(v) = l.strip_prefix("event:") {
                            event = v.trim().to_string();
                        } else if let Some(v) = l.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if !event.is_empty() {
                        out.lock()
                            .push((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
                    }
                }
            }
        });
        Subscriber { events, task }
    }

    fn invalidations(&self) -> Vec<Value> {
        self.events
            .lock()
            .iter()
            .filter(|(e, _)| e == "invalidation")
            .map(|(_, d)| d.clone())
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn the_sse_feed_carries_local_and_peer_invalidations() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let nodes = cluster(3, &origin, |_| String::new()).await;
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(Subscriber::start(n).await);
    }
    let v = purge(
        &nodes[0],
        json!({"tags": ["price-1"], "urls": ["/packages/1"], "soft": true}),
    )
    .await;
    let id = v["event"].as_str().unwrap().to_string();
    for (i, s) in subs.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), async || s
                .invalidations()
                .iter()
                .any(|e| e["id"] == id.as_str()))
            .await,
            "replica {i} streamed the event"
        );
        let e = s
            .invalidations()
            .into_iter()
            .find(|e| e["id"] == id.as_str())
            .unwrap();
        assert_eq!(e["selectors"]["tags"], json!(["price-1"]));
        assert_eq!(e["selectors"]["urls"], json!(["/packages/1"]));
        assert_eq!(e["soft"], json!(true));
    }
    // A purge on another replica shows up on the first one's feed too (peer events).
    let v = purge(&nodes[2], json!({"prefixes": ["/packages/"]})).await;
    let id = v["event"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), async || subs[0]
            .invalidations()
            .iter()
            .any(|e| e["id"] == id.as_str()))
        .await
    );
}

/// A real HTTP server standing in for the co-located app: records every request, and answers
/// each with the next scripted status (200 when the script runs out).
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<(String, String, Value)>>>,
    hits: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(ip: &str, script: Vec<u16>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (g, h) = (got.clone(), hits.clone());
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
                let (g, h, script) = (g.clone(), h.clone(), script.clone());
                async move {
                    let n = h.fetch_add(1, Ordering::SeqCst);
                    let status = script.get(n).copied().unwrap_or(200);
                    if status == 200 {
                        g.lock().push((
                            method.to_string(),
                            uri.to_string(),
                            serde_json::from_slice(&body).unwrap_or(Value::Null),
                        ));
                    }
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            },
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, got, hits }
    }

    fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .got
            .lock()
            .iter()
            .map(|(_, _, b)| b["key"].as_str().unwrap_or("").to_string())
            .collect();
        k.sort();
        k
    }
}

#[tokio::test]
async fn forward_posts_each_tag_to_every_replicas_app() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let mut apps = Vec::new();
    for i in 0..3 {
        apps.push(Receiver::start(&format!("127.0.0.{}", 11 + i), vec![]).await);
    }
    let urls: Vec<String> = apps
        .iter()
        .map(|a| format!("http://{}/invalidate-cache", a.addr))
        .collect();
    let nodes = cluster(3, &origin, |i| {
        format!(
            "[[forward]]\nurl = \"{}\"\nbody = '{{\"key\": \"{{tag}}\"}}'\n",
            urls[i]
        )
    })
    .await;
    purge(&nodes[1], json!({"tags": ["package-1", "package-2"]})).await;
    for (i, a) in apps.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), async || a.keys().len() >= 2).await,
            "app {i} got {:?}",
            a.keys()
        );
        assert_eq!(a.keys(), vec!["package-1", "package-2"], "app {i}");
        let (method, uri, _) = a.got.lock()[0].clone();
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "/invalidate-cache")
        );
    }
    // The compatibility endpoint is forwarded the same way.
    let r = client()
        .post(nodes[0].admin_url("/invalidate"))
        .json(&json!({"key": "package-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for a in &apps {
        assert!(
            eventually(Duration::from_secs(10), async || a
                .keys()
                .contains(&"package-9".to_string()))
            .await
        );
    }
    for n in &nodes {
        assert_eq!(n.metric("corral_forward_failures_total").await, 0.0);
        assert!(n.metric("corral_forward_requests_total{").await >= 3.0);
    }
}

#[tokio::test]
async fn forward_retries_with_backoff_and_counts_failures() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let flaky = Receiver::start("127.0.0.1", vec![503, 503]).await;
    let dead = Receiver::start("127.0.0.1", vec![500; 100]).await;
    let config = format!(
        "{}\n[[forward]]\nurl = \"http://{}/hook\"\nbody = '{{\"key\": \"{{tag}}\"}}'\nbackoff = \"20ms\"\n\
         [[forward]]\nurl = \"http://{}/hook\"\nretries = 1\nbackoff = \"10ms\"\n",
        config(&origin, ""),
        flaky.addr,
        dead.addr
    );
    let c = Corral::start(&config).await;
    purge(&c, json!({"tags": ["t1"]})).await;
    assert!(eventually(Duration::from_secs(10), async || flaky.keys() == vec!["t1"]).await);
    assert_eq!(
        flaky.hits.load(Ordering::SeqCst),
        3,
        "two 503s, then delivered"
    );
    eventually(Duration::from_secs(10), async || {
        c.metric("corral_forward_failures_total").await >= 1.0
    })
    .await;
    assert_eq!(c.metric("corral_forward_failures_total").await, 1.0);
    assert_eq!(dead.hits.load(Ordering::SeqCst), 2, "one try and one retry");
    assert!(c.metric("corral_forward_requests_total{").await >= 5.0);
    let text = c.admin_text("/metrics").await;
    assert!(text.contains("outcome=\"retry\""), "{text}");
}

#[test]
fn a_bad_forward_entry_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(&config_file(
        dir.path(),
        "[[forward]]\nurl = \"http://127.0.0.1:3000/x\"\nbody = '{\"key\": \"{tagg}\"}'\n",
    ));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("forward[0].body") && text.contains("{tagg}"),
        "{text}"
    );
}

/// The library, kept coherent through each pod's sidecar: three "services" (caches), each
/// following its own replica's feed.
#[tokio::test]
async fn library_caches_stay_coherent_through_their_sidecars() {
    use corral_cache::{sidecar::Sidecar, Cache};
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let nodes = cluster(3, &origin, |_| String::new()).await;
    let mut caches = Vec::new();
    let mut sidecars = Vec::new();
    for n in &nodes {
        let c: Cache<u64, String> = Cache::builder("prices")
            .tags(|k, _| vec![format!("package-{k}")])
            .build()
            .unwrap();
        let s = Sidecar::connect(&n.admin_url(""), None);
        s.attach(&c);
        assert!(s.wait_connected(Duration::from_secs(10)).await);
        for k in 1..=3 {
            c.insert(k, format!("price {k}"));
        }
        caches.push(c);
        sidecars.push(s);
    }
    // A key invalidation in service 0 reaches services 1 and 2 (through sidecar 0, the
    // cluster, and sidecars 1 and 2).
    caches[0].invalidate(&1);
    for (i, c) in caches.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), async || c.get(&1).is_none()).await,
            "cache {i}"
        );
        assert_eq!(
            c.get(&2).as_deref(),
            Some("price 2"),
            "cache {i} kept key 2"
        );
    }
    // An admin purge by tag on replica 2 (any language could send it).
    purge(&nodes[2], json!({"tags": ["package-2"]})).await;
    for (i, c) in caches.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(10), async || c.get(&2).is_none()).await,
            "cache {i}"
        );
        assert_eq!(c.get(&3).as_deref(), Some("price 3"));
    }
    // A namespace bump in service 2 empties every pod's cache.
    caches[2].bump_namespace();
    for c in &caches {
        assert!(eventually(Duration::from_secs(10), async || c.get(&3).is_none()).await);
    }
    assert!(sidecars[1].applied() >= 3);
}

/// A service that joins the cluster itself (`corral_cache::cluster::Member`) is a peer like any
/// gateway: a gateway's purge reaches its cache, and its invalidations purge the gateways' HTTP
/// caches (key 1 of namespace `prices` is the URL `/prices/1`).
#[tokio::test]
async fn a_library_member_and_gateways_share_one_cluster() {
    use corral_cache::cluster::{Member, MemberConfig};
    use corral_cache::Cache;
    let origin = Origin::start(|s| {
        Reply::ok(format!("body of {}", s.uri)).header("cache-control", "max-age=300")
    })
    .await;
    let proxy_port = replica_port();
    let admin_port = replica_port();
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|i| format!("127.0.0.{}:{admin_port}", 11 + i).parse().unwrap())
        .collect();
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let mut gateways = Vec::new();
    for a in &addrs[..2] {
        let config = format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\ndiscovery = {{ kind = \"static\", addresses = [{}] }}\nheartbeat = \"300ms\"\n",
            origin.url(),
            list.join(", ")
        );
        let proxy: SocketAddr = format!("{}:{proxy_port}", a.ip()).parse().unwrap();
        gateways
            .push(Corral::start_on(proxy, *a, &config, &[("CORRAL_CLUSTER_SECRET", SECRET)]).await);
    }
    let member = Member::start(MemberConfig {
        listen: addrs[2],
        advertise: None,
        instance: "svc".into(),
        secret: SECRET.into(),
        peers: corral_discovery::Spec::Static(addrs.iter().map(|a| (*a, 1)).collect()),
    })
    .await
    .unwrap();
    let prices: Cache<u64, String> = Cache::builder("prices").build().unwrap();
    member.attach(&prices);
    prices.insert(1, "a".into());
    prices.insert(2, "b".into());
    // A gateway's purge reaches the service's cache.
    purge(&gateways[0], json!({"urls": ["/prices/2"]})).await;
    assert!(eventually(Duration::from_secs(10), async || prices.get(&2).is_none()).await);
    assert_eq!(prices.get(&1).as_deref(), Some("a"));
    // The service's invalidation purges the gateways' HTTP caches.
    for g in &gateways {
        g.get("/prices/1").await;
        assert!(g.get("/prices/1").await.is_hit());
    }
    prices.invalidate(&1);
    for g in &gateways {
        let purged = eventually(Duration::from_secs(10), async || {
            !g.get("/prices/1").await.is_hit()
        })
        .await;
        assert!(purged, "gateway {} dropped /prices/1", g.admin);
    }
}

/// When the sidecar restarts, events may have been missed: the library empties its caches on
/// reconnecting, then follows the new feed.
#[tokio::test]
async fn a_sidecar_restart_empties_the_library_cache_and_the_feed_resumes() {
    use corral_cache::{sidecar::Sidecar, Cache};
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let (proxy, admin) = (loopback_addr(), loopback_addr());
    let cfg = config(&origin, "");
    let node = Corral::start_on(proxy, admin, &cfg, &[]).await;
    let c: Cache<u64, String> = Cache::builder("prices").build().unwrap();
    let s = Sidecar::connect(&node.admin_url(""), None);
    s.attach(&c);
    assert!(s.wait_connected(Duration::from_secs(10)).await);
    c.insert(1, "a".into());
    drop(node); // killed
    assert!(eventually(Duration::from_secs(10), async || !s.is_connected()).await);
    assert_eq!(
        c.get(&1).as_deref(),
        Some("a"),
        "kept while the sidecar is away"
    );
    let node = Corral::start_on(proxy, admin, &cfg, &[]).await;
    assert!(s.wait_connected(Duration::from_secs(20)).await);
    assert!(
        eventually(Duration::from_secs(10), async || c.get(&1).is_none()).await,
        "emptied on reconnecting: events may have been missed"
    );
    c.insert(2, "b".into());
    purge(&node, json!({"urls": ["/prices/2"]})).await;
    assert!(eventually(Duration::from_secs(10), async || c.get(&2).is_none()).await);
}

/// Many invalidations at once travel merged, in few requests; one the sidecar refuses (a key
/// longer than a selector may be) is counted and does not take the others with it.
#[tokio::test]
async fn sidecar_publishing_merges_and_isolates_a_refused_invalidation() {
    use corral_cache::{sidecar::Sidecar, Cache};
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let node = Corral::start(&config(&origin, "")).await;
    let a: Cache<String, u32> = Cache::builder("rows").build().unwrap();
    let b: Cache<String, u32> = Cache::builder("rows").build().unwrap();
    let sa = Sidecar::connect(&node.admin_url(""), None);
    let sb = Sidecar::connect(&node.admin_url(""), None);
    sa.attach(&a);
    sb.attach(&b);
    assert!(sa.wait_connected(Duration::from_secs(10)).await);
    assert!(sb.wait_connected(Duration::from_secs(10)).await);
    for k in 0..300 {
        b.insert(format!("row-{k}"), k);
    }
    let huge = "x".repeat(5000);
    for k in 0..150 {
        a.invalidate(&format!("row-{k}"));
    }
    a.invalidate(&huge);
    for k in 150..300 {
        a.invalidate(&format!("row-{k}"));
    }
    assert!(
        eventually(Duration::from_secs(20), async || (0..300)
            .all(|k| b.get(&format!("row-{k}")).is_none()))
        .await,
        "every invalidation reached the other cache"
    );
    assert!(eventually(Duration::from_secs(10), async || sa.publish_failures() == 1).await);
    assert!(
        sa.published() < 300,
        "merged into fewer requests: {}",
        sa.published()
    );
}
