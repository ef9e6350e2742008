//! What a follower has received and what its applier has acknowledged, shared between the
//! two, whichever database the follower reads (PostgreSQL's slot, MariaDB's binlog).
//!
//! Positions are [`Lsn`]s: PostgreSQL's WAL position, or for MariaDB the binlog file's
//! sequence number in the high 32 bits and the offset in it in the low 32 (both grow in commit
//! order, so "acknowledged up to" means the same thing for both). A MariaDB follower also
//! keeps the GTID position it resumes from, shown beside the LSNs.

use std::collections::VecDeque;

use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use tokio::sync::watch;

use crate::pgoutput::Lsn;
use crate::transaction::Committed;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01): the epoch of
/// [`Committed::commit_time`].
pub const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// What `/sources` and the metrics show of a follower.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub streaming: bool,
    /// The server's position, as its last message said.
    pub server_lsn: Lsn,
    /// The end of the last transaction received.
    pub received_lsn: Lsn,
    /// The position reported to the server as flushed (PostgreSQL) or stored in the
    /// database (MariaDB): acknowledged purges, or an idle stream.
    pub confirmed_lsn: Lsn,
    /// MariaDB: the GTID position after the last transaction received.
    pub received_gtid: Option<String>,
    /// MariaDB: the GTID position stored in the database, where a new leader resumes.
    pub confirmed_gtid: Option<String>,
    pub transactions: u64,
    pub last_transaction: Option<LastTransaction>,
    /// Commit time (Unix ms) of the oldest transaction received and not yet acknowledged.
    pub oldest_unacked_ms: Option<i64>,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// The last transaction received.
#[derive(Clone, Debug, Serialize)]
pub struct LastTransaction {
    pub xid: u32,
    pub end_lsn: String,
    /// MariaDB: the transaction's GTID (`domain-server-sequence`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    pub commit_time_ms: i64,
    pub tags: usize,
    pub urls: usize,
}

/// Shared between the follower and the applier.
#[derive(Default)]
pub struct Progress {
    status: Mutex<Status>,
    /// Received, not yet acknowledged: (end LSN, commit time in Unix ms).
    pending: Mutex<VecDeque<(Lsn, i64)>>,
    acked: watch::Sender<Lsn>,
}

impl Progress {
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    /// The applier applied everything up to `lsn` and every live peer acknowledged it.
    pub fn acknowledge(&self, lsn: Lsn) {
        self.acked.send_if_modified(|a| {
            let moved = *a < lsn;
            *a = (*a).max(lsn);
            moved
        });
        let mut pending = self.pending.lock();
        while pending.front().is_some_and(|(end, _)| *end <= lsn) {
            pending.pop_front();
        }
        self.status.lock().oldest_unacked_ms = pending.front().map(|(_, t)| *t);
    }

    pub fn set_streaming(&self, on: bool) {
        self.status.lock().streaming = on;
    }

    /// The highest position acknowledged so far.
    pub(crate) fn acked(&self) -> Lsn {
        *self.acked.borrow()
    }

    pub(crate) fn subscribe_acked(&self) -> watch::Receiver<Lsn> {
        self.acked.subscribe()
    }

    pub(crate) fn status_mut(&self) -> MutexGuard<'_, Status> {
        self.status.lock()
    }

    pub(crate) fn received(&self, c: &Committed) {
        let commit_ms = (c.commit_time + PG_EPOCH_US) / 1000;
        let mut pending = self.pending.lock();
        pending.push_back((c.end_lsn, commit_ms));
        let mut s = self.status.lock();
        s.received_lsn = s.received_lsn.max(c.end_lsn);
        s.server_lsn = s.server_lsn.max(c.end_lsn);
        s.transactions += 1;
        s.oldest_unacked_ms = pending.front().map(|(_, t)| *t);
        s.last_transaction = Some(LastTransaction {
            xid: c.xid,
            end_lsn: format_lsn(c.end_lsn),
            gtid: c.gtid.clone(),
            commit_time_ms: commit_ms,
            tags: c.targets.tags.len(),
            urls: c.targets.urls.len(),
        });
    }

    pub(crate) fn failed(&self, e: &dyn std::fmt::Display) {
        let mut s = self.status.lock();
        s.errors += 1;
        s.last_error = Some(e.to_string());
        s.streaming = false;
    }

    /// Nothing received is waiting for an acknowledgement.
    pub(crate) fn idle(&self) -> bool {
        self.pending.lock().is_empty()
    }
}

/// `X/Y`, as PostgreSQL writes an LSN (for MariaDB: file sequence / offset, in hex).
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
