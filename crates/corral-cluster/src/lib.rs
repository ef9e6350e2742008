//! # corral-cluster
//!
//! Coherence across replicas: every invalidation applied on one replica reaches every live
//! replica, or the replica that missed it finds out and recovers.
//!
//! * **Fan-out.** [`Cluster::publish`] appends the event to this replica's log. In a small
//!   fleet (`fanout = 0`, or no more peers than `fanout`) every peer has a bounded queue and one
//!   delivery task that sends batches (`POST /_corral/v1/events`, signed) and retries with
//!   jittered backoff until the peer acknowledges or leaves (`link.rs`). In a larger fleet the
//!   event travels a relay tree instead (`tree.rs`, [`ranges`]): this replica sends to at most
//!   `fanout` heads, each passes the origin-signed batch on to its share of the fleet, and
//!   acknowledgements come back up. Peers that fail to answer are delivered to directly until
//!   they answer again. Only invalidations travel, never fills.
//! * **Signed.** HMAC-SHA256 over timestamp, method, path and body ([`sign`]); messages outside
//!   the replay window are refused; events are deduplicated by id. A relayed batch keeps its
//!   origin's signature; the relay signs only its own request.
//! * **Gap-checked.** Events carry `(origin, epoch, seq)` with gapless sequences per epoch. A
//!   receiver that sees a hole fetches the missing events from the origin's log
//!   (`GET /_corral/v1/events?since=N`, signed); if the log no longer has them it purges
//!   everything (the only safe answer) and counts it. Heartbeats (`gossip.rs`) state the
//!   sender's last sequence — in a mesh to every peer, in a relayed fleet as a digest of every
//!   origin's to a few random peers — so a missed *last* event is noticed too.
//! * **One hub.** [`hub::Hub`] is where a replica's purges go and its peers' arrive: it
//!   numbers, applies, counts and logs them, hands its own to the cluster and tells the
//!   process's subscribers (the binary's journal and feed, `[[forward]]`'s channel).
//! * **Visible.** `/peers` shows each peer's acknowledged sequence, queue depth, delivery path
//!   and failures; peers not heard from within the silence limit are reported as silent;
//!   `corral_peer_connections` counts the connections this replica holds to peers.

mod connect;
mod gossip;
pub mod hub;
mod link;
mod log;
mod metrics;
pub mod peers;
pub mod ranges;
mod receive;
pub mod shard;
pub mod sign;
mod status;
mod tree;
pub mod warmup;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use corral_core::InvalidationEvent;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use connect::CountingConnector;
pub use connect::PeerTls;
use link::Link;
use log::EventLog;
pub use metrics::{ClusterMetrics, Connections, KindLabel};
pub use receive::Refusal;
pub use sign::{Rejection, Secret};
pub use wire::{Batch, LogPage};

/// The path peers send events to, and fetch logs from.
pub const EVENTS_PATH: &str = "/_corral/v1/events";

/// What peers' events are applied to (the [`hub::Hub`], or `corral-cache`'s caches): the one
/// trait both transports, peers and the Redis bus, deliver into.
pub use corral_core::Applier;

/// Coherence settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub secret: Secret,
    /// This replica's admin address as peers see it; excluded from the peer set.
    pub advertise: SocketAddr,
    /// This replica's event origin name (instance).
    pub origin: String,
    pub epoch: u64,
    pub replay_window: Duration,
    /// Heartbeat period (anti-entropy).
    pub heartbeat: Duration,
    /// Events kept for peers that missed some.
    pub log_capacity: usize,
    /// Events queued per peer before the oldest are dropped (the peer then recovers from the log).
    pub queue_capacity: usize,
    /// Largest batch per request.
    pub batch: usize,
    /// Per-request timeout to a peer.
    pub request_timeout: Duration,
    /// The most peers this replica sends one event to; relays carry it on. `0`: every peer
    /// directly (a mesh). With no more peers than this, the mesh is used either way.
    pub fanout: usize,
    /// How long a relayed round may take to be acknowledged by the whole tree; a head that
    /// does not answer within half of what is left has its range handed on.
    pub relay_budget: Duration,
    /// `[cluster] tls`: peers are called over verified TLS (`https://`); `None`: plain HTTP.
    pub tls: Option<PeerTls>,
}

impl ClusterConfig {
    /// A config with every tunable at [`ClusterTunables::default`].
    pub fn new(secret: Secret, advertise: SocketAddr, origin: String, epoch: u64) -> ClusterConfig {
        let t = ClusterTunables::default();
        ClusterConfig {
            secret,
            advertise,
            origin,
            epoch,
            replay_window: t.replay_window,
            heartbeat: t.heartbeat,
            log_capacity: t.log_capacity,
            queue_capacity: t.queue_capacity,
            batch: 256,
            request_timeout: Duration::from_secs(2),
            fanout: t.fanout,
            relay_budget: t.relay_budget,
            tls: None,
        }
    }
}

/// The [`ClusterConfig`] fields an operator may set (`[cluster]` keys of the same names), at
/// their defaults. [`ClusterConfig::new`] starts from these and the binary's `[cluster]`
/// resolver falls back on them, so each default is written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterTunables {
    pub replay_window: Duration,
    pub heartbeat: Duration,
    pub log_capacity: usize,
    pub queue_capacity: usize,
    pub fanout: usize,
    pub relay_budget: Duration,
}

impl Default for ClusterTunables {
    fn default() -> Self {
        ClusterTunables {
            replay_window: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            log_capacity: 10_000,
            queue_capacity: 10_000,
            fanout: DEFAULT_FANOUT,
            relay_budget: Duration::from_secs(4),
        }
    }
}

/// `[cluster] fanout` when unset (see `bench/RESULTS.md` for the crossover measured).
pub const DEFAULT_FANOUT: usize = 8;

/// A peer as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    /// Which discovery source found it (`static`, `dns`, ...).
    pub source: String,
}

/// What this replica knows of another replica's event stream.
#[derive(Debug, Default)]
struct OriginState {
    epoch: u64,
    /// The origin's start time by its own clock, when known (orders its epochs).
    started_ms: u64,
    /// Every event up to here was applied.
    contiguous: u64,
    /// Applied events beyond a hole.
    ahead: BTreeSet<u64>,
    /// The highest sequence number of this epoch anyone reported.
    last_seq_known: u64,
    /// The origin's heartbeat counter, as digests report it.
    beat: u64,
    from: Option<SocketAddr>,
    last_heard: Option<Instant>,
    recovering: bool,
}

impl OriginState {
    /// Records that event `seq` was applied (or is known not to matter).
    fn record(&mut self, seq: u64) {
        if seq > self.contiguous {
            self.ahead.insert(seq);
        }
        while self.ahead.first() == Some(&(self.contiguous + 1)) {
            self.contiguous += 1;
            self.ahead.pop_first();
        }
    }
}

type PeerClient = Client<CountingConnector, Full<Bytes>>;

/// The coherence layer of one replica.
pub struct Cluster {
    config: ClusterConfig,
    log: EventLog,
    links: Mutex<BTreeMap<SocketAddr, Arc<Link>>>,
    origins: Mutex<HashMap<String, OriginState>>,
    /// Event ids recently applied, for deduplication.
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    last_seq: AtomicU64,
    applier: Arc<dyn Applier>,
    metrics: ClusterMetrics,
    /// Keeps connections to the peers it talks to often (its heads, its direct peers).
    client: PeerClient,
    /// Gossip goes to random peers: a connection each time, none kept idle.
    one_shot: PeerClient,
    /// More peers than `fanout`: events travel the relay tree.
    relaying: AtomicBool,
    /// Wakes the relay rounds (a new event, a peer back in the tree).
    tree_wake: Notify,
    /// This replica's heartbeat counter.
    beat: AtomicU64,
    started: SystemTime,
    started_ms: u64,
    /// Warm-up, once the binary attached it: re-warms after a reset (`warmup.rs`).
    warmup: std::sync::OnceLock<Arc<warmup::Warmup>>,
}

/// How `wait: true` ended for each peer.
#[derive(Debug, Clone, Serialize)]
pub struct Acks {
    pub acknowledged: Vec<String>,
    pub pending: Vec<String>,
}

fn peer_client(
    metrics: &ClusterMetrics,
    tls: Option<PeerTls>,
    idle: Option<Duration>,
) -> PeerClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(1)));
    http.set_nodelay(true);
    let mut b = Client::builder(TokioExecutor::new());
    match idle {
        Some(idle) => b.pool_idle_timeout(idle),
        None => b.pool_max_idle_per_host(0),
    };
    b.build(CountingConnector::new(
        http,
        metrics.connections.clone(),
        tls,
        metrics.tls_failures.clone(),
    ))
}

impl Cluster {
    /// Starts the cluster: follows `peers` (a discovery stream), heartbeats and relay rounds.
    pub fn start(
        config: ClusterConfig,
        peers: watch::Receiver<Vec<PeerAddr>>,
        applier: Arc<dyn Applier>,
        metrics: ClusterMetrics,
    ) -> Arc<Cluster> {
        let started = SystemTime::now();
        // Idle connections close within a few heartbeats: a replica keeps connections to the
        // peers it sends to now, not to everyone it ever relayed to.
        let idle = (config.heartbeat * 3).max(Duration::from_secs(1));
        let cluster = Arc::new(Cluster {
            log: EventLog::new(config.log_capacity),
            links: Mutex::default(),
            origins: Mutex::default(),
            seen: Mutex::default(),
            last_seq: AtomicU64::new(0),
            applier,
            client: peer_client(&metrics, config.tls.clone(), Some(idle)),
            one_shot: peer_client(&metrics, config.tls.clone(), None),
            metrics,
            relaying: AtomicBool::new(false),
            tree_wake: Notify::new(),
            beat: AtomicU64::new(0),
            started,
            started_ms: started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64),
            warmup: std::sync::OnceLock::new(),
            config,
        });
        tokio::spawn(cluster.clone().follow_peers(peers));
        tokio::spawn(cluster.clone().heartbeats());
        tokio::spawn(cluster.clone().tree_rounds());
        cluster
    }

    /// `https` when peers are called over TLS.
    fn scheme(&self) -> &'static str {
        if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// True when events travel the relay tree (more peers than `fanout`).
    fn relaying(&self) -> bool {
        self.relaying.load(Ordering::Acquire)
    }

    fn is_suspect(&self, addr: &SocketAddr) -> bool {
        self.links.lock().get(addr).is_some_and(|l| l.is_suspect())
    }

    fn link(&self, addr: &SocketAddr) -> Option<Arc<Link>> {
        self.links.lock().get(addr).cloned()
    }

    /// A peer answered as a relay or head.
    fn peer_answered(&self, addr: SocketAddr) {
        if let Some(link) = self.link(&addr) {
            link.healthy();
        }
    }

    /// A peer failed to answer as a relay or head: it gets our own events directly from now
    /// on, and is not chosen as a head again until it answers.
    fn peer_failed(&self, addr: SocketAddr, error: String) {
        if let Some(link) = self.link(&addr) {
            self.metrics.failures.inc();
            link.failed(error);
            self.go_direct(&link, true);
        }
    }

    /// Logs an event of this replica and sends it on: queued for every directly delivered
    /// peer, and a relay round for the rest.
    pub fn publish(&self, event: Arc<InvalidationEvent>) {
        // A traced request made it (a PURGE): its fan-out joins that trace.
        corral_telemetry::remember_event(&event.id);
        self.last_seq.fetch_max(event.seq, Ordering::AcqRel);
        self.log.push(event.clone());
        let relaying = self.relaying();
        for link in self.links.lock().values() {
            link.offer(&event, relaying, self.config.queue_capacity);
        }
        if relaying {
            self.tree_wake.notify_one();
        }
        self.update_queue_gauge();
    }

    /// Waits until every peer present now has acknowledged `seq`, or `timeout` passes.
    pub async fn wait_acked(&self, seq: u64, timeout: Duration) -> Acks {
        let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut acks = Acks {
            acknowledged: vec![],
            pending: vec![],
        };
        for link in links {
            let mut rx = link.acked.subscribe();
            let ok = tokio::time::timeout_at(deadline, async {
                loop {
                    if *rx.borrow_and_update() >= seq || link.gone.load(Ordering::Acquire) {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await
            .is_ok()
                && link.acked() >= seq;
            let name = link.peer.addr.to_string();
            if ok {
                acks.acknowledged.push(name)
            } else {
                acks.pending.push(name)
            }
        }
        acks
    }

    async fn follow_peers(self: Arc<Self>, mut peers: watch::Receiver<Vec<PeerAddr>>) {
        loop {
            let set: Vec<PeerAddr> = peers
                .borrow_and_update()
                .iter()
                .filter(|p| p.addr != self.config.advertise)
                .cloned()
                .collect();
            self.reconcile(set);
            if peers.changed().await.is_err() {
                return;
            }
        }
    }

    fn reconcile(self: &Arc<Self>, set: Vec<PeerAddr>) {
        let mut links = self.links.lock();
        links.retain(|addr, link| {
            let keep = set.iter().any(|p| p.addr == *addr);
            if !keep {
                link.gone.store(true, Ordering::Release);
                link.wake.notify_one();
                tracing::info!(peer = %addr, "peer left the peer set");
            }
            keep
        });
        for p in set {
            if links.contains_key(&p.addr) {
                continue;
            }
            tracing::info!(peer = %p.addr, source = %p.source, "peer joined");
            let link = Arc::new(Link::new(p.clone()));
            // Events from before a peer joined are not owed to it (as in a mesh, whose queue
            // for it starts empty).
            link.ack(self.last_seq());
            *link.last_ok.lock() = None;
            links.insert(p.addr, link.clone());
            tokio::spawn(self.clone().deliver(link));
        }
        let relaying = self.config.fanout > 0 && links.len() > self.config.fanout;
        let was = self.relaying.swap(relaying, Ordering::AcqRel);
        self.metrics.peers.set(links.len() as i64);
        let all: Vec<Arc<Link>> = links.values().cloned().collect();
        drop(links);
        if was && !relaying {
            // Back to a mesh: what the tree had not delivered yet goes through the queues.
            for link in &all {
                self.go_direct(link, false);
            }
        }
        self.tree_wake.notify_one();
    }

    fn batch_for(&self, events: &[Arc<InvalidationEvent>]) -> Batch {
        Batch {
            from: self.config.advertise,
            origin: self.config.origin.clone(),
            epoch: self.config.epoch,
            last_seq: self.last_seq(),
            events: events.iter().map(|e| (**e).clone()).collect(),
            started_ms: 0,
            digest: Vec::new(),
        }
    }

    /// Sends our own events straight to one peer.
    async fn send(
        &self,
        to: SocketAddr,
        events: &[Arc<InvalidationEvent>],
        kind: &'static str,
    ) -> Result<(), String> {
        let mut batch = self.batch_for(events);
        if self.relaying() {
            batch.started_ms = self.started_ms;
        }
        let mut span = corral_telemetry::event_span("peer.send", events.iter().map(|e| &*e.id));
        corral_telemetry::MaybeSpan::set(&mut span, "server.address", to.to_string());
        let trace = span.as_ref().map(|s| s.context().header());
        self.send_batch(to, &batch, kind, trace).await
    }

    async fn send_batch(
        &self,
        to: SocketAddr,
        batch: &Batch,
        kind: &'static str,
        traceparent: Option<http::HeaderValue>,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
        let timeout = self.config.request_timeout;
        let (status, text) = self
            .request(to, "POST", EVENTS_PATH, body, timeout, kind, traceparent)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{to} answered {status}: {}",
                String::from_utf8_lossy(&text)
            ))
        }
    }

    /// A signed request to a peer's admin listener, answered within `timeout`; `traceparent`
    /// joins it to a trace.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        to: SocketAddr,
        method: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
        kind: &'static str,
        traceparent: Option<http::HeaderValue>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}://{to}{path}", self.scheme()))
            .header("content-type", "application/json");
        if let Some(tp) = traceparent {
            req = req.header(corral_telemetry::TRACEPARENT, tp);
        }
        for (n, v) in self.config.secret.sign(method, path, &body) {
            req = req.header(n, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        // Gossip to random peers keeps no connection; everything else reuses one.
        let client = if kind == "heartbeat" && self.relaying() {
            &self.one_shot
        } else {
            &self.client
        };
        self.metrics.message(kind);
        let work = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("{to}: {e}"))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{to}: {e}"))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("{to}: no answer within {timeout:?}"))?
    }
}
