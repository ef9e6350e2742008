//! Warm-up and owner routing with every way of finding peers and with the Redis tier: real
//! `corral` replicas on 127.0.0.11, .12 ... in front of one real origin, finding each other
//! through a real DNS server (dnsmasq), a fake Kubernetes API server (EndpointSlices list and
//! watch), and sharing a real redis-server as `[cache.l2]`. The static-list cases are in
//! `warmup.rs` and `owner.rs`.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::replicas::{Replicas, SECRET};
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

const NAME: &str = "corral-headless.default.svc.cluster.local";
const HOST: (&str, &str) = ("host", "shop.example");
const WARMUP: &str = "warmup = { enabled = true, deadline = \"30s\" }";
const SHARD: &str = "shard = { replicas_per_key = 1, timeout = \"5s\" }";

/// `/items/{id}` cached 300 s, tagged `item-{id}`, answered after `delay` (owner routing
/// needs the misses to overlap).
fn origin_after(delay: Duration) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s: &Seen| {
        let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
        Reply::ok(format!("item {id}"))
            .header("cache-control", "max-age=300")
            .header("surrogate-key", &format!("item-{id}"))
            .delay(delay)
    }
}

/// Replicas on one proxy port and one admin port, found through `discovery` (a `[cluster]`
/// line), each with `extra` after its `[cluster]` lines.
struct Fleet {
    origin: Origin,
    proxy: u16,
    admin: u16,
    discovery: String,
}

impl Fleet {
    async fn new(delay: Duration, discovery: impl FnOnce(u16) -> String) -> Fleet {
        let admin = replica_port();
        Fleet {
            origin: Origin::start(origin_after(delay)).await,
            proxy: replica_port(),
            admin,
            discovery: discovery(admin),
        }
    }

    /// Replica `i`, not yet ready.
    fn spawn(&self, i: usize, extra: &str) -> Corral {
        let (proxy, admin) = Replicas::addrs(i, self.proxy, self.admin);
        let config = format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\n{}\nheartbeat = \"300ms\"\n{extra}\n",
            self.origin.url(),
            self.discovery,
        );
        Corral::spawn_on(proxy, admin, &config, &[("CORRAL_CLUSTER_SECRET", SECRET)])
    }

    async fn start(&self, i: usize, extra: &str) -> Corral {
        let mut c = self.spawn(i, extra);
        c.wait_ready_within(Duration::from_secs(60)).await;
        c
    }
}

fn dns_discovery(dns: &Dnsmasq) -> impl FnOnce(u16) -> String + '_ {
    move |admin| {
        format!(
            "discovery = {{ kind = \"dns\", name = \"{NAME}\", port = {admin}, nameserver = \"127.0.0.1:{}\", refresh = \"1s\" }}",
            dns.port
        )
    }
}

async fn served(c: &Corral, path: &str) -> Resp {
    c.get_with(path, &[HOST]).await
}

/// Fills `donor` with `/items/{id}` for each id (each asked twice, so it ranks).
async fn fill(donor: &Corral, ids: &[&str]) {
    for id in ids {
        served(donor, &format!("/items/{id}")).await;
        assert!(served(donor, &format!("/items/{id}")).await.is_hit());
    }
}

/// Waits until `c` sees `n` peers, as discovery found them.
async fn sees_peers(c: &Corral, n: f64) {
    let seen = eventually(Duration::from_secs(30), async || {
        c.metric("corral_peers").await == n
    })
    .await;
    assert!(seen, "{} found {n} peers", c.admin);
}

/// A replica started with warm-up on, next to `donor` (already holding `ids`), becomes ready
/// warm and answers its first requests from memory: the origin sees nothing new.
async fn warms_from(f: &Fleet, donor: &Corral, ids: &[&str], extra: &str) {
    fill(donor, ids).await;
    let fetched = f.origin.count("/items/");
    let new = f.start(1, &format!("{WARMUP}\n{extra}")).await;
    assert_eq!(
        new.metric("corral_warmup_entries_total").await,
        ids.len() as f64,
        "warmed before ready"
    );
    for id in ids {
        let r = served(&new, &format!("/items/{id}")).await;
        assert!(r.is_hit(), "/items/{id} from memory: {}", r.cache_status());
        assert!(
            !r.cache_status().contains("l2"),
            "from this replica's memory, not a tier: {}",
            r.cache_status()
        );
        assert_eq!(r.text(), format!("item {id}"));
    }
    assert_eq!(
        f.origin.count("/items/"),
        fetched,
        "the origin saw nothing new"
    );
}

/// 100 concurrent misses on each replica of `fleet` for one key: every client gets 200 and
/// the body, the origin one request.
async fn one_fill_for_the_cluster(origin: &Origin, fleet: &[&Corral], path: &str) {
    let mut tasks = Vec::new();
    for n in fleet {
        for _ in 0..100 {
            let url = n.url(path);
            tasks.push(tokio::spawn(async move { get_text_with(&url, HOST).await }));
        }
    }
    let id = path.rsplit('/').next().unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (200, format!("item {id}")));
    }
    assert_eq!(origin.count(path), 1, "one fill for the whole cluster");
    for n in fleet {
        assert!(served(n, path).await.is_hit(), "{} holds it", n.proxy);
    }
    assert_eq!(origin.count(path), 1);
}

// ---------------------------------------------------------------- DNS

#[tokio::test]
async fn dns_a_new_replica_warms_from_a_peer_dns_named() {
    let dns = Dnsmasq::start(NAME, &[Replicas::ip(0), Replicas::ip(1)]);
    let f = Fleet::new(Duration::ZERO, dns_discovery(&dns)).await;
    let donor = f.start(0, "").await;
    warms_from(&f, &donor, &["1", "2", "3"], "").await;
    assert!(donor.metric("corral_warmup_donated_bytes_total").await > 0.0);
}

#[tokio::test]
async fn dns_owner_routing_makes_concurrent_misses_on_three_replicas_one_origin_request() {
    let ips: Vec<String> = (0..3).map(Replicas::ip).collect();
    let dns = Dnsmasq::start(NAME, &ips);
    let f = Fleet::new(Duration::from_millis(500), dns_discovery(&dns)).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(f.start(i, SHARD).await);
    }
    for n in &nodes {
        sees_peers(n, 2.0).await;
    }
    let fleet: Vec<&Corral> = nodes.iter().collect();
    one_fill_for_the_cluster(&f.origin, &fleet, "/items/cold").await;
}

// ---------------------------------------------------------------- Kubernetes

/// A fake API server holding one EndpointSlice of `corral-headless` in `shop`: LIST answers
/// it; a WATCH stays open and silent (the set never changes in these tests).
async fn fake_kube(ips: Vec<String>, admin: u16) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "corral-abc", "namespace": "shop", "resourceVersion": "7",
                     "labels": {"kubernetes.io/service-name": "corral-headless"}},
        "addressType": "IPv4",
        "ports": [{"name": "admin", "port": admin, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>(),
    });
    let list = json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                      "metadata": {"resourceVersion": "7"}, "items": [slice]})
    .to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let list = list.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let watch = req.uri().query().unwrap_or("").contains("watch=true");
                    let body = if watch {
                        let silent =
                            futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
                        BodyExt::boxed(StreamBody::new(silent))
                    } else {
                        BodyExt::boxed(Full::new(Bytes::from(list.clone())))
                    };
                    async move { Ok::<_, Infallible>(http::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn kubernetes_a_new_replica_warms_from_a_peer_in_the_endpointslices() {
    let admin = replica_port();
    let api = fake_kube(vec![Replicas::ip(0), Replicas::ip(1)], admin).await;
    let mut f = Fleet::new(Duration::ZERO, |_| String::new()).await;
    f.admin = admin;
    f.discovery = format!(
        "discovery = {{ kind = \"kubernetes\", namespace = \"shop\", service = \"corral-headless\", port_name = \"admin\", api_server = \"http://{api}\" }}"
    );
    let donor = f.start(0, "").await;
    sees_peers(&donor, 1.0).await;
    warms_from(&f, &donor, &["1", "2", "3", "4"], "").await;
}

// ---------------------------------------------------------------- Redis

fn l2(redis: &Redis) -> String {
    format!(
        "[cache.l2]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\nbreaker_latency_p99 = \"2s\"\nlease_wait = \"10s\"",
        redis.url()
    )
}

fn static_discovery(n: usize) -> impl FnOnce(u16) -> String {
    move |admin| {
        let peers: Vec<String> = (0..n)
            .map(|i| format!("\"{}:{admin}\"", Replicas::ip(i)))
            .collect();
        format!(
            "discovery = {{ kind = \"static\", addresses = [{}] }}",
            peers.join(", ")
        )
    }
}

/// Makes requests (to keys of their own) until one reaches Redis through `c`'s L2: the tier
/// connects after the replica is ready, and a lookup made before that is answered without
/// Redis. With owner routing only the keys `c` owns reach its L2, so it may take a few.
async fn prime(c: &Corral) {
    let mut n = 0;
    let connected = eventually(Duration::from_secs(30), async || {
        n += 1;
        let _ = served(c, &format!("/prime/{}-{n}", c.admin)).await;
        c.metric("corral_redis_calls_total{kind=\"ok\"}").await >= 1.0
    })
    .await;
    assert!(connected, "no Redis call worked on {}", c.admin);
}

#[tokio::test]
async fn owner_routing_with_the_redis_tier_is_one_origin_request_for_three_replicas() {
    let redis = Redis::start().await;
    let f = Fleet::new(Duration::from_millis(500), static_discovery(3)).await;
    let extra = format!("{SHARD}\n{}", l2(&redis));
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(f.start(i, &extra).await);
    }
    for n in &nodes {
        sees_peers(n, 2.0).await;
        prime(n).await;
    }
    let fleet: Vec<&Corral> = nodes.iter().collect();
    one_fill_for_the_cluster(&f.origin, &fleet, "/items/cold").await;
    // The owner's fill reached the shared tier too (written behind): a fourth replica, cold
    // and in nobody's list, finds it in Redis, not at the origin.
    let written = eventually(Duration::from_secs(15), async || {
        !redis
            .cli(&["--scan", "--pattern", "*e:*/items/cold*"])
            .trim()
            .is_empty()
    })
    .await;
    assert!(written, "the fill is in Redis");
    let fourth = f.start(3, &l2(&redis)).await;
    prime(&fourth).await;
    let r = served(&fourth, "/items/cold").await;
    assert!(
        r.is_hit() && r.cache_status().contains("l2"),
        "{}",
        r.cache_status()
    );
    assert_eq!(f.origin.count("/items/cold"), 1);
}

#[tokio::test]
async fn warm_up_with_the_redis_tier_serves_from_memory() {
    let redis = Redis::start().await;
    let f = Fleet::new(Duration::ZERO, static_discovery(2)).await;
    let donor = f.start(0, &l2(&redis)).await;
    warms_from(&f, &donor, &["1", "2", "3"], &l2(&redis)).await;
}
