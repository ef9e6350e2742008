//! What travels between replicas on `POST /_corral/v1/events` and `GET …?since=N`.
//!
//! Two message forms share the path. A [`Batch`] is sent straight from its origin (the mesh,
//! heartbeats, retries to a suspect peer). A [`Relayed`] message carries the origin's batch
//! as the exact bytes the origin signed, with the origin's signature beside them, plus the
//! part of the fleet the receiver must pass it on to: a relay never re-signs what it did not
//! originate, it only signs its own envelope (the HTTP request).

use std::net::SocketAddr;

use corral_core::InvalidationEvent;
use serde::{Deserialize, Serialize};

/// The most members one relayed message may hand on; larger ranges are refused as hostile.
pub const MAX_RANGE: usize = 100_000;
/// The longest a relay may be asked to wait for its range, milliseconds.
pub const MAX_BUDGET_MS: u64 = 60_000;

/// A batch of events from their origin; also the heartbeat (no events).
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
    /// The sender's start time by its own clock; sent only on a relayed fleet (see
    /// [`DigestEntry::started_ms`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_ms: u64,
    /// Anti-entropy on a relayed fleet: what the sender knows of every origin's stream. Sent
    /// only by heartbeats when the fleet is larger than `fanout` (never in a plain mesh, so a
    /// mesh stays readable by older replicas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digest: Vec<DigestEntry>,
}

/// One origin's stream as a replica knows it, exchanged by heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestEntry {
    pub origin: String,
    pub epoch: u64,
    /// The origin's start time by its own clock: orders its epochs (which are random), so a
    /// stale entry about an earlier life never resets what is known of the current one.
    pub started_ms: u64,
    /// The highest sequence number of this epoch anyone reported.
    pub last_seq: u64,
    /// The origin's heartbeat counter: it rises once a period while the origin lives, which
    /// is how a replica that never talks to it directly tells it is not silent.
    pub beat: u64,
    /// Where the origin's log can be fetched.
    pub addr: SocketAddr,
}

/// A batch on its way through relays.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relayed {
    /// The origin's [`Batch`], as the JSON text it signed.
    pub batch: String,
    /// The origin's signature over `batch` (as `POST` to the events path).
    pub timestamp: String,
    pub signature: String,
    /// The replicas this receiver is responsible for: it applies the batch, then passes it on
    /// to them (splitting them again). Never includes the receiver.
    pub range: Vec<SocketAddr>,
    /// How long the receiver may take to answer for its whole range, milliseconds.
    pub budget_ms: u64,
}

/// Either message form.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Message {
    Relayed(Relayed),
    Batch(Batch),
}

/// The answer to a relayed message: who in the range applied the batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayAck {
    pub applied: usize,
    /// The receiver and every member of its range that acknowledged.
    pub acked: Vec<SocketAddr>,
}

/// The answer to a log fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    pub origin: String,
    pub epoch: u64,
    pub last_seq: u64,
    pub events: Vec<InvalidationEvent>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
