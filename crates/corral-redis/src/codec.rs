//! The stored form of an [`Entry`] in Redis: a small versioned binary record carrying
//! everything needed to serve it correctly (status, headers with validators, timing and
//! freshness, tags, the variant's selecting header values, the body).
//!
//! The format version [`FORMAT`] is also part of every key's prefix (`corral:v1:`), so a new
//! format orphans old records (they expire by TTL) instead of misreading them; the version byte
//! inside the record is a second check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use corral_core::entry::{Entry, Variant};
use corral_core::policy::freshness::{Freshness, LifetimeSource, Timing};
use corral_core::tags::Tag;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

/// The record format version (also in the key prefix).
pub const FORMAT: u8 = 1;
const MAGIC: &[u8; 3] = b"CRL";

/// A decoded record: an [`Entry`]'s parts.
#[derive(Debug)]
pub struct Record {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timing: Timing,
    pub freshness: Freshness,
    pub tags: Vec<Tag>,
    pub variant: Variant,
}

impl Record {
    /// The entry stored under `key`, for the in-process store (`keep` and `purge_seq` are
    /// the reader's).
    pub fn into_entry(self, key: &str, purge_seq: u64, keep: Duration) -> Entry {
        Entry::new(
            key,
            self.status,
            &self.headers,
            &self.body,
            self.timing,
            self.freshness,
            &self.tags,
            self.variant,
            purge_seq,
            keep,
        )
    }
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("not a corral record")]
    Magic,
    #[error("record format {0}, this build reads {FORMAT}")]
    Version(u8),
    #[error("record truncated")]
    Truncated,
    #[error("record field invalid: {0}")]
    Invalid(&'static str),
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(v: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v)
}

fn source_code(s: LifetimeSource) -> u8 {
    match s {
        LifetimeSource::SMaxAge => 0,
        LifetimeSource::MaxAge => 1,
        LifetimeSource::Expires => 2,
        LifetimeSource::Heuristic => 3,
        LifetimeSource::Default => 4,
        LifetimeSource::None => 5,
    }
}

fn source_of(c: u8) -> Result<LifetimeSource, CodecError> {
    Ok(match c {
        0 => LifetimeSource::SMaxAge,
        1 => LifetimeSource::MaxAge,
        2 => LifetimeSource::Expires,
        3 => LifetimeSource::Heuristic,
        4 => LifetimeSource::Default,
        5 => LifetimeSource::None,
        _ => return Err(CodecError::Invalid("lifetime source")),
    })
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

/// Encodes an entry.
pub fn encode(e: &Entry) -> Bytes {
    let headers = e.headers();
    let mut b = BytesMut::with_capacity(128 + e.body_bytes().len() + headers.byte_len());
    b.put_slice(MAGIC);
    b.put_u8(FORMAT);
    b.put_u16(e.status().as_u16());
    b.put_u64(ms(e.timing().request_time));
    b.put_u64(ms(e.timing().response_time));
    b.put_u64(e.timing().initial_age.as_millis() as u64);
    let f = &e.freshness();
    b.put_u64(f.lifetime.as_millis() as u64);
    b.put_u8(source_code(f.source));
    b.put_u64(f.stale_while_revalidate.as_millis() as u64);
    b.put_u64(f.stale_if_error.as_millis() as u64);
    b.put_u8(u8::from(f.forbids_stale) | (u8::from(f.no_cache) << 1));
    let fields: Vec<_> = headers.iter().collect();
    b.put_u32(fields.len() as u32);
    for (n, v) in fields {
        put_bytes(&mut b, n.as_str().as_bytes());
        put_bytes(&mut b, v.as_bytes());
    }
    b.put_u32(e.tags().count() as u32);
    for t in e.tags() {
        put_bytes(&mut b, t.as_bytes());
    }
    let vf = e.variant().fields();
    b.put_u32(vf.len() as u32);
    for (n, v) in vf {
        put_bytes(&mut b, n.as_str().as_bytes());
        match v {
            Some(v) => {
                b.put_u8(1);
                put_bytes(&mut b, v.as_bytes());
            }
            None => b.put_u8(0),
        }
    }
    put_bytes(&mut b, e.body_bytes());
    b.freeze()
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated);
        }
        Ok(self.buf.split_to(n))
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b[..].try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b[..].try_into().unwrap_or_default()))
    }
    fn bytes(&mut self) -> Result<Bytes, CodecError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, CodecError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| CodecError::Invalid("utf-8"))
    }
    fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.u32()? as usize;
        // Every counted item takes at least 4 bytes: a count beyond that is corrupt.
        if n > self.buf.len() / 4 + 1 {
            return Err(CodecError::Truncated);
        }
        Ok(n)
    }
}

/// Decodes a record made by [`encode`]. Never panics on bad input.
pub fn decode(buf: Bytes) -> Result<Record, CodecError> {
    let mut r = Reader { buf };
    if &r.take(3)?[..] != MAGIC {
        return Err(CodecError::Magic);
    }
    let v = r.u8()?;
    if v != FORMAT {
        return Err(CodecError::Version(v));
    }
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| CodecError::Invalid("status"))?;
    let timing = Timing {
        request_time: from_ms(r.u64()?),
        response_time: from_ms(r.u64()?),
        initial_age: Duration::from_millis(r.u64()?),
    };
    let lifetime = Duration::from_millis(r.u64()?);
    let source = source_of(r.u8()?)?;
    let swr = Duration::from_millis(r.u64()?);
    let sie = Duration::from_millis(r.u64()?);
    let flags = r.u8()?;
    let freshness = Freshness {
        lifetime,
        source,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        forbids_stale: flags & 1 != 0,
        no_cache: flags & 2 != 0,
    };
    let n = r.count()?;
    let mut headers = HeaderMap::with_capacity(n);
    for _ in 0..n {
        let name =
            HeaderName::from_bytes(&r.bytes()?).map_err(|_| CodecError::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(r.bytes()?)
            .map_err(|_| CodecError::Invalid("header value"))?;
        headers.append(name, value);
    }
    let n = r.count()?;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        tags.push(Tag::from(r.str()?));
    }
    let n = r.count()?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let name =
            HeaderName::from_bytes(&r.bytes()?).map_err(|_| CodecError::Invalid("variant name"))?;
        let value = match r.u8()? {
            0 => None,
            1 => Some(r.str()?.into_boxed_str()),
            _ => return Err(CodecError::Invalid("variant flag")),
        };
        fields.push((name, value));
    }
    let body = r.bytes()?;
    Ok(Record {
        status,
        headers,
        body,
        timing,
        freshness,
        tags,
        variant: Variant::from_fields(fields),
    })
}

/// The hash field a variant is stored under: its selecting header values, canonical.
pub fn variant_field(v: &Variant) -> String {
    let mut s = String::from("v");
    for (n, val) in v.fields() {
        s.push('\n');
        s.push_str(n.as_str());
        match val {
            Some(val) => {
                s.push('=');
                s.push_str(val);
            }
            None => s.push('!'),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut h = HeaderMap::new();
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert("vary", HeaderValue::from_static("accept-language"));
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("de"));
        let variant = Variant::of(&req, &h, &[HeaderName::from_static("x-tenant")]);
        let now = SystemTime::now();
        Entry::new(
            "G|h|/x",
            StatusCode::OK,
            &h,
            b"hello body",
            Timing {
                request_time: now,
                response_time: now,
                initial_age: Duration::from_secs(3),
            },
            Freshness {
                lifetime: Duration::from_secs(60),
                source: LifetimeSource::MaxAge,
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::from_secs(7),
                forbids_stale: true,
                no_cache: false,
            },
            &["a", "b c"],
            variant,
            0,
            Duration::ZERO,
        )
    }

    #[test]
    fn round_trips_everything_needed_to_serve() {
        let e = entry();
        let r = decode(encode(&e)).unwrap();
        assert_eq!(r.status, e.status());
        assert_eq!(r.headers, e.headers().to_map());
        assert_eq!(r.body, e.body());
        assert_eq!(r.freshness, e.freshness());
        assert_eq!(ms(r.timing.request_time), ms(e.timing().request_time));
        assert_eq!(r.timing.initial_age, e.timing().initial_age);
        assert_eq!(r.tags, e.tags().map(Tag::from).collect::<Vec<_>>());
        assert_eq!(&r.variant, e.variant());
        assert_eq!(variant_field(&r.variant), variant_field(e.variant()));
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        assert!(r.variant.matches(&de));
        assert!(!r.variant.matches(&HeaderMap::new()));
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        let good = encode(&entry());
        assert_eq!(
            decode(Bytes::from_static(b"xx")).unwrap_err(),
            CodecError::Truncated
        );
        assert_eq!(
            decode(Bytes::from_static(b"XYZ\x01")).unwrap_err(),
            CodecError::Magic
        );
        let mut v2 = good.to_vec();
        v2[3] = 2;
        assert_eq!(decode(Bytes::from(v2)).unwrap_err(), CodecError::Version(2));
        for cut in 0..good.len() {
            assert!(decode(good.slice(..cut)).is_err());
        }
        let mut rng = 7u64;
        for _ in 0..2000 {
            let mut b = good.to_vec();
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            let i = (rng >> 33) as usize % b.len();
            b[i] ^= (rng >> 7) as u8 | 1;
            let _ = decode(Bytes::from(b));
        }
    }
}
