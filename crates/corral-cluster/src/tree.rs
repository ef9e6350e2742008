//! The relay tree: how an event reaches hundreds of replicas with each sending to at most
//! `fanout` of them.
//!
//! The origin's *round* takes the events its tree members have not acknowledged, signs them
//! once as a [`Batch`], and hands the signed bytes down the tree ([`crate::ranges`]): each
//! head applies them, passes them on to its range, and answers with every member of its range
//! that acknowledged, so `"wait": true` still means every live replica applied the event. A
//! head that does not answer within its share of the time budget is marked suspect and its
//! range handed to the next member of it; a member that is still missing afterwards is
//! delivered to directly ([`crate::link`]), and anti-entropy (the heartbeat digests) catches
//! anything else.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_core::InvalidationEvent;
use futures_util::future::join_all;
use http::HeaderMap;
use tokio::time::Instant;

use crate::ranges::{ring_order, split, Branch};
use crate::sign::{SIGNATURE, TIMESTAMP};
use crate::wire::{Batch, RelayAck, Relayed, MAX_BUDGET_MS, MAX_RANGE};
use crate::{Cluster, EVENTS_PATH};

/// A batch as its origin signed it: what relays pass on unchanged.
#[derive(Clone)]
pub(crate) struct Signed {
    pub batch: String,
    pub timestamp: String,
    pub signature: String,
}

/// Below this, a relay no longer tries another head: the answer would come too late anyway.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

impl Cluster {
    /// The origin's side: one round at a time, for as long as the cluster lives.
    pub(crate) async fn tree_rounds(self: Arc<Self>) {
        loop {
            let targets = self.tree_targets();
            if targets.is_empty() {
                self.tree_wake.notified().await;
                continue;
            }
            self.round(targets).await;
        }
    }

    /// Tree members that have not acknowledged our latest event.
    fn tree_targets(&self) -> Vec<Arc<crate::link::Link>> {
        if !self.relaying() {
            return Vec::new();
        }
        let last = self.last_seq();
        self.links
            .lock()
            .values()
            .filter(|l| l.acked() < last && !l.is_suspect() && l.queue.lock().is_empty())
            .cloned()
            .collect()
    }

    async fn round(self: &Arc<Self>, targets: Vec<Arc<crate::link::Link>>) {
        let base = targets.iter().map(|l| l.acked()).min().unwrap_or(0);
        let events = self
            .log
            .since_shared(base, self.config.batch)
            .unwrap_or_else(|| self.log.oldest_after(base, self.config.batch));
        let top = events.last().map_or(self.last_seq(), |e| e.seq);
        let signed = match self.sign_batch(&events) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a batch");
                return;
            }
        };
        let members = ring_order(
            targets.iter().map(|l| l.peer.addr).collect(),
            self.config.advertise,
        );
        let acked: HashSet<SocketAddr> = self
            .deliver_range(members, &signed, self.config.relay_budget)
            .await
            .into_iter()
            .collect();
        for link in targets {
            if acked.contains(&link.peer.addr) {
                link.ack(top);
                self.metrics.sent.inc_by(events.len() as u64);
            } else {
                self.metrics.failures.inc();
                link.failed(format!(
                    "{}: not acknowledged through the relay tree",
                    link.peer.addr
                ));
                self.go_direct(&link, true);
            }
        }
        self.update_queue_gauge();
    }

    fn sign_batch(&self, events: &[Arc<InvalidationEvent>]) -> Result<Signed, String> {
        let mut batch: Batch = self.batch_for(events);
        batch.started_ms = self.started_ms;
        let text = serde_json::to_string(&batch).map_err(|e| e.to_string())?;
        let [(_, timestamp), (_, signature)] =
            self.config
                .secret
                .sign("POST", EVENTS_PATH, text.as_bytes());
        Ok(Signed {
            batch: text,
            timestamp,
            signature,
        })
    }

    /// Sends `signed` to every member of `members` through at most `fanout` heads; returns
    /// the members that acknowledged.
    pub(crate) async fn deliver_range(
        self: &Arc<Self>,
        members: Vec<SocketAddr>,
        signed: &Signed,
        budget: Duration,
    ) -> Vec<SocketAddr> {
        let branches = split(&members, self.config.fanout.max(1), |a| !self.is_suspect(a));
        join_all(
            branches
                .into_iter()
                .map(|b| self.deliver_branch(b, signed, budget)),
        )
        .await
        .concat()
    }

    /// One branch: its head answers for its range, or the range goes to the next member.
    async fn deliver_branch(
        self: &Arc<Self>,
        branch: Branch,
        signed: &Signed,
        budget: Duration,
    ) -> Vec<SocketAddr> {
        let deadline = Instant::now() + budget;
        let Branch { mut head, mut rest } = branch;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Leave half for the next head when there is a range to hand on.
            let attempt = if rest.is_empty() {
                remaining
            } else {
                remaining / 2
            };
            if attempt < MIN_ATTEMPT {
                return Vec::new();
            }
            match self.send_relayed(head, &rest, signed, attempt).await {
                Ok(ack) => {
                    self.peer_answered(head);
                    let mut acked = vec![head];
                    let range: HashSet<&SocketAddr> = rest.iter().collect();
                    acked.extend(ack.acked.into_iter().filter(|a| range.contains(a)));
                    return acked;
                }
                Err(e) => {
                    tracing::debug!(relay = %head, error = %e, "relay did not answer; handing its range on");
                    self.peer_failed(head, e);
                    if rest.is_empty() {
                        return Vec::new();
                    }
                    let next = rest.iter().position(|a| !self.is_suspect(a)).unwrap_or(0);
                    head = rest.remove(next);
                }
            }
        }
    }

    async fn send_relayed(
        &self,
        to: SocketAddr,
        range: &[SocketAddr],
        signed: &Signed,
        within: Duration,
    ) -> Result<RelayAck, String> {
        let message = Relayed {
            batch: signed.batch.clone(),
            timestamp: signed.timestamp.clone(),
            signature: signed.signature.clone(),
            range: range.to_vec(),
            // The head answers for its range a little before we give up on it.
            budget_ms: (within.as_millis() as u64 * 4 / 5).min(MAX_BUDGET_MS),
        };
        let body = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        let kind = if range.is_empty() { "events" } else { "relay" };
        let (status, text) = self
            .request(to, "POST", EVENTS_PATH, body, within, kind, None)
            .await?;
        if !status.is_success() {
            return Err(format!(
                "{to} answered {status}: {}",
                String::from_utf8_lossy(&text)
            ));
        }
        serde_json::from_slice(&text).map_err(|e| format!("{to}: bad acknowledgement: {e}"))
    }

    /// The relay's side: the origin's signature checked, the batch applied, then passed on.
    pub(crate) async fn relay(
        self: &Arc<Self>,
        message: Relayed,
    ) -> Result<serde_json::Value, (http::StatusCode, String)> {
        let bad = |m: String| (http::StatusCode::BAD_REQUEST, m);
        if message.range.len() > MAX_RANGE || message.budget_ms > MAX_BUDGET_MS {
            return Err(bad(format!(
                "a relayed batch may name at most {MAX_RANGE} replicas and {MAX_BUDGET_MS} ms"
            )));
        }
        let mut origin_sig = HeaderMap::new();
        for (name, value) in [
            (TIMESTAMP, &message.timestamp),
            (SIGNATURE, &message.signature),
        ] {
            let v = value.parse().map_err(|_| bad(format!("bad {name}")))?;
            origin_sig.insert(name, v);
        }
        // The origin's signature: a relay cannot alter what it passes on.
        self.verify(&origin_sig, "POST", EVENTS_PATH, message.batch.as_bytes())?;
        let batch: Batch = serde_json::from_str(&message.batch)
            .map_err(|e| bad(format!("bad relayed batch: {e}")))?;
        let applied = self.take_batch(batch)?;
        let me = self.config.advertise;
        let mut range = message.range;
        range.retain(|a| *a != me);
        let mut seen = HashSet::new();
        range.retain(|a| seen.insert(*a));
        let signed = Signed {
            batch: message.batch,
            timestamp: message.timestamp,
            signature: message.signature,
        };
        let mut acked = vec![me];
        if !range.is_empty() {
            let budget = Duration::from_millis(message.budget_ms);
            acked.extend(self.deliver_range(range, &signed, budget).await);
        }
        Ok(serde_json::to_value(RelayAck { applied, acked }).unwrap_or_default())
    }
}
