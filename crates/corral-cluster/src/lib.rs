//! # corral-cluster
//!
//! Coherence across replicas: every invalidation applied on one replica reaches every live
//! replica, or the replica that missed it finds out and recovers.
//!
//! * **Fan-out.** [`Cluster::publish`] appends the event to this replica's [`EventLog`] and to a
//!   bounded queue per peer. Each peer has one delivery task that sends batches
//!   (`POST /_corral/v1/events`, signed) and retries with exponential backoff and jitter until
//!   the peer acknowledges, or leaves the peer set. Only invalidations travel, never fills.
//! * **Signed.** HMAC-SHA256 over timestamp, method, path and body ([`sign`]); messages outside
//!   the replay window are refused; events are deduplicated by id.
//! * **Gap-checked.** Events carry `(origin, epoch, seq)` with gapless sequences per epoch. A
//!   receiver that sees a hole fetches the missing events from the sender's log
//!   (`GET /_corral/v1/events?since=N`, signed); if the log no longer has them it purges
//!   everything (the only safe answer) and counts it. Every batch, including periodic empty
//!   heartbeats (anti-entropy), states the sender's last sequence, so a missed *last* event is
//!   noticed too.
//! * **Visible.** `/peers` shows each peer's acknowledged sequence, queue depth and failures;
//!   peers not heard from within three heartbeat intervals are reported as silent.

pub mod peers;
pub mod sign;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use corral_core::{Backoff, InvalidationEvent};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

pub use sign::{Rejection, Secret};

/// The path peers send events to, and fetch logs from.
pub const EVENTS_PATH: &str = "/_corral/v1/events";

/// Applies what arrives from peers. Implemented by the binary's invalidation hub.
pub trait Applier: Send + Sync + 'static {
    /// Applies a peer's event locally (and to local subscribers); never re-broadcasts it.
    fn apply_remote(&self, event: &InvalidationEvent);
    /// Purges everything: the conservative answer to an unrecoverable gap.
    fn purge_everything(&self, reason: &str);
}

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
}

impl ClusterConfig {
    pub fn new(secret: Secret, advertise: SocketAddr, origin: String, epoch: u64) -> ClusterConfig {
        ClusterConfig {
            secret,
            advertise,
            origin,
            epoch,
            replay_window: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            log_capacity: 10_000,
            queue_capacity: 10_000,
            batch: 256,
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// A peer as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    /// Which discovery source found it (`static`, `dns`, ...).
    pub source: String,
}

/// A batch of events on the wire; also the heartbeat (no events).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The sender's advertised admin address (where its log can be fetched).
    pub from: SocketAddr,
    pub origin: String,
    pub epoch: u64,
    /// The sender's latest sequence number at sending time.
    pub last_seq: u64,
    #[serde(default)]
    pub events: Vec<InvalidationEvent>,
}

/// The answer to a log fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    pub origin: String,
    pub epoch: u64,
    pub last_seq: u64,
    pub events: Vec<InvalidationEvent>,
}

/// This replica's own recent events, for peers that missed some.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<VecDeque<Arc<InvalidationEvent>>>,
    capacity: usize,
}

impl EventLog {
    fn new(capacity: usize) -> Self {
        EventLog {
            events: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    fn push(&self, e: Arc<InvalidationEvent>) {
        let mut q = self.events.lock();
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// Events with `seq > since`, or `None` when some of them are no longer retained.
    fn since(&self, since: u64) -> Option<Vec<InvalidationEvent>> {
        let q = self.events.lock();
        let oldest = q.front().map_or(u64::MAX, |e| e.seq);
        let last = q.back().map_or(0, |e| e.seq);
        if since < last && since + 1 < oldest {
            return None;
        }
        Some(
            q.iter()
                .filter(|e| e.seq > since)
                .map(|e| (**e).clone())
                .collect(),
        )
    }
}

/// Cluster metrics (names fixed by the contract).
#[derive(Clone)]
pub struct ClusterMetrics {
    pub sent: Counter,
    pub received: Counter,
    pub failures: Counter,
    pub peers: Gauge,
    pub silent_peers: Gauge,
    pub queue_depth: Gauge,
    pub propagation: Histogram,
    pub recoveries: Family<KindLabel, Counter>,
    pub rejected: Family<KindLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

impl ClusterMetrics {
    pub fn register(r: &mut Registry) -> ClusterMetrics {
        let m = ClusterMetrics {
            sent: Counter::default(),
            received: Counter::default(),
            failures: Counter::default(),
            peers: Gauge::default(),
            silent_peers: Gauge::default(),
            queue_depth: Gauge::default(),
            propagation: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            recoveries: Family::default(),
            rejected: Family::default(),
        };
        r.register(
            "corral_peer_events_sent",
            "Invalidation events acknowledged by peers",
            m.sent.clone(),
        );
        r.register(
            "corral_peer_events_received",
            "Invalidation events received from peers and applied",
            m.received.clone(),
        );
        r.register(
            "corral_peer_event_failures",
            "Failed deliveries to peers (each retried)",
            m.failures.clone(),
        );
        r.register(
            "corral_peers",
            "Peers in the current peer set",
            m.peers.clone(),
        );
        r.register(
            "corral_peers_silent",
            "Peers not heard from within three heartbeat intervals",
            m.silent_peers.clone(),
        );
        r.register(
            "corral_peer_queue_depth",
            "Events waiting for delivery, over all peers",
            m.queue_depth.clone(),
        );
        r.register(
            "corral_event_propagation_seconds",
            "Time from an event's creation on its origin replica to its application here",
            m.propagation.clone(),
        );
        r.register(
            "corral_peer_gap_recoveries",
            "Sequence gaps recovered, by how (log, purge_all)",
            m.recoveries.clone(),
        );
        r.register(
            "corral_peer_messages_rejected",
            "Peer messages refused, by reason",
            m.rejected.clone(),
        );
        m
    }
}

/// One peer's delivery state.
struct Link {
    peer: PeerAddr,
    queue: Mutex<VecDeque<Arc<InvalidationEvent>>>,
    wake: Notify,
    /// Signalled when the peer is seen alive (it sent us something, or answered a heartbeat):
    /// cuts a retry backoff short, so a restarted peer gets its backlog at once rather than
    /// after up to three seconds of backoff.
    alive: Notify,
    /// The highest own sequence number the peer acknowledged.
    acked: watch::Sender<u64>,
    failures: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_ok: Mutex<Option<SystemTime>>,
    gone: AtomicBool,
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

/// What this replica knows of another replica's event stream.
#[derive(Debug, Default)]
struct OriginState {
    epoch: u64,
    /// Every event up to here was applied.
    contiguous: u64,
    /// Applied events beyond a hole.
    ahead: std::collections::BTreeSet<u64>,
    from: Option<SocketAddr>,
    last_heard: Option<Instant>,
    recovering: bool,
}

/// The coherence layer of one replica.
pub struct Cluster {
    config: ClusterConfig,
    log: EventLog,
    links: Mutex<BTreeMap<SocketAddr, Arc<Link>>>,
    origins: Mutex<HashMap<String, OriginState>>,
    /// Event ids recently applied, for deduplication.
    seen: Mutex<(std::collections::HashSet<String>, VecDeque<String>)>,
    last_seq: AtomicU64,
    applier: Arc<dyn Applier>,
    metrics: ClusterMetrics,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    started: SystemTime,
}

/// How `wait: true` ended for each peer.
#[derive(Debug, Clone, Serialize)]
pub struct Acks {
    pub acknowledged: Vec<String>,
    pub pending: Vec<String>,
}

impl Cluster {
    /// Starts the cluster: follows `peers` (a discovery stream) and heartbeats.
    pub fn start(
        config: ClusterConfig,
        peers: watch::Receiver<Vec<PeerAddr>>,
        applier: Arc<dyn Applier>,
        metrics: ClusterMetrics,
    ) -> Arc<Cluster> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(1)));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http);
        let cluster = Arc::new(Cluster {
            log: EventLog::new(config.log_capacity),
            config,
            links: Mutex::default(),
            origins: Mutex::default(),
            seen: Mutex::default(),
            last_seq: AtomicU64::new(0),
            applier,
            metrics,
            client,
            started: SystemTime::now(),
        });
        tokio::spawn(cluster.clone().follow_peers(peers));
        tokio::spawn(cluster.clone().heartbeats());
        cluster
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Logs an event of this replica and queues it for every current peer.
    pub fn publish(&self, event: Arc<InvalidationEvent>) {
        // A traced request made it (a PURGE): its fan-out joins that trace.
        corral_telemetry::remember_event(&event.id);
        self.last_seq.fetch_max(event.seq, Ordering::AcqRel);
        self.log.push(event.clone());
        for link in self.links.lock().values() {
            let mut q = link.queue.lock();
            if q.len() >= self.config.queue_capacity {
                q.pop_front();
                link.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(event.clone());
            drop(q);
            link.wake.notify_one();
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
                && *link.acked.borrow() >= seq;
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
            let link = Arc::new(Link {
                peer: p.clone(),
                queue: Mutex::default(),
                wake: Notify::new(),
                alive: Notify::new(),
                acked: watch::channel(0).0,
                failures: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                last_error: Mutex::default(),
                last_ok: Mutex::default(),
                gone: AtomicBool::new(false),
            });
            links.insert(p.addr, link.clone());
            tokio::spawn(self.clone().deliver(link));
        }
        self.metrics.peers.set(links.len() as i64);
    }

    /// One peer's delivery loop: batches, retries with backoff and jitter, until it leaves.
    async fn deliver(self: Arc<Self>, link: Arc<Link>) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        while !link.gone.load(Ordering::Acquire) {
            let batch: Vec<Arc<InvalidationEvent>> = link
                .queue
                .lock()
                .iter()
                .take(self.config.batch)
                .cloned()
                .collect();
            if batch.is_empty() {
                link.wake.notified().await;
                continue;
            }
            match self.send(link.peer.addr, &batch).await {
                Ok(()) => {
                    let n = batch.len();
                    let top = batch.last().map_or(0, |e| e.seq);
                    {
                        let mut q = link.queue.lock();
                        // Pop what was sent (the queue may have dropped some meanwhile).
                        while q.front().is_some_and(|e| e.seq <= top) {
                            q.pop_front();
                        }
                    }
                    link.acked.send_if_modified(|a| {
                        let changed = *a < top;
                        *a = (*a).max(top);
                        changed
                    });
                    *link.last_ok.lock() = Some(SystemTime::now());
                    // The peer is healthy again: an old error no longer describes it.
                    *link.last_error.lock() = None;
                    self.metrics.sent.inc_by(n as u64);
                    self.update_queue_gauge();
                    backoff.reset();
                }
                Err(e) => {
                    link.failures.fetch_add(1, Ordering::Relaxed);
                    self.metrics.failures.inc();
                    tracing::debug!(peer = %link.peer.addr, error = %e, "delivery failed; retrying");
                    *link.last_error.lock() = Some(e);
                    tokio::select! {
                        () = backoff.wait() => {}
                        () = link.alive.notified() => {}
                        () = wait_gone(&link) => {}
                    }
                }
            }
        }
        self.update_queue_gauge();
    }

    fn batch_for(&self, events: &[Arc<InvalidationEvent>]) -> Batch {
        Batch {
            from: self.config.advertise,
            origin: self.config.origin.clone(),
            epoch: self.config.epoch,
            last_seq: self.last_seq.load(Ordering::Acquire),
            events: events.iter().map(|e| (**e).clone()).collect(),
        }
    }

    async fn send(&self, to: SocketAddr, events: &[Arc<InvalidationEvent>]) -> Result<(), String> {
        let body = serde_json::to_vec(&self.batch_for(events)).map_err(|e| e.to_string())?;
        let mut span = corral_telemetry::event_span("peer.send", events.iter().map(|e| &*e.id));
        corral_telemetry::MaybeSpan::set(&mut span, "server.address", to.to_string());
        let trace = span.as_ref().map(|s| s.context().header());
        let answer = self.request(to, "POST", EVENTS_PATH, body, trace).await;
        if let (Some(s), false) = (
            span.as_mut(),
            answer.as_ref().is_ok_and(|(status, _)| status.is_success()),
        ) {
            s.fail();
        }
        let (status, text) = answer?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{to} answered {status}: {}",
                String::from_utf8_lossy(&text)
            ))
        }
    }

    /// A signed request to a peer's admin listener.
    async fn request(
        &self,
        to: SocketAddr,
        method: &str,
        path: &str,
        body: Vec<u8>,
        traceparent: Option<http::HeaderValue>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{to}{path}"))
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
        let resp = tokio::time::timeout(self.config.request_timeout, self.client.request(req))
            .await
            .map_err(|_| format!("{to}: no answer within {:?}", self.config.request_timeout))?
            .map_err(|e| format!("{to}: {e}"))?;
        let status = resp.status();
        let bytes = tokio::time::timeout(self.config.request_timeout, resp.into_body().collect())
            .await
            .map_err(|_| format!("{to}: body timed out"))?
            .map_err(|e| format!("{to}: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Sends an empty batch to every peer now and then: it carries our last sequence number,
    /// so a peer that missed our latest event notices, and it proves we are alive.
    async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
            for link in links {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.send(link.peer.addr, &[]).await {
                        tracing::debug!(peer = %link.peer.addr, error = %e, "heartbeat failed");
                        *link.last_error.lock() = Some(e);
                    } else {
                        *link.last_ok.lock() = Some(SystemTime::now());
                        link.alive.notify_one();
                    }
                });
            }
            self.update_silence();
        }
    }

    /// Checks a peer request's signature and freshness; a refusal is counted and answered 401.
    fn verify(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), (StatusCode, String)> {
        self.config
            .secret
            .verify(headers, method, path, body, self.config.replay_window)
            .map_err(|r| {
                self.metrics
                    .rejected
                    .get_or_create(&KindLabel { kind: r.as_str() })
                    .inc();
                (StatusCode::UNAUTHORIZED, format!("refused: {}", r.as_str()))
            })
    }

    /// Handles `POST /_corral/v1/events`: verify, dedupe, apply, check sequences.
    pub fn receive(
        self: &Arc<Self>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, (StatusCode, String)> {
        self.verify(headers, "POST", EVENTS_PATH, body)?;
        // Verified first: an unsigned request opens no span.
        let _span = corral_telemetry::remote_span("peer.receive", headers);
        let batch: Batch = serde_json::from_slice(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad batch: {e}")))?;
        if batch.origin == self.config.origin {
            return Ok(serde_json::json!({"applied": 0}));
        }
        if let Some(link) = self.links.lock().get(&batch.from) {
            link.alive.notify_one();
        }
        let mut applied = 0;
        for e in &batch.events {
            if e.origin != batch.origin || e.epoch != batch.epoch {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("event {} is not from the batch's origin", e.id),
                ));
            }
        }
        for e in batch.events {
            if self.apply(e) {
                applied += 1;
            }
        }
        self.check_sequence(&batch.origin, batch.epoch, batch.last_seq, batch.from);
        Ok(serde_json::json!({"applied": applied}))
    }

    /// Applies an event that arrived by another bus (the Redis stream): the same dedupe by id
    /// and sequence bookkeeping as events from the HTTP fan-out, so both buses can run at once.
    /// Events of this replica are ignored. True if applied (not seen before).
    pub fn apply_external(&self, e: InvalidationEvent) -> bool {
        if e.origin == self.config.origin {
            return false;
        }
        self.apply(e)
    }

    /// Applies one event unless already seen; records its sequence number. True if applied.
    fn apply(&self, e: InvalidationEvent) -> bool {
        {
            let mut seen = self.seen.lock();
            if !seen.0.insert(e.id.clone()) {
                return false;
            }
            seen.1.push_back(e.id.clone());
            if seen.1.len() > 100_000 {
                if let Some(old) = seen.1.pop_front() {
                    seen.0.remove(&old);
                }
            }
        }
        self.applier.apply_remote(&e);
        self.metrics.received.inc();
        let age_ms = corral_core::invalidation::now_ms().saturating_sub(e.timestamp_ms);
        self.metrics.propagation.observe(age_ms as f64 / 1000.0);
        let mut origins = self.origins.lock();
        let st = origins.entry(e.origin.clone()).or_default();
        if st.epoch != e.epoch {
            *st = OriginState {
                epoch: e.epoch,
                ..Default::default()
            };
        }
        st.record(e.seq);
        true
    }

    /// Notes what a peer says its last sequence is, and recovers any hole.
    fn check_sequence(self: &Arc<Self>, origin: &str, epoch: u64, last_seq: u64, from: SocketAddr) {
        let need = {
            let mut origins = self.origins.lock();
            let st = origins.entry(origin.to_string()).or_default();
            if st.epoch != epoch {
                // A new epoch (the peer restarted, or we just met it): everything from 1 on
                // counts, and what it did before we started does not matter to our cache.
                *st = OriginState {
                    epoch,
                    ..Default::default()
                };
            }
            st.from = Some(from);
            st.last_heard = Some(Instant::now());
            let behind = st.contiguous < last_seq;
            if behind && !st.recovering {
                st.recovering = true;
                Some(st.contiguous)
            } else {
                None
            }
        };
        if let Some(since) = need {
            let me = self.clone();
            let origin = origin.to_string();
            tokio::spawn(async move { me.recover(origin, epoch, since, from).await });
        }
    }

    /// Fetches the events we missed from their origin's log; purges everything if it can't.
    async fn recover(self: Arc<Self>, origin: String, epoch: u64, since: u64, from: SocketAddr) {
        let path = format!("{EVENTS_PATH}?since={since}");
        let result = self.request(from, "GET", &path, Vec::new(), None).await;
        let outcome = match result {
            Ok((s, body)) if s.is_success() => match serde_json::from_slice::<LogPage>(&body) {
                Ok(page) if page.origin == origin && page.epoch == epoch => {
                    let started_ms = self
                        .started
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    for e in page.events {
                        // Events from before this process started cannot cover anything it
                        // stored; they are recorded as seen without purging.
                        if e.timestamp_ms + 5_000 < started_ms {
                            self.mark_seen(&e);
                        } else {
                            self.apply(e);
                        }
                    }
                    "log"
                }
                Ok(_) => "epoch-changed",
                Err(_) => "bad-log",
            },
            Ok((StatusCode::GONE, _)) => {
                self.applier.purge_everything(&format!(
                    "events {since}.. from {origin} are no longer in its log"
                ));
                self.skip_to(&origin, epoch);
                "purge_all"
            }
            Ok(_) | Err(_) => "unreachable",
        };
        if matches!(outcome, "log" | "purge_all") {
            self.metrics
                .recoveries
                .get_or_create(&KindLabel { kind: outcome })
                .inc();
            tracing::info!(%origin, since, how = outcome, "sequence gap recovered");
        }
        if let Some(st) = self.origins.lock().get_mut(&origin) {
            st.recovering = false;
        }
    }

    fn mark_seen(&self, e: &InvalidationEvent) {
        let mut origins = self.origins.lock();
        let st = origins.entry(e.origin.clone()).or_default();
        if st.epoch == e.epoch {
            st.record(e.seq);
        }
    }

    /// After a purge-everything, the hole no longer matters.
    fn skip_to(&self, origin: &str, epoch: u64) {
        let mut origins = self.origins.lock();
        if let Some(st) = origins.get_mut(origin) {
            if st.epoch == epoch {
                let top = st.ahead.last().copied().unwrap_or(st.contiguous);
                st.contiguous = st.contiguous.max(top);
                st.ahead.clear();
            }
        }
    }

    /// Handles `GET /_corral/v1/events?since=N`: our own events after N, or 410 Gone.
    pub fn log_page(
        &self,
        headers: &HeaderMap,
        path_and_query: &str,
    ) -> Result<serde_json::Value, (StatusCode, String)> {
        self.verify(headers, "GET", path_and_query, b"")?;
        let since: u64 = path_and_query
            .split_once("since=")
            .and_then(|(_, v)| v.split('&').next()?.parse().ok())
            .ok_or((StatusCode::BAD_REQUEST, "expected ?since=N".to_string()))?;
        match self.log.since(since) {
            Some(events) => Ok(serde_json::to_value(LogPage {
                origin: self.config.origin.clone(),
                epoch: self.config.epoch,
                last_seq: self.last_seq.load(Ordering::Acquire),
                events,
            })
            .unwrap_or_default()),
            None => Err((
                StatusCode::GONE,
                format!("events after {since} are no longer retained"),
            )),
        }
    }

    fn update_queue_gauge(&self) {
        let depth: usize = self
            .links
            .lock()
            .values()
            .map(|l| l.queue.lock().len())
            .sum();
        self.metrics.queue_depth.set(depth as i64);
    }

    fn update_silence(&self) {
        self.metrics
            .silent_peers
            .set(self.silent_peers().len() as i64);
    }

    /// Peers in the peer set not heard from (no batch, no heartbeat) within three heartbeats.
    pub fn silent_peers(&self) -> Vec<SocketAddr> {
        let limit = self.config.heartbeat * 3;
        let heard: HashMap<SocketAddr, Instant> = self
            .origins
            .lock()
            .values()
            .filter_map(|s| Some((s.from?, s.last_heard?)))
            .collect();
        let grace_over = self.started.elapsed().unwrap_or_default() > limit;
        self.links
            .lock()
            .keys()
            .filter(|a| match heard.get(a) {
                Some(t) => t.elapsed() > limit,
                None => grace_over,
            })
            .copied()
            .collect()
    }

    /// The `/peers` document.
    pub fn peers_json(&self) -> serde_json::Value {
        // Before taking `origins`: silent_peers takes it too.
        let silent = self.silent_peers();
        let origins = self.origins.lock();
        let by_addr: HashMap<SocketAddr, (&String, &OriginState)> = origins
            .iter()
            .filter_map(|(o, s)| Some((s.from?, (o, s))))
            .collect();
        let peers: Vec<serde_json::Value> = self
            .links
            .lock()
            .values()
            .map(|l| {
                let heard = by_addr.get(&l.peer.addr);
                serde_json::json!({
                    "address": l.peer.addr.to_string(),
                    "source": l.peer.source,
                    "last_acknowledged_seq": *l.acked.borrow(),
                    "lag": self.last_seq.load(Ordering::Acquire).saturating_sub(*l.acked.borrow()),
                    "queue": l.queue.lock().len(),
                    "failures": l.failures.load(Ordering::Relaxed),
                    "dropped": l.dropped.load(Ordering::Relaxed),
                    "last_error": *l.last_error.lock(),
                    "last_ok_ms_ago": l.last_ok.lock().and_then(|t| t.elapsed().ok()).map(|d| d.as_millis() as u64),
                    "origin": heard.map(|(o, _)| o.as_str()),
                    "last_seq_seen": heard.map(|(_, s)| s.contiguous),
                    "silent": silent.contains(&l.peer.addr),
                })
            })
            .collect();
        serde_json::json!({
            "self": {
                "address": self.config.advertise.to_string(),
                "origin": self.config.origin,
                "epoch": self.config.epoch,
                "last_seq": self.last_seq.load(Ordering::Acquire),
            },
            "peers": peers,
        })
    }
}

async fn wait_gone(link: &Link) {
    while !link.gone.load(Ordering::Acquire) {
        link.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::{Cause, EventSource, Selectors};

    #[test]
    fn log_answers_or_says_gone() {
        let log = EventLog::new(3);
        let src = EventSource::new("a");
        for _ in 0..5 {
            log.push(Arc::new(src.next(
                Selectors {
                    all: true,
                    ..Default::default()
                },
                false,
                Cause::Admin,
            )));
        }
        // Retained: 3, 4, 5.
        assert_eq!(
            log.since(2)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(log.since(5).unwrap().len(), 0);
        assert!(log.since(1).is_none(), "event 2 is gone");
        assert!(EventLog::new(3).since(0).unwrap().is_empty());
    }
}
