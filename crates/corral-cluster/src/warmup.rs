//! Warm-up from peers: a starting replica asks a peer for its hottest entries and stores them
//! as if it had fetched them, before it reports ready.
//!
//! * **Donor** (`GET /_corral/v1/warmup?max_bytes=N&max_entries=M`, signed like every peer
//!   call, path and query included, within the replay window): takes a snapshot of
//!   [`Store::hottest`] within the smaller of the asked and its own budgets, and streams it as
//!   length-prefixed [`wire`] records, paced to `rate` bytes per second so that donating never
//!   takes the bandwidth or CPU its own clients need.
//! * **Receiver** ([`Warmup::receive`]): asks its peers in turn until one answers, decodes each
//!   record against [`wire::Limits`] (garbage ends the stream, nothing of it is stored), and
//!   stores it with [`Store::insert_warmed`]: an entry whose fetch started before a purge
//!   applied here that covers it is refused (the rule in `docs/architecture.md`), with the
//!   replay window as the allowance for the two clocks. It stops at its own budgets whatever
//!   the donor sends, and at the deadline whatever happens.
//! * **Re-warm** ([`Cluster::rewarm_after_reset`]): after a purge of everything for a gap no
//!   log could fill (`Store::reset`), the same receiving from a live peer — the origin whose
//!   log had lost the events first — with [`Store::insert_rewarmed`]: the reset does not judge
//!   what the peer sends (it stands in for purges that peer applied), every purge applied
//!   here does. Readiness is not touched: the replica keeps serving, cold, meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use corral_core::entry::wire;
use corral_core::store::Warmed;
use corral_core::{Backoff, Store};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::KindLabel;
use crate::Cluster;

/// The donor's endpoint, on the peer (admin) listener.
pub const WARMUP_PATH: &str = "/_corral/v1/warmup";

/// `[cluster] warmup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupConfig {
    /// Warm up from a peer at start (readiness waits for it or for `deadline`).
    pub enabled: bool,
    /// Bytes (as the store charges them) to receive at most; also the most this replica donates.
    pub max_bytes: u64,
    /// Entries to receive at most; also the most this replica donates.
    pub max_entries: usize,
    /// How long readiness waits for warm-up at most.
    pub deadline: Duration,
    /// Bytes per second this replica donates at most.
    pub rate: u64,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig {
            enabled: false,
            max_bytes: 256 << 20,
            max_entries: 100_000,
            deadline: Duration::from_secs(30),
            rate: 32 << 20,
        }
    }
}

/// Warm-up metrics (`corral_warmup_*`).
#[derive(Clone, Default)]
pub struct WarmupMetrics {
    pub entries: Counter,
    pub bytes: Counter,
    /// How long the last warm-up took (seconds).
    pub duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub donated: Counter,
    /// Entries (or whole streams) refused, by kind: `purged`, `expired`, `invalid`, `budget`.
    pub refused: Family<KindLabel, Counter>,
    /// Re-warms begun after a reset (their entries count in `entries` and `bytes` too).
    pub rewarms: Counter,
}

impl WarmupMetrics {
    pub fn register(r: &mut Registry) -> WarmupMetrics {
        let m = WarmupMetrics::default();
        r.register(
            "corral_warmup_entries",
            "Entries received from peers at warm-up and stored",
            m.entries.clone(),
        );
        r.register(
            "corral_warmup_bytes",
            "Record bytes received from peers at warm-up",
            m.bytes.clone(),
        );
        r.register(
            "corral_warmup_duration_seconds",
            "How long the last warm-up took",
            m.duration.clone(),
        );
        r.register(
            "corral_warmup_donated_bytes",
            "Record bytes this replica sent to warming peers",
            m.donated.clone(),
        );
        r.register(
            "corral_warmup_refused",
            "Warm-up entries refused (purged, expired), and streams cut (invalid, budget)",
            m.refused.clone(),
        );
        r.register(
            "corral_warmup_rewarms",
            "Re-warms from a peer after purging everything for a sequence gap no log could fill",
            m.rewarms.clone(),
        );
        m
    }

    fn refuse(&self, kind: &'static str) {
        self.refused.get_or_create(&KindLabel { kind }).inc();
    }
}

/// How a warm-up ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    pub bytes: u64,
    /// The donor that answered, if one did.
    pub donor: Option<SocketAddr>,
    /// The deadline passed first.
    pub timed_out: bool,
}

/// A replica's warm-up: donating and receiving.
pub struct Warmup {
    pub config: WarmupConfig,
    pub metrics: WarmupMetrics,
    pub store: Arc<Store>,
    /// What a record may hold (bodies up to `max_object_size`).
    pub limits: wire::Limits,
    /// Variants kept per URL (`[cache] max_variants`).
    pub max_variants: usize,
    /// One re-warm at a time; the number of the reset the last one answered.
    rewarmed: tokio::sync::Mutex<u64>,
}

/// Each record on the stream is a u32 length and the record.
const FRAME_HEADER: usize = 4;
/// Records are sent in chunks of about this size (the pacing's unit).
const CHUNK: usize = 64 << 10;

/// A donor's budget asked in the query, capped by the donor's own.
fn asked(query: &str, name: &str, cap: u64) -> u64 {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .map_or(cap, |v| v.min(cap))
}

impl Warmup {
    pub fn new(
        config: WarmupConfig,
        metrics: WarmupMetrics,
        store: Arc<Store>,
        limits: wire::Limits,
        max_variants: usize,
    ) -> Warmup {
        Warmup {
            config,
            metrics,
            store,
            limits,
            max_variants,
            rewarmed: tokio::sync::Mutex::new(0),
        }
    }

    /// Answers a peer's `GET /_corral/v1/warmup?…` (`path_and_query` exactly as signed): the
    /// signature first, then a paced stream of this store's hottest entries.
    pub fn donate(
        self: &Arc<Self>,
        cluster: &Cluster,
        headers: &HeaderMap,
        path_and_query: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>, crate::Refusal>
    {
        cluster.verify(headers, "GET", path_and_query, b"")?;
        let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
        let max_bytes = asked(query, "max_bytes", self.config.max_bytes);
        let max_entries = asked(query, "max_entries", self.config.max_entries as u64);
        let entries = self.store.hottest(
            usize::try_from(max_entries).unwrap_or(usize::MAX),
            max_bytes,
        );
        let state = (entries.into_iter(), self.clone(), Instant::now(), 0u64);
        Ok(futures_util::stream::unfold(
            state,
            |(mut entries, me, started, sent)| async move {
                let mut chunk = Vec::with_capacity(CHUNK);
                for e in entries.by_ref() {
                    let at = chunk.len();
                    chunk.extend_from_slice(&[0; FRAME_HEADER]);
                    wire::encode(&e, &mut chunk);
                    let len = u32::try_from(chunk.len() - at - FRAME_HEADER).unwrap_or(u32::MAX);
                    chunk[at..at + FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
                    if chunk.len() >= CHUNK {
                        break;
                    }
                }
                if chunk.is_empty() {
                    return None;
                }
                // Paced: the bytes sent so far may not run ahead of `rate` per second.
                let due = Duration::from_secs_f64(sent as f64 / me.config.rate.max(1) as f64);
                tokio::time::sleep_until((started + due).into()).await;
                me.metrics.donated.inc_by(chunk.len() as u64);
                let sent = sent + chunk.len() as u64;
                Some((Ok(Bytes::from(chunk)), (entries, me, started, sent)))
            },
        ))
    }

    /// Warms this replica's store from a peer: asks each known peer in turn (waiting for
    /// discovery to name some) until one streams its entries, within the deadline.
    pub async fn receive(&self, cluster: &Cluster) -> Summary {
        self.run(cluster, None, None).await
    }

    /// Warms this replica again after reset number `reset` (see [`Store::insert_rewarmed`]),
    /// asking `prefer` first. Runs once per reset: one that a later re-warm already answered
    /// (resets in a burst) is skipped.
    pub async fn rewarm(&self, cluster: &Cluster, reset: u64, prefer: Option<SocketAddr>) {
        let mut rewarmed = self.rewarmed.lock().await;
        // The latest reset, not `reset`: a re-warm that waits for another answers both.
        let latest = self.store.last_reset().max(reset);
        if *rewarmed >= latest {
            return;
        }
        *rewarmed = latest;
        self.metrics.rewarms.inc();
        tracing::info!(
            reset = latest,
            ?prefer,
            "re-warming from a peer after purging everything"
        );
        self.run(cluster, Some(latest), prefer).await;
    }

    async fn run(
        &self,
        cluster: &Cluster,
        reset: Option<u64>,
        prefer: Option<SocketAddr>,
    ) -> Summary {
        let started = Instant::now();
        let mut summary = Summary {
            entries: 0,
            bytes: 0,
            donor: None,
            timed_out: false,
        };
        let work = async {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
            loop {
                let mut peers = cluster.peer_addrs();
                if let Some(first) = prefer {
                    peers.retain(|p| *p != first);
                    peers.insert(0, first);
                }
                for peer in peers {
                    match self.stream_from(cluster, peer, reset, &mut summary).await {
                        Ok(()) => {
                            summary.donor = Some(peer);
                            return;
                        }
                        Err(e) => tracing::info!(%peer, error = %e, "warm-up: peer did not donate"),
                    }
                }
                // No peer yet (discovery has not answered) or none answered: try again.
                backoff.wait().await;
            }
        };
        if tokio::time::timeout(self.config.deadline, work)
            .await
            .is_err()
        {
            summary.timed_out = true;
        }
        self.metrics.duration.set(started.elapsed().as_secs_f64());
        tracing::info!(
            entries = summary.entries,
            bytes = summary.bytes,
            donor = ?summary.donor,
            timed_out = summary.timed_out,
            rewarm = reset.is_some(),
            "warm-up done"
        );
        summary
    }

    /// One donor's stream, stored record by record as it arrives.
    async fn stream_from(
        &self,
        cluster: &Cluster,
        peer: SocketAddr,
        reset: Option<u64>,
        summary: &mut Summary,
    ) -> Result<(), String> {
        let path = format!(
            "{WARMUP_PATH}?max_bytes={}&max_entries={}",
            self.config.max_bytes, self.config.max_entries
        );
        let mut req = http::Request::get(format!("http://{peer}{path}"));
        for (n, v) in cluster.config.secret.sign("GET", &path, b"") {
            req = req.header(n, v);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp =
            tokio::time::timeout(cluster.config.request_timeout, cluster.client.request(req))
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let max_frame = self.limits.max_body + 4 * self.limits.max_part + 256;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(record) =
                next_frame(&mut buf, max_frame).inspect_err(|_| self.metrics.refuse("invalid"))?
            {
                if !self.take(&record, cluster, reset, summary)? {
                    return Ok(());
                }
            }
        }
        if !buf.is_empty() {
            self.metrics.refuse("invalid");
            return Err("the stream ended inside a record".into());
        }
        Ok(())
    }

    /// Stores one record; `Ok(false)` once a budget is spent.
    fn take(
        &self,
        record: &[u8],
        cluster: &Cluster,
        reset: Option<u64>,
        summary: &mut Summary,
    ) -> Result<bool, String> {
        let within = summary.entries < self.config.max_entries as u64
            && summary.bytes + record.len() as u64 <= self.config.max_bytes;
        if !within {
            self.metrics.refuse("budget");
            return Ok(false);
        }
        let decoded = wire::decode(record, self.limits).map_err(|e| {
            self.metrics.refuse("invalid");
            e.to_string()
        })?;
        summary.bytes += record.len() as u64;
        self.metrics.bytes.inc_by(record.len() as u64);
        let allowance = cluster.config.replay_window;
        let warmed = match reset {
            None => self
                .store
                .insert_warmed(decoded, allowance, self.max_variants),
            Some(reset) => self
                .store
                .insert_rewarmed(decoded, allowance, self.max_variants, reset),
        };
        match warmed {
            Warmed::Stored => {
                summary.entries += 1;
                self.metrics.entries.inc();
            }
            Warmed::Purged => self.metrics.refuse("purged"),
            Warmed::Expired => self.metrics.refuse("expired"),
        }
        Ok(true)
    }
}

impl Cluster {
    /// Attaches the warm-up, so that a reset is followed by a re-warm when it is enabled.
    pub fn attach_warmup(&self, warmup: Arc<Warmup>) {
        let _ = self.warmup.set(warmup);
    }

    /// After `Store::reset` (this replica purged everything for invalidations it missed),
    /// warms it again from a live peer, `prefer` first, in the background, when warm-up is
    /// enabled. The reset's number is read now, after the reset: the donor's snapshot is
    /// taken after it, so it reflects every event the donor had applied by then.
    pub fn rewarm_after_reset(self: &Arc<Self>, prefer: Option<SocketAddr>) {
        let Some(w) = self.warmup.get().filter(|w| w.config.enabled).cloned() else {
            return;
        };
        let reset = w.store.last_reset();
        let me = self.clone();
        tokio::spawn(async move { w.rewarm(&me, reset, prefer).await });
    }
}

/// Splits the next whole record off `buf`; `None` until one has fully arrived. A length
/// beyond `max` is an error before anything more is buffered.
fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, String> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(format!("a record of {len} bytes, over the {max} allowed"));
    }
    if buf.len() < FRAME_HEADER + len {
        return Ok(None);
    }
    buf.advance(FRAME_HEADER);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_budgets_never_exceed_the_donors() {
        assert_eq!(asked("max_bytes=10&max_entries=3", "max_bytes", 100), 10);
        assert_eq!(asked("max_bytes=1000", "max_bytes", 100), 100);
        assert_eq!(asked("max_bytes=lots", "max_bytes", 100), 100);
        assert_eq!(asked("", "max_entries", 7), 7);
    }

    #[test]
    fn frames_split_whole_and_refuse_oversized_lengths() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(b"ab");
        assert_eq!(next_frame(&mut buf, 10), Ok(None));
        buf.extend_from_slice(b"c");
        assert_eq!(
            next_frame(&mut buf, 10),
            Ok(Some(Bytes::from_static(b"abc")))
        );
        assert!(buf.is_empty());
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(next_frame(&mut buf, 10).is_err());
    }
}
