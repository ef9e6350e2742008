//! `[[sources]]` in a running replica: who follows each change stream, how its transactions
//! become purges, and what `/sources` and the `corral_source_*` metrics show.
//!
//! * **Leadership** (`source_leader.rs`). One replica at a time follows a source: the holder
//!   of its lease in Redis when Redis is configured, else the lowest address among this
//!   replica and the peers not reported silent (the cluster's own liveness, so every replica
//!   that sees the same peers agrees). A replica that stops leading drops its follower (and so
//!   its connection: PostgreSQL frees the slot); the next one takes over from the slot's
//!   confirmed position. Two replicas that briefly disagree cannot both stream:
//!   a logical slot has one reader, the second is refused and retries with backoff. MariaDB
//!   keeps one binlog dump per replica id, and every replica registers with the source's
//!   `server_id`, so a second dump ends the first.
//! * **Purges.** A committed transaction's tags and URLs go through the hub like any purge
//!   (local store, peers, Redis bus, SSE feed, webhooks) with `cause = "source:<name>"`.
//! * **At least once.** The follower is told a transaction is done only once its purges were
//!   applied here and acknowledged by every live peer; only then does the slot advance (or,
//!   for MariaDB, the GTID position stored in `corral.source_positions`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_cluster::hub::Hub;
use corral_cluster::Cluster;
use corral_core::{Cause, Mode, Purge, Selectors};
use corral_redis::RedisClient;
use corral_source::mariadb;
use corral_source::pg::follow;
use corral_source::pg::PgError;
use corral_source::progress::{format_lsn, Progress, Status};
use corral_source::rules::Targets;
use corral_source::transaction::Committed;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::config_sources::Follower;
use crate::source_leader::Election;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Default, Clone)]
struct SourceMetrics {
    transactions: Family<SourceLabel, Counter>,
    purges: Family<SourceLabel, Counter>,
    errors: Family<SourceLabel, Counter>,
    lag_bytes: Family<SourceLabel, Gauge>,
    lag_seconds: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    leader: Family<SourceLabel, Gauge>,
}

impl SourceMetrics {
    fn register(r: &mut Registry) -> SourceMetrics {
        let m = SourceMetrics::default();
        r.register(
            "corral_source_transactions",
            "Committed transactions received from a source's change stream",
            m.transactions.clone(),
        );
        r.register(
            "corral_source_purges",
            "Purges issued for a source's transactions",
            m.purges.clone(),
        );
        r.register(
            "corral_source_errors",
            "Change-stream sessions that ended in an error (they reconnect with backoff)",
            m.errors.clone(),
        );
        r.register(
            "corral_source_lag_bytes",
            "WAL bytes between the server's position and the confirmed one (on the leader)",
            m.lag_bytes.clone(),
        );
        r.register(
            "corral_source_lag_seconds",
            "Age of the oldest transaction received and not yet acknowledged (on the leader)",
            m.lag_seconds.clone(),
        );
        r.register(
            "corral_source_leader",
            "1 on the replica that follows the source",
            m.leader.clone(),
        );
        m
    }
}

/// One source in this process.
struct Entry {
    source: Follower,
    label: SourceLabel,
    progress: Arc<Progress>,
    leader: Mutex<Option<SocketAddr>>,
    following: Mutex<Option<JoinHandle<()>>>,
    errors_seen: AtomicU64,
}

/// Every configured source.
pub struct Sources {
    entries: Vec<Arc<Entry>>,
    metrics: SourceMetrics,
    started: AtomicBool,
    /// Leader leases are held here when Redis is configured (`source_leader.rs`).
    redis: Option<Arc<RedisClient>>,
}

impl Sources {
    /// Loads each source's credentials (files, environment) and registers the metrics.
    pub fn new(
        cfg: &Config,
        redis: Option<Arc<RedisClient>>,
        registry: &mut Registry,
    ) -> Result<Arc<Sources>, String> {
        let mut entries = Vec::new();
        for spec in &cfg.sources {
            let source = spec.load()?;
            entries.push(Arc::new(Entry {
                label: SourceLabel {
                    source: source.name().to_owned(),
                },
                source,
                progress: Arc::default(),
                leader: Mutex::default(),
                following: Mutex::default(),
                errors_seen: AtomicU64::new(0),
            }));
        }
        let metrics = if entries.is_empty() {
            SourceMetrics::default()
        } else {
            SourceMetrics::register(registry)
        };
        Ok(Arc::new(Sources {
            entries,
            metrics,
            started: AtomicBool::new(false),
            redis,
        }))
    }

    /// Checks each source's rules against its database. A missing table or column is an
    /// error (the replica does not start); a database that cannot be reached is only a warning
    /// (the leader checks again on every connect, and `/sources` shows why it cannot follow).
    pub async fn preflight(&self) -> Result<(), String> {
        for e in &self.entries {
            let unreachable = match check_rules(&e.source).await {
                Ok(()) => continue,
                Err(Checked::Rules(why)) => return Err(why),
                Err(Checked::Unreachable(why)) => why,
            };
            tracing::warn!(source = %e.source.name(), error = %unreachable, "cannot check the rules against the database now; the leader will when it connects");
        }
        Ok(())
    }

    /// Starts each source's applier and leadership loop (once).
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>, me: SocketAddr) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        for e in &self.entries {
            let (tx, rx) = mpsc::channel(256);
            tokio::spawn(apply(e.clone(), hub.clone(), rx, self.metrics.clone()));
            let election = Election::new(self.redis.clone(), e.source.name(), me);
            tokio::spawn(lead(
                e.clone(),
                hub.clone(),
                me,
                election,
                tx,
                self.metrics.clone(),
            ));
        }
    }

    /// The `/sources` document.
    pub fn json(&self) -> serde_json::Value {
        let now = corral_core::invalidation::now_ms() as i64;
        let sources: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| {
                let s = e.progress.status();
                let leading = e.following.lock().is_some();
                let (kind, slot, publication, server_id) = match &e.source {
                    Follower::Postgres(p) => {
                        ("postgres", Some(&p.slot), Some(&p.publication), None)
                    }
                    Follower::MariaDb(m) => ("mariadb", None, None, Some(m.server_id)),
                };
                serde_json::json!({
                    "name": e.source.name(),
                    "kind": kind,
                    "slot": slot,
                    "publication": publication,
                    "server_id": server_id,
                    "confirmed_gtid": s.confirmed_gtid,
                    "received_gtid": s.received_gtid,
                    "leader": e.leader.lock().map(|a| a.to_string()),
                    "leadership": if self.redis.is_some() { "redis" } else { "peers" },
                    "is_leader": leading,
                    "streaming": leading && s.streaming,
                    "confirmed_lsn": format_lsn(s.confirmed_lsn),
                    "received_lsn": format_lsn(s.received_lsn),
                    "server_lsn": format_lsn(s.server_lsn),
                    "lag_bytes": if leading { lag_bytes(&s) } else { None },
                    "lag_seconds": leading.then(|| lag_seconds(&s, now)),
                    "transactions": s.transactions,
                    "last_transaction": s.last_transaction,
                    "errors": s.errors,
                    "last_error": s.last_error,
                })
            })
            .collect();
        serde_json::json!({ "sources": sources })
    }
}

/// Why the rules could not be checked at start.
enum Checked {
    /// A missing table or column: the replica must not start.
    Rules(String),
    /// The database cannot be reached or refused us: the leader checks again later.
    Unreachable(String),
}

async fn check_rules(source: &Follower) -> Result<(), Checked> {
    let timeout = Duration::from_secs(10);
    match source {
        Follower::Postgres(pg) => {
            let check = async {
                let mut conn =
                    corral_source::pg::conn::Connection::open(&pg.connect, timeout).await?;
                follow::check_rules(&mut conn, pg).await
            };
            check.await.map_err(|e| match e {
                PgError::Rules(why) => Checked::Rules(why),
                other => Checked::Unreachable(other.to_string()),
            })
        }
        Follower::MariaDb(my) => {
            let check = async {
                let mut conn = mariadb::conn::Connection::open(&my.connect, timeout).await?;
                mariadb::follow::check_rules(&mut conn, my).await
            };
            check.await.map_err(|e| match e {
                mariadb::Error::Rules(why) => Checked::Rules(why),
                other => Checked::Unreachable(other.to_string()),
            })
        }
    }
}

/// The bytes between the server's position and the confirmed one. A MariaDB position is
/// the binlog file's number and an offset in it: bytes are known within one file only.
fn lag_bytes(s: &Status) -> Option<u64> {
    if s.confirmed_gtid.is_some() && s.server_lsn >> 32 != s.confirmed_lsn >> 32 {
        return None;
    }
    Some(s.server_lsn.saturating_sub(s.confirmed_lsn))
}

fn lag_seconds(s: &Status, now_ms: i64) -> f64 {
    s.oldest_unacked_ms
        .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0)
}

/// Follows the source while this replica is the leader; updates the gauges.
async fn lead(
    e: Arc<Entry>,
    hub: Arc<Hub>,
    me: SocketAddr,
    election: Election,
    tx: mpsc::Sender<Committed>,
    m: SourceMetrics,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(leader) = election.leader(hub.cluster(), me).await else {
            continue; // who leads is not known yet: nothing changes
        };
        *e.leader.lock() = Some(leader);
        let mut following = e.following.lock();
        match (leader == me, following.is_some()) {
            (true, false) => {
                tracing::info!(source = %e.source.name(), "this replica leads the source: following its change stream");
                let (progress, tx) = (e.progress.clone(), tx.clone());
                *following = Some(match &e.source {
                    Follower::Postgres(pg) => tokio::spawn(follow::run(pg.clone(), progress, tx)),
                    Follower::MariaDb(my) => {
                        tokio::spawn(mariadb::follow::run(my.clone(), progress, tx))
                    }
                });
            }
            (false, true) => {
                tracing::info!(source = %e.source.name(), %leader, "another replica leads the source: stopping");
                following.take().expect("is_some").abort();
                e.progress.set_streaming(false);
            }
            _ => {}
        }
        let leading = following.is_some();
        drop(following);
        gauges(&e, &m, leading);
    }
}

fn gauges(e: &Entry, m: &SourceMetrics, leading: bool) {
    let s = e.progress.status();
    let seen = e.errors_seen.swap(s.errors, Ordering::AcqRel);
    m.errors
        .get_or_create(&e.label)
        .inc_by(s.errors.saturating_sub(seen));
    m.leader.get_or_create(&e.label).set(i64::from(leading));
    let now = corral_core::invalidation::now_ms() as i64;
    let (bytes, seconds) = match leading {
        true => (lag_bytes(&s).unwrap_or(0), lag_seconds(&s, now)),
        false => (0, 0.0),
    };
    m.lag_bytes
        .get_or_create(&e.label)
        .set(bytes.min(i64::MAX as u64) as i64);
    m.lag_seconds.get_or_create(&e.label).set(seconds);
}

/// Turns each committed transaction into purges, in order, and acknowledges it to the
/// follower once every live peer has acknowledged them.
async fn apply(e: Arc<Entry>, hub: Arc<Hub>, mut rx: mpsc::Receiver<Committed>, m: SourceMetrics) {
    let cause = Cause::Source(e.source.name().to_owned());
    let who = format!("source:{}", e.source.name());
    while let Some(first) = rx.recv().await {
        // What queued up while the last batch was being acknowledged goes out now and is
        // acknowledged together: a peer's acknowledgement is a watermark (every event up to
        // it), so one wait for the batch's last event confirms all of them, and the stream
        // is not held to one transaction per round trip to the peers.
        let mut batch = vec![first];
        while batch.len() < APPLY_BATCH {
            let Ok(more) = rx.try_recv() else { break };
            batch.push(more);
        }
        let (mut last, mut end) = (None, None);
        for c in batch {
            m.transactions.get_or_create(&e.label).inc();
            for selectors in selectors(e.source.name(), c.targets) {
                last = Some(
                    hub.invalidate(Purge::new(selectors, Mode::Hard), cause.clone(), &who)
                        .event
                        .seq,
                );
                m.purges.get_or_create(&e.label).inc();
            }
            end = Some(c.end_lsn);
        }
        if let (Some(seq), Some(cluster)) = (last, hub.cluster()) {
            wait_for_live_peers(cluster, seq).await;
        }
        if let Some(end) = end {
            e.progress.acknowledge(end);
        }
    }
}

/// The most committed transactions applied before one wait for the peers' acknowledgement.
const APPLY_BATCH: usize = 256;

/// Waits until every peer not reported silent has acknowledged `seq`. A silent peer is not
/// waited for: when it comes back it recovers the event from this replica's log (or purges
/// everything), as with any purge.
async fn wait_for_live_peers(cluster: &Arc<Cluster>, seq: u64) {
    loop {
        let acks = cluster.wait_acked(seq, Duration::from_secs(1)).await;
        let silent: Vec<String> = cluster
            .silent_peers()
            .iter()
            .map(ToString::to_string)
            .collect();
        if acks.pending.iter().all(|p| silent.contains(p)) {
            return;
        }
    }
}

/// A transaction's targets as purge events within the selector limits; a value that cannot
/// be a selector (too long, control characters, not a path) is left out and logged.
fn selectors(source: &str, targets: Targets) -> Vec<Selectors> {
    let limits = corral_core::invalidation::SelectorLimits::default();
    let valid = |s: Selectors| s.validate(&limits).map(|()| s);
    let mut ok = Vec::new();
    let tags = targets.tags.into_iter().map(|t| Selectors {
        tags: vec![t],
        ..Default::default()
    });
    let urls = targets.urls.into_iter().map(|u| Selectors {
        urls: vec![u],
        ..Default::default()
    });
    for one in tags.chain(urls) {
        match valid(one) {
            Ok(s) => ok.push(s),
            Err(why) => tracing::warn!(source, %why, "a rendered selector is not valid; left out"),
        }
    }
    let mut out: Vec<Selectors> = Vec::new();
    for s in ok {
        match out.last_mut() {
            Some(last) if last.len() < limits.max_selectors => {
                last.tags.extend(s.tags);
                last.urls.extend(s.urls);
            }
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_bounded_valid_events() {
        let mut t = Targets::default();
        t.tags.extend((0..1500).map(|i| format!("t{i}")));
        t.tags.insert("bad\ntag".into());
        t.urls.insert("/ok".into());
        t.urls.insert("/".repeat(3000));
        let events = selectors("s", t);
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|s| s.len() <= 1000));
        assert_eq!(events.iter().map(Selectors::len).sum::<usize>(), 1501);
    }
}
