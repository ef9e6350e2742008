//! Heartbeats and anti-entropy.
//!
//! In a mesh every replica sends every peer an empty batch each period: it carries the sender's
//! last sequence number (a peer that missed the latest event notices) and proves the sender is
//! alive. That is O(N) messages per replica and O(N²) in the fleet, so on a relayed fleet
//! (more peers than `fanout`) each replica instead sends a *digest* — every origin's epoch,
//! highest known sequence number and heartbeat counter — to [`GOSSIP_PEERS`] peers chosen at
//! random each period. Digests merge (the highest sequence, the highest beat), so what any
//! replica knows reaches every replica within about `log(N)` periods: a replica behind on an
//! origin fetches from that origin's log, and an origin whose beat stops rising is reported
//! silent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;

use crate::link::Link;
use crate::wire::DigestEntry;
use crate::Cluster;

/// Peers each replica sends its digest to per period on a relayed fleet.
pub const GOSSIP_PEERS: usize = 3;

impl Cluster {
    pub(crate) async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.beat.fetch_add(1, Ordering::AcqRel);
            let links: Vec<Arc<Link>> = self.links.lock().values().cloned().collect();
            if self.relaying() {
                self.gossip(links);
            } else {
                for link in links {
                    self.heartbeat(link, Vec::new());
                }
            }
            self.update_silence();
        }
    }

    fn gossip(self: &Arc<Self>, mut links: Vec<Arc<Link>>) {
        links.shuffle(&mut rand::thread_rng());
        let digest = self.digest();
        for link in links.into_iter().take(GOSSIP_PEERS) {
            self.heartbeat(link, digest.clone());
        }
    }

    fn heartbeat(self: &Arc<Self>, link: Arc<Link>, digest: Vec<DigestEntry>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut batch = me.batch_for(&[]);
            if !digest.is_empty() {
                batch.started_ms = me.started_ms;
                batch.digest = digest;
            }
            match me
                .send_batch(link.peer.addr, &batch, "heartbeat", None)
                .await
            {
                Err(e) => {
                    tracing::debug!(peer = %link.peer.addr, error = %e, "heartbeat failed");
                    *link.last_error.lock() = Some(e);
                }
                Ok(()) => {
                    link.healthy();
                    link.alive.notify_one();
                }
            }
        });
    }

    /// What this replica knows of every origin in its peer set, itself first.
    pub(crate) fn digest(&self) -> Vec<DigestEntry> {
        let mut out = vec![DigestEntry {
            origin: self.config.origin.clone(),
            epoch: self.config.epoch,
            started_ms: self.started_ms,
            last_seq: self.last_seq(),
            beat: self.beat.load(Ordering::Acquire),
            addr: self.config.advertise,
        }];
        let links = self.links.lock();
        let origins = self.origins.lock();
        for (origin, st) in origins.iter() {
            // Only origins still in the peer set: the digest stays O(N) as replicas come and go.
            let Some(addr) = st.from.filter(|a| links.contains_key(a)) else {
                continue;
            };
            out.push(DigestEntry {
                origin: origin.clone(),
                epoch: st.epoch,
                started_ms: st.started_ms,
                last_seq: st.last_seq_known.max(st.contiguous),
                beat: st.beat,
                addr,
            });
        }
        out
    }

    /// How long a peer may go unheard before it is reported silent: three periods in a mesh;
    /// on a relayed fleet, plus the periods a beat takes to spread by gossip.
    pub(crate) fn silence_limit(&self) -> Duration {
        let periods = if self.relaying() {
            let n = self.links.lock().len().max(2) as f64;
            3 + n.log2().ceil() as u32
        } else {
            3
        };
        self.config.heartbeat * periods
    }
}
