//! Warm-up from peers, end to end: real `corral` replicas on 127.0.0.11, .12 ... in front of
//! one real origin; a new replica asks a running one for its hottest entries before it
//! reports ready.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::replicas::{Replicas, SECRET};
use common::*;
use corral_cluster::Secret;
use serde_json::json;

/// The origin: `/items/{id}` cached 300 s, tagged `item-{id}`, with a 20 KiB body (so that the
/// donor's pacing and the byte budgets have something to measure).
fn origin_reply(s: &Seen) -> Reply {
    let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
    Reply::ok(format!("item {id} {}", "x".repeat(20 << 10)))
        .header("cache-control", "max-age=300")
        .header("surrogate-key", &format!("item-{id}"))
}

/// Replicas on one proxy port and one admin port, each listing every address in `peers`.
struct Fleet {
    origin: Origin,
    proxy: u16,
    admin: u16,
    peers: Vec<String>,
}

impl Fleet {
    async fn new(peers: usize) -> Fleet {
        let admin = replica_port();
        Fleet {
            origin: Origin::start(origin_reply).await,
            proxy: replica_port(),
            admin,
            peers: (0..peers)
                .map(|i| format!("{}:{admin}", Replicas::ip(i)))
                .collect(),
        }
    }

    /// Replica `i`, started with `warmup` (a `[cluster]` line or nothing); not yet ready.
    fn spawn(&self, i: usize, warmup: &str) -> Corral {
        let (proxy, admin) = Replicas::addrs(i, self.proxy, self.admin);
        let peers: Vec<String> = self.peers.iter().map(|p| format!("\"{p}\"")).collect();
        let config = format!(
            "[upstream]\nurl = \"{}\"\n[cluster]\ndiscovery = {{ kind = \"static\", addresses = [{}] }}\nheartbeat = \"300ms\"\n{warmup}\n",
            self.origin.url(),
            peers.join(", ")
        );
        Corral::spawn_on(proxy, admin, &config, &[("CORRAL_CLUSTER_SECRET", SECRET)])
    }

    async fn start(&self, i: usize, warmup: &str) -> Corral {
        let mut c = self.spawn(i, warmup);
        c.wait_ready_within(Duration::from_secs(60)).await;
        c
    }
}

/// A request as a real client makes it: to the service's name, whichever replica answers
/// (the host is part of the key).
async fn served(c: &Corral, path: &str) -> Resp {
    c.get_with(path, &[("host", "shop.example")]).await
}

/// Fills `donor` with `/items/{id}`, each asked for `asks` times (hotter first).
async fn fill(donor: &Corral, items: &[(&str, usize)]) {
    for (id, asks) in items {
        for _ in 0..*asks {
            served(donor, &format!("/items/{id}")).await;
        }
        assert!(served(donor, &format!("/items/{id}")).await.is_hit());
    }
}

#[tokio::test]
async fn a_new_replica_becomes_ready_warm_and_serves_its_first_requests_from_memory() {
    let f = Fleet::new(2).await;
    let donor = f.start(0, "").await;
    let ids = ["1", "2", "3", "4", "5"];
    fill(&donor, &ids.map(|id| (id, 2))).await;
    let fetched = f.origin.count("/items/");
    assert_eq!(fetched, 5);

    let new = f
        .start(1, "warmup = { enabled = true, deadline = \"20s\" }")
        .await;
    assert_eq!(new.metric("corral_warmup_entries_total").await, 5.0);
    assert!(new.metric("corral_warmup_bytes_total").await > 5.0 * 20480.0);
    assert!(donor.metric("corral_warmup_donated_bytes_total").await > 5.0 * 20480.0);
    for id in ids {
        let r = served(&new, &format!("/items/{id}")).await;
        assert!(r.is_hit(), "/items/{id} from memory: {}", r.cache_status());
        assert!(r.text().starts_with(&format!("item {id} ")));
    }
    assert_eq!(
        f.origin.count("/items/"),
        fetched,
        "the origin saw nothing new"
    );
}

#[tokio::test]
async fn an_entry_purged_while_the_replica_starts_is_never_warmed_into_it() {
    let f = Fleet::new(2).await;
    // 16 KiB a second: the first 64 KiB chunk (four entries) goes at once, the next (with the
    // coldest entry, the victim) about five seconds later.
    let donor = f
        .start(0, "warmup = { enabled = false, rate = \"16KiB\" }")
        .await;
    let hot: Vec<String> = (1..=7).map(|i| i.to_string()).collect();
    let mut items: Vec<(&str, usize)> = hot.iter().map(|id| (id.as_str(), 4)).collect();
    items.push(("victim", 1));
    fill(&donor, &items).await;

    let mut new = f.spawn(1, "warmup = { enabled = true, deadline = \"40s\" }");
    let started = eventually(Duration::from_secs(30), async || {
        metric_now(&new, "corral_warmup_entries_total").await >= 1.0
    })
    .await;
    assert!(started, "the warm-up began");
    // Applied here before the answer: the victim's record is still on its way.
    purge(&new, json!({"tags": ["item-victim"]})).await;
    new.wait_ready_within(Duration::from_secs(60)).await;

    assert_eq!(
        new.metric("corral_warmup_refused_total{kind=\"purged\"")
            .await,
        1.0
    );
    assert_eq!(new.metric("corral_warmup_entries_total").await, 7.0);
    let before = f.origin.count("/items/victim");
    assert!(
        !served(&new, "/items/victim").await.is_hit(),
        "purged: never warmed"
    );
    assert_eq!(f.origin.count("/items/victim"), before + 1);
    assert!(served(&new, "/items/1").await.is_hit());
}

/// A metric read while the replica may not be ready yet (0 when the admin API is not up).
async fn metric_now(c: &Corral, name: &str) -> f64 {
    let Ok(r) = client().get(c.admin_url("/metrics")).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn budgets_are_honoured() {
    let f = Fleet::new(3).await;
    let donor = f.start(0, "").await;
    fill(&donor, &[("a", 6), ("b", 5), ("c", 4), ("d", 1), ("e", 1)]).await;

    let by_count = f
        .start(1, "warmup = { max_entries = 3, deadline = \"20s\" }")
        .await;
    assert_eq!(by_count.metric("corral_warmup_entries_total").await, 3.0);
    for (id, warm) in [("a", true), ("b", true), ("c", true), ("d", false)] {
        assert_eq!(
            served(&by_count, &format!("/items/{id}")).await.is_hit(),
            warm,
            "/items/{id}"
        );
    }
    drop(by_count);

    // The contract's spelling: `budget` is `max_bytes`. One 20 KiB entry fits in 30 KiB.
    let by_bytes = f
        .start(2, "warmup = { budget = \"30KiB\", timeout = \"20s\" }")
        .await;
    assert_eq!(by_bytes.metric("corral_warmup_entries_total").await, 1.0);
    assert!(by_bytes.metric("corral_warmup_bytes_total").await <= 30.0 * 1024.0);
    assert!(
        served(&by_bytes, "/items/a").await.is_hit(),
        "the hottest first"
    );
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let f = Fleet::new(1).await;
    let donor = f.start(0, "").await;
    fill(&donor, &[("1", 1)]).await;
    let path = "/_corral/v1/warmup?max_bytes=1000000&max_entries=10";
    let get = async |signer: Option<&Secret>| {
        let mut req = client().get(donor.admin_url(path));
        if let Some(s) = signer {
            for (n, v) in s.sign("GET", path, b"") {
                req = req.header(n, v);
            }
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().len())
    };
    let wrong = Secret::new("another-secret-0123456789").unwrap();
    assert_eq!(get(None).await.0, 401, "unsigned");
    assert_eq!(get(Some(&wrong)).await.0, 401, "signed with another key");
    let right = Secret::new(SECRET).unwrap();
    let (status, len) = get(Some(&right)).await;
    assert_eq!(status, 200, "the cluster's key is accepted");
    assert!(len > 20480, "and the entry streamed");
    assert!(donor.metric("corral_peer_messages_rejected").await >= 2.0);
}

#[tokio::test]
async fn warm_up_with_an_unreachable_donor_turns_ready_at_the_deadline() {
    // A peer that accepts connections and never answers: the worst a donor can do.
    let ip = Replicas::ip(0);
    let silent = std::net::TcpListener::bind((ip.as_str(), 0)).unwrap();
    let silent_addr: SocketAddr = silent.local_addr().unwrap();
    let mut f = Fleet::new(0).await;
    f.peers = vec![silent_addr.to_string()];
    let mut new = f.spawn(1, "warmup = { deadline = \"3s\" }");
    let warming = eventually(Duration::from_secs(30), async || {
        match client().get(new.admin_url("/readyz")).send().await {
            Ok(r) => r.status() == 503 && r.text().await.unwrap_or_default().contains("warming"),
            Err(_) => false,
        }
    })
    .await;
    assert!(warming, "not ready while warming up");
    new.wait_ready_within(Duration::from_secs(60)).await;
    assert!(new.metric("corral_warmup_duration_seconds").await >= 3.0);
    assert_eq!(new.metric("corral_warmup_entries_total").await, 0.0);
    assert!(
        served(&new, "/items/1").await.text().starts_with("item 1 "),
        "serves"
    );
    drop(silent);
}

/// True while `c` answers `/readyz` with 503 "warming".
async fn warming(c: &Corral) -> bool {
    match client().get(c.admin_url("/readyz")).send().await {
        Ok(r) => r.status() == 503 && r.text().await.unwrap_or_default().contains("warming"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_donor_keeps_serving_its_clients_while_it_donates() {
    let f = Fleet::new(2).await;
    // 16 KiB a second over ten 20 KiB entries: the donation lasts about ten seconds, paced.
    let donor = f
        .start(0, "warmup = { enabled = false, rate = \"16KiB\" }")
        .await;
    let ids: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    fill(
        &donor,
        &ids.iter().map(|id| (id.as_str(), 1)).collect::<Vec<_>>(),
    )
    .await;

    let mut new = f.spawn(1, "warmup = { enabled = true, deadline = \"60s\" }");
    let donating = eventually(Duration::from_secs(30), async || {
        metric_now(&new, "corral_warmup_entries_total").await >= 1.0 && warming(&new).await
    })
    .await;
    assert!(donating, "the donation began");
    // The donor's clients are answered from memory between the paced chunks, not after the
    // donation: hits complete while the new replica is still waiting for the rest.
    let mut during = 0;
    for round in 0..200 {
        let r = served(&donor, &format!("/items/{}", 1 + round % 10)).await;
        assert!(r.is_hit(), "a hit on the donor: {}", r.cache_status());
        if !warming(&new).await {
            break;
        }
        during += 1;
    }
    assert!(
        during >= 20,
        "only {during} hits answered during the donation"
    );
    assert!(
        donor.metric("corral_warmup_donated_bytes_total").await > 0.0,
        "it was donating"
    );
    new.wait_ready_within(Duration::from_secs(90)).await;
    assert_eq!(new.metric("corral_warmup_entries_total").await, 10.0);
}

/// Waits until `/proc/<pid>/stat` shows the process stopped (`T`) or, with `stopped` false,
/// in any other state: a signal is delivered asynchronously.
async fn process_stopped(pid: i32, stopped: bool) -> bool {
    eventually(Duration::from_secs(30), async || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("");
        (state == "T" || state == "t") == stopped
    })
    .await
}

#[tokio::test]
async fn a_replica_away_past_its_peers_log_purges_everything_then_rewarms_from_a_live_peer() {
    let f = Fleet::new(2).await;
    // A log of four events and a queue of two per peer: a replica that misses ten purges
    // cannot catch up from either, and must purge everything.
    let small = "log_capacity = 4\nqueue_capacity = 2";
    let peer = f.start(0, small).await;
    fill(&peer, &[("keep", 2), ("gone", 2)]).await;
    let away = f
        .start(
            1,
            &format!("{small}\nwarmup = {{ enabled = true, deadline = \"20s\" }}"),
        )
        .await;
    assert_eq!(away.metric("corral_warmup_entries_total").await, 2.0);
    assert!(served(&away, "/items/gone").await.is_hit(), "warm at start");

    unsafe { libc::kill(away.pid(), libc::SIGSTOP) };
    assert!(process_stopped(away.pid(), true).await, "SIGSTOP took hold");
    purge(&peer, json!({"tags": ["item-gone"]})).await;
    for i in 0..10 {
        purge(&peer, json!({"tags": [format!("other-{i}")]})).await;
    }
    unsafe { libc::kill(away.pid(), libc::SIGCONT) };
    assert!(
        process_stopped(away.pid(), false).await,
        "SIGCONT took hold"
    );

    // The gap is found and no log holds it: everything purged, then warmed again from the
    // peer, which sends what it still holds (not the purged entry).
    let rewarmed = eventually(Duration::from_secs(60), async || {
        away.metric("corral_peer_gap_recoveries_total{kind=\"purge_all\"}")
            .await
            >= 1.0
            && away.metric("corral_warmup_rewarms_total").await >= 1.0
            && away.metric("corral_warmup_entries_total").await >= 3.0
    })
    .await;
    assert!(rewarmed, "purged everything and re-warmed");
    let fetched = f.origin.count("/items/");
    let r = served(&away, "/items/keep").await;
    assert!(
        r.is_hit(),
        "the surviving entry from memory: {}",
        r.cache_status()
    );
    assert!(r.text().starts_with("item keep "));
    assert_eq!(
        f.origin.count("/items/"),
        fetched,
        "the origin saw nothing new"
    );
    let r = served(&away, "/items/gone").await;
    assert!(!r.is_hit(), "purged while away: never served stale");
    assert_eq!(f.origin.count("/items/gone"), 2, "fetched again");
    assert_eq!(
        away.metric("corral_warmup_entries_total").await,
        3.0,
        "only what survived was sent"
    );
}
