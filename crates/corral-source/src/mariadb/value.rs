//! Row images: each present column's value as the text a rule's template takes, bounded by
//! the event (a length beyond it is an error, never an allocation).
//!
//! Values render as the `mariadb` client prints them: integers (signed or unsigned, by the
//! table map's signedness), DECIMAL with its scale, DATE `YYYY-MM-DD`, DATETIME
//! `YYYY-MM-DD hh:mm:ss[.ffffff]`, TIMESTAMP as that in UTC, TIME, YEAR, strings and blobs as
//! UTF-8 (invalid bytes replaced), ENUM and SET as their stored numbers, BIT as a number.

use super::event::{bitmap_len, Column, Rows, RowsKind, TableMap, MAX_COLUMNS};
use super::packet::{text, Reader};
use super::Error;
use crate::rules::{Change, Op, Row};

/// Column types as the binlog numbers them.
pub mod types {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}
use types::*;

/// The changes a rows event makes, one per row (an update's before and after images
/// together), as the rules read them.
pub fn changes(rows: &Rows, map: &TableMap) -> Result<Vec<Change>, Error> {
    let mut r = Reader(rows.body);
    let count = r.lenenc()?;
    if count > MAX_COLUMNS || count as usize != map.columns.len() {
        return Err(Error::protocol(format!(
            "a rows event for {}.{} with {count} columns, its table map has {}",
            map.database,
            map.table,
            map.columns.len()
        )));
    }
    let before = r.take(bitmap_len(map.columns.len()))?;
    let after = match rows.kind {
        RowsKind::Update => r.take(bitmap_len(map.columns.len()))?,
        _ => before,
    };
    let mut out = Vec::new();
    while !r.is_empty() {
        let first = image(&mut r, map, before)?;
        let change = match rows.kind {
            RowsKind::Write => (Op::Insert, None, Some(first)),
            RowsKind::Delete => (Op::Delete, Some(first), None),
            RowsKind::Update => (Op::Update, Some(first), Some(image(&mut r, map, after)?)),
        };
        out.push(Change {
            table: map.table.clone(),
            op: change.0,
            old: change.1,
            new: change.2,
        });
    }
    Ok(out)
}

/// One row image: a NULL bitmap over the present columns, then their non-NULL values. A
/// partial image (`binlog_row_image = MINIMAL`) holds only the present columns.
fn image(r: &mut Reader, map: &TableMap, present: &[u8]) -> Result<Row, Error> {
    let is_set = |bits: &[u8], i: usize| bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
    let columns: Vec<(usize, &Column)> = map
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| is_set(present, *i))
        .collect();
    let nulls = r.take(bitmap_len(columns.len()))?;
    let mut row = Row::new();
    for (n, (i, column)) in columns.into_iter().enumerate() {
        let value = match is_set(nulls, n) {
            true => None,
            false => Some(value(r, column).map_err(|e| {
                Error::protocol(format!(
                    "{}.{} column {}: {e}",
                    map.database,
                    map.table,
                    column.name.as_deref().unwrap_or("?")
                ))
            })?),
        };
        let name = column.name.clone().unwrap_or_else(|| format!("@{}", i + 1));
        row.insert(name, value);
    }
    Ok(row)
}

/// One column's value.
pub fn value(r: &mut Reader, c: &Column) -> Result<String, Error> {
    let meta = usize::from(c.meta);
    Ok(match c.kind {
        TINY => int(r, 1, c.unsigned)?,
        SHORT => int(r, 2, c.unsigned)?,
        INT24 => int(r, 3, c.unsigned)?,
        LONG => int(r, 4, c.unsigned)?,
        LONGLONG => int(r, 8, c.unsigned)?,
        FLOAT => f32::from_bits(r.u32()?).to_string(),
        DOUBLE => f64::from_bits(r.u64()?).to_string(),
        YEAR => match r.u8()? {
            0 => "0000".into(),
            y => (1900 + u32::from(y)).to_string(),
        },
        DATE | NEWDATE => {
            let v = r.uint(3)?;
            format!("{:04}-{:02}-{:02}", v >> 9, (v >> 5) & 15, v & 31)
        }
        TIMESTAMP => utc(r.u32()?.into(), 0, 0),
        TIMESTAMP2 => {
            let seconds = r.uint_be(4)?;
            let (frac, digits) = fraction(r, meta)?;
            utc(seconds, frac, digits)
        }
        DATETIME => {
            let v = r.u64()?;
            let (date, time) = (v / 1_000_000, v % 1_000_000);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                date / 10000,
                date / 100 % 100,
                date % 100,
                time / 10000,
                time / 100 % 100,
                time % 100
            )
        }
        DATETIME2 => {
            let v = r.uint_be(5)?.wrapping_sub(0x80_0000_0000);
            let (frac, digits) = fraction(r, meta)?;
            let ym = (v >> 22) & 0x1_ffff;
            let mut s = format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                ym / 13,
                ym % 13,
                (v >> 17) & 31,
                (v >> 12) & 31,
                (v >> 6) & 63,
                v & 63
            );
            push_fraction(&mut s, frac, digits);
            s
        }
        TIME => {
            let v = r.uint(3)? as i64;
            let v = if v & 0x80_0000 != 0 {
                v - 0x100_0000
            } else {
                v
            };
            let (sign, v) = (if v < 0 { "-" } else { "" }, v.unsigned_abs());
            format!("{sign}{:02}:{:02}:{:02}", v / 10000, v / 100 % 100, v % 100)
        }
        TIME2 => {
            let frac_bytes = fraction_bytes(meta)?;
            let width = 3 + frac_bytes;
            let packed = r.uint_be(width)? as i64 - (0x80_0000i64 << (8 * frac_bytes));
            let (sign, v) = (if packed < 0 { "-" } else { "" }, packed.unsigned_abs());
            let (hms, frac) = (v >> (8 * frac_bytes), v & ((1 << (8 * frac_bytes)) - 1));
            let mut s = format!(
                "{sign}{:02}:{:02}:{:02}",
                (hms >> 12) & 0x3ff,
                (hms >> 6) & 63,
                hms & 63
            );
            push_fraction(&mut s, scale_fraction(frac, frac_bytes), meta.min(6));
            s
        }
        VARCHAR | VAR_STRING => {
            let len = r.uint(if meta < 256 { 1 } else { 2 })? as usize;
            text(r.take(len)?)
        }
        STRING => {
            let len = r.uint(if meta < 256 { 1 } else { 2 })? as usize;
            text(r.take(len)?)
        }
        ENUM | SET => int(r, usize::from(c.meta & 0xff).clamp(1, 8), true)?,
        BLOB | TINY_BLOB | MEDIUM_BLOB | LONG_BLOB | JSON | GEOMETRY => {
            if !(1..=4).contains(&meta) {
                return Err(Error::protocol(format!("a blob length of {meta} bytes")));
            }
            let len = r.uint(meta)? as usize;
            text(r.take(len)?)
        }
        NEWDECIMAL => decimal(r, (c.meta >> 8) as u8, c.meta as u8)?,
        BIT => {
            let bytes = usize::from(c.meta >> 8) + usize::from(c.meta & 0xff > 0);
            if bytes > 8 {
                return Err(Error::protocol(format!("a BIT of {bytes} bytes")));
            }
            r.uint_be(bytes)?.to_string()
        }
        NULL => return Err(Error::protocol("a value for a NULL-typed column")),
        other => {
            return Err(Error::protocol(format!(
                "type {other}, which Corral does not decode"
            )))
        }
    })
}

fn int(r: &mut Reader, bytes: usize, unsigned: bool) -> Result<String, Error> {
    let v = r.uint(bytes)?;
    if unsigned {
        return Ok(v.to_string());
    }
    let shift = 64 - 8 * bytes as u32;
    Ok((((v << shift) as i64) >> shift).to_string())
}

/// Bytes of fractional seconds for `fsp` digits (0 to 6).
fn fraction_bytes(fsp: usize) -> Result<usize, Error> {
    match fsp {
        0..=6 => Ok(fsp.div_ceil(2)),
        _ => Err(Error::protocol(format!("{fsp} fractional digits"))),
    }
}

/// The fraction as microseconds-scaled digits.
fn scale_fraction(frac: u64, bytes: usize) -> u64 {
    match bytes {
        1 => frac * 10_000,
        2 => frac * 100,
        _ => frac,
    }
}

fn fraction(r: &mut Reader, fsp: usize) -> Result<(u64, usize), Error> {
    let bytes = fraction_bytes(fsp)?;
    Ok((scale_fraction(r.uint_be(bytes)?, bytes), fsp))
}

/// `.ffffff` cut to `digits`.
fn push_fraction(s: &mut String, micros: u64, digits: usize) {
    if digits > 0 {
        let all = format!("{:06}", micros % 1_000_000);
        s.push('.');
        s.push_str(&all[..digits]);
    }
}

/// Unix seconds as `YYYY-MM-DD hh:mm:ss` in UTC (Howard Hinnant's civil-from-days).
fn utc(seconds: u64, micros: u64, digits: usize) -> String {
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    );
    push_fraction(&mut s, micros, digits);
    s
}

/// DECIMAL(precision, scale) in MySQL's binary form: groups of nine digits in four bytes,
/// big-endian, the leftover digits in fewer; the sign in the first bit, a negative number
/// stored with every bit inverted.
fn decimal(r: &mut Reader, precision: u8, scale: u8) -> Result<String, Error> {
    const DIGIT_BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    if precision == 0 || precision > 65 || scale > precision || scale > 38 {
        return Err(Error::protocol(format!(
            "DECIMAL({precision}, {scale}) is not a valid type"
        )));
    }
    let (intg, frac) = (usize::from(precision - scale), usize::from(scale));
    let size = intg / 9 * 4 + DIGIT_BYTES[intg % 9] + frac / 9 * 4 + DIGIT_BYTES[frac % 9];
    let mut bytes = r.take(size)?.to_vec();
    let negative = bytes[0] & 0x80 == 0;
    bytes[0] ^= 0x80;
    if negative {
        bytes.iter_mut().for_each(|b| *b = !*b);
    }
    let mut d = Reader(&bytes);
    let mut int_part = String::new();
    if intg % 9 > 0 {
        int_part.push_str(&d.uint_be(DIGIT_BYTES[intg % 9])?.to_string());
    }
    for _ in 0..intg / 9 {
        int_part.push_str(&format!("{:09}", d.uint_be(4)?));
    }
    let int_part = int_part.trim_start_matches('0');
    let mut s = String::from(if negative { "-" } else { "" });
    s.push_str(if int_part.is_empty() { "0" } else { int_part });
    if frac > 0 {
        s.push('.');
        for _ in 0..frac / 9 {
            s.push_str(&format!("{:09}", d.uint_be(4)?));
        }
        if frac % 9 > 0 {
            let v = d.uint_be(DIGIT_BYTES[frac % 9])?;
            s.push_str(&format!("{v:0width$}", width = frac % 9));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
