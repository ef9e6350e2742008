//! The follower: prepares the publication and the slot, streams `pgoutput` from the slot, and
//! tells PostgreSQL how far it may forget — never past a transaction whose purges were not
//! acknowledged yet ([`Progress::acknowledge`]).
//!
//! **At least once.** The slot's confirmed position is what PostgreSQL re-sends from after a
//! reconnect, a crash or a failover. A transaction is handed to the applier; only when the
//! applier says its purges were applied and acknowledged by every live peer does the position
//! move past its commit. A follower that dies in between leaves the position before it, so the
//! transaction comes again: purged twice, never missed (purges are idempotent).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::conn::{ident, literal, Connection};
use super::wire::{self, Body};
use super::{ConnectSpec, PgError};
use crate::follower::{self, ChangeStream, Session, Streaming};
use crate::pgoutput::{self, Lsn};
pub use crate::progress::{format_lsn, LastTransaction, Progress, Status};
use crate::rules::Rule;
use crate::transaction::{Committed, Fold};

use crate::progress::PG_EPOCH_US;

/// One source as the follower needs it.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub connect: ConnectSpec,
    pub slot: String,
    pub publication: String,
    pub rules: Arc<Vec<Rule>>,
}

/// Follows `source` until the task is dropped: reconnects with backoff after any error.
/// Committed transactions go to `out`, in order.
pub async fn run(source: Source, progress: Arc<Progress>, out: mpsc::Sender<Committed>) {
    follower::follow(&source, &progress, &out).await;
}

impl ChangeStream for Source {
    type Error = PgError;

    fn name(&self) -> &str {
        &self.name
    }

    /// One session: connects, prepares and streams until an error or the server's end.
    async fn session(
        &self,
        progress: &Arc<Progress>,
        out: &mpsc::Sender<Committed>,
        streaming: &mut Streaming<'_>,
    ) -> Result<(), PgError> {
        let source = self;
        let mut conn = Connection::open(&source.connect, Duration::from_secs(10)).await?;
        prepare(&mut conn, source).await?;
        let start = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})",
            ident(&source.slot),
            literal(&ident(&source.publication))
        );
        let mut body = Vec::new();
        wire::cstr(&mut body, &start);
        wire::write(&mut conn.stream, b'Q', &body).await?;
        let m = conn.next().await?;
        if m.tag != b'W' {
            return Err(PgError::Protocol(format!(
                "{:?} instead of CopyBothResponse",
                m.tag as char
            )));
        }
        tracing::info!(source = %source.name, slot = %source.slot, "following the change stream");
        streaming.started();
        // A TLS session cannot be split into independent halves like a socket: tokio's split
        // shares it behind a lock, held only for each read or write.
        let (read, write) = tokio::io::split(conn.stream);
        let (reader, messages) = follower::spawn_reader(read, |r| Box::pin(wire::read(r)));
        let stream = Stream {
            source,
            progress,
            write,
            fold: Fold::new(&source.rules),
            queued: None,
        };
        let result = follower::pump(stream, progress, messages, out, Duration::from_secs(1)).await;
        reader.abort();
        result
    }
}

/// Checks the rules against the database's tables: every table and column they name must
/// exist, and an existing publication must publish every one of those tables. Run at start
/// by every replica, and by the leader on each connect.
pub async fn check_rules(conn: &mut Connection, source: &Source) -> Result<(), PgError> {
    let tables: Vec<String> = source.rules.iter().map(|r| literal(r.table())).collect();
    let sql = format!(
        "SELECT c.relname, a.attname FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
         AND pg_catalog.pg_table_is_visible(c.oid) AND c.relname IN ({})",
        tables.join(", ")
    );
    let rows = conn.query(&sql).await?;
    let pairs: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|r| Some((r.first()?.as_deref()?, r.get(1)?.as_deref()?)))
        .collect();
    for rule in source.rules.iter() {
        let columns = pairs.iter().filter(|(t, _)| *t == rule.table());
        let columns: Vec<&str> = columns.map(|(_, c)| *c).collect();
        if columns.is_empty() {
            return Err(PgError::Rules(format!(
                "source {:?}: rule for table {:?}: the table does not exist (or is not on the search_path)",
                source.name,
                rule.table()
            )));
        }
        rule.check_columns(columns)
            .map_err(|e| PgError::Rules(format!("source {:?}: {e}", source.name)))?;
    }
    check_publication(conn, source).await
}

/// The publication over the rules' tables, and the slot: reused when they exist.
async fn prepare(conn: &mut Connection, source: &Source) -> Result<(), PgError> {
    check_rules(conn, source).await?;
    let publication = literal(&source.publication);
    let found = conn
        .query(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {publication}"
        ))
        .await?;
    if found.is_empty() {
        let mut tables: Vec<String> = source.rules.iter().map(|r| ident(r.table())).collect();
        tables.dedup();
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            ident(&source.publication),
            tables.join(", ")
        );
        tolerate_existing(conn.query(&sql).await)?;
        tracing::info!(source = %source.name, publication = %source.publication, "publication created");
    }
    let slot = literal(&source.slot);
    let found = conn
        .query(&format!(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {slot}"
        ))
        .await?;
    if found.is_empty() {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            ident(&source.slot)
        );
        tolerate_existing(conn.query(&sql).await)?;
        tracing::info!(source = %source.name, slot = %source.slot, "replication slot created");
    }
    Ok(())
}

/// A publication that exists already must publish every rule's table: changes to a table it
/// leaves out never reach the stream, and their purges would be missed without a word. Not
/// altered behind its owner's back: a clear error names the tables to add.
async fn check_publication(conn: &mut Connection, source: &Source) -> Result<(), PgError> {
    let rows = conn
        .query(&format!(
            "SELECT tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {}",
            literal(&source.publication)
        ))
        .await?;
    let exists = conn
        .query(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
            literal(&source.publication)
        ))
        .await?;
    if exists.is_empty() {
        return Ok(()); // created over exactly the rules' tables
    }
    let published: Vec<&str> = rows.iter().filter_map(|r| r.first()?.as_deref()).collect();
    let mut missing: Vec<&str> = source
        .rules
        .iter()
        .map(|r| r.table())
        .filter(|t| !published.contains(t))
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PgError::Rules(format!(
        "source {:?}: publication {:?} exists but does not publish {missing:?}: ALTER PUBLICATION {} ADD TABLE {}",
        source.name,
        source.publication,
        ident(&source.publication),
        missing.iter().map(|t| ident(t)).collect::<Vec<_>>().join(", ")
    )))
}

/// Another replica may have created it a moment ago: `duplicate_object` is success.
fn tolerate_existing<T: Default>(r: Result<T, PgError>) -> Result<T, PgError> {
    match r {
        Err(PgError::Server { code, .. }) if code == "42710" => Ok(T::default()),
        other => other,
    }
}

struct Stream<'a> {
    source: &'a Source,
    progress: &'a Arc<Progress>,
    write: tokio::io::WriteHalf<super::tls::PgStream>,
    fold: Fold<'a>,
    /// A committed transaction waiting for room in the applier's queue.
    queued: Option<Committed>,
}

impl Session for Stream<'_> {
    type Frame = wire::Backend;
    type Error = PgError;

    fn queued(&mut self) -> &mut Option<Committed> {
        &mut self.queued
    }

    async fn frame(&mut self, m: wire::Backend) -> Result<bool, PgError> {
        self.message(m).await
    }

    async fn acknowledged(&mut self) -> Result<(), PgError> {
        self.report().await
    }

    async fn tick(&mut self) -> Result<(), PgError> {
        self.report().await
    }
}

impl Stream<'_> {
    /// Handles one message; `false` when the server ended the copy.
    async fn message(&mut self, m: wire::Backend) -> Result<bool, PgError> {
        match m.tag {
            b'd' => {}
            b'c' => return Ok(false),
            b'E' => {
                let (code, message) = wire::error_text(&m.body);
                return Err(PgError::Server { code, message });
            }
            _ => return Ok(true),
        }
        let mut b = Body(&m.body);
        match b.u8()? {
            b'w' => {
                let (_start, wal_end, _time) = (b.u64()?, b.u64()?, b.u64()?);
                self.bump_server(wal_end);
                let message =
                    pgoutput::decode(b.rest()).map_err(|e| PgError::Protocol(e.to_string()))?;
                if let Some(c) = self
                    .fold
                    .push(message)
                    .map_err(|e| PgError::Protocol(e.to_string()))?
                {
                    self.progress.received(&c);
                    self.queued = Some(c);
                }
            }
            b'k' => {
                // Answered whether or not the server asks (its last byte): the reply is cheap
                // and keeps wal_sender_timeout from ending the session.
                let (wal_end, _time) = (b.u64()?, b.u64()?);
                self.bump_server(wal_end);
                self.report().await?;
            }
            other => {
                tracing::debug!(source = %self.source.name, kind = other, "unknown copy message skipped");
            }
        }
        Ok(true)
    }

    fn bump_server(&self, lsn: Lsn) {
        let mut s = self.progress.status_mut();
        s.server_lsn = s.server_lsn.max(lsn);
    }

    /// Sends a Standby Status Update: flushed = acknowledged; when nothing is in flight (no
    /// open transaction, nothing unacknowledged), the server's position, so an idle slot does
    /// not hold WAL it will never need to re-send.
    async fn report(&mut self) -> Result<(), PgError> {
        let acked = self.progress.acked();
        let idle = self.queued.is_none() && !self.fold.is_open() && self.progress.idle();
        let (received, server) = {
            let s = self.progress.status_mut();
            (s.received_lsn, s.server_lsn)
        };
        let flushed = if idle { acked.max(server) } else { acked };
        self.progress.status_mut().confirmed_lsn = flushed;
        let now_us = corral_core::invalidation::now_ms() as i64 * 1000 - PG_EPOCH_US;
        let mut body = vec![b'r'];
        for lsn in [received.max(flushed), flushed, flushed] {
            body.extend_from_slice(&lsn.to_be_bytes());
        }
        body.extend_from_slice(&now_us.to_be_bytes());
        // We never ask the server to answer: it sends keepalives on its own.
        body.push(0);
        wire::write(&mut self.write, b'd', &body).await
    }
}
