//! The hub with real parts: a store, a reclaimer, and a cluster with no peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_core::cache_control::ResponseDirectives;
use corral_core::policy::freshness::{Freshness, Timing};
use corral_core::{CachePolicy, Entry, Lookup, StoreConfig, Variant};
use http::{HeaderMap, HeaderValue, StatusCode};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use super::*;
use crate::{ClusterConfig, ClusterMetrics, Secret};

/// A key of the store's own form for `path` (`G|host|path`).
fn key(path: &str) -> corral_core::key::Key {
    corral_core::key::Key::parse(&format!("G|h|{path}")).expect("a key")
}

/// Stores a minute-fresh response under `path`, carrying `tags`.
fn store_one(store: &Store, path: &str, tags: &[&str]) {
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
    let now = store.now();
    let timing = Timing::new(now, now, &headers);
    let cc = ResponseDirectives::from_headers(&headers);
    let freshness = Freshness::compute(
        StatusCode::OK,
        &headers,
        &cc,
        &timing,
        &CachePolicy::default(),
    );
    let entry = Entry::new(
        key(path).view(),
        StatusCode::OK,
        &headers,
        b"body",
        timing,
        freshness,
        tags,
        Variant::default(),
        store.purge_seq(),
        Duration::ZERO,
    );
    store.insert(entry, 4);
}

fn stored(store: &Store, path: &str) -> bool {
    matches!(
        store.lookup(key(path).view(), &HeaderMap::new()),
        Lookup::Found(_)
    )
}

/// What a subscriber was told, as one line: `name provenance id purged`.
#[derive(Default)]
struct Told(Mutex<Vec<String>>);

impl Told {
    fn lines(&self) -> Vec<String> {
        self.0.lock().clone()
    }
}

/// A subscriber that writes what it is told into a shared [`Told`], under its name.
struct Recorder {
    name: &'static str,
    told: Arc<Told>,
}

impl Subscriber for Recorder {
    fn applied(&self, a: &Applied<'_>) {
        let from = match a.provenance {
            Provenance::Local { who, cluster } => {
                format!("local({who}, cluster={})", cluster.is_some())
            }
            Provenance::Peer => "peer".to_string(),
            Provenance::Reset { reason } => format!("reset({reason})"),
        };
        self.told
            .0
            .lock()
            .push(format!("{} {from} {} {}", self.name, a.event.id, a.purged));
    }
}

/// A hub on a fresh store, with two recorders (`journal` then `feed`, in that order) and an
/// observer that writes `observer <id> <local>` into the same [`Told`].
fn hub() -> (Arc<Hub>, Arc<Store>, PurgeMetrics, Arc<Told>) {
    let store = Arc::new(Store::new(StoreConfig::default()));
    let metrics = PurgeMetrics::default();
    let hub = Hub::new(
        store.clone(),
        "a".into(),
        metrics.clone(),
        Reclaimer::new(store.clone()),
    );
    let told = Arc::new(Told::default());
    for name in ["journal", "feed"] {
        let told = told.clone();
        hub.add_subscriber(Arc::new(Recorder { name, told }));
    }
    let observed = told.clone();
    hub.observe(Box::new(move |e: &Arc<InvalidationEvent>, local: bool| {
        observed.0.lock().push(format!("observer {} {local}", e.id));
    }));
    (hub, store, metrics, told)
}

fn count(c: &Counter) -> u64 {
    c.get()
}

fn purges(m: &PurgeMetrics, kind: &'static str) -> u64 {
    count(&m.purges.get_or_create(&KindLabel { kind }))
}

/// A cluster of one (no peers), attached to `hub` as a binary would.
fn attach_cluster(hub: &Arc<Hub>) -> Arc<Cluster> {
    let advertise: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let config = ClusterConfig::new(
        Secret::new("a secret of sixteen bytes or more").unwrap(),
        advertise,
        hub.source().origin().to_string(),
        hub.source().epoch(),
    );
    let (_, peers) = watch::channel(Vec::new());
    let metrics = ClusterMetrics::register(&mut Registry::default());
    let cluster = Cluster::start(config, peers, hub.clone(), metrics);
    hub.attach_cluster(cluster.clone());
    cluster
}

#[test]
fn a_local_purge_is_numbered_applied_counted_and_told_in_order() {
    let (hub, store, metrics, told) = hub();
    let mut broadcast = hub.subscribe();
    store_one(&store, "/a", &["t"]);
    store_one(&store, "/b", &["t"]);
    store_one(&store, "/c", &["other"]);

    let done = hub.invalidate(Purge::hard().tag("t"), Cause::Admin, "127.0.0.1");

    assert_eq!(done.purged, 2);
    assert_eq!((done.event.origin.as_str(), done.event.seq), ("a", 1));
    assert!(!stored(&store, "/a") && !stored(&store, "/b"), "applied");
    assert!(stored(&store, "/c"), "only what it names");
    assert_eq!(purges(&metrics, "tag"), 1);
    assert_eq!(count(&metrics.purged_entries), 2);
    let id = &done.event.id;
    assert_eq!(
        told.lines(),
        [
            format!("observer {id} true"),
            format!("journal local(127.0.0.1, cluster=false) {id} 2"),
            format!("feed local(127.0.0.1, cluster=false) {id} 2"),
        ],
        "the observer first, then each subscriber in the order it was added"
    );
    assert_eq!(broadcast.try_recv().unwrap().id, *id, "then the broadcast");

    let next = hub.invalidate(Purge::soft().url("/c"), Cause::Admin, "x");
    assert_eq!(next.event.seq, 2, "one sequence, no holes");
    assert_eq!(purges(&metrics, "url"), 1);
}

#[tokio::test]
async fn local_events_go_to_the_cluster_and_peer_events_never_do() {
    let (hub, store, _, told) = hub();
    let cluster = attach_cluster(&hub);
    store_one(&store, "/mine", &[]);
    store_one(&store, "/theirs", &["p"]);

    let mine = hub.invalidate(Purge::hard().url("/mine"), Cause::Admin, "me");
    assert!(told.lines().contains(&format!(
        "journal local(me, cluster=true) {} 1",
        mine.event.id
    )));

    // A peer's event, through the cluster's dedupe as the HTTP fan-out and the bus deliver it.
    let peer = EventSource::new("b").next(Purge::hard().tag("p"), Cause::Admin);
    assert!(cluster.apply_external(peer.clone()), "applied once");
    assert!(!cluster.apply_external(peer.clone()), "and deduplicated");
    assert!(!stored(&store, "/theirs"), "applied to the store");
    let about_peer: Vec<String> = told
        .lines()
        .into_iter()
        .filter(|l| l.contains(&peer.id))
        .collect();
    assert_eq!(
        about_peer,
        [
            format!("observer {} false", peer.id),
            format!("journal peer {} 1", peer.id),
            format!("feed peer {} 1", peer.id),
        ]
    );

    // Never re-broadcast: this replica's log (what its peers are sent and recover from) and
    // its numbering hold only its own event.
    let log: Vec<String> = cluster
        .log
        .since(0)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(log, std::slice::from_ref(&mine.event.id));
    assert_eq!(hub.source().last_seq(), 1);
    assert_eq!(cluster.peers_json()["self"]["last_seq"], 1);
}

#[test]
fn an_unrecoverable_gap_resets_the_store_and_is_told_but_not_observed() {
    let (hub, store, metrics, told) = hub();
    let mut broadcast = hub.subscribe();
    store_one(&store, "/a", &[]);

    hub.purge_everything("gap from b");

    assert!(!stored(&store, "/a"));
    assert_eq!(purges(&metrics, "all"), 1);
    let reset = broadcast.try_recv().unwrap();
    assert_eq!(reset.seq, 0, "unnumbered: peers never see it");
    assert!(reset.id.starts_with("a-reset-"), "{}", reset.id);
    assert_eq!(
        told.lines(),
        [
            format!("journal reset(gap from b) {} 1", reset.id),
            format!("feed reset(gap from b) {} 1", reset.id),
        ],
        "the observer (a shared tier) is not told: the reset is this replica's alone"
    );
    assert_eq!(hub.source().last_seq(), 0, "no number taken");
}

#[tokio::test]
async fn a_hard_purge_wakes_the_reclaimer_which_gives_the_memory_back() {
    let store = Arc::new(Store::new(StoreConfig::default()));
    let reclaimer = Reclaimer::new(store.clone());
    let hub = Hub::new(
        store.clone(),
        "a".into(),
        PurgeMetrics::default(),
        reclaimer.clone(),
    );
    tokio::spawn(reclaimer.run());
    for i in 0..10 {
        store_one(&store, &format!("/{i}"), &["t"]);
    }
    hub.invalidate(Purge::hard().tag("t"), Cause::Admin, "me");
    assert_eq!(store.entry_count(), 10, "purges are lazy");
    let reclaimed =
        corral_testkit::eventually(Duration::from_secs(10), async || store.entry_count() == 0)
            .await;
    assert!(reclaimed, "{} entries left", store.entry_count());
}
