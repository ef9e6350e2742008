//! Folds decoded pgoutput messages into what each committed transaction purges.
//!
//! PostgreSQL decodes only committed transactions, so a `Commit` always closes what a `Begin`
//! opened; the fold still refuses changes outside a transaction rather than guess.

use std::collections::HashMap;

use crate::pgoutput::{DecodeError, Lsn, Message, Relation, Tuple};
use crate::rules::{self, Change, Op, Rule, Targets};

/// A committed transaction and everything it purges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub xid: u32,
    /// The position after the commit: where the slot may advance once the purges are acked.
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 (PostgreSQL's epoch; MariaDB's seconds are converted).
    pub commit_time: i64,
    /// MariaDB: the transaction's GTID (`domain-server-sequence`); `None` for PostgreSQL.
    pub gtid: Option<String>,
    pub targets: Targets,
}

/// Why a message stream does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FoldError {
    #[error("a change outside a transaction")]
    OutsideTransaction,
    #[error("a change to relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The fold's state: relations seen so far and the open transaction.
pub struct Fold<'r> {
    rules: &'r [Rule],
    relations: HashMap<u32, Relation>,
    open: Option<(u32, Targets)>,
}

impl<'r> Fold<'r> {
    pub fn new(rules: &'r [Rule]) -> Fold<'r> {
        Fold {
            rules,
            relations: HashMap::new(),
            open: None,
        }
    }

    /// True between a `Begin` and its `Commit`.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Takes one message; returns the transaction it committed, if it was a `Commit`.
    pub fn push(&mut self, message: Message) -> Result<Option<Committed>, FoldError> {
        match message {
            Message::Begin { xid, .. } => self.open = Some((xid, Targets::default())),
            Message::Relation(relation) => {
                self.relations.insert(relation.id, relation);
            }
            Message::Insert { relation, new } => {
                self.change(relation, Op::Insert, None, Some(new))?
            }
            Message::Update { relation, old, new } => {
                self.change(relation, Op::Update, old, Some(new))?
            }
            Message::Delete { relation, old } => {
                self.change(relation, Op::Delete, Some(old), None)?
            }
            Message::Truncate { relations } => self.truncate(&relations)?,
            Message::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                let (xid, targets) = self.open.take().ok_or(FoldError::OutsideTransaction)?;
                return Ok(Some(Committed {
                    xid,
                    end_lsn,
                    commit_time,
                    gtid: None,
                    targets,
                }));
            }
            Message::Ignored(_) => {}
        }
        Ok(None)
    }

    fn change(
        &mut self,
        relation: u32,
        op: Op,
        old: Option<Tuple>,
        new: Option<Tuple>,
    ) -> Result<(), FoldError> {
        let rel = self
            .relations
            .get(&relation)
            .ok_or(FoldError::UnknownRelation(relation))?;
        let (_, targets) = self.open.as_mut().ok_or(FoldError::OutsideTransaction)?;
        let change = Change {
            table: rel.name.clone(),
            op,
            old: old.map(|t| rel.row(&t)).transpose()?,
            new: new.map(|t| rel.row(&t)).transpose()?,
        };
        targets.extend(rules::targets(self.rules, &change));
        Ok(())
    }

    /// A truncated table loses every row: its rules purge what they can without a row, the
    /// templates with no placeholder (a `packages` tag, say).
    fn truncate(&mut self, relations: &[u32]) -> Result<(), FoldError> {
        let (_, targets) = self.open.as_mut().ok_or(FoldError::OutsideTransaction)?;
        for id in relations {
            let rel = self
                .relations
                .get(id)
                .ok_or(FoldError::UnknownRelation(*id))?;
            let rules = self.rules.iter().filter(|r| r.table() == rel.name);
            for rule in rules {
                targets.extend(rule.constant_targets());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
