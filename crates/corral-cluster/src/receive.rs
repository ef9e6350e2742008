//! What arrives from peers: batches (direct or relayed), digests, log fetches. Every event is
//! deduplicated by id and its sequence number recorded per origin, so a hole is noticed and
//! recovered from the origin's log whichever way the event came (mesh, relay, Redis bus).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use corral_core::InvalidationEvent;
use http::{HeaderMap, StatusCode};

use crate::wire::{Batch, DigestEntry, LogPage, Message};
use crate::{Cluster, KindLabel, OriginState, EVENTS_PATH};

/// A refused peer request: the status and the reason to answer with.
pub type Refusal = (StatusCode, String);

/// How a replica heard of an origin's stream.
#[derive(Clone, Copy)]
pub(crate) enum Heard {
    /// From the origin itself (a batch it signed).
    Origin,
    /// From a digest: the origin lives if its beat rose.
    Beat(u64),
}

impl Cluster {
    /// Checks a peer request's signature and freshness; a refusal is counted and answered 401.
    pub(crate) fn verify(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), Refusal> {
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

    /// Handles `POST /_corral/v1/events`: verify, dedupe, apply, check sequences; a relayed
    /// batch is then passed on to its range, and answered for it.
    pub async fn receive(
        self: &Arc<Self>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, Refusal> {
        self.verify(headers, "POST", EVENTS_PATH, body)?;
        let message: Message = serde_json::from_slice(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad batch: {e}")))?;
        match message {
            Message::Batch(batch) => {
                // Verified first: an unsigned request opens no span.
                let _span = corral_telemetry::remote_span("peer.receive", headers);
                let applied = self.take_batch(batch)?;
                Ok(serde_json::json!({"applied": applied}))
            }
            Message::Relayed(relayed) => self.relay(relayed).await,
        }
    }

    /// Applies a batch its origin signed (directly or through relays). Returns how many events
    /// were new.
    pub(crate) fn take_batch(self: &Arc<Self>, batch: Batch) -> Result<usize, Refusal> {
        if batch.origin == self.config.origin {
            return Ok(0);
        }
        if let Some(link) = self.links.lock().get(&batch.from) {
            link.alive.notify_one();
        }
        for e in &batch.events {
            if e.origin != batch.origin || e.epoch != batch.epoch {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("event {} is not from the batch's origin", e.id),
                ));
            }
        }
        let mut applied = 0;
        for e in batch.events {
            applied += usize::from(self.apply(e));
        }
        let entry = DigestEntry {
            origin: batch.origin,
            epoch: batch.epoch,
            started_ms: batch.started_ms,
            last_seq: batch.last_seq,
            beat: 0,
            addr: batch.from,
        };
        self.check_sequence(&entry, Heard::Origin);
        for d in batch.digest {
            if d.origin != self.config.origin {
                self.check_sequence(&d, Heard::Beat(d.beat));
            }
        }
        Ok(applied)
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

    /// Notes what is said of an origin's stream, and recovers any hole from its log.
    fn check_sequence(self: &Arc<Self>, said: &DigestEntry, heard: Heard) {
        let need = {
            let mut origins = self.origins.lock();
            let st = origins.entry(said.origin.clone()).or_default();
            st.merge(said, heard, Instant::now())
        };
        if let Some(since) = need {
            let me = self.clone();
            let (origin, epoch, from) = (said.origin.clone(), said.epoch, said.addr);
            tokio::spawn(async move { me.recover(origin, epoch, since, from).await });
        }
    }

    /// Fetches the events we missed from their origin's log; purges everything if it can't.
    async fn recover(self: Arc<Self>, origin: String, epoch: u64, since: u64, from: SocketAddr) {
        let path = format!("{EVENTS_PATH}?since={since}");
        let timeout = self.config.request_timeout;
        let result = self
            .request(from, "GET", &path, Vec::new(), timeout, "log", None)
            .await;
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
                let reason = format!("events {since}.. from {origin} are no longer in its log");
                corral_core::invalidation::purge_after_unrecoverable_gap(&*self.applier, &reason);
                self.skip_to(&origin, epoch);
                // The origin has applied every event we missed: ask it first.
                self.rewarm_after_reset(Some(from));
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
                st.contiguous = st.contiguous.max(top).max(st.last_seq_known);
                st.ahead.clear();
            }
        }
    }

    /// Handles `GET /_corral/v1/events?since=N`: our own events after N, or 410 Gone.
    pub fn log_page(
        &self,
        headers: &HeaderMap,
        path_and_query: &str,
    ) -> Result<serde_json::Value, Refusal> {
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
}

impl OriginState {
    /// Takes in what is said of this origin's stream. Returns the sequence number to recover
    /// from when a hole is now known (and no recovery is running).
    pub(crate) fn merge(&mut self, said: &DigestEntry, heard: Heard, now: Instant) -> Option<u64> {
        if self.epoch != said.epoch {
            // The origin itself is authoritative. A digest may carry news of an earlier life
            // of the origin: only a later start replaces what is known.
            if matches!(heard, Heard::Beat(_)) && said.started_ms <= self.started_ms {
                return None;
            }
            // A new epoch (the peer restarted, or we just met it): everything from 1 on
            // counts, and what it did before we started does not matter to our cache.
            *self = OriginState {
                epoch: said.epoch,
                ..Default::default()
            };
        }
        self.started_ms = self.started_ms.max(said.started_ms);
        self.last_seq_known = self.last_seq_known.max(said.last_seq);
        let alive = match heard {
            Heard::Origin => true,
            Heard::Beat(beat) if beat > self.beat => {
                self.beat = beat;
                true
            }
            Heard::Beat(_) => false,
        };
        if alive {
            self.from = Some(said.addr);
            self.last_heard = Some(now);
        }
        if self.contiguous < said.last_seq && !self.recovering {
            self.recovering = true;
            Some(self.contiguous)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(epoch: u64, started_ms: u64, last_seq: u64, beat: u64) -> DigestEntry {
        DigestEntry {
            origin: "o".into(),
            epoch,
            started_ms,
            last_seq,
            beat,
            addr: "127.0.0.9:9".parse().unwrap(),
        }
    }

    #[test]
    fn a_digest_reveals_a_hole_and_a_rising_beat_means_alive() {
        let t0 = Instant::now();
        let mut st = OriginState::default();
        // First news, by gossip: adopt the epoch, recover everything after 0.
        assert_eq!(st.merge(&said(7, 100, 3, 1), Heard::Beat(1), t0), Some(0));
        assert_eq!((st.epoch, st.last_heard), (7, Some(t0)));
        // A recovery is running: no second one.
        assert_eq!(st.merge(&said(7, 100, 5, 2), Heard::Beat(2), t0), None);
        st.recovering = false;
        for seq in 1..=5 {
            st.record(seq);
        }
        // Caught up: nothing to recover; a beat that did not rise is no sign of life.
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert_eq!(st.merge(&said(7, 100, 5, 2), Heard::Beat(2), t1), None);
        assert_eq!(st.last_heard, Some(t0));
        assert_eq!(st.merge(&said(7, 100, 5, 3), Heard::Beat(3), t1), None);
        assert_eq!(st.last_heard, Some(t1));
    }

    #[test]
    fn news_of_an_earlier_life_never_replaces_the_current_one() {
        let t = Instant::now();
        let mut st = OriginState::default();
        st.merge(&said(7, 200, 0, 1), Heard::Beat(1), t);
        // Epochs are random: the start time orders them. An older life is ignored...
        assert_eq!(st.merge(&said(3, 100, 9, 50), Heard::Beat(50), t), None);
        assert_eq!((st.epoch, st.beat, st.last_seq_known), (7, 1, 0));
        // ...a later one replaces it, as does the origin itself, whatever it says.
        assert_eq!(st.merge(&said(8, 300, 2, 1), Heard::Beat(1), t), Some(0));
        assert_eq!(st.epoch, 8);
        st.recovering = false;
        assert_eq!(st.merge(&said(4, 0, 1, 0), Heard::Origin, t), Some(0));
        assert_eq!(st.epoch, 4);
    }
}
