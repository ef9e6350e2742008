//! What `/peers` and the gauges show of the cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::{Cluster, OriginState};

impl Cluster {
    pub(crate) fn update_queue_gauge(&self) {
        let depth: usize = self
            .links
            .lock()
            .values()
            .map(|l| l.queue.lock().len())
            .sum();
        self.metrics.queue_depth.set(depth as i64);
    }

    pub(crate) fn update_silence(&self) {
        self.metrics
            .silent_peers
            .set(self.silent_peers().len() as i64);
    }

    /// Every peer in the peer set now, in address order.
    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        self.links.lock().keys().copied().collect()
    }

    /// Peers in the peer set not heard from (no batch, no rising heartbeat) within the
    /// silence limit.
    pub fn silent_peers(&self) -> Vec<SocketAddr> {
        let limit = self.silence_limit();
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
        let relaying = self.relaying();
        let origins = self.origins.lock();
        let by_addr: HashMap<SocketAddr, (&String, &OriginState)> = origins
            .iter()
            .filter_map(|(o, s)| Some((s.from?, (o, s))))
            .collect();
        let last_seq = self.last_seq.load(Ordering::Acquire);
        let peers: Vec<serde_json::Value> = self
            .links
            .lock()
            .values()
            .map(|l| {
                let heard = by_addr.get(&l.peer.addr);
                let direct = !relaying || l.is_suspect() || !l.queue.lock().is_empty();
                serde_json::json!({
                    "address": l.peer.addr.to_string(),
                    "source": l.peer.source,
                    "last_acknowledged_seq": l.acked(),
                    "lag": last_seq.saturating_sub(l.acked()),
                    "queue": l.queue.lock().len(),
                    "failures": l.failures.load(Ordering::Relaxed),
                    "dropped": l.dropped.load(Ordering::Relaxed),
                    "last_error": *l.last_error.lock(),
                    "last_ok_ms_ago": l.last_ok.lock().and_then(|t| t.elapsed().ok()).map(|d| d.as_millis() as u64),
                    "origin": heard.map(|(o, _)| o.as_str()),
                    "last_seq_seen": heard.map(|(_, s)| s.contiguous),
                    "silent": silent.contains(&l.peer.addr),
                    "delivery": if direct { "direct" } else { "relayed" },
                    "suspect": l.is_suspect(),
                })
            })
            .collect();
        serde_json::json!({
            "self": {
                "address": self.config.advertise.to_string(),
                "origin": self.config.origin,
                "epoch": self.config.epoch,
                "last_seq": last_seq,
                "fanout": self.config.fanout,
                "relaying": relaying,
                "peer_connections": self.metrics.connections.open(),
            },
            "peers": peers,
        })
    }
}
