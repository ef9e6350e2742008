//! The follower: registers with the server as a replica, streams the binlog from the stored
//! GTID position, and stores a new position — in `corral.source_positions` on the followed
//! server itself — only past transactions whose purges were acknowledged
//! ([`Progress::acknowledge`]).
//!
//! **At least once.** The stored position is what a new session (a reconnect, a restart, the
//! next leader) resumes from. A transaction is handed to the applier; only when the applier
//! says its purges were applied and acknowledged by every live peer does its GTID enter the
//! stored position. A follower that dies in between leaves the position before it, so the
//! transaction comes again: purged twice, never missed (purges are idempotent). The first
//! session of a source stores the server's current position (`@@gtid_binlog_pos`), as
//! PostgreSQL creates a slot at the current WAL position.
//!
//! **One reader.** Every replica registers with the same `server_id`; MariaDB keeps one dump
//! per replica id and ends the older one, so two replicas that briefly both think they lead
//! do not both stream for long.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::conn::{is_eof, server_error, Connection, COM_BINLOG_DUMP, COM_REGISTER_SLAVE};
use super::fold::{Fold, POSITIONS_DATABASE, POSITIONS_TABLE};
use super::gtid::{Gtid, Position};
use super::{literal, packet, ConnectSpec, Error};
use crate::follower::{self, ChangeStream, Session, Streaming};
use crate::pgoutput::Lsn;
pub use crate::progress::{format_lsn, LastTransaction, Progress, Status};
use crate::rules::Rule;
use crate::transaction::Committed;

/// How often the server sends a heartbeat on an idle stream; three missed end the session.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often an acknowledged position is stored (at most one write per period).
const STORE_EVERY: Duration = Duration::from_millis(200);

/// One source as the follower needs it.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    /// `database` is the one the rules' tables are in.
    pub connect: ConnectSpec,
    /// The replica id this follower registers with; it must differ from every real server's
    /// and replica's `server_id`.
    pub server_id: u32,
    pub rules: Arc<Vec<Rule>>,
}

/// Follows `source` until the task is dropped: reconnects with backoff after any error.
/// Committed transactions go to `out`, in order.
pub async fn run(source: Source, progress: Arc<Progress>, out: mpsc::Sender<Committed>) {
    follower::follow(&source, &progress, &out).await;
}

impl ChangeStream for Source {
    type Error = Error;

    fn name(&self) -> &str {
        &self.name
    }

    /// One session: connects, prepares and streams until an error or the server's end.
    async fn session(
        &self,
        progress: &Arc<Progress>,
        out: &mpsc::Sender<Committed>,
        streaming: &mut Streaming<'_>,
    ) -> Result<(), Error> {
        let source = self;
        let timeout = Duration::from_secs(10);
        let mut control = Connection::open(&source.connect, timeout).await?;
        let checksum = check_settings(&mut control).await?;
        check_rules(&mut control, source).await?;
        let position = prepare(&mut control, source).await?;
        progress.status_mut().confirmed_gtid = Some(position.to_string());

        let mut dump = Connection::open(&source.connect, timeout).await?;
        let algorithm = if checksum { "CRC32" } else { "NONE" };
        for set in [
            format!("SET @master_binlog_checksum = '{algorithm}'"),
            // 4: MARIA_SLAVE_CAPABILITY_GTID, GTID events instead of BEGIN queries.
            "SET @mariadb_slave_capability = 4".into(),
            format!(
                "SET @slave_connect_state = {}",
                literal(&position.to_string())
            ),
            "SET @slave_gtid_strict_mode = 0".into(),
            "SET @slave_gtid_ignore_duplicates = 0".into(),
            format!("SET @master_heartbeat_period = {}", HEARTBEAT.as_nanos()),
        ] {
            dump.query(&set).await?;
        }
        let mut register = Vec::new();
        register.extend_from_slice(&source.server_id.to_le_bytes());
        register.extend_from_slice(&[0, 0, 0]); // host, user, password: empty
        register.extend_from_slice(&0u16.to_le_bytes());
        register.extend_from_slice(&0u32.to_le_bytes()); // rank
        register.extend_from_slice(&0u32.to_le_bytes()); // master id
        dump.command_ok(COM_REGISTER_SLAVE, &register).await?;
        let mut request = Vec::new();
        request.extend_from_slice(&4u32.to_le_bytes()); // ignored: the GTID position decides
        request.extend_from_slice(&0u16.to_le_bytes());
        request.extend_from_slice(&source.server_id.to_le_bytes());
        dump.command(COM_BINLOG_DUMP, &request).await?;

        tracing::info!(source = %source.name, %position, "following the binlog");
        // The write half is kept: dropping it would half-close the connection under the server.
        // A TLS session cannot be split like a socket: tokio's split shares it behind a lock,
        // held only for each read or write.
        let (read, dump_write) = tokio::io::split(dump.stream);
        let (reader, packets) = follower::spawn_reader(read, |r| Box::pin(read_event(r)));
        let stream = Stream {
            source,
            progress,
            control,
            fold: Fold::new(&source.rules, &source.connect.database, checksum),
            queued: None,
            pending: VecDeque::new(),
            acked: position.clone(),
            stored: position,
            stored_lsn: progress.acked(),
            streaming,
            _dump_write: dump_write,
        };
        let result = follower::pump(stream, progress, packets, out, STORE_EVERY).await;
        reader.abort();
        result
    }
}

/// Checks the rules against the database's tables: every table and column they name must
/// exist in `connect.database`. Run at start by every replica, and by the leader on each
/// connect.
pub async fn check_rules(conn: &mut Connection, source: &Source) -> Result<(), Error> {
    let tables: Vec<String> = source.rules.iter().map(|r| literal(r.table())).collect();
    let sql = format!(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = {} AND TABLE_NAME IN ({})",
        literal(&source.connect.database),
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
            return Err(Error::Rules(format!(
                "source {:?}: rule for table {:?}: the table does not exist in database {:?} (or the user may not read it)",
                source.name,
                rule.table(),
                source.connect.database
            )));
        }
        rule.check_columns(columns)
            .map_err(|e| Error::Rules(format!("source {:?}: {e}", source.name)))?;
    }
    Ok(())
}

/// The server settings the follower relies on.
async fn check_settings(conn: &mut Connection) -> Result<bool, Error> {
    let rows = conn
        .query("SELECT @@global.log_bin, @@global.binlog_format, @@global.binlog_row_metadata, @@global.binlog_checksum")
        .await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let (log_bin, format, metadata, checksum) = (get(0), get(1), get(2), get(3));
    if log_bin != "1" {
        return Err(Error::Settings(
            "the binlog is off: start the server with log_bin".into(),
        ));
    }
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(Error::Settings(format!(
            "binlog_format is {format}: Corral reads row events, set binlog_format = ROW"
        )));
    }
    if !metadata.eq_ignore_ascii_case("FULL") {
        return Err(Error::Settings(format!(
            "binlog_row_metadata is {metadata}: Corral needs the column names, set binlog_row_metadata = FULL"
        )));
    }
    Ok(checksum.eq_ignore_ascii_case("CRC32"))
}

/// The stored position, created from the server's current one on a source's first session.
async fn prepare(conn: &mut Connection, source: &Source) -> Result<Position, Error> {
    // Created only when missing: MariaDB binlogs `CREATE ... IF NOT EXISTS` even when it
    // does nothing, and every session would add a transaction to the stream.
    let exists = conn
        .query(&format!(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{POSITIONS_DATABASE}' \
             AND TABLE_NAME = '{POSITIONS_TABLE}'"
        ))
        .await?;
    if exists.is_empty() {
        create_positions_table(conn).await?;
    }
    let select = format!(
        "SELECT gtid FROM {POSITIONS_DATABASE}.{POSITIONS_TABLE} WHERE name = {}",
        literal(&source.name)
    );
    if conn.query(&select).await?.is_empty() {
        let now = conn
            .query_one("SELECT @@global.gtid_binlog_pos")
            .await?
            .unwrap_or_default();
        // IGNORE: another replica may have stored one a moment ago; its is as good.
        conn.query(&format!(
            "INSERT IGNORE INTO {POSITIONS_DATABASE}.{POSITIONS_TABLE} (name, gtid) VALUES ({}, {})",
            literal(&source.name),
            literal(&now)
        ))
        .await?;
        tracing::info!(source = %source.name, position = %now, "no stored position: starting from the server's current one");
    }
    let stored = conn.query_one(&select).await?.unwrap_or_default();
    stored
        .parse()
        .map_err(|e| Error::protocol(format!("the stored position: {e}")))
}

async fn create_positions_table(conn: &mut Connection) -> Result<(), Error> {
    conn.query(&format!(
        "CREATE DATABASE IF NOT EXISTS {POSITIONS_DATABASE}"
    ))
    .await?;
    conn.query(&format!(
        "CREATE TABLE IF NOT EXISTS {POSITIONS_DATABASE}.{POSITIONS_TABLE} (\
         name VARCHAR(64) NOT NULL PRIMARY KEY, gtid VARCHAR(8192) NOT NULL, \
         updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)\
         ) ENGINE=InnoDB"
    ))
    .await
    .map(drop)
}

async fn store(conn: &mut Connection, source: &Source, position: &Position) -> Result<(), Error> {
    conn.query(&format!(
        "INSERT INTO {POSITIONS_DATABASE}.{POSITIONS_TABLE} (name, gtid) VALUES ({}, {}) \
         ON DUPLICATE KEY UPDATE gtid = VALUES(gtid)",
        literal(&source.name),
        literal(&position.to_string())
    ))
    .await
    .map(drop)
}

/// Reads one of the dump's packets; an idle stream is ended after three missed heartbeats.
async fn read_event(r: &mut tokio::io::ReadHalf<crate::tls::Stream>) -> Result<Vec<u8>, Error> {
    match tokio::time::timeout(HEARTBEAT * 3, packet::read(r)).await {
        Ok(p) => p.map(|(_, payload)| payload),
        Err(_) => Err(Error::Io("no event or heartbeat for 15 s".into())),
    }
}

struct Stream<'a, 's> {
    source: &'a Source,
    progress: &'a Arc<Progress>,
    /// A second connection, for storing the position (the dump's takes no queries).
    control: Connection,
    fold: Fold<'a>,
    /// A committed transaction waiting for room in the applier's queue.
    queued: Option<Committed>,
    /// Handed to the applier, not yet acknowledged: end position and GTID, in binlog order.
    pending: VecDeque<(Lsn, Gtid)>,
    /// The position through every acknowledged transaction.
    acked: Position,
    /// What `corral.source_positions` holds.
    stored: Position,
    stored_lsn: Lsn,
    /// Told on the first event decoded.
    streaming: &'a mut Streaming<'s>,
    _dump_write: tokio::io::WriteHalf<crate::tls::Stream>,
}

impl Session for Stream<'_, '_> {
    type Frame = Vec<u8>;
    type Error = Error;

    fn queued(&mut self) -> &mut Option<Committed> {
        &mut self.queued
    }

    async fn frame(&mut self, p: Vec<u8>) -> Result<bool, Error> {
        self.packet(&p)
    }

    async fn acknowledged(&mut self) -> Result<(), Error> {
        self.take_acknowledged();
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), Error> {
        self.store().await
    }
}

impl Stream<'_, '_> {
    /// Handles one dump packet; `false` when the server ended the stream.
    fn packet(&mut self, p: &[u8]) -> Result<bool, Error> {
        match p.first() {
            Some(0x00) => {}
            Some(0xff) => return Err(server_error(p)),
            _ if is_eof(p) => return Ok(false),
            _ => return Err(Error::protocol("a dump packet that is not an event")),
        }
        let group = self.fold.push(&p[1..])?;
        // The first event decoded: the server accepted the position and streams.
        self.streaming.started();
        {
            let mut s = self.progress.status_mut();
            s.server_lsn = s.server_lsn.max(self.fold.server_lsn);
        }
        let Some(group) = group else { return Ok(true) };
        if let Some(c) = group.committed {
            self.progress.received(&c);
            self.pending.push_back((c.end_lsn, group.gtid));
            let mut received = self.acked.clone();
            for (_, gtid) in &self.pending {
                received.advance(*gtid);
            }
            self.progress.status_mut().received_gtid = Some(received.to_string());
            self.queued = Some(c);
            // Re-delivered after a reconnect, it may be acknowledged already (by the applier
            // working through the previous session's queue): no further ack would come.
            self.take_acknowledged();
        }
        Ok(true)
    }

    /// Moves the acknowledged position past every transaction the applier acknowledged.
    fn take_acknowledged(&mut self) {
        let lsn = self.progress.acked();
        while let Some((end, gtid)) = self.pending.front().copied() {
            if end > lsn {
                break;
            }
            self.acked.advance(gtid);
            self.stored_lsn = self.stored_lsn.max(end);
            self.pending.pop_front();
        }
    }

    /// Stores the acknowledged position when it moved (at most once per tick).
    async fn store(&mut self) -> Result<(), Error> {
        if self.acked == self.stored {
            // Nothing in flight: everything the server sent so far is dealt with (what was
            // not handed over purges nothing), so the lag is nil, as for an idle slot.
            if self.pending.is_empty() && self.queued.is_none() && !self.fold.is_open() {
                let mut s = self.progress.status_mut();
                s.confirmed_lsn = s.confirmed_lsn.max(self.fold.server_lsn);
            }
            return Ok(());
        }
        store(&mut self.control, self.source, &self.acked).await?;
        self.stored = self.acked.clone();
        let mut s = self.progress.status_mut();
        s.confirmed_gtid = Some(self.stored.to_string());
        s.confirmed_lsn = s.confirmed_lsn.max(self.stored_lsn);
        Ok(())
    }
}
