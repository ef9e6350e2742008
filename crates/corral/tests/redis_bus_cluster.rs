//! The Redis Streams bus on a Redis Cluster: real redis-server nodes joined by
//! `redis-cli --cluster create`, a replica added to the stream's master, that master killed
//! mid-stream. Purges published before, during and after the failover reach the other replica.

mod common;

use std::time::Duration;

use common::*;
use corral_testkit::redis::cli;
use serde_json::json;

const SECRET: &str = "redis-bus-cluster-secret-0123456789";
const STREAM: &str = "corral:events";

fn tagged(s: &Seen) -> Reply {
    let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
    Reply::ok(format!("item {id}"))
        .header("cache-control", "max-age=300")
        .header("surrogate-key", &format!("item-{id}"))
}

/// The node id of the master serving `STREAM`'s slot, and that node's index in `nodes`.
fn stream_master(nodes: &[Redis]) -> (String, usize) {
    let slot: u16 = nodes[0]
        .cli(&["cluster", "keyslot", STREAM])
        .trim()
        .parse()
        .unwrap();
    let view = nodes[0].cli(&["cluster", "nodes"]);
    for line in view.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let owns = f[8..].iter().any(|r| match r.split_once('-') {
            Some((a, b)) => {
                (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
            }
            None => r.parse() == Ok(slot),
        });
        if owns {
            let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let i = nodes.iter().position(|n| n.port == port).unwrap();
            return (f[0].to_string(), i);
        }
    }
    panic!("no master serves slot {slot}: {view}");
}

async fn cached_then_purged(a: &Corral, b: &Corral, path: &str, tag: &str) {
    b.get(path).await;
    assert!(b.get(path).await.is_hit(), "{path} cached on b");
    purge(a, json!({"tags": [tag]})).await;
    assert!(
        eventually(Duration::from_secs(60), async || !b
            .get(path)
            .await
            .is_hit())
        .await,
        "the purge of {tag} published on a never reached b over the Redis Cluster bus"
    );
}

#[tokio::test]
async fn the_redis_bus_survives_a_failover_of_the_streams_master() {
    let mut nodes = redis_cluster(3).await;
    nodes.push(Redis::start_on(cluster_port(), true).await);
    let masters: Vec<String> = nodes[..3]
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    // A replica for the master that serves the stream: the node a failover promotes.
    let (master_id, master) = stream_master(&nodes);
    cli(&[
        "--cluster".into(),
        "add-node".into(),
        format!("127.0.0.1:{}", nodes[3].port),
        masters[0].clone(),
        "--cluster-slave".into(),
        "--cluster-master-id".into(),
        master_id,
    ]);
    assert!(
        eventually(Duration::from_secs(30), async || nodes[3]
            .cli(&["info", "replication"])
            .contains("master_link_status:up"))
        .await,
        "the replica is in sync with the stream's master"
    );

    let origin = Origin::start(tagged).await;
    let seeds: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\nbus = {{ kind = \"redis\", nodes = [{}], stream = \"{STREAM}\", block = \"200ms\" }}\n",
        origin.url(),
        seeds.join(", ")
    );
    let env = [("CORRAL_CLUSTER_SECRET", SECRET)];
    let a = Corral::start_with_env(&cfg, &env).await;
    let b = Corral::start_with_env(&cfg, &env).await;
    for c in [&a, &b] {
        assert!(
            c.metric_holds_within("corral_bus_connected", Duration::from_secs(30), |n| n
                >= 1.0)
                .await,
            "bus connected on {}",
            c.admin
        );
    }
    cached_then_purged(&a, &b, "/items/1", "item-1").await;
    assert_eq!(
        a.metric("corral_bus_unreplicated_total").await,
        0.0,
        "the append reached the replica"
    );

    // A purge published just before the master dies is already on its replica.
    b.get("/items/2").await;
    assert!(b.get("/items/2").await.is_hit());
    let published = a.metric("corral_bus_events_published_total").await;
    purge(&a, json!({"tags": ["item-2"]})).await;
    assert!(
        eventually(Duration::from_secs(30), async || a
            .metric("corral_bus_events_published_total")
            .await
            > published)
        .await,
        "a appended the purge"
    );
    nodes[master].kill();
    assert!(
        eventually(Duration::from_secs(60), async || nodes[3]
            .cli(&["role"])
            .starts_with("master"))
        .await,
        "the replica was promoted"
    );
    assert!(
        eventually(Duration::from_secs(60), async || !b
            .get("/items/2")
            .await
            .is_hit())
        .await,
        "the purge appended before the failover reached b"
    );
    // And the bus goes on through the new master, both ways.
    cached_then_purged(&a, &b, "/items/3", "item-3").await;
    cached_then_purged(&b, &a, "/items/4", "item-4").await;
}
