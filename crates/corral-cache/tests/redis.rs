//! The Redis L2 and the Redis bus of the library, end to end with real `redis-server` processes:
//! every "pod" is a `Cache` with its own `RedisL2` client (its own breaker), as in separate
//! processes.

#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_cache::redis_bus::{BusMember, BusMemberConfig};
use corral_cache::redis_l2::{BreakerState, RedisL2, RedisL2Config};
use corral_cache::Cache;
use corral_testkit::eventually;
use corral_testkit::redis::{redis_cluster, Redis};

const SECRET: &str = "redis-test-secret-0123456789";

/// One pod's L2 client, with timeouts generous enough for a loaded test machine.
async fn l2(redis: &Redis) -> RedisL2 {
    let mut cfg = RedisL2Config::new(&redis.url());
    cfg.redis.timeout = Duration::from_millis(300);
    cfg.redis.breaker.latency_p99 = Duration::from_millis(250);
    cfg.redis.breaker.open_for = Duration::from_millis(300);
    let l2 = RedisL2::start(cfg);
    assert!(eventually(Duration::from_secs(10), async || l2.is_connected()).await);
    l2
}

fn pod(l2: &RedisL2) -> Cache<String, String> {
    Cache::builder("prices")
        .time_to_live(Duration::from_secs(60))
        .tags(|k: &String, _| vec![format!("group-{}", &k[..1])])
        .redis_l2(l2)
        .build()
        .unwrap()
}

/// Two pods on one Redis server, each with its own L2 client: their clients, then the pods.
async fn two_pods(
    redis: &Redis,
) -> (
    RedisL2,
    RedisL2,
    Cache<String, String>,
    Cache<String, String>,
) {
    let (l2a, l2b) = (l2(redis).await, l2(redis).await);
    let (a, b) = (pod(&l2a), pod(&l2b));
    (l2a, l2b, a, b)
}

/// A loader that counts its calls.
fn counting(loads: &Arc<AtomicUsize>, v: &str) -> impl std::future::Future<Output = String> {
    let loads = loads.clone();
    let v = v.to_string();
    async move {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_share_l2_one_load_in_total() {
    let redis = Redis::start().await;
    let (l2a, l2b, a, b) = two_pods(&redis).await;
    let loads = Arc::new(AtomicUsize::new(0));

    assert_eq!(a.get_with("a1".into(), counting(&loads, "v1")).await, "v1");
    assert!(eventually(Duration::from_secs(5), async || l2a.writes("stored") >= 1).await);
    // Pod B: twenty concurrent callers, all answered from L2 (one lookup, no load).
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (b, loads) = (b.clone(), loads.clone());
        calls.push(tokio::spawn(async move {
            b.get_with("a1".into(), counting(&loads, "other")).await
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), "v1");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load across both pods");
    assert_eq!(l2b.lookups("hit"), 1);
    // The L2 hit filled B's L1.
    assert_eq!(b.get(&"a1".to_string()).as_deref(), Some("v1"));
    // The stored form is under the versioned key with the entry's TTL.
    let ttl: i64 = redis
        .cli(&["pttl", "corral:lib1:e:prices:v1:a1"])
        .trim()
        .parse()
        .unwrap();
    assert!((50_000..=60_000).contains(&ttl), "pttl {ttl}");

    // A new schema version orphans the old layout: it loads.
    let c: Cache<String, String> = Cache::builder("prices")
        .schema_version(2)
        .redis_l2(&l2b)
        .build()
        .unwrap();
    assert_eq!(c.get_with("a1".into(), counting(&loads, "v2")).await, "v2");
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    // An explicit insert is shared too: pod B finds it in L2 without loading.
    a.insert("i1".into(), "inserted".into());
    assert!(eventually(Duration::from_secs(5), async || l2a.writes("stored") >= 2).await);
    let before = loads.load(Ordering::SeqCst);
    assert_eq!(
        b.get_with("i1".into(), counting(&loads, "loaded")).await,
        "inserted"
    );
    assert_eq!(loads.load(Ordering::SeqCst), before);

    // Garbage under a key is a miss, never an error.
    redis.cli(&["set", "corral:lib1:e:prices:v1:zz", "not json"]);
    assert_eq!(b.get_with("zz".into(), counting(&loads, "z")).await, "z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_l2() {
    let redis = Redis::start().await;
    // No coherence transport between the pods: only L2 is shared.
    let (l2a, l2b, a, b) = two_pods(&redis).await;
    let loads = Arc::new(AtomicUsize::new(0));
    for k in ["a1", "b1", "c1", "d1"] {
        a.get_with(k.into(), counting(&loads, "old")).await;
    }
    assert!(eventually(Duration::from_secs(5), async || l2a.writes("stored") >= 4).await);

    // Key.
    a.invalidate(&"a1".to_string());
    assert!(eventually(Duration::from_secs(5), async || l2a.marks_pending() == 0).await);
    assert_eq!(
        b.get_with("a1".into(), counting(&loads, "new")).await,
        "new"
    );
    // Tag (b1 is tagged group-b).
    a.invalidate_tag("group-b");
    assert!(eventually(Duration::from_secs(5), async || l2a.marks_pending() == 0).await);
    assert_eq!(
        b.get_with("b1".into(), counting(&loads, "new")).await,
        "new"
    );
    // Write-through: the writer drops the old value from L2 too.
    a.write_through("c1".into(), "written".into(), async { Ok::<_, ()>(2) })
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), async || l2a.marks_pending() == 0).await);
    assert_eq!(a.get(&"c1".to_string()).as_deref(), Some("written"));
    assert_eq!(
        b.get_with("c1".into(), counting(&loads, "new")).await,
        "new"
    );
    // Untouched keys still come from L2.
    let before = loads.load(Ordering::SeqCst);
    assert_eq!(
        b.get_with("d1".into(), counting(&loads, "new")).await,
        "old"
    );
    assert_eq!(loads.load(Ordering::SeqCst), before);
    // Namespace bump.
    a.bump_namespace();
    assert!(eventually(Duration::from_secs(5), async || l2a.marks_pending() == 0).await);
    // Marks have millisecond resolution: a load in the mark's millisecond counts as older.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh: Cache<String, String> = pod(&l2b);
    assert_eq!(
        fresh.get_with("d1".into(), counting(&loads, "new")).await,
        "new"
    );
    assert!(l2b.lookups("stale") >= 1);
    // A value loaded after the invalidation is shared again.
    assert!(eventually(Duration::from_secs(5), async || l2b.writes("stored") >= 4).await);
    let c = pod(&l2a);
    let before = loads.load(Ordering::SeqCst);
    assert_eq!(
        c.get_with("d1".into(), counting(&loads, "newer")).await,
        "new"
    );
    assert_eq!(loads.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_no_wait_and_opens_the_breaker() {
    let redis = Redis::start().await;
    let mut cfg = RedisL2Config::new(&redis.url());
    cfg.redis.timeout = Duration::from_millis(50);
    cfg.redis.breaker.open_for = Duration::from_millis(500);
    let l2 = RedisL2::start(cfg);
    assert!(eventually(Duration::from_secs(10), async || l2.is_connected()).await);
    let a = pod(&l2);
    let loads = Arc::new(AtomicUsize::new(0));
    a.get_with("a0".into(), counting(&loads, "v")).await;

    redis.signal(libc::SIGSTOP);
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let start = Instant::now();
        let v = a.get_with(format!("k{i}"), counting(&loads, "v")).await;
        slowest = slowest.max(start.elapsed());
        assert_eq!(v, "v");
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest get_with {slowest:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || l2.breaker_state()
            != BreakerState::Closed)
        .await,
        "the breaker opens"
    );
    // Invalidations while Redis is away wait in the queue; L2 is not read meanwhile.
    a.invalidate(&"a0".to_string());
    assert!(l2.marks_pending() >= 1);
    let start = Instant::now();
    a.get_with("a0".into(), counting(&loads, "v")).await;
    assert!(start.elapsed() < Duration::from_secs(1));

    redis.signal(libc::SIGCONT);
    assert!(
        eventually(Duration::from_secs(15), async || l2.marks_pending() == 0
            && l2.breaker_state() == BreakerState::Closed)
        .await,
        "the marks are written and the breaker closes once Redis is back"
    );
}

/// Whether `key` leaves this pod's cache within 5 s (an invalidation from another pod
/// arriving over the bus).
async fn gone_from(pod: &Cache<String, String>, key: &str) -> bool {
    let key = key.to_string();
    eventually(Duration::from_secs(5), async || pod.get(&key).is_none()).await
}

async fn bus(redis: &Redis, name: &str) -> BusMember {
    let m = BusMember::start(BusMemberConfig::new(&redis.url(), SECRET, name)).unwrap();
    assert!(m.wait_connected(Duration::from_secs(10)).await);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_are_coherent_over_the_redis_bus() {
    let redis = Redis::start().await;
    let (ma, mb) = (bus(&redis, "pod-a").await, bus(&redis, "pod-b").await);
    let mk = || -> Cache<String, String> {
        Cache::builder("prices")
            .tags(|k: &String, _| vec![format!("group-{}", &k[..1])])
            .build()
            .unwrap()
    };
    let (a, b) = (mk(), mk());
    ma.attach(&a);
    mb.attach(&b);
    for c in [&a, &b] {
        for k in ["a1", "b1", "b2", "c1"] {
            c.insert(k.into(), "v".into());
        }
    }
    a.invalidate(&"a1".to_string());
    assert!(gone_from(&b, "a1").await, "a1 dropped by pod b");
    b.invalidate_tag("group-b");
    assert!(gone_from(&a, "b1").await, "b1 dropped by pod a");
    assert!(gone_from(&a, "b2").await, "b2 dropped by pod a");
    assert_eq!(a.get(&"c1".to_string()).as_deref(), Some("v"));
    assert_eq!(b.get(&"c1".to_string()).as_deref(), Some("v"));
    assert!(ma.published() >= 1 && mb.published() >= 1);
    assert_eq!(ma.rejected() + mb.rejected(), 0);

    // A forged entry (wrong secret) is refused.
    let forger = BusMember::start(BusMemberConfig::new(
        &redis.url(),
        "another-secret-0123456789",
        "forger",
    ))
    .unwrap();
    let f: Cache<String, String> = Cache::builder("prices").build().unwrap();
    forger.attach(&f);
    f.invalidate(&"c1".to_string());
    assert!(eventually(Duration::from_secs(5), async || ma.rejected() >= 1).await);
    assert_eq!(a.get(&"c1".to_string()).as_deref(), Some("v"));

    assert!(BusMember::start(BusMemberConfig::new(&redis.url(), "short", "x")).is_err());
}

/// The whole picture: two pods with both an L2 and the bus. An invalidation in one pod drops
/// the key from the other pod's L1 *and* from L2, so neither sees the old value again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_and_l2_together_an_invalidation_leaves_no_old_copy_anywhere() {
    let redis = Redis::start().await;
    let (l2a, l2b) = (l2(&redis).await, l2(&redis).await);
    let (ma, mb) = (bus(&redis, "pod-a").await, bus(&redis, "pod-b").await);
    let (a, b) = (pod(&l2a), pod(&l2b));
    ma.attach(&a);
    mb.attach(&b);
    let loads = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        a.get_with("a1".into(), counting(&loads, "old")).await,
        "old"
    );
    assert!(eventually(Duration::from_secs(5), async || l2a.writes("stored") >= 1).await);
    assert_eq!(b.get_with("a1".into(), counting(&loads, "x")).await, "old");
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // The source changes; pod A says so.
    a.invalidate(&"a1".to_string());
    assert!(gone_from(&b, "a1").await, "a1 dropped by pod b");
    assert!(
        eventually(Duration::from_secs(5), async || l2a.marks_pending() == 0
            && l2b.marks_pending() == 0)
        .await
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        b.get_with("a1".into(), counting(&loads, "new")).await,
        "new"
    );
    assert!(eventually(Duration::from_secs(5), async || l2b.writes("stored") >= 1).await);
    // A third pod starting now gets the new value from L2, without a load.
    let c = pod(&l2a);
    assert_eq!(c.get_with("a1".into(), counting(&loads, "x")).await, "new");
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    // Values over the size limit stay out of L2.
    let mut cfg = RedisL2Config::new(&redis.url());
    cfg.max_value_size = 16;
    cfg.redis.timeout = Duration::from_millis(300);
    let small = RedisL2::start(cfg);
    assert!(eventually(Duration::from_secs(10), async || small.is_connected()).await);
    let d = pod(&small);
    d.get_with("big".into(), async { "x".repeat(100) }).await;
    assert!(
        eventually(Duration::from_secs(5), async || small.writes("too_large")
            == 1)
        .await
    );
}

/// The L2 on a three-node Redis Cluster: entries spread over the nodes, a namespace's marks in one
/// slot, the same sharing and invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_on_a_redis_cluster() {
    let nodes = redis_cluster(3).await;
    let start = || {
        let mut cfg = RedisL2Config::with_target(corral_redis_target(&nodes));
        cfg.redis.timeout = Duration::from_millis(300);
        cfg.redis.breaker.latency_p99 = Duration::from_millis(250);
        RedisL2::start(cfg)
    };
    let (l2a, l2b) = (start(), start());
    assert!(
        eventually(Duration::from_secs(20), async || l2a.is_connected()
            && l2b.is_connected())
        .await
    );
    let (a, b) = (pod(&l2a), pod(&l2b));
    let loads = Arc::new(AtomicUsize::new(0));
    for i in 0..12 {
        a.get_with(format!("a{i}"), counting(&loads, "old")).await;
    }
    assert!(eventually(Duration::from_secs(10), async || l2a.writes("stored") >= 12).await);
    for i in 0..12 {
        assert_eq!(
            b.get_with(format!("a{i}"), counting(&loads, "x")).await,
            "old"
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 12, "every key came from L2");
    let spread = nodes
        .iter()
        .filter(|n| n.cli(&["dbsize"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(spread >= 2, "entries on {spread} node(s)");
    // Tag group-a covers every key: pod C (fresh L1) must not see the old values.
    a.invalidate_tag("group-a");
    assert!(eventually(Duration::from_secs(5), async || l2a.marks_pending() == 0).await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let c = pod(&l2b);
    for i in 0..12 {
        assert_eq!(
            c.get_with(format!("a{i}"), counting(&loads, "new")).await,
            "new"
        );
    }
    assert_eq!(l2b.lookups("error"), 0);
}

fn corral_redis_target(nodes: &[Redis]) -> corral_cache::redis_l2::Target {
    corral_cache::redis_l2::Target::Nodes(nodes.iter().map(Redis::url).collect())
}
