//! Binlog events, decoded totally and bounded: any byte string gives an event or an error,
//! never a panic, and nothing is allocated beyond the event's own length.
//!
//! Decoded: FORMAT_DESCRIPTION (the post-header lengths and the checksum algorithm), ROTATE,
//! MariaDB's GTID (162), TABLE_MAP with its optional metadata (column names and signedness,
//! sent with `binlog_row_metadata = FULL`), WRITE/UPDATE/DELETE_ROWS v1 and v2 (their row
//! images are decoded by [`super::value`] against the table map), XID, QUERY and HEARTBEAT.
//! Everything else (GTID_LIST, BINLOG_CHECKPOINT, ANNOTATE_ROWS, ...) is [`Event::Other`].

use super::packet::{text, Reader};
use super::Error;

pub const QUERY: u8 = 2;
pub const ROTATE: u8 = 4;
pub const FORMAT_DESCRIPTION: u8 = 15;
pub const XID: u8 = 16;
pub const TABLE_MAP: u8 = 19;
pub const WRITE_ROWS_V1: u8 = 23;
pub const UPDATE_ROWS_V1: u8 = 24;
pub const DELETE_ROWS_V1: u8 = 25;
pub const HEARTBEAT: u8 = 27;
/// The end of an XA transaction's prepared group (its rows); the `XA COMMIT` comes later.
pub const XA_PREPARE: u8 = 38;
pub const WRITE_ROWS_V2: u8 = 30;
pub const UPDATE_ROWS_V2: u8 = 31;
pub const DELETE_ROWS_V2: u8 = 32;
pub const GTID: u8 = 162;
/// MariaDB's compressed query and rows events (`log_bin_compress`), 165 to 171: not decoded.
const COMPRESSED: std::ops::RangeInclusive<u8> = 165..=171;

/// The common header's length (binlog version 4).
pub const HEADER_LEN: usize = 19;
/// The GTID event's flag: a group of one statement (DDL, non-transactional), no XID follows.
pub const FL_STANDALONE: u8 = 1;
const FL_GROUP_COMMIT_ID: u8 = 2;
/// The most columns a table can have (MariaDB's limit is 4,096).
pub const MAX_COLUMNS: u64 = 4096;

/// The common header of every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub timestamp: u32,
    pub kind: u8,
    pub server_id: u32,
    pub size: u32,
    /// The position just after this event in its binlog file (0 for artificial events).
    pub log_pos: u32,
    pub flags: u16,
}

/// What the FORMAT_DESCRIPTION event says about the events after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    /// Every event ends with a CRC32 of the rest.
    pub checksum: bool,
    /// Post-header length by event type (index `type - 1`).
    post_header: Vec<u8>,
}

impl Format {
    /// Before the server's FORMAT_DESCRIPTION: MariaDB 10's lengths, and the checksum setting
    /// negotiated with `@master_binlog_checksum` (the artificial ROTATE that comes first is
    /// checksummed under it).
    pub fn initial(checksum: bool) -> Format {
        let mut post_header = vec![0u8; 200];
        for (kind, len) in [
            (QUERY, 13),
            (ROTATE, 8),
            (TABLE_MAP, 8),
            (WRITE_ROWS_V1, 8),
            (UPDATE_ROWS_V1, 8),
            (DELETE_ROWS_V1, 8),
            (WRITE_ROWS_V2, 10),
            (UPDATE_ROWS_V2, 10),
            (DELETE_ROWS_V2, 10),
            (GTID, 19),
        ] {
            post_header[usize::from(kind) - 1] = len;
        }
        Format {
            checksum,
            post_header,
        }
    }

    fn post_header_len(&self, kind: u8) -> usize {
        let i = usize::from(kind).wrapping_sub(1);
        usize::from(self.post_header.get(i).copied().unwrap_or(0))
    }
}

/// A table's shape, from TABLE_MAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMap {
    pub table_id: u64,
    pub database: String,
    pub table: String,
    pub columns: Vec<Column>,
}

/// One column as the binlog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// From the optional metadata; `None` unless `binlog_row_metadata = FULL`.
    pub name: Option<String>,
    /// The type as stored in rows (for CHAR, ENUM and SET: the real type from the metadata).
    pub kind: u8,
    /// The type's metadata (lengths, precision, fractional digits), as [`super::value`] reads it.
    pub meta: u16,
    pub unsigned: bool,
}

/// Which rows event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsKind {
    Write,
    Update,
    Delete,
}

/// A rows event before its images are decoded (that needs its table map).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rows<'a> {
    pub kind: RowsKind,
    pub table_id: u64,
    /// From the column count on: the present-columns bitmap(s) and the row images.
    pub body: &'a [u8],
}

/// A decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    FormatDescription(Format),
    Rotate {
        position: u64,
        file: String,
    },
    Gtid {
        domain: u32,
        sequence: u64,
        flags: u8,
    },
    TableMap(TableMap),
    Rows(Rows<'a>),
    Xid(u64),
    Query {
        database: String,
        sql: String,
    },
    Heartbeat {
        file: String,
    },
    XaPrepare,
    Other(u8),
}

/// Checks and strips an event's checksum, then decodes it. `format` is the one in force
/// (a FORMAT_DESCRIPTION returns its own, which the caller puts in force).
pub fn decode<'a>(event: &'a [u8], format: &Format) -> Result<(Header, Event<'a>), Error> {
    let mut r = Reader(event);
    let header = Header {
        timestamp: r.u32()?,
        kind: r.u8()?,
        server_id: r.u32()?,
        size: r.u32()?,
        log_pos: r.u32()?,
        flags: r.u16()?,
    };
    if header.size as usize != event.len() {
        return Err(Error::protocol(format!(
            "an event of {} bytes says it has {}",
            event.len(),
            header.size
        )));
    }
    // The FORMAT_DESCRIPTION names its own algorithm (in its fifth-last byte) and always has
    // room for a checksum after it.
    let checksum = match header.kind {
        FORMAT_DESCRIPTION => event.len() >= HEADER_LEN + 5 && event[event.len() - 5] == 1,
        _ => format.checksum,
    };
    let mut body = r.rest();
    if checksum {
        let (rest, crc) = body
            .split_last_chunk::<4>()
            .ok_or_else(|| Error::protocol("an event too short for its checksum"))?;
        let computed = crc32(&event[..event.len() - 4]);
        if computed != u32::from_le_bytes(*crc) {
            return Err(Error::protocol(format!(
                "event type {} at {}: checksum mismatch",
                header.kind, header.log_pos
            )));
        }
        body = rest;
    }
    let post_header = format.post_header_len(header.kind);
    let event = match header.kind {
        FORMAT_DESCRIPTION => format_description(event, checksum)?,
        ROTATE => {
            let mut r = Reader(body);
            let position = r.u64()?;
            Event::Rotate {
                position,
                file: text(r.rest()),
            }
        }
        GTID => {
            let mut r = Reader(body);
            let sequence = r.u64()?;
            let domain = r.u32()?;
            let flags = r.u8()?;
            if flags & FL_GROUP_COMMIT_ID != 0 {
                r.u64()?;
            }
            Event::Gtid {
                domain,
                sequence,
                flags,
            }
        }
        TABLE_MAP => Event::TableMap(table_map(body, post_header)?),
        WRITE_ROWS_V1 | UPDATE_ROWS_V1 | DELETE_ROWS_V1 | WRITE_ROWS_V2 | UPDATE_ROWS_V2
        | DELETE_ROWS_V2 => Event::Rows(rows(header.kind, body, post_header)?),
        XID => Event::Xid(Reader(body).u64()?),
        QUERY => query(body, post_header)?,
        HEARTBEAT => Event::Heartbeat { file: text(body) },
        XA_PREPARE => Event::XaPrepare,
        kind if COMPRESSED.contains(&kind) => {
            return Err(Error::Settings(
                "the binlog holds compressed events (log_bin_compress = ON), which Corral does not decode"
                    .into(),
            ))
        }
        kind => Event::Other(kind),
    };
    Ok((header, event))
}

fn format_description(event: &[u8], checksum: bool) -> Result<Event<'static>, Error> {
    let mut r = Reader(&event[HEADER_LEN..]);
    let version = r.u16()?;
    if version != 4 {
        return Err(Error::protocol(format!("binlog version {version}, not 4")));
    }
    r.skip(50 + 4)?; // server version, creation time
    let header_len = r.u8()?;
    if usize::from(header_len) != HEADER_LEN {
        return Err(Error::protocol(format!(
            "an event header of {header_len} bytes"
        )));
    }
    // The lengths run up to the algorithm byte and the checksum's room.
    let end = r.remaining().saturating_sub(5);
    let post_header = r.take(end)?.to_vec();
    Ok(Event::FormatDescription(Format {
        checksum,
        post_header,
    }))
}

/// A table id: 6 bytes, or 4 under a post-header of 6 (binlogs from before MySQL 5.1.4).
fn table_id(r: &mut Reader, post_header: usize) -> Result<u64, Error> {
    r.uint(if post_header == 6 { 4 } else { 6 })
}

fn table_map(body: &[u8], post_header: usize) -> Result<TableMap, Error> {
    let mut r = Reader(body);
    let mut post = Reader(r.take(post_header)?);
    let table_id = table_id(&mut post, post_header)?;
    let database = name(&mut r)?;
    let table = name(&mut r)?;
    let count = r.lenenc()?;
    if count > MAX_COLUMNS {
        return Err(Error::protocol(format!("a table of {count} columns")));
    }
    let types = r.take(count as usize)?;
    let mut meta = Reader(r.lenenc_bytes()?);
    let mut columns = Vec::with_capacity(types.len());
    for &kind in types {
        let (kind, meta) = column_meta(kind, &mut meta)?;
        columns.push(Column {
            name: None,
            kind,
            meta,
            unsigned: false,
        });
    }
    r.skip(bitmap_len(columns.len()))?; // nullability
    while !r.is_empty() {
        let field = r.u8()?;
        let mut value = Reader(r.lenenc_bytes()?);
        match field {
            // SIGNEDNESS: one bit per numeric column, most significant first.
            1 => {
                let bits = value.rest();
                let numeric = columns.iter_mut().filter(|c| is_numeric(c.kind));
                for (i, c) in numeric.enumerate() {
                    let byte = bits.get(i / 8).copied().unwrap_or(0);
                    c.unsigned = byte & (0x80 >> (i % 8)) != 0;
                }
            }
            // COLUMN_NAME: a length-prefixed name per column.
            4 => {
                for c in columns.iter_mut() {
                    c.name = Some(text(value.lenenc_bytes()?));
                }
            }
            _ => {}
        }
    }
    Ok(TableMap {
        table_id,
        database,
        table,
        columns,
    })
}

/// A length-prefixed, NUL-terminated name.
fn name(r: &mut Reader) -> Result<String, Error> {
    let len = usize::from(r.u8()?);
    let name = text(r.take(len)?);
    r.skip(1)?;
    Ok(name)
}

pub fn bitmap_len(bits: usize) -> usize {
    bits.div_ceil(8)
}

fn is_numeric(kind: u8) -> bool {
    use super::value::types::*;
    matches!(
        kind,
        TINY | SHORT | INT24 | LONG | LONGLONG | FLOAT | DOUBLE | NEWDECIMAL | DECIMAL
    )
}

/// A column's metadata from the table map's block, and the type its rows are stored as.
fn column_meta(kind: u8, meta: &mut Reader) -> Result<(u8, u16), Error> {
    use super::value::types::*;
    Ok(match kind {
        FLOAT | DOUBLE | BLOB | GEOMETRY | JSON | TIMESTAMP2 | DATETIME2 | TIME2 => {
            (kind, u16::from(meta.u8()?))
        }
        VARCHAR | VAR_STRING => (kind, meta.u16()?),
        NEWDECIMAL => {
            let (precision, scale) = (meta.u8()?, meta.u8()?);
            (kind, u16::from(precision) << 8 | u16::from(scale))
        }
        BIT => {
            let (bits, bytes) = (meta.u8()?, meta.u8()?);
            (kind, u16::from(bytes) << 8 | u16::from(bits))
        }
        // CHAR, ENUM and SET: the real type, and a length whose top bits hide in the type byte
        // (so CHAR(255) in utf8mb4, 1,020 bytes, fits).
        STRING => {
            let (b0, b1) = (meta.u8()?, meta.u8()?);
            if b0 & 0x30 != 0x30 {
                let len = u16::from(b1) | (u16::from((b0 & 0x30) ^ 0x30) << 4);
                (b0 | 0x30, len)
            } else {
                (b0, u16::from(b1))
            }
        }
        _ => (kind, 0),
    })
}

fn rows(kind: u8, body: &[u8], post_header: usize) -> Result<Rows<'_>, Error> {
    let mut r = Reader(body);
    let mut post = Reader(r.take(post_header)?);
    let table_id = table_id(&mut post, post_header)?;
    if kind >= WRITE_ROWS_V2 {
        // v2: flags, then extra data whose length counts its own two bytes.
        post.u16()?;
        let extra = usize::from(post.u16()?);
        r.skip(extra.saturating_sub(2))?;
    }
    let kind = match kind {
        WRITE_ROWS_V1 | WRITE_ROWS_V2 => RowsKind::Write,
        UPDATE_ROWS_V1 | UPDATE_ROWS_V2 => RowsKind::Update,
        _ => RowsKind::Delete,
    };
    Ok(Rows {
        kind,
        table_id,
        body: r.rest(),
    })
}

fn query(body: &[u8], post_header: usize) -> Result<Event<'_>, Error> {
    let mut r = Reader(body);
    let mut post = Reader(r.take(post_header)?);
    post.skip(4 + 4)?; // thread id, execution time
    let db_len = usize::from(post.u8()?);
    post.skip(2)?; // error code
    let status_len = usize::from(post.u16()?);
    r.skip(status_len)?;
    let database = text(r.take(db_len)?);
    r.skip(1)?;
    Ok(Event::Query {
        database,
        sql: text(r.rest()),
    })
}

/// CRC-32 (IEEE 802.3, reflected), the binlog's checksum.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, b| {
        TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests;
