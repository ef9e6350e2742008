//! The relay tree at small scale, end to end: 30 real replicas with `fanout = 3` (a tree three
//! deep), a stream of purges, relays killed and paused mid-stream; every survivor converges.

mod common;

use std::time::Duration;

use common::replicas::*;
use common::*;
use serde_json::{json, Value};

const N: usize = 30;

async fn peers(c: &Corral) -> Value {
    c.admin_json("/peers").await
}

/// Messages replica `c` has sent to peers carrying events (direct or relayed).
async fn event_messages(c: &Corral) -> f64 {
    c.metric("corral_peer_messages_sent_total{kind=\"events\"}")
        .await
        + c.metric("corral_peer_messages_sent_total{kind=\"relay\"}")
            .await
}

/// Deliveries replica `c` saw fail (each is retried, directly or through another relay).
async fn delivery_failures(c: &Corral) -> f64 {
    c.metric("corral_peer_event_failures_total").await
}

/// Every replica in `live` eventually misses `path` (its cached copy was purged).
async fn purged_everywhere(r: &Replicas, live: &[usize], path: &str) {
    for &i in live {
        let node = r.node(i);
        assert!(
            eventually(Duration::from_secs(60), async || !node
                .get(path)
                .await
                .is_hit())
            .await,
            "{path} still cached on replica {i} ({})",
            node.proxy
        );
    }
}

#[tokio::test]
async fn thirty_replicas_through_relays_converge_when_relays_die() {
    let origin = Origin::start(tagged).await;
    let mut r = Replicas::start(N, &origin, "fanout = 3\nwait_timeout = \"8s\"").await;
    let all: Vec<usize> = (0..N).collect();

    let p = peers(r.node(0)).await;
    assert_eq!(p["self"]["relaying"], true, "{p}");

    // One purge through a healthy tree: every replica acknowledges, and the sender itself
    // sent at most `fanout` messages for it. On a loaded machine a branch may miss the relay
    // budget; each peer it failed to reach is counted as a failed delivery and then sent its
    // own message, so those (and only those) may add to the `fanout`.
    warm_all(&r, "/items/0").await;
    let before = event_messages(r.node(0)).await;
    let failed_before = delivery_failures(r.node(0)).await;
    let v = purge(r.node(0), json!({"tags": ["item-0"], "wait": true})).await;
    assert_eq!(v["acknowledged"].as_array().unwrap().len(), N - 1, "{v}");
    assert!(v["pending"].as_array().unwrap().is_empty(), "{v}");
    let sent = event_messages(r.node(0)).await - before;
    let failed = delivery_failures(r.node(0)).await - failed_before;
    assert!(
        sent >= 1.0 && sent <= 3.0 + failed,
        "the sender sent {sent} messages for one purge ({failed} failed deliveries)"
    );
    purged_everywhere(&r, &all, "/items/0").await;

    // Relays die mid-stream. From replica 0 (127.0.0.11) the 29 others split into three
    // ranges led by .12, .22 and .32; .13's range is led by .13, .16 and .19 one level down.
    for i in 1..=8 {
        warm_all(&r, &format!("/items/{i}")).await;
    }
    let stopped = 11; // 127.0.0.22, a first-level relay
    let killed = [1, 5]; // 127.0.0.12 (first level) and 127.0.0.16 (second level)
    for i in 1..=8 {
        if i == 3 {
            let pid = r.node(stopped).pid();
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            for k in killed {
                r.nodes[k] = None;
            }
        }
        // Purges from two origins, so both relay trees are exercised.
        let from = if i % 2 == 0 { 0 } else { 7 };
        // Not waiting: the stream goes on while the tree routes around the dead.
        purge(r.node(from), json!({"tags": [format!("item-{i}")]})).await;
    }
    let live: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| *i != stopped && !killed.contains(i))
        .collect();
    for i in 1..=8 {
        purged_everywhere(&r, &live, &format!("/items/{i}")).await;
    }
    // The survivors still acknowledge a new purge, through a tree that routes around the
    // dead: only the killed and the paused replicas may be pending.
    warm_all_of(&r, &live, "/items/final").await;
    let v = purge(r.node(0), json!({"tags": ["item-final"], "wait": true})).await;
    let pending: Vec<String> = v["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let dead: Vec<String> = [stopped, killed[0], killed[1]]
        .iter()
        .map(|i| Replicas::ip(*i))
        .collect();
    assert!(
        pending
            .iter()
            .all(|p| dead.iter().any(|d| p.starts_with(&format!("{d}:")))),
        "only dead replicas may be pending: {v}"
    );
    purged_everywhere(&r, &live, "/items/final").await;

    // The paused relay resumes and catches up on everything it missed.
    unsafe { libc::kill(r.node(stopped).pid(), libc::SIGCONT) };
    for i in 3..=8 {
        purged_everywhere(&r, &[stopped], &format!("/items/{i}")).await;
    }
    purged_everywhere(&r, &[stopped], "/items/final").await;

    // No replica held connections to more than a few peers (bounded by the tree, not N).
    for &i in &live {
        let most = r.node(i).metric("corral_peer_connections_max").await;
        assert!(
            most <= (2 * 3 + 4) as f64 * 2.0,
            "replica {i} held {most} peer connections"
        );
    }
    // A restarted replica rejoins the tree and receives later purges.
    r.restart(killed[0]).await;
    warm_all_of(&r, &[killed[0]], "/items/again").await;
    purge(r.node(0), json!({"tags": ["item-again"], "wait": true})).await;
    purged_everywhere(&r, &[killed[0]], "/items/again").await;
}

async fn warm_all_of(r: &Replicas, nodes: &[usize], path: &str) {
    for &i in nodes {
        let n = r.node(i);
        n.get(path).await;
        assert!(n.get(path).await.is_hit(), "{path} cached on {}", n.proxy);
    }
}
