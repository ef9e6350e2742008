//! The `corral-cache` library next to real `corral` processes: the sidecar does not apply its
//! own invalidations twice (a write-through keeps its fresh value), and a gateway and a library
//! pod on the same Redis bus see each other's invalidations.

mod common;

use std::time::Duration;

use common::*;
use corral_cache::redis_bus::{BusMember, BusMemberConfig};
use corral_cache::redis_l2::{RedisL2, RedisL2Config};
use corral_cache::sidecar::Sidecar;
use corral_cache::Cache;
use serde_json::json;

const SECRET: &str = "library-test-secret-0123456789";

#[tokio::test]
async fn the_sidecar_does_not_apply_its_own_echo_but_applies_everyone_elses() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let node = Corral::start(&format!("[upstream]\nurl = \"{}\"\n", origin.url())).await;
    let c: Cache<u64, String> = Cache::builder("prices")
        .tags(|k, _| vec![format!("package-{k}")])
        .build()
        .unwrap();
    let s = Sidecar::connect(&node.admin_url(""), None);
    s.attach(&c);
    assert!(s.wait_connected(Duration::from_secs(10)).await);

    // A write-through publishes the key's invalidation (for the other pods); its echo on the
    // feed must not drop the value just written here.
    for round in 0..20u64 {
        let v = format!("written {round}");
        c.write_through(1, v.clone(), async move { Ok::<_, ()>(round + 1) })
            .await
            .unwrap();
        assert!(
            eventually(Duration::from_secs(10), async || s.echoes_skipped()
                + s.applied()
                > round)
            .await,
            "round {round}: the echo came back"
        );
        assert_eq!(
            c.get(&1),
            Some(v),
            "round {round}: the fresh value survived its echo"
        );
    }
    assert_eq!(s.publish_failures(), 0);
    assert_eq!(s.echoes_skipped(), 20);
    assert_eq!(s.applied(), 0);

    // Someone else's purge of the same key, through the same sidecar, is applied.
    c.insert(2, "a".into());
    let skipped = s.echoes_skipped();
    purge(&node, json!({"urls": ["/prices/1"]})).await;
    assert!(eventually(Duration::from_secs(10), async || c.get(&1).is_none()).await);
    purge(&node, json!({"tags": ["package-2"]})).await;
    assert!(eventually(Duration::from_secs(10), async || c.get(&2).is_none()).await);
    assert_eq!(s.echoes_skipped(), skipped);

    // The pod's own plain invalidations still reach the sidecar (and are not applied twice).
    c.insert(3, "b".into());
    c.invalidate(&3);
    assert!(
        eventually(Duration::from_secs(10), async || s.echoes_skipped()
            > skipped)
        .await
    );
    assert_eq!(c.get(&3), None);
}

#[tokio::test]
async fn a_gateway_and_a_library_pod_share_the_redis_bus() {
    let redis = Redis::start().await;
    let origin = Origin::start(|s: &Seen| {
        let id = s.uri.rsplit('/').next().unwrap_or("0").to_string();
        Reply::ok(format!("item {id}"))
            .header("cache-control", "max-age=300")
            .header("surrogate-key", &format!("item-{id}"))
    })
    .await;
    let gw = Corral::start_with_env(
        &format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\nbus = {{ kind = \"redis\", url = \"{}\", stream = \"corral:events\" }}\n",
            origin.url(),
            redis.url()
        ),
        &[("CORRAL_CLUSTER_SECRET", SECRET)],
    )
    .await;
    let member = BusMember::start(BusMemberConfig::new(&redis.url(), SECRET, "booking-1")).unwrap();
    let c: Cache<u64, String> = Cache::builder("prices")
        .tags(|k, _| vec![format!("item-{k}")])
        .build()
        .unwrap();
    member.attach(&c);
    assert!(member.wait_connected(Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(10), async || {
            gw.metric("corral_bus_connected").await >= 1.0
        })
        .await,
        "the gateway's bus never connected"
    );

    // Gateway → library: an admin purge by URL and by tag.
    c.insert(7, "a".into());
    c.insert(8, "b".into());
    c.insert(9, "c".into());
    purge(&gw, json!({"urls": ["/prices/7"]})).await;
    assert!(eventually(Duration::from_secs(10), async || c.get(&7).is_none()).await);
    purge(&gw, json!({"tags": ["item-8"]})).await;
    assert!(eventually(Duration::from_secs(10), async || c.get(&8).is_none()).await);
    assert_eq!(c.get(&9).as_deref(), Some("c"));

    // Library → gateway: a tag invalidation in the pod drops the gateway's cached response.
    gw.get("/items/5").await;
    assert!(gw.get("/items/5").await.is_hit());
    c.invalidate_tag("item-5");
    assert!(
        eventually(Duration::from_secs(10), async || {
            !gw.get("/items/5").await.is_hit()
        })
        .await,
        "the gateway never applied the pod's invalidation"
    );
    assert!(gw.metric("corral_bus_events_received_total").await >= 1.0);
    assert_eq!(member.rejected(), 0);

    // With a Redis L2 under the library cache, a gateway purge reaches L2 too (the pod that
    // applies the event writes its mark): a pod starting afterwards never sees the old value.
    let mut cfg = RedisL2Config::new(&redis.url());
    cfg.redis.timeout = Duration::from_millis(300);
    cfg.redis.breaker.latency_p99 = Duration::from_millis(250);
    let l2 = RedisL2::start(cfg);
    assert!(eventually(Duration::from_secs(10), async || l2.is_connected()).await);
    let with_l2 = |l2: &RedisL2| -> Cache<u64, String> {
        Cache::builder("items").redis_l2(l2).build().unwrap()
    };
    let d = with_l2(&l2);
    member.attach(&d);
    assert_eq!(d.get_with(3, async { "old".to_string() }).await, "old");
    assert!(eventually(Duration::from_secs(10), async || l2.writes("stored") >= 1).await);
    assert_eq!(
        with_l2(&l2).get_with(3, async { "x".to_string() }).await,
        "old",
        "shared through L2"
    );
    purge(&gw, json!({"urls": ["/items/3"]})).await;
    assert!(eventually(Duration::from_secs(10), async || d.get(&3).is_none()).await);
    assert!(eventually(Duration::from_secs(10), async || l2.marks_pending() == 0).await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        with_l2(&l2).get_with(3, async { "new".to_string() }).await,
        "new"
    );
}
