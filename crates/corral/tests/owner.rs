//! Owner routing (`[cluster] shard`), end to end: three real `corral` replicas on 127.0.0.11,
//! .12, .13 in front of one real origin, no Redis. A miss goes to the key's owner, which
//! fetches once for the whole cluster; an owner that dies mid-fetch costs one bounded wait.

mod common;

use corral_core::KeyRef;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::replicas::Replicas;
use common::*;

const SHARD: &str = "shard = { replicas_per_key = 1, timeout = \"5s\" }";
const HOST: (&str, &str) = ("host", "shop.example");

/// `/items/{id}`, cached 300 s, answered after `delay`.
fn slow_origin(delay: Duration) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s: &Seen| {
        let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
        Reply::ok(format!("item {id}"))
            .header("cache-control", "max-age=300")
            .delay(delay)
    }
}

/// Three replicas that each see both others (so they agree on every key's owner).
async fn fleet(origin: &Origin) -> Replicas {
    let r = Replicas::start(3, origin, SHARD).await;
    for n in r.nodes.iter().flatten() {
        let all_heard = eventually(Duration::from_secs(30), async || {
            n.metric("corral_peers").await == 2.0 && n.admin_text("/readyz").await.trim() == "ready"
        })
        .await;
        assert!(all_heard, "{} sees its peers", n.admin);
    }
    r
}

fn admin_addrs(r: &Replicas) -> Vec<SocketAddr> {
    (0..3)
        .map(|i| Replicas::addrs(i, r.proxy_port, r.admin_port).1)
        .collect()
}

#[tokio::test]
async fn many_concurrent_misses_on_three_replicas_are_one_origin_request() {
    let origin = Origin::start(slow_origin(Duration::from_millis(500))).await;
    let r = fleet(&origin).await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let url = r.node(i).url("/items/cold");
        for _ in 0..100 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move { get_text_with(&url, HOST).await }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (200, "item cold".to_string()));
    }
    assert_eq!(
        origin.count("/items/cold"),
        1,
        "one fill for the whole cluster"
    );
    // Both the owner and whoever asked it hold the entry now.
    for n in r.nodes.iter().flatten() {
        assert!(
            n.get_with("/items/cold", &[HOST]).await.is_hit(),
            "{}",
            n.proxy
        );
    }
    assert_eq!(origin.count("/items/cold"), 1);
}

#[tokio::test]
async fn an_owner_killed_mid_fetch_costs_its_followers_one_bounded_wait() {
    let delay = Duration::from_millis(1500);
    let origin = Origin::start(slow_origin(delay)).await;
    let mut r = fleet(&origin).await;
    let key = "G|shop.example|/items/doomed";
    let addrs = admin_addrs(&r);
    let owner = corral_cluster::shard::owner(KeyRef::parse(key).unwrap(), &addrs).unwrap();
    let owner_i = addrs.iter().position(|a| *a == owner).unwrap();
    let asker = (owner_i + 1) % 3;
    let url = r.node(asker).url("/items/doomed");
    let started = Instant::now();
    let asked = tokio::spawn(async move { get_text_with(&url, HOST).await });
    // The owner's fetch is under way (the asker forwarded instead of fetching).
    let fetching = eventually(Duration::from_secs(30), async || {
        origin.count("/items/doomed") == 1
    })
    .await;
    assert!(fetching, "the owner fetches");
    r.nodes[owner_i] = None; // SIGKILL, and reaped
    assert_eq!(
        asked.await.unwrap(),
        (200, "item doomed".to_string()),
        "not an error"
    );
    assert_eq!(
        origin.count("/items/doomed"),
        2,
        "the asker fetched it itself"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5) + delay * 2 + Duration::from_secs(10),
        "one bounded wait: {:?}",
        started.elapsed()
    );
    assert!(r
        .node(asker)
        .get_with("/items/doomed", &[HOST])
        .await
        .is_hit());
}
