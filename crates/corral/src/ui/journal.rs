//! The purge journal: the last purges applied on this replica, for the dashboard's live stream
//! and `corral top`: who asked (or which peer it came from), what it covered, how many entries,
//! and — for this replica's own events — how long until every peer acknowledged it.
//!
//! Bounded in every dimension a client chooses: [`KEPT`] purges, [`SHOWN`] selectors of each
//! kind per purge, each cut to [`SELECTOR_CHARS`]; at most [`TRACKERS`] acknowledgement
//! waits at once (a purge beyond that is shown as not tracked rather than queued).
//!
//! The journal is a [`Subscriber`] of the invalidation hub (`corral_cluster::hub`): it
//! records what the hub tells it, and the hub knows nothing of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_cluster::hub::{Applied, Provenance, Subscriber};
use corral_cluster::Cluster;
use corral_core::{InvalidationEvent, Selectors};
use parking_lot::Mutex;
use serde::Serialize;

/// Purges kept.
pub const KEPT: usize = 50;
/// Selectors of each kind kept per purge (the rest are counted).
pub const SHOWN: usize = 8;
/// Characters kept of each selector.
pub const SELECTOR_CHARS: usize = 200;
/// Acknowledgement waits running at once.
pub const TRACKERS: usize = 64;
/// How long a tracker waits for every peer before it reports who is still pending.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Where a journaled purge came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Made on this replica (admin API, `PURGE`, an unsafe method): peers acknowledge it.
    Local,
    /// Received from a peer (or the Redis bus).
    Peer,
    /// Everything dropped because missed invalidations could not be recovered.
    Reset,
}

/// How far a local purge's fan-out got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Fanout {
    /// Not this replica's event to track (from a peer, a reset), or no cluster.
    NotApplicable,
    /// Waiting for acknowledgements.
    Waiting,
    /// Every peer present when it was published acknowledged it, `after_ms` after it was
    /// applied here (`peers` = how many; 0 when there were none).
    Acknowledged { after_ms: u64, peers: usize },
    /// [`ACK_WAIT`] passed with these peers still pending.
    Pending {
        acknowledged: Vec<String>,
        pending: Vec<String>,
    },
    /// Too many purges at once: not tracked.
    Untracked,
}

/// The selectors of one purge, cut to size for display.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub urls: Vec<String>,
    pub tags: Vec<String>,
    pub prefixes: Vec<String>,
    pub all: bool,
    /// Selectors not shown (beyond [`SHOWN`] of a kind).
    pub more: usize,
}

impl Shown {
    fn of(s: &Selectors) -> Shown {
        let mut more = 0;
        let mut cut = |list: &[String]| {
            more += list.len().saturating_sub(SHOWN);
            list.iter()
                .take(SHOWN)
                .map(|v| v.chars().take(SELECTOR_CHARS).collect())
                .collect()
        };
        Shown {
            urls: cut(&s.urls),
            tags: cut(&s.tags),
            prefixes: cut(&s.prefixes),
            all: s.all,
            more,
        }
    }
}

/// One journaled purge.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: String,
    pub origin: String,
    pub seq: u64,
    pub source: Source,
    pub cause: corral_core::Cause,
    /// Who asked: the client address for admin and `PURGE` requests, the reason for a reset.
    pub who: String,
    /// Hard or soft: `"soft": true|false` in the dashboard's JSON, as before.
    #[serde(rename = "soft", with = "corral_core::invalidation::soft_flag")]
    pub mode: corral_core::Mode,
    pub what: Shown,
    /// Entries it covered here.
    pub purged: usize,
    /// When it was applied here, milliseconds since the Unix epoch.
    pub applied_ms: u64,
    pub fanout: Fanout,
}

/// The journal itself.
#[derive(Default)]
pub struct Journal {
    /// Shared with the trackers, which settle a record once its peers have answered.
    records: Arc<Mutex<VecDeque<Record>>>,
    trackers: Arc<AtomicUsize>,
}

/// What the hub applies is journaled: a local purge with the client that asked (and its
/// fan-out tracked), a peer's with its origin, a reset with its reason.
impl Subscriber for Journal {
    fn applied(&self, a: &Applied<'_>) {
        match a.provenance {
            Provenance::Local { who, cluster } => {
                self.record(a.event, a.purged, who, Source::Local, cluster)
            }
            Provenance::Peer => self.record(a.event, a.purged, &a.event.origin, Source::Peer, None),
            Provenance::Reset { reason } => {
                self.record(a.event, a.purged, reason, Source::Reset, None)
            }
        }
    }
}

impl Journal {
    /// Journals a purge applied here. For a local one with a cluster, a tracker waits for
    /// every peer's acknowledgement and records how long that took.
    pub fn record(
        &self,
        event: &InvalidationEvent,
        purged: usize,
        who: &str,
        source: Source,
        cluster: Option<&Arc<Cluster>>,
    ) {
        let fanout = match (source, cluster) {
            (Source::Local, Some(c)) => self.track(c.clone(), event),
            _ => Fanout::NotApplicable,
        };
        let record = Record {
            id: event.id.clone(),
            origin: event.origin.clone(),
            seq: event.seq,
            source,
            cause: event.cause.clone(),
            who: who.chars().take(SELECTOR_CHARS).collect(),
            mode: event.purge.mode,
            what: Shown::of(event.selectors()),
            purged,
            applied_ms: corral_core::invalidation::now_ms(),
            fanout,
        };
        let mut records = self.records.lock();
        if records.len() >= KEPT {
            records.pop_back();
        }
        records.push_front(record);
    }

    /// The kept purges, newest first.
    pub fn recent(&self) -> Vec<Record> {
        self.records.lock().iter().cloned().collect()
    }

    /// Starts waiting for `event`'s acknowledgements, if a tracker is free (and a runtime is
    /// there to run it: always, in the server).
    fn track(&self, cluster: Arc<Cluster>, event: &InvalidationEvent) -> Fanout {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Fanout::Untracked;
        };
        if self.trackers.fetch_add(1, Ordering::AcqRel) >= TRACKERS {
            self.trackers.fetch_sub(1, Ordering::AcqRel);
            return Fanout::Untracked;
        }
        let (records, trackers) = (self.records.clone(), self.trackers.clone());
        let (id, seq) = (event.id.clone(), event.seq);
        let started = Instant::now();
        runtime.spawn(async move {
            let acks = cluster.wait_acked(seq, ACK_WAIT).await;
            let fanout = if acks.pending.is_empty() {
                Fanout::Acknowledged {
                    after_ms: started.elapsed().as_millis() as u64,
                    peers: acks.acknowledged.len(),
                }
            } else {
                Fanout::Pending {
                    acknowledged: acks.acknowledged,
                    pending: acks.pending,
                }
            };
            settle(&records, &id, fanout);
            trackers.fetch_sub(1, Ordering::AcqRel);
        });
        Fanout::Waiting
    }
}

/// Records how a tracked purge's fan-out ended (if it is still kept).
fn settle(records: &Mutex<VecDeque<Record>>, id: &str, fanout: Fanout) {
    if let Some(r) = records.lock().iter_mut().find(|r| r.id == id) {
        r.fanout = fanout;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::{Cause, EventSource};

    fn event(src: &EventSource, selectors: Selectors) -> InvalidationEvent {
        src.next(
            corral_core::Purge::new(selectors, corral_core::Mode::Hard),
            Cause::Admin,
        )
    }

    #[test]
    fn keeps_the_newest_purges_first_and_bounded() {
        let j = Arc::new(Journal::default());
        let src = EventSource::new("a");
        for i in 0..KEPT + 5 {
            let s = Selectors {
                tags: vec![format!("t{i}")],
                ..Default::default()
            };
            j.record(&event(&src, s), i, "127.0.0.1", Source::Local, None);
        }
        let recent = j.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].what.tags, [format!("t{}", KEPT + 4)]);
        assert_eq!(recent[0].purged, KEPT + 4);
        assert_eq!(recent[0].fanout, Fanout::NotApplicable, "no cluster");
    }

    #[test]
    fn a_huge_purge_is_cut_to_size_for_display() {
        let j = Arc::new(Journal::default());
        let s = Selectors {
            urls: (0..1000)
                .map(|i| format!("/{i}/{}", "x".repeat(2000)))
                .collect(),
            ..Default::default()
        };
        j.record(
            &event(&EventSource::new("a"), s),
            0,
            "who",
            Source::Peer,
            None,
        );
        let r = &j.recent()[0];
        assert_eq!(r.what.urls.len(), SHOWN);
        assert_eq!(r.what.more, 1000 - SHOWN);
        assert!(r
            .what
            .urls
            .iter()
            .all(|u| u.chars().count() <= SELECTOR_CHARS));
    }
}
