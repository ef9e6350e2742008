//! Folds binlog events into what each committed transaction purges.
//!
//! The binlog holds only committed work: a rolled-back transaction writes nothing to it (a
//! non-transactional table's changes, which a rollback cannot undo, are logged and end with a
//! `ROLLBACK` query — they happened, so they purge). A group starts at its GTID event and ends
//! at its XID (transactional tables), at a `COMMIT` or `ROLLBACK` query, at an XA PREPARE,
//! or — for a standalone group (DDL) — after its one statement.
//!
//! Only the rules' database is read: a table of the same name elsewhere purges nothing. The
//! follower's own position writes (`corral.source_positions`) are recognised and skipped, so
//! storing a position never makes another transaction to store.

use std::collections::HashMap;

use super::event::{self, Event, Format, Header, TableMap, FL_STANDALONE};
use super::gtid::Gtid;
use super::value;
use super::Error;
use crate::pgoutput::Lsn;
use crate::progress::PG_EPOCH_US;
use crate::rules::{self, Rule, Targets};
use crate::transaction::Committed;

/// The follower's own table: its writes are not transactions to purge for.
pub const POSITIONS_DATABASE: &str = "corral";
pub const POSITIONS_TABLE: &str = "source_positions";

/// More table maps than this in one group is not a transaction but an attack.
const MAX_TABLE_MAPS: usize = 16_384;

/// A group being read.
struct Open {
    gtid: Gtid,
    standalone: bool,
    targets: Targets,
    /// Only the follower's own table has been written (so far).
    only_positions: bool,
}

/// A committed group: its GTID, and what it purges (`None` for the follower's own writes).
#[derive(Debug, PartialEq, Eq)]
pub struct Group {
    pub gtid: Gtid,
    pub committed: Option<Committed>,
}

/// The fold's state.
pub struct Fold<'r> {
    rules: &'r [Rule],
    database: String,
    format: Format,
    /// The current binlog file's sequence number (its name's numeric suffix).
    file_seq: u32,
    /// The server's position as last seen (any event or heartbeat).
    pub server_lsn: Lsn,
    tables: HashMap<u64, TableMap>,
    open: Option<Open>,
}

impl<'r> Fold<'r> {
    pub fn new(rules: &'r [Rule], database: &str, checksum: bool) -> Fold<'r> {
        Fold {
            rules,
            database: database.to_owned(),
            format: Format::initial(checksum),
            file_seq: 0,
            server_lsn: 0,
            tables: HashMap::new(),
            open: None,
        }
    }

    /// True inside a group.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Takes one event; returns the group it ended, if it ended one.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Group>, Error> {
        let (header, event) = event::decode(bytes, &self.format)?;
        if header.log_pos != 0 {
            self.server_lsn = self.server_lsn.max(self.lsn(header.log_pos));
        }
        match event {
            Event::FormatDescription(format) => self.format = format,
            Event::Rotate { file, .. } => self.file_seq = file_seq(&file)?,
            Event::Heartbeat { file } => {
                if let Ok(seq) = file_seq(&file) {
                    let lsn = (u64::from(seq) << 32) | u64::from(header.log_pos);
                    self.server_lsn = self.server_lsn.max(lsn);
                }
            }
            Event::Gtid {
                domain,
                sequence,
                flags,
            } => {
                self.tables.clear();
                self.open = Some(Open {
                    gtid: Gtid {
                        domain,
                        server: header.server_id,
                        sequence,
                    },
                    standalone: flags & FL_STANDALONE != 0,
                    targets: Targets::default(),
                    only_positions: true,
                });
            }
            Event::TableMap(map) => {
                if self.tables.len() >= MAX_TABLE_MAPS && !self.tables.contains_key(&map.table_id) {
                    return Err(Error::protocol("more than 16384 table maps in one group"));
                }
                self.tables.insert(map.table_id, map);
            }
            Event::Rows(rows) => {
                let map = self.tables.get(&rows.table_id).ok_or_else(|| {
                    Error::protocol(format!(
                        "rows for table id {} before its table map",
                        rows.table_id
                    ))
                })?;
                let open = self
                    .open
                    .as_mut()
                    .ok_or_else(|| Error::protocol("rows outside a group"))?;
                let own = map.database == POSITIONS_DATABASE && map.table == POSITIONS_TABLE;
                open.only_positions &= own;
                if map.database == self.database {
                    let ruled = self.rules.iter().any(|r| r.table() == map.table);
                    if ruled && map.columns.iter().any(|c| c.name.is_none()) {
                        return Err(Error::Settings(format!(
                            "the table map of {}.{} has no column names: set binlog_row_metadata = FULL",
                            map.database, map.table
                        )));
                    }
                    if ruled {
                        for change in value::changes(&rows, map)? {
                            open.targets.extend(rules::targets(self.rules, &change));
                        }
                    }
                }
            }
            // An XA transaction's rows come in its prepared group: they purge when prepared,
            // since the later `XA COMMIT` group carries no rows (an `XA ROLLBACK` then costs
            // a needless purge, never a missed one).
            Event::Xid(_) | Event::XaPrepare => return Ok(self.end(&header)),
            Event::Query { database, sql } => {
                let word = sql.split_whitespace().next().unwrap_or("");
                let open = self.open.as_mut();
                let Some(open) = open else { return Ok(None) };
                if word.eq_ignore_ascii_case("COMMIT") || word.eq_ignore_ascii_case("ROLLBACK") {
                    return Ok(self.end(&header));
                }
                if word.eq_ignore_ascii_case("BEGIN") {
                    return Ok(None);
                }
                open.only_positions = false;
                if let Some(table) = truncated_table(&sql, &database) {
                    if table.0 == self.database {
                        let rules = self.rules.iter().filter(|r| r.table() == table.1);
                        for rule in rules {
                            open.targets.extend(rule.constant_targets());
                        }
                    }
                }
                if open.standalone {
                    return Ok(self.end(&header));
                }
            }
            Event::Other(_) => {}
        }
        Ok(None)
    }

    fn lsn(&self, log_pos: u32) -> Lsn {
        (u64::from(self.file_seq) << 32) | u64::from(log_pos)
    }

    fn end(&mut self, header: &Header) -> Option<Group> {
        let open = self.open.take()?;
        self.tables.clear();
        let committed = (!open.only_positions).then(|| Committed {
            xid: open.gtid.sequence as u32,
            end_lsn: self.lsn(header.log_pos),
            commit_time: i64::from(header.timestamp) * 1_000_000 - PG_EPOCH_US,
            gtid: Some(open.gtid.to_string()),
            targets: open.targets,
        });
        Some(Group {
            gtid: open.gtid,
            committed,
        })
    }
}

/// `mariadb-bin.000042` → 42.
fn file_seq(file: &str) -> Result<u32, Error> {
    file.rsplit_once('.')
        .and_then(|(_, n)| n.parse().ok())
        .ok_or_else(|| Error::protocol(format!("binlog file {file:?} has no numeric suffix")))
}

/// `TRUNCATE [TABLE] [db.]name` → (database, table); a truncate purges a rule's templates
/// with no placeholder, as on PostgreSQL.
fn truncated_table(sql: &str, default_db: &str) -> Option<(String, String)> {
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("TRUNCATE") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("TABLE") {
        name = words.next()?;
    }
    let name = name.trim_end_matches(';');
    let unquote = |s: &str| s.trim_matches('`').to_owned();
    Some(match name.split_once('.') {
        Some((db, table)) => (unquote(db), unquote(table)),
        None => (default_db.to_owned(), unquote(name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_name_their_table() {
        let t = |s| truncated_table(s, "shop");
        assert_eq!(
            t("TRUNCATE TABLE `packages`"),
            Some(("shop".into(), "packages".into()))
        );
        assert_eq!(
            t("truncate other.packages;"),
            Some(("other".into(), "packages".into()))
        );
        assert_eq!(t("UPDATE packages SET a = 1"), None);
        assert_eq!(file_seq("binlog.000042"), Ok(42));
        assert!(file_seq("binlog").is_err());
    }
}
