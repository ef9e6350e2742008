//! Cluster metrics (the contract fixes the first names; the rest are additions).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
    /// Messages this replica sent to peers, by kind (`events`, `relay`, `heartbeat`, `log`).
    pub messages: Family<KindLabel, Counter>,
    /// Outgoing peer connections open now, and the most ever open at once.
    pub connections: Connections,
    /// Failed TLS handshakes to peers, by reason (`unknown_ca`, `wrong_name`, ...).
    pub tls_failures: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Open outgoing peer connections: a gauge of the current count and its high-water mark
/// (what `bench/propagation.py` reports as `max_peer_connections`).
#[derive(Clone, Default)]
pub struct Connections {
    open: Gauge,
    most: Gauge,
    count: Arc<AtomicI64>,
}

impl Connections {
    pub fn opened(&self) {
        let now = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        self.open.set(now);
        if now > self.most.get() {
            self.most.set(now);
        }
    }

    pub fn closed(&self) {
        let now = self.count.fetch_sub(1, Ordering::AcqRel) - 1;
        self.open.set(now);
    }

    pub fn open(&self) -> i64 {
        self.count.load(Ordering::Acquire)
    }
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
            messages: Family::default(),
            connections: Connections::default(),
            tls_failures: Family::default(),
        };
        let c = [
            (
                "corral_peer_events_sent",
                "Invalidation events acknowledged by peers",
                &m.sent,
            ),
            (
                "corral_peer_events_received",
                "Invalidation events received from peers and applied",
                &m.received,
            ),
            (
                "corral_peer_event_failures",
                "Failed deliveries to peers (each retried)",
                &m.failures,
            ),
        ];
        for (name, help, counter) in c {
            r.register(name, help, counter.clone());
        }
        let g = [
            ("corral_peers", "Peers in the current peer set", &m.peers),
            (
                "corral_peers_silent",
                "Peers not heard from (directly or through heartbeats) within the silence limit",
                &m.silent_peers,
            ),
            (
                "corral_peer_queue_depth",
                "Events waiting for direct delivery, over all peers",
                &m.queue_depth,
            ),
            (
                "corral_peer_connections",
                "Outgoing connections to peers open now",
                &m.connections.open,
            ),
            (
                "corral_peer_connections_max",
                "The most outgoing peer connections open at once since start",
                &m.connections.most,
            ),
        ];
        for (name, help, gauge) in g {
            r.register(name, help, gauge.clone());
        }
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
        r.register(
            "corral_peer_messages_sent",
            "Messages sent to peers, by kind (events, relay, heartbeat, log)",
            m.messages.clone(),
        );
        r.register(
            "corral_peer_tls_failures",
            "Failed TLS handshakes to peers, by reason (unknown_ca, expired, wrong_name, refused, ...)",
            m.tls_failures.clone(),
        );
        m
    }

    pub fn message(&self, kind: &'static str) {
        self.messages.get_or_create(&KindLabel { kind }).inc();
    }
}
