//! A decoder of PostgreSQL's `pgoutput` logical-replication messages (protocol version 1).
//!
//! Total and bounded: every input gives a [`Message`] or a [`DecodeError`], never a panic;
//! every count and length read from the wire is checked against the bytes that remain, so a
//! hostile or corrupt message cannot make the decoder allocate more than the message's size.
//! Messages are those of "Logical Replication Message Formats" in PostgreSQL's documentation.

use crate::rules::Row;

/// PostgreSQL's limit on a tuple's columns; more on the wire is garbage.
pub const MAX_COLUMNS: usize = 1664;

/// A log sequence number: a byte position in the WAL.
pub type Lsn = u64;

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: Tuple,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// `Origin` and `Type` messages: nothing to purge, decoded so they are not errors.
    Ignored(u8),
}

/// A table's description, sent before its first change in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<String>,
}

/// One column's value in a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change did not touch: not sent, so not known.
    Unchanged,
    Text(String),
}

/// A row's values in the relation's column order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

/// Why bytes are not a pgoutput message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message ends early (wanted {wanted} more bytes)")]
    Truncated { wanted: usize },
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    #[error("unknown tuple value kind {0:#04x}")]
    UnknownValue(u8),
    #[error("unexpected tuple marker {0:#04x}")]
    UnexpectedMarker(u8),
    #[error("{0} columns is more than PostgreSQL allows")]
    TooManyColumns(usize),
    #[error("a string is not NUL-terminated UTF-8")]
    BadString,
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("tuple has {got} values, relation {relation} has {want} columns")]
    ColumnCount {
        relation: u32,
        got: usize,
        want: usize,
    },
}

/// Decodes one whole message; trailing bytes are an error.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader(bytes);
    let message = match r.u8()? {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            r.u8()?; // flags, unused
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.i64()?,
            }
        }
        b'R' => Message::Relation(relation(&mut r)?),
        b'I' => insert(&mut r)?,
        b'U' => update(&mut r)?,
        b'D' => delete(&mut r)?,
        b'T' => truncate(&mut r)?,
        b'O' => {
            r.u64()?;
            r.string()?;
            Message::Ignored(b'O')
        }
        b'Y' => {
            r.u32()?;
            r.string()?;
            r.string()?;
            Message::Ignored(b'Y')
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    match r.0.len() {
        0 => Ok(message),
        n => Err(DecodeError::Trailing(n)),
    }
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32()?;
    let namespace = r.string()?;
    let name = r.string()?;
    r.u8()?; // replica identity setting
    let count = r.count()?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        r.u8()?; // flags (part of the key)
        columns.push(r.string()?);
        r.u32()?; // type oid
        r.u32()?; // type modifier
    }
    Ok(Relation {
        id,
        namespace,
        name,
        columns,
    })
}

fn insert(r: &mut Reader) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    expect(r, b'N')?;
    Ok(Message::Insert {
        relation,
        new: tuple(r)?,
    })
}

fn update(r: &mut Reader) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    let (old, new) = match r.u8()? {
        b'K' | b'O' => {
            let old = tuple(r)?;
            expect(r, b'N')?;
            (Some(old), tuple(r)?)
        }
        b'N' => (None, tuple(r)?),
        other => return Err(DecodeError::UnexpectedMarker(other)),
    };
    Ok(Message::Update { relation, old, new })
}

fn delete(r: &mut Reader) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    match r.u8()? {
        b'K' | b'O' => Ok(Message::Delete {
            relation,
            old: tuple(r)?,
        }),
        other => Err(DecodeError::UnexpectedMarker(other)),
    }
}

fn truncate(r: &mut Reader) -> Result<Message, DecodeError> {
    let count = r.u32()? as usize;
    r.u8()?; // options (CASCADE, RESTART IDENTITY)
    if count > r.0.len() / 4 {
        return Err(DecodeError::Truncated {
            wanted: count * 4 - r.0.len(),
        });
    }
    let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
    Ok(Message::Truncate { relations })
}

fn tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let count = r.count()?;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let len = r.u32()? as usize;
                let text = std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::BadString)?;
                Value::Text(text.to_owned())
            }
            other => return Err(DecodeError::UnknownValue(other)),
        });
    }
    Ok(Tuple(values))
}

fn expect(r: &mut Reader, marker: u8) -> Result<(), DecodeError> {
    match r.u8()? {
        m if m == marker => Ok(()),
        other => Err(DecodeError::UnexpectedMarker(other)),
    }
}

impl Relation {
    /// The tuple as a [`Row`] by column name; unchanged TOAST values are left out (unknown).
    pub fn row(&self, tuple: &Tuple) -> Result<Row, DecodeError> {
        if tuple.0.len() != self.columns.len() {
            return Err(DecodeError::ColumnCount {
                relation: self.id,
                got: tuple.0.len(),
                want: self.columns.len(),
            });
        }
        let pairs = self.columns.iter().zip(&tuple.0);
        let known = pairs.filter_map(|(name, value)| match value {
            Value::Null => Some((name.clone(), None)),
            Value::Text(text) => Some((name.clone(), Some(text.clone()))),
            Value::Unchanged => None,
        });
        Ok(known.collect())
    }
}

/// A cursor over a message's bytes; every read checks what remains.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Truncated {
                wanted: n - self.0.len(),
            });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A column count (Int16), bounded by PostgreSQL's limit.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let count = u16::from_be_bytes(self.array()?) as usize;
        if count > MAX_COLUMNS {
            return Err(DecodeError::TooManyColumns(count));
        }
        Ok(count)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::BadString)?;
        let text = std::str::from_utf8(&self.0[..end]).map_err(|_| DecodeError::BadString)?;
        self.0 = &self.0[end + 1..];
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests;
