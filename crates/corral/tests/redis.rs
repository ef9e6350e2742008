//! The Redis tier end to end: real `redis-server` processes (and a three-node Redis Cluster
//! made with `redis-cli --cluster create`), real `corral` processes, a real origin.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SECRET: &str = "redis-test-secret-0123456789";

/// A TCP relay in front of Redis that can cut a replica off (and let it back).
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    tasks: Arc<parking_lot::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let tasks: Arc<parking_lot::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, t) = (up.clone(), tasks.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                t.lock().push(h.abort_handle());
            }
        });
        Relay { addr, up, tasks }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn tagged(s: &Seen) -> Reply {
    let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
    let etag = format!("\"{id}\"");
    if s.headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Reply::ok("")
            .status(304)
            .header("etag", &etag)
            .header("cache-control", "max-age=300");
    }
    Reply::ok(format!("item {id}"))
        .header("cache-control", "max-age=300")
        .header("etag", &etag)
        .header("surrogate-key", &format!("item-{id} items"))
}

/// A replica with the Redis tier, its calls given time a loaded machine needs: these tests are
/// about what is shared and purged, and a tight timeout would let the breaker (rightly) bypass
/// the tier and skip the writes they wait for. A test of the breaker itself says its own.
fn l2_config(origin: &Origin, url: &str, extra: &str) -> String {
    l2_config_timed(origin, url, "2s", "2s", extra)
}

/// `l2_config` with its own Redis call timeout and breaker latency threshold.
fn l2_config_timed(origin: &Origin, url: &str, timeout: &str, p99: &str, extra: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\n[cache.l2]\nkind = \"redis\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\nbreaker_latency_p99 = \"{p99}\"\n{extra}\n",
        origin.url()
    )
}

fn bus_line(url: &str) -> String {
    format!("bus = {{ kind = \"redis\", url = \"{url}\", stream = \"corral:events\" }}")
}

/// Every replica is asked for the same host, as behind one service name.
const HOST: &str = "api.test";

async fn hget(c: &Corral, path: &str) -> Resp {
    c.get_with(path, &[("host", HOST)]).await
}

async fn hget_with(c: &Corral, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut h = headers.to_vec();
    h.push(("host", HOST));
    c.get_with(path, &h).await
}

async fn start(config: &str) -> Corral {
    Corral::start_with_env(config, &[("CORRAL_CLUSTER_SECRET", SECRET)]).await
}

async fn wait_metric(c: &Corral, name: &str, at_least: f64) {
    let ok = c.metric_holds(name, |v| v >= at_least).await;
    assert!(ok, "{name} never reached {at_least} on {}", c.admin);
}

/// Waits until `name` reads exactly `value`: a gauge that must fall back (a reader
/// disconnected, a queue drained), which `wait_metric` cannot see.
async fn wait_metric_is(c: &Corral, name: &str, value: f64) {
    let ok = c.metric_holds(name, |v| v == value).await;
    assert!(ok, "{name} never read {value} on {}", c.admin);
}

/// Waits until every purge mark `c` owes Redis is written, after which any replica's L2
/// lookup sees the purge. A purge queues its marks before the admin API answers it, so the
/// gauge reads above 0 until then.
async fn wait_marks_written(c: &Corral) {
    wait_metric_is(c, "corral_l2_marks_pending", 0.0).await;
}

async fn warm_l2(c: &Corral, path: &str) {
    let before = c.metric("corral_l2_writes_total{kind=\"stored\"}").await;
    let r = hget(c, path).await;
    assert_eq!(r.status, 200);
    wait_metric(c, "corral_l2_writes_total{kind=\"stored\"}", before + 1.0).await;
}

/// Makes the client connect, so later assertions see a live tier: makes lookups until one reaches Redis: a lookup made before the client has connected (a
/// cluster client first learns the slot map) is answered without Redis, and nothing else
/// may call it afterwards.
async fn prime(c: &Corral) {
    let mut n = 0;
    let connected = eventually(Duration::from_secs(15), async || {
        n += 1;
        let _ = hget(c, &format!("/prime/{n}")).await;
        c.metric("corral_redis_calls_total{kind=\"ok\"}").await >= 1.0
    })
    .await;
    assert!(connected, "no Redis call worked on {}", c.admin);
}

/// Two replicas started on `cfg` (one shared L2), each with its Redis client connected: what
/// one stores, the other can only then be asked for.
async fn primed_pair(cfg: &str) -> (Corral, Corral) {
    let a = start(cfg).await;
    let b = start(cfg).await;
    prime(&a).await;
    prime(&b).await;
    (a, b)
}

#[tokio::test]
async fn two_replicas_share_l2_a_miss_on_one_is_a_hit_on_the_other() {
    let redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    let cfg = l2_config(&origin, &redis.url(), "");
    let (a, b) = primed_pair(&cfg).await;
    warm_l2(&a, "/items/1").await;
    assert_eq!(origin.count("/items/1"), 1);
    let r = hget(&b, "/items/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "item 1");
    assert!(r.is_hit(), "an L2 hit: {}", r.cache_status());
    assert!(r.cache_status().contains("l2"), "{}", r.cache_status());
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(origin.count("/items/1"), 1, "the origin was asked once");
    // Now in B's L1 as well: a plain hit.
    let r = hget(&b, "/items/1").await;
    assert!(
        r.is_hit() && !r.cache_status().contains("l2"),
        "{}",
        r.cache_status()
    );
    assert!(b.metric("corral_l2_lookups_total{kind=\"hit\"}").await >= 1.0);
    // The stored form is versioned in its key prefix.
    let keys = redis.cli(&["--scan", "--pattern", "corral:v2:e:*"]);
    assert!(keys.contains("/items/1"), "{keys}");
    // Its TTL is the entry's usable life: fresh for 300 s, then kept for revalidation (it has
    // a validator) for `keep` (default 1 h), as L1 keeps it.
    let ttl: i64 = redis
        .cli(&["pttl", "corral:v2:e:G|api.test|/items/1"])
        .trim()
        .parse()
        .unwrap();
    assert!((3_880_000..=3_900_000).contains(&ttl), "L2 TTL {ttl} ms");
}

#[tokio::test]
async fn tag_purge_and_soft_purge_reach_l2() {
    let redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    let cfg = l2_config(&origin, &redis.url(), "");
    let (a, b) = primed_pair(&cfg).await;
    // Hard tag purge on A: B (which never saw the entry, and hears nothing from A) must not
    // get it from L2.
    warm_l2(&a, "/items/2").await;
    purge(&a, json!({"tags": ["item-2"]})).await;
    wait_marks_written(&a).await;
    let r = hget(&b, "/items/2").await;
    assert!(
        !r.is_hit(),
        "purged content came back from L2: {}",
        r.cache_status()
    );
    assert_eq!(origin.count("/items/2"), 2);
    // URL purge too.
    warm_l2(&a, "/items/3").await;
    purge(&a, json!({"urls": ["/items/3"]})).await;
    wait_marks_written(&a).await;
    let r = hget(&b, "/items/3").await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count("/items/3"), 2);
    // Soft purge: B finds the entry in L2, marked stale, and revalidates it (a 304).
    warm_l2(&a, "/items/4").await;
    purge(&a, json!({"tags": ["items"], "soft": true})).await;
    wait_marks_written(&a).await;
    let r = hget(&b, "/items/4").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "item 4");
    assert!(
        !r.is_hit(),
        "soft-purged content served as fresh: {}",
        r.cache_status()
    );
    let last = origin.last("/items/4").unwrap();
    assert_eq!(
        last.headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok()),
        Some("\"4\""),
        "revalidated with the stored validator"
    );
}

#[tokio::test]
async fn the_redis_bus_carries_purges_between_replicas_that_do_not_know_each_other() {
    let redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\n{}\n",
        origin.url(),
        bus_line(&redis.url())
    );
    let a = start(&cfg).await;
    let b = start(&cfg).await;
    wait_metric(&b, "corral_bus_connected", 1.0).await;
    wait_metric(&a, "corral_bus_connected", 1.0).await;
    for c in [&a, &b] {
        hget(c, "/items/7").await;
        assert!(hget(c, "/items/7").await.is_hit());
    }
    purge(&a, json!({"tags": ["item-7"]})).await;
    let ok = eventually(Duration::from_secs(10), async || {
        !hget(&b, "/items/7").await.is_hit()
    })
    .await;
    assert!(ok, "B never applied A's purge from the stream");
    assert!(b.metric("corral_bus_events_received_total").await >= 1.0);
    // A forged entry is refused.
    redis.cli(&["XADD", "corral:events", "*", "e", "{}", "t", "1", "s", "00"]);
    wait_metric(&b, "corral_bus_events_rejected_total", 1.0).await;
}

#[tokio::test]
async fn a_replica_cut_off_from_redis_during_purges_converges_on_reconnect() {
    let redis = Redis::start().await;
    let relay = Relay::start(redis.port).await;
    let origin = Origin::start(tagged).await;
    let cfg = |url: &str| {
        format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\n{}\n",
            origin.url(),
            bus_line(url)
        )
    };
    let a = start(&cfg(&redis.url())).await;
    let b = start(&cfg(&relay.url())).await;
    wait_metric(&a, "corral_bus_connected", 1.0).await;
    wait_metric(&b, "corral_bus_connected", 1.0).await;
    for i in 0..5 {
        hget(&b, &format!("/items/{i}")).await;
    }
    relay.cut();
    for i in 0..5 {
        purge(&a, json!({"tags": [format!("item-{i}")]})).await;
    }
    // The purges are in the stream, and B's reader has lost its connection (the relay
    // closed it; it relays nothing now): what B applies from here it reads on reconnecting.
    wait_metric(&a, "corral_bus_events_published_total", 5.0).await;
    wait_metric_is(&b, "corral_bus_connected", 0.0).await;
    assert!(hget(&b, "/items/0").await.is_hit(), "B heard while cut off");
    relay.restore();
    let ok = eventually(Duration::from_secs(15), async || {
        for i in 0..5 {
            if hget_with(
                &b,
                &format!("/items/{i}"),
                &[("cache-control", "only-if-cached")],
            )
            .await
            .status
                == 200
            {
                return false;
            }
        }
        true
    })
    .await;
    assert!(ok, "B did not catch up with the purges it missed");
    assert_eq!(
        b.metric("corral_bus_resets_total").await,
        0.0,
        "resumed, not reset"
    );
}

#[tokio::test]
async fn a_replica_away_longer_than_retention_purges_everything() {
    let redis = Redis::start().await;
    let relay = Relay::start(redis.port).await;
    let origin = Origin::start(tagged).await;
    let cfg = |url: &str| {
        format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\nbus = {{ kind = \"redis\", url = \"{url}\", stream = \"corral:events\", maxlen = 100 }}\n",
            origin.url(),
        )
    };
    let a = start(&cfg(&redis.url())).await;
    let b = start(&cfg(&relay.url())).await;
    wait_metric(&b, "corral_bus_connected", 1.0).await;
    hget(&b, "/keep/1").await;
    assert!(hget(&b, "/keep/1").await.is_hit());
    // One event B sees, so it has a position in the stream.
    purge(&a, json!({"tags": ["nothing-0"]})).await;
    wait_metric(&b, "corral_bus_events_received_total", 1.0).await;
    relay.cut();
    for i in 0..400 {
        purge(&a, json!({"tags": [format!("nothing-{}", i + 1)]})).await;
    }
    wait_metric(&a, "corral_bus_events_published_total", 401.0).await;
    relay.restore();
    wait_metric(&b, "corral_bus_resets_total{kind=\"trimmed\"}", 1.0).await;
    let r = hget(&b, "/keep/1").await;
    assert!(
        !r.is_hit(),
        "L1 was purged after the trim: {}",
        r.cache_status()
    );
}

#[tokio::test]
async fn redis_killed_under_load_fails_no_request() {
    let mut redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    // A small L1, so the load overflows it: it must stay within its bound through the outage.
    let cfg = format!(
        "[cache]\nmax_size = \"1MiB\"\nmax_object_size = \"64KiB\"\n{}",
        l2_config(&origin, &redis.url(), "")
    );
    let a = Arc::new(start(&cfg).await);
    prime(&a).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (a, failures, done, stop) = (a.clone(), failures.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let path = format!("/load/{}", (i * 8 + w) % 2000);
                match client().get(a.url(&path)).header("host", HOST).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    // Observable states, not delays: the load is running and the tier is in use, then Redis
    // dies and the load runs on through the outage until the tier has seen it fail.
    let served = async |n: usize| {
        let d = done.clone();
        assert!(
            eventually(Duration::from_secs(60), async || d.load(Ordering::SeqCst)
                >= n)
            .await,
            "the load stalled"
        );
    };
    served(200).await;
    assert!(
        eventually(Duration::from_secs(30), async || a
            .metric("corral_l2_writes_total")
            .await
            > 0.0)
        .await,
        "the L2 tier was never used"
    );
    redis.kill();
    let before = done.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(30), async || {
            let mut failed = 0.0;
            for kind in ["error", "timeout", "refused"] {
                failed += a
                    .metric(&format!("corral_redis_calls_total{{kind=\"{kind}\"}}"))
                    .await;
            }
            failed > 0.0
        })
        .await,
        "the tier never saw Redis fail"
    );
    served(before + 300).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(done.load(Ordering::SeqCst) > 100, "the load ran");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed while Redis died"
    );
    let bytes = a.metric("corral_cache_bytes").await;
    assert!(
        bytes <= (1 << 20) as f64,
        "L1 holds {bytes} bytes, over its 1 MiB bound"
    );
}

#[tokio::test]
async fn a_stopped_redis_opens_the_breaker_and_latency_stays_bounded() {
    let redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    // Tight: a stopped Redis must open the breaker within a few calls.
    let cfg = l2_config_timed(
        &origin,
        &redis.url(),
        "50ms",
        "40ms",
        "breaker_open_for = \"1s\"",
    );
    let a = start(&cfg).await;
    prime(&a).await;
    redis.signal(libc::SIGSTOP);
    assert!(
        wait_for_process_state(redis.pid(), true).await,
        "Redis never stopped"
    );
    // Cold URLs: every one would consult Redis if the breaker let it.
    let waited = async || {
        a.metric("corral_redis_calls_total{kind=\"timeout\"}").await
            + a.metric("corral_redis_calls_total{kind=\"error\"}").await
    };
    let mut opened_at = None;
    for i in 0..120 {
        let t = Instant::now();
        let r = hget(&a, &format!("/cold/{i}")).await;
        assert_eq!(r.status, 200);
        // Only a hang fails here: the latency bound is the calls' count below, not a clock.
        assert!(t.elapsed() < Duration::from_secs(10), "request {i} hung");
        if a.metric("corral_redis_breaker_state").await == 1.0 {
            opened_at = Some((i, Instant::now(), waited().await));
            break;
        }
    }
    let (opened, at, waited_then) = opened_at.expect("the breaker opened on a stopped Redis");
    assert!(opened < 60, "opened only after {opened} requests");
    assert!(
        a.metric("corral_redis_breaker_transitions_total{kind=\"open\"}")
            .await
            >= 1.0
    );
    // While open no request waits for Redis: 60 more cold requests are answered without a
    // call, but for the one probe the breaker lets through each `breaker_open_for` (1 s).
    for i in 0..60 {
        assert_eq!(hget(&a, &format!("/cold/open/{i}")).await.status, 200);
    }
    let probes = at.elapsed().as_secs_f64().ceil() + 1.0;
    let waited_open = waited().await - waited_then;
    assert!(
        waited_open <= probes,
        "{waited_open} calls waited for Redis with the breaker open (at most {probes} probes)"
    );
    redis.signal(libc::SIGCONT);
    assert!(
        wait_for_process_state(redis.pid(), false).await,
        "Redis never resumed"
    );
    let mut n = 0;
    let ok = eventually(Duration::from_secs(60), async || {
        n += 1;
        let _ = hget(&a, &format!("/cold/again/{n}")).await;
        a.metric("corral_redis_breaker_state").await == 0.0
    })
    .await;
    assert!(ok, "the breaker closed again once Redis was back");
}

#[tokio::test]
async fn redis_restarted_bus_resumes_and_the_origin_sees_no_stampede() {
    let mut redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    let cfg = format!(
        "{}[cluster]\n{}\n",
        l2_config(&origin, &redis.url(), ""),
        bus_line(&redis.url())
    );
    let a = start(&cfg).await;
    let b = start(&cfg).await;
    wait_metric(&a, "corral_bus_connected", 1.0).await;
    wait_metric(&b, "corral_bus_connected", 1.0).await;
    for i in 0..30 {
        for c in [&a, &b] {
            hget(c, &format!("/items/{i}")).await;
        }
    }
    let before = origin.count("/items/");
    let ask_for_every_item = async || {
        for i in 0..30 {
            for c in [&a, &b] {
                let r = hget(c, &format!("/items/{i}")).await;
                assert_eq!(r.status, 200);
            }
        }
    };
    redis.kill();
    // Both readers saw Redis go: what follows is a reconnect.
    for c in [&a, &b] {
        wait_metric_is(c, "corral_bus_connected", 0.0).await;
    }
    redis.spawn().await;
    // Both keep serving from L1 while their readers reconnect, and after: a reader reads as
    // connected only once it has judged its old position against the empty stream (resumed,
    // or purged L1 had it been trimmed), so a refetch storm that judgement caused would show
    // in the round after it.
    ask_for_every_item().await;
    for c in [&a, &b] {
        wait_metric(c, "corral_bus_connected", 1.0).await;
    }
    ask_for_every_item().await;
    assert_eq!(origin.count("/items/"), before, "the origin saw a stampede");
    // The bus resumed: a purge on A reaches B.
    purge(&a, json!({"tags": ["item-3"]})).await;
    let ok = eventually(Duration::from_secs(15), async || {
        hget_with(&b, "/items/3", &[("cache-control", "only-if-cached")])
            .await
            .status
            == 504
    })
    .await;
    assert!(ok, "B never heard of the purge after the restart");
}

#[tokio::test]
async fn fill_lease_three_replicas_cost_the_origin_one_fetch() {
    let redis = Redis::start().await;
    let origin = Origin::start(|s: &Seen| tagged(s).delay(Duration::from_millis(400))).await;
    // This test is about the lease, not latency: 3,000 concurrent requests on a small test
    // machine may slow Redis calls past a tight timeout (which would rightly mean "go to the
    // origin"), so the timeout here is generous.
    let cfg = l2_config_timed(&origin, &redis.url(), "2s", "2s", "lease_wait = \"10s\"");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let c = start(&cfg).await;
        prime(&c).await;
        nodes.push(Arc::new(c));
    }
    let before = origin.count("/hot/");
    // 3 replicas × 1,000 concurrent cold requests.
    let http = client();
    let mut tasks = Vec::new();
    for n in &nodes {
        for _ in 0..1000 {
            let req = http.get(n.url("/hot/1")).header("host", HOST);
            tasks.push(tokio::spawn(async move {
                Resp::from(req.send().await.unwrap()).await
            }));
        }
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "item 1");
    }
    let mut calls = String::new();
    for n in &nodes {
        for k in ["ok", "timeout", "error", "refused"] {
            let v = n
                .metric(&format!("corral_redis_calls_total{{kind=\"{k}\"}}"))
                .await;
            calls.push_str(&format!("{k}={v} "));
        }
    }
    assert_eq!(
        origin.count("/hot/") - before,
        1,
        "one origin fetch for the whole cluster ({calls})"
    );
    // One replica held the lease; each of the others either waited for it or, when its
    // requests reached it only after the fill was stored (a loaded machine can take longer
    // than the origin's 400 ms to send 1,000 requests), found the holder's entry in L2.
    // Neither a fetch of its own nor an error: the count above already rules out the first.
    let mut acquired = 0.0;
    for (i, n) in nodes.iter().enumerate() {
        let held = n
            .metric("corral_fill_leases_total{kind=\"acquired\"}")
            .await;
        let waited = n.metric("corral_fill_leases_total{kind=\"waited\"}").await;
        let found = n.metric("corral_l2_lookups_total{kind=\"hit\"}").await;
        acquired += held;
        assert!(
            held + waited + found >= 1.0,
            "replica {i} neither held, waited for nor found the fill ({calls})"
        );
    }
    assert!(acquired >= 1.0, "some replica held the lease ({calls})");
}

#[tokio::test]
async fn redis_cluster_l2_is_shared_and_purged() {
    let nodes = redis_cluster(3).await;
    let origin = Origin::start(tagged).await;
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    // About sharing and purging, not latency: on a loaded machine three Redis processes can
    // answer slower than a tight timeout, and the breaker would rightly bypass the tier (its
    // writes skipped), so the timeout and the breaker's threshold here are generous.
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\n[cache.l2]\nkind = \"redis\"\nnodes = [{}]\ntimeout = \"2s\"\nbreaker_latency_p99 = \"2s\"\n",
        origin.url(),
        list.join(", ")
    );
    let (a, b) = primed_pair(&cfg).await;
    for i in 0..6 {
        warm_l2(&a, &format!("/items/{i}")).await;
    }
    for i in 0..6 {
        let r = hget(&b, &format!("/items/{i}")).await;
        assert!(
            r.is_hit(),
            "/items/{i} from the cluster L2: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count("/items/"), 6);
    purge(&a, json!({"tags": ["items"]})).await;
    wait_marks_written(&a).await;
    let c = start(&cfg).await;
    prime(&c).await;
    for i in 0..6 {
        let r = hget(&c, &format!("/items/{i}")).await;
        assert!(!r.is_hit(), "purged /items/{i} served from the cluster L2");
    }
}

#[tokio::test]
async fn bad_redis_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[cache.l2]\nkind = \"redis\"\n", "cache.l2.url"),
        (
            "[cache.l2]\nkind = \"redis\"\nurl = \"http://x\"\n",
            "cache.l2.url",
        ),
        (
            "[cache.l2]\nkind = \"redis\"\nurl = \"redis://x:1\"\ntimeout = \"1 fortnight\"\n",
            "cache.l2.timeout",
        ),
        (
            "[cluster]\nbus = { kind = \"kafka\" }\n",
            "cluster.bus.kind",
        ),
        ("[cluster]\nbus = 7\n", "cluster.bus"),
    ] {
        let out = check_config(&config_file(dir.path(), text));
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
    // The password never shows, even in an error.
    let out = check_config(&config_file(
        dir.path(),
        "[cache.l2]\nkind = \"redis\"\nurl = \"redis://:hunter2@x:1\"\ncolour = 1\n",
    ));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[tokio::test]
async fn http_fan_out_and_redis_bus_together_apply_each_event_once() {
    let redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (pa, aa, pb, ab) = (
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
    );
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\ndiscovery = {{ kind = \"static\", addresses = [\"127.0.0.1:{aa}\", \"127.0.0.1:{ab}\"] }}\nheartbeat = \"300ms\"\n{}\n",
        origin.url(),
        bus_line(&redis.url())
    );
    let env = [("CORRAL_CLUSTER_SECRET", SECRET)];
    let a = Corral::start_on(addr(pa), addr(aa), &cfg, &env).await;
    let b = Corral::start_on(addr(pb), addr(ab), &cfg, &env).await;
    wait_metric(&b, "corral_bus_connected", 1.0).await;
    hget(&b, "/items/9").await;
    assert!(hget(&b, "/items/9").await.is_hit());
    purge(&a, json!({"tags": ["item-9"]})).await;
    let ok = eventually(Duration::from_secs(10), async || {
        !hget(&b, "/items/9").await.is_hit()
    })
    .await;
    assert!(ok, "B applied the purge");
    // Both buses deliver it (the stream's copy is read even if the HTTP one came first). A
    // second purge marks the end of the first one's copies: B reads the stream in order, and
    // A counts an event sent once B has answered for it; once B has read the marker from the
    // stream and answered for it, and applied it, both copies of the first event are behind
    // it, and a second application of the first would show.
    purge(&a, json!({"tags": ["marker"]})).await;
    wait_metric(&b, "corral_bus_events_received_total", 2.0).await;
    wait_metric(&a, "corral_peer_events_sent_total", 2.0).await;
    wait_metric(&b, "corral_peer_events_received_total", 2.0).await;
    // ... and each was applied once.
    assert_eq!(b.metric("corral_peer_events_received_total").await, 2.0);
    assert_eq!(b.metric("corral_purges_total{kind=\"tag\"}").await, 2.0);
}

#[tokio::test]
async fn refills_after_recovery_are_rate_limited() {
    let mut redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    let cfg = l2_config(
        &origin,
        &redis.url(),
        "breaker_open_for = \"300ms\"\nrefill_rate = 5\nrecovery = \"60s\"\nrefill_jitter = \"10ms\"",
    );
    let a = start(&cfg).await;
    prime(&a).await;
    redis.kill();
    let mut i = 0;
    let opened = eventually(Duration::from_secs(15), async || {
        i += 1;
        hget(&a, &format!("/down/{i}")).await;
        a.metric("corral_redis_breaker_state").await == 1.0
    })
    .await;
    assert!(opened, "the breaker opened with Redis dead");
    redis.spawn().await;
    let closed = eventually(Duration::from_secs(20), async || {
        i += 1;
        hget(&a, &format!("/down/{i}")).await;
        a.metric("corral_redis_breaker_transitions_total{kind=\"closed\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(closed, "the breaker closed once Redis was back");
    let stored = a.metric("corral_l2_writes_total{kind=\"stored\"}").await;
    let decided = a.metric("corral_l2_writes_total").await;
    for n in 0..60 {
        assert_eq!(hget(&a, &format!("/refill/{n}")).await.status, 200);
    }
    // Every re-fill's write decided (limited, or written in the background) before counting.
    wait_metric(&a, "corral_l2_writes_total", decided + 60.0).await;
    let limited = a
        .metric("corral_l2_writes_total{kind=\"rate_limited\"}")
        .await;
    let written = a.metric("corral_l2_writes_total{kind=\"stored\"}").await - stored;
    assert!(
        limited >= 30.0,
        "re-fills were not limited: {limited} limited, {written} written"
    );
    assert!(written <= 30.0, "{written} re-fills written at once");
}

#[tokio::test]
async fn auth_from_a_password_file_and_a_wrong_password_only_turns_the_tier_off() {
    let pw = "s3cret-redis-pass";
    let redis = Redis::start_with(free_port("127.0.0.1"), false, Vec::new(), Some(pw.into())).await;
    let origin = Origin::start(tagged).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("pw");
    std::fs::write(&good, format!("{pw}\n")).unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong").unwrap();
    let cfg = |f: &std::path::Path| {
        l2_config(
            &origin,
            &redis.url(),
            &format!("password_file = \"{}\"", f.display()),
        )
    };
    let a = start(&cfg(&good)).await;
    let b = start(&cfg(&good)).await;
    prime(&a).await;
    prime(&b).await;
    warm_l2(&a, "/items/1").await;
    assert!(hget(&b, "/items/1").await.is_hit());
    // The password is not on the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", a.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(pw));
    // A wrong password: no L2, but every request is answered.
    let c = start(&cfg(&bad)).await;
    for i in 0..5 {
        assert_eq!(hget(&c, &format!("/items/{i}")).await.status, 200);
    }
    assert_eq!(c.metric("corral_l2_lookups_total{kind=\"hit\"}").await, 0.0);
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn tls_to_redis_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=corral-test-ca",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "1",
            "-extfile",
            "ext",
        ],
    );
    let tls_port = free_port("127.0.0.1");
    let p = |f: &str| d.join(f).display().to_string();
    let redis = Redis::start_with(
        free_port("127.0.0.1"),
        false,
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            p("srv.pem"),
            "--tls-key-file".into(),
            p("srv.key"),
            "--tls-ca-cert-file".into(),
            p("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        None,
    )
    .await;
    let origin = Origin::start(tagged).await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let cfg = l2_config(&origin, &url, &format!("tls_ca_file = \"{}\"", p("ca.pem")));
    let (a, b) = primed_pair(&cfg).await;
    warm_l2(&a, "/items/5").await;
    let r = hget(&b, "/items/5").await;
    assert!(r.is_hit(), "L2 over TLS: {}", r.cache_status());
    assert_eq!(origin.count("/items/5"), 1);
    drop(redis);
}

#[tokio::test]
async fn a_dead_lease_holder_is_taken_over() {
    let redis = Redis::start().await;
    let origin = Origin::start(|s: &Seen| tagged(s).delay(Duration::from_millis(1500))).await;
    let cfg = l2_config_timed(
        &origin,
        &redis.url(),
        "1s",
        "1s",
        "lease_ttl = \"1s\"\nlease_wait = \"10s\"",
    );
    let mut a = start(&cfg).await;
    let b = start(&cfg).await;
    prime(&a).await;
    prime(&b).await;
    // A takes the lease and goes to the (slow) origin ...
    let url = a.url("/slow/1");
    let pending = tokio::spawn(async move { client().get(url).header("host", HOST).send().await });
    let ok = eventually(Duration::from_secs(10), async || {
        a.metric("corral_fill_leases_total{kind=\"acquired\"}")
            .await
            >= 2.0
    })
    .await;
    assert!(ok, "A took the lease");
    // ... and dies holding it.
    let _ = a.child.kill();
    let _ = a.child.wait();
    let _ = pending.await;
    let t = Instant::now();
    let r = hget(&b, "/slow/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "item 1");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "B waited {:?}",
        t.elapsed()
    );
    assert!(
        b.metric("corral_fill_leases_total{kind=\"takeover\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn variants_travel_through_l2_and_are_bounded() {
    let redis = Redis::start().await;
    let origin = Origin::start(|s: &Seen| {
        let v = s
            .headers
            .get("x-v")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Reply::ok(format!("variant {v}"))
            .header("cache-control", "max-age=300")
            .header("vary", "X-V")
    })
    .await;
    let cfg = l2_config(&origin, &redis.url(), "max_variants = 2");
    let (a, b) = primed_pair(&cfg).await;
    let before = a.metric("corral_l2_writes_total{kind=\"stored\"}").await;
    for v in ["a", "b"] {
        assert_eq!(
            hget_with(&a, "/v", &[("x-v", v)]).await.text(),
            format!("variant {v}")
        );
    }
    wait_metric(&a, "corral_l2_writes_total{kind=\"stored\"}", before + 2.0).await;
    for v in ["a", "b"] {
        let r = hget_with(&b, "/v", &[("x-v", v)]).await;
        assert!(r.is_hit(), "variant {v} from L2: {}", r.cache_status());
        assert_eq!(r.text(), format!("variant {v}"));
    }
    let r = hget_with(&b, "/v", &[("x-v", "c")]).await;
    assert!(!r.is_hit(), "no stored variant matches c");
    assert_eq!(r.text(), "variant c");
    // B's fill of c is in L2: the script that wrote it also kept the bound. (B's own count of
    // writes would not say so: its priming fills were written too.)
    let key = "corral:v2:e:G|api.test|/v";
    let c_written = eventually(Duration::from_secs(15), async || {
        redis.cli(&["hkeys", key]).contains("x-v=c")
    })
    .await;
    assert!(c_written, "B never wrote variant c to L2");
    let n: usize = redis.cli(&["hlen", key]).trim().parse().unwrap();
    assert_eq!(n, 2, "L2 keeps at most max_variants variants per URL");
}
