//! Coherence across replicas, end to end: several real `corral` processes bound to
//! 127.0.0.11, .12, .13 ... on the same ports, in front of one real origin.

mod common;

use std::time::{Duration, Instant};

use common::replicas::*;
use common::*;
use corral_cluster::Secret;
use serde_json::{json, Value};

#[tokio::test]
async fn a_purge_on_one_replica_reaches_all() {
    let origin = Origin::start(tagged).await;
    let r = Replicas::start(3, &origin, "").await;
    warm_all(&r, "/items/1").await;
    warm_all(&r, "/items/2").await;
    let v = purge(r.node(0), json!({"tags": ["item-1"], "wait": true})).await;
    let acked = acknowledged(&v);
    assert_eq!(
        acked,
        [
            format!("127.0.0.12:{}", r.admin_port),
            format!("127.0.0.13:{}", r.admin_port)
        ],
        "{v}"
    );
    assert_eq!(v["pending"], json!([]));
    // Acknowledged means applied: nobody serves the purged item from cache any more.
    for n in r.nodes.iter().flatten() {
        assert!(!n.get("/items/1").await.is_hit(), "purged on {}", n.proxy);
        assert!(n.get("/items/2").await.is_hit(), "untouched on {}", n.proxy);
    }
    assert_eq!(
        r.node(1).metric("corral_peer_events_received_total").await,
        1.0
    );
    assert!(r.node(0).metric("corral_peer_events_sent_total").await >= 2.0);
    assert_eq!(r.node(0).metric("corral_peers").await, 2.0);
    assert!(
        r.node(1)
            .metric("corral_event_propagation_seconds_count")
            .await
            >= 1.0
    );
    // PURGE and unsafe methods travel too. They are host-specific, so the clients here use
    // one service name for every replica, as real clients do.
    let host = [("host", "shop.example")];
    for path in ["/items/3", "/items/4"] {
        for n in r.nodes.iter().flatten() {
            n.get_with(path, &host).await;
            assert!(n.get_with(path, &host).await.is_hit());
        }
    }
    let purge_method = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let resp = client()
        .request(purge_method, r.node(1).url("/items/3"))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .post(r.node(2).url("/items/4"))
        .header("host", "shop.example")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for n in r.nodes.iter().flatten() {
        assert!(
            eventually(Duration::from_secs(5), async || !n
                .get_with("/items/3", &host)
                .await
                .is_hit())
            .await
        );
        assert!(
            eventually(Duration::from_secs(5), async || !n
                .get_with("/items/4", &host)
                .await
                .is_hit())
            .await
        );
    }
    let peers = r.node(0).admin_json("/peers").await;
    assert_eq!(peers["peers"].as_array().unwrap().len(), 2);
    assert_eq!(
        peers["self"]["address"],
        format!("127.0.0.11:{}", r.admin_port)
    );
}

#[tokio::test]
async fn a_paused_replica_catches_up_after_sigcont() {
    let origin = Origin::start(tagged).await;
    // A tiny queue: while the replica is paused each sender keeps only its two newest events
    // for it, so catching up on the rest needs the sender's log (gap recovery), not retries.
    let r = Replicas::start(3, &origin, "queue_capacity = 2\nwait_timeout = \"1s\"").await;
    const PURGES: usize = 20;
    for i in 0..PURGES {
        warm_all(&r, &format!("/items/{i}")).await;
    }
    let paused = r.node(2);
    // A signal is delivered asynchronously: wait until the kernel reports the replica
    // stopped, so no purge below can be acknowledged by it before the pause took hold.
    unsafe { libc::kill(paused.pid(), libc::SIGSTOP) };
    assert!(
        wait_for_process_state(paused.pid(), true).await,
        "replica never stopped after SIGSTOP"
    );
    let v = purge(r.node(0), json!({"tags": ["item-0"], "wait": true})).await;
    assert!(
        v["pending"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("127.0.0.13")),
        "the paused replica acknowledged a purge: {v}"
    );
    // A burst far larger than the queue, from both senders. A sender retries a paused peer
    // at most once per request timeout, carrying at most the two events its queue holds, so
    // most of these events reach the paused replica only through a log: whatever the timing,
    // the replica sees a sequence number ahead of what it holds and must recover the hole.
    for i in 1..PURGES {
        purge(r.node(i % 2), json!({"tags": [format!("item-{i}")]})).await;
    }
    unsafe { libc::kill(paused.pid(), libc::SIGCONT) };
    assert!(
        wait_for_process_state(paused.pid(), false).await,
        "replica never resumed after SIGCONT"
    );
    // The state this test means: every purge took effect on the resumed replica. Under load
    // that can take several heartbeats, so the deadlines are generous; `eventually` returns
    // as soon as the state holds.
    for i in 0..PURGES {
        let path = format!("/items/{i}");
        assert!(
            eventually(Duration::from_secs(60), async || !paused
                .get(&path)
                .await
                .is_hit())
            .await,
            "{path} still served from cache after SIGCONT"
        );
    }
    // The recovery counts itself just after applying what it fetched.
    assert!(
        eventually(Duration::from_secs(30), async || paused
            .metric("corral_peer_gap_recoveries_total")
            .await
            >= 1.0)
        .await,
        "the resumed replica caught up without recovering a gap from a sender's log"
    );
}

#[tokio::test]
async fn forged_replayed_and_stale_events_are_refused() {
    let origin = Origin::start(tagged).await;
    let r = Replicas::start(2, &origin, "").await;
    warm_all(&r, "/items/9").await;
    let target = r.node(1);
    let url = target.admin_url(corral_cluster::EVENTS_PATH);
    let event = json!({
        "id": "forger-1-1", "origin": "forger", "epoch": 1, "seq": 1,
        "selectors": {"all": true}, "soft": false, "timestamp_ms": corral_core_now(), "cause": "admin"
    });
    let batch = json!({"from": "127.0.0.99:9", "origin": "forger", "epoch": 1, "last_seq": 1, "events": [event]});
    let body = serde_json::to_vec(&batch).unwrap();
    // Unsigned.
    let resp = client().post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // Signed with the wrong key.
    let wrong = Secret::new("not-the-cluster-secret-at-all").unwrap();
    let mut req = client().post(&url).body(body.clone());
    for (n, v) in wrong.sign("POST", corral_cluster::EVENTS_PATH, &body) {
        req = req.header(n, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 401);
    // Right key, tampered body.
    let right = Secret::new(SECRET).unwrap();
    let mut req = client().post(&url).body(b"{}".to_vec());
    for (n, v) in right.sign("POST", corral_cluster::EVENTS_PATH, &body) {
        req = req.header(n, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 401);
    // Right key, but signed long ago (outside the replay window).
    let old = corral_core_now() - 120_000;
    let stale = stale_signature(&right, old, &body);
    let resp = client()
        .post(&url)
        .body(body.clone())
        .header("x-corral-timestamp", old.to_string())
        .header("x-corral-signature", stale)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        target.get("/items/9").await.is_hit(),
        "nothing refused changed anything"
    );
    // A valid message is applied once; replaying it applies nothing more.
    let signed = right.sign("POST", corral_cluster::EVENTS_PATH, &body);
    for expect in [1, 0] {
        let mut req = client().post(&url).body(body.clone());
        for (n, v) in &signed {
            req = req.header(*n, v.clone());
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert_eq!(v["applied"], expect);
    }
    assert!(!target.get("/items/9").await.is_hit());
    assert!(target.metric("corral_peer_messages_rejected_total").await >= 3.0);
}

fn corral_core_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A signature computed as the cluster does, for a chosen timestamp.
fn stale_signature(_s: &Secret, ts: u64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(format!("{ts}\nPOST\n{}\n", corral_cluster::EVENTS_PATH).as_bytes());
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

#[tokio::test]
async fn a_cluster_without_a_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let f = config_file(
        dir.path(),
        "[cluster]\ndiscovery = { kind = \"static\", addresses = [] }\n",
    );
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--config",
            f.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", free_port("127.0.0.1")),
        ])
        .env_remove("CORRAL_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CORRAL_CLUSTER_SECRET"));
}

#[tokio::test]
async fn replicas_killed_and_restarted_during_purges_converge_and_no_purge_hangs() {
    let origin = Origin::start(tagged).await;
    let mut r = Replicas::start(3, &origin, "wait_timeout = \"2s\"").await;
    let mut round = 0;
    for i in 0..12 {
        if i % 4 == 1 {
            // Kill replica 2 (and later bring it back), mid-stream.
            r.nodes[2] = None;
        }
        if i % 4 == 3 {
            r.restart(2).await;
            round += 1;
        }
        let start = Instant::now();
        let v = purge(
            r.node(i % 2),
            json!({"tags": [format!("item-{i}")], "wait": true}),
        )
        .await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "purge {i} answered within its timeout: {v}"
        );
    }
    assert!(round >= 2);
    // Every surviving replica converges: content purged everywhere is refetched and then
    // served consistently; a final purge reaches all three.
    warm_all(&r, "/items/final").await;
    let v = purge(r.node(0), json!({"tags": ["item-final"], "wait": true})).await;
    assert_eq!(v["acknowledged"].as_array().unwrap().len(), 2, "{v}");
    for n in r.nodes.iter().flatten() {
        assert!(!n.get("/items/final").await.is_hit());
    }
}

#[tokio::test]
async fn sse_feed_reports_local_and_peer_invalidations() {
    let origin = Origin::start(tagged).await;
    let r = Replicas::start(2, &origin, "").await;
    let mut feed = client()
        .get(r.node(1).admin_url("/_corral/v1/subscribe"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    purge(r.node(0), json!({"tags": ["from-peer"], "wait": true})).await;
    purge(r.node(1), json!({"tags": ["local"]})).await;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(text.contains("from-peer") && text.contains("local")) && Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(500), feed.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(text.contains("event: invalidation"), "{text}");
    assert!(
        text.contains("from-peer") && text.contains("local"),
        "{text}"
    );
}

#[tokio::test]
async fn peers_found_through_dns_and_a_new_replica_receives_later_purges() {
    let name = "corral-headless.default.svc.cluster.local";
    let dns = Dnsmasq::start(name, &[Replicas::ip(0), Replicas::ip(1)]);
    let origin = Origin::start(tagged).await;
    let proxy_port = replica_port();
    let admin_port = replica_port();
    let discovery = format!(
        "discovery = {{ kind = \"dns\", name = \"{name}\", port = {admin_port}, nameserver = \"127.0.0.1:{}\", refresh = \"1s\" }}",
        dns.port
    );
    let mut r = Replicas::start_with(2, &origin, "", discovery, proxy_port, admin_port).await;
    assert!(
        eventually(Duration::from_secs(5), async || r
            .node(0)
            .metric("corral_peers")
            .await
            == 1.0)
        .await,
        "DNS found the peer"
    );
    warm_all(&r, "/items/1").await;
    purge(r.node(0), json!({"tags": ["item-1"], "wait": true})).await;
    assert!(!r.node(1).get("/items/1").await.is_hit());

    // A third replica appears in DNS and starts: later purges reach it.
    dns.set(name, &[Replicas::ip(0), Replicas::ip(1), Replicas::ip(2)]);
    let third = r.spawn(2).await;
    r.nodes.push(Some(third));
    for i in 0..3 {
        let n = r.node(i);
        let both = eventually(Duration::from_secs(6), async || {
            n.metric("corral_peers").await == 2.0
        })
        .await;
        assert!(both, "DNS gave replica {i} both peers");
    }
    warm_all(&r, "/items/2").await;
    let v = purge(r.node(0), json!({"tags": ["item-2"], "wait": true})).await;
    assert_eq!(v["acknowledged"].as_array().unwrap().len(), 2, "{v}");
    assert!(!r.node(2).get("/items/2").await.is_hit());

    // DNS dies: the last known peers are kept, purges still flow.
    let failures = r.node(0).metric("corral_discovery_failures_total").await;
    drop(dns);
    // Wait until the replica has asked the dead resolver and failed, then look at its peers.
    assert!(
        eventually(Duration::from_secs(30), async || r
            .node(0)
            .metric("corral_discovery_failures_total")
            .await
            > failures)
        .await,
        "the replica never noticed the resolver died"
    );
    assert_eq!(
        r.node(0).metric("corral_peers").await,
        2.0,
        "a dead resolver never empties the peer set"
    );
    warm_all(&r, "/items/3").await;
    purge(r.node(1), json!({"tags": ["item-3"], "wait": true})).await;
    assert!(!r.node(2).get("/items/3").await.is_hit());
}

/// A relayed batch must carry its origin's signature over the exact batch: a relay (or anyone
/// holding a valid envelope) cannot alter it, and oversized ranges are refused.
#[tokio::test]
async fn a_relayed_batch_needs_its_origins_signature() {
    let origin = Origin::start(tagged).await;
    let r = Replicas::start(2, &origin, "").await;
    warm_all(&r, "/items/7").await;
    let target = r.node(1);
    let url = target.admin_url(corral_cluster::EVENTS_PATH);
    let right = Secret::new(SECRET).unwrap();
    let event = json!({
        "id": "relayed-1-1", "origin": "relayed", "epoch": 1, "seq": 1,
        "selectors": {"tags": ["item-7"]}, "soft": false, "timestamp_ms": corral_core_now(), "cause": "admin"
    });
    let batch = json!({"from": "127.0.0.99:9", "origin": "relayed", "epoch": 1, "last_seq": 1, "events": [event]}).to_string();
    let [(_, ts), (_, sig)] = right.sign("POST", corral_cluster::EVENTS_PATH, batch.as_bytes());
    let post = async |message: Value| {
        let body = serde_json::to_vec(&message).unwrap();
        let mut req = client().post(&url).body(body.clone());
        for (n, v) in right.sign("POST", corral_cluster::EVENTS_PATH, &body) {
            req = req.header(n, v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    // The envelope is signed, but the batch was altered after its origin signed it.
    let altered = batch.replace("item-7", "item-8");
    let (status, _) = post(
        json!({"batch": altered, "timestamp": ts, "signature": sig, "range": [], "budget_ms": 100}),
    )
    .await;
    assert_eq!(status, 401);
    // A range larger than the admin body limit, and a wait no relay should be asked for.
    let huge: Vec<String> = (0..100_001)
        .map(|i| format!("10.{}.{}.{}:9", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let (status, text) = post(
        json!({"batch": batch, "timestamp": ts, "signature": sig, "range": huge, "budget_ms": 100}),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    let (status, text) = post(json!({"batch": batch, "timestamp": ts, "signature": sig, "range": [], "budget_ms": 3_600_000})).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        target.get("/items/7").await.is_hit(),
        "nothing refused changed anything"
    );
    // The genuine relayed batch is applied and acknowledged by the relay itself.
    let (status, text) = post(
        json!({"batch": batch, "timestamp": ts, "signature": sig, "range": [], "budget_ms": 100}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let ack: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ack["applied"], 1, "{ack}");
    assert!(!target.get("/items/7").await.is_hit());
}
