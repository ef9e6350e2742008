//! MariaDB's global transaction ids and positions.
//!
//! A GTID is `domain-server-sequence`. A position (what `@slave_connect_state` takes and
//! `@@gtid_binlog_pos` shows) is the last GTID of each replication domain, comma-separated:
//! resuming from it skips everything up to and including those transactions.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One transaction's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub sequence: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.sequence)
    }
}

impl FromStr for Gtid {
    type Err = String;

    fn from_str(s: &str) -> Result<Gtid, String> {
        let bad = || format!("{s:?} is not a GTID (domain-server-sequence)");
        let mut parts = s.trim().splitn(3, '-');
        let mut next = || parts.next().ok_or_else(bad);
        let (d, sv, sq) = (next()?, next()?, next()?);
        Ok(Gtid {
            domain: d.parse().map_err(|_| bad())?,
            server: sv.parse().map_err(|_| bad())?,
            sequence: sq.parse().map_err(|_| bad())?,
        })
    }
}

/// The last GTID of each domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position(BTreeMap<u32, Gtid>);

impl Position {
    /// Records `gtid` as its domain's last.
    pub fn advance(&mut self, gtid: Gtid) {
        self.0.insert(gtid.domain, gtid);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for gtid in self.0.values() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{gtid}")?;
        }
        Ok(())
    }
}

impl FromStr for Position {
    type Err = String;

    /// `""` is the empty position (the start of the binlog); at most 1,024 domains.
    fn from_str(s: &str) -> Result<Position, String> {
        let mut p = Position::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if p.0.len() >= 1024 {
                return Err("more than 1024 replication domains".into());
            }
            p.advance(part.parse()?);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_keep_the_last_gtid_of_each_domain() {
        let mut p: Position = "0-1-5, 2-1-9".parse().unwrap();
        p.advance("0-3-6".parse().unwrap());
        assert_eq!(p.to_string(), "0-3-6,2-1-9");
        assert_eq!("".parse::<Position>().unwrap(), Position::default());
        for bad in ["0-1", "a-1-2", "0-1-2-3", "0--1-2"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
