//! An [`Entry`] on the wire between replicas (warm-up from a peer): a small versioned record
//! with everything needed to serve it as the donor would (key, status, headers, timing to the
//! microsecond, freshness, tags, the variant's selecting values, the body, how long it stays
//! usable).
//!
//! Decoding is for hostile input: every length is checked against what is left and against
//! [`Limits`], every name and value is validated, and anything else is a [`WireError`], never
//! a panic. The entry is then rebuilt through [`Entry::new`], so a decoded entry upholds every
//! invariant a fetched one does. The purge sequence is the *receiver's* (see
//! [`crate::store::Store::seq_before`]): sequence numbers are per replica.
//!
//! ```text
//! "CRW" version | key | status u16 | request_time response_time initial_age (µs, u64) |
//! lifetime swr sie beyond (µs, u64) | source u8 | flags u8 | headers | tags | variant | body
//! ```
//! Strings and byte runs are a u32 length and the bytes; lists a u32 count.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::{Entry, Variant};
use crate::key::Key;
use crate::policy::freshness::{Freshness, LifetimeSource, Timing};

/// The record format this build writes and reads.
pub const VERSION: u8 = 1;
const MAGIC: &[u8; 3] = b"CRW";

/// The most a record may hold: a decoder refuses anything larger before allocating for it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body.
    pub max_body: usize,
    /// Largest key, header block, tag list or variant (each).
    pub max_part: usize,
    /// Most header fields, tags or variant fields (each).
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 8 << 20,
            max_part: 256 << 10,
            max_items: 1024,
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Not a record (wrong magic bytes).
    Magic,
    /// A record of another format version.
    Version(u8),
    /// Shorter than its lengths say.
    Truncated,
    /// A part larger than [`Limits`] allow.
    TooLarge(&'static str),
    /// A field that does not parse (a header name, a status...).
    Invalid(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Magic => f.write_str("not an entry record"),
            WireError::Version(v) => {
                write!(f, "entry record version {v}, this build reads {VERSION}")
            }
            WireError::Truncated => f.write_str("entry record truncated"),
            WireError::TooLarge(what) => write!(f, "entry record {what} over the limit"),
            WireError::Invalid(what) => write!(f, "entry record {what} invalid"),
        }
    }
}

impl std::error::Error for WireError {}

/// A decoded record: an entry's parts, checked, waiting for the receiver's purge sequence.
/// The body is borrowed from the buffer the record was decoded from, so a body crosses from
/// the wire into its entry with one copy (in [`Record::into_entry`]), however large.
#[derive(Debug)]
pub struct Record<'a> {
    /// Checked: a record whose key [`Key::parse`] refuses is [`WireError::Invalid`].
    pub key: Key,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: &'a [u8],
    pub timing: Timing,
    pub freshness: Freshness,
    /// How long the entry stays usable beyond fresh (the donor's `keep` and stale windows).
    pub beyond: Duration,
    pub tags: Vec<String>,
    pub variant: Variant,
}

impl Record<'_> {
    /// When the fetch that produced the entry started, by the donor's clock.
    pub fn fetch_started(&self) -> SystemTime {
        self.timing.request_time
    }

    /// The entry, judged by the receiver's purges from `purge_seq` on: the body is copied
    /// from the decoded buffer into the entry's allocation, the only copy on the way.
    pub fn into_entry(self, purge_seq: u64) -> Entry {
        Entry::new(
            self.key.view(),
            self.status,
            &self.headers,
            self.body,
            self.timing,
            self.freshness,
            &self.tags,
            self.variant,
            purge_seq,
            self.beyond,
        )
    }
}

const SOURCES: [LifetimeSource; 6] = super::SOURCES;

fn micros_of(t: SystemTime) -> u64 {
    super::micros_since_epoch(t)
}

fn put_u32_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_run(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends `e`'s record to `out`.
pub fn encode(e: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    put_run(out, e.key().as_str().as_bytes());
    out.extend_from_slice(&e.status().as_u16().to_be_bytes());
    let timing = e.timing();
    let f = e.freshness();
    let fresh_end = e
        .head()
        .response_time
        .saturating_add(super::micros(f.lifetime.saturating_sub(timing.initial_age)));
    let beyond = e.head().expires_at.saturating_sub(fresh_end);
    for v in [
        micros_of(timing.request_time),
        e.head().response_time,
        super::micros(timing.initial_age),
        super::micros(f.lifetime),
        super::micros(f.stale_while_revalidate),
        super::micros(f.stale_if_error),
        beyond,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.push(SOURCES.iter().position(|s| *s == f.source).unwrap_or(5) as u8);
    out.push(u8::from(f.forbids_stale) | (u8::from(f.no_cache) << 1));
    let headers: Vec<_> = e.headers().iter().collect();
    put_u32_len(out, headers.len());
    for (n, v) in &headers {
        put_run(out, n.as_str().as_bytes());
        put_run(out, v.as_bytes());
    }
    put_u32_len(out, e.tags().count());
    for t in e.tags() {
        put_run(out, t.as_bytes());
    }
    let fields = e.variant().fields();
    put_u32_len(out, fields.len());
    for (n, v) in fields {
        put_run(out, n.as_str().as_bytes());
        match v {
            Some(v) => {
                out.push(1);
                put_run(out, v.as_bytes());
            }
            None => out.push(0),
        }
    }
    put_run(out, e.body_bytes());
}

/// Reads a record, checking every length against what is left and against the limits.
struct Reader<'a> {
    buf: &'a [u8],
    limits: Limits,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<usize, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn run(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.u32()?;
        if n > max {
            return Err(WireError::TooLarge(what));
        }
        self.take(n)
    }

    fn text(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let b = self.run(self.limits.max_part, what)?;
        std::str::from_utf8(b).map_err(|_| WireError::Invalid(what))
    }

    /// A list's count: within the limit, and no more items than bytes left could hold.
    fn count(&mut self, what: &'static str) -> Result<usize, WireError> {
        let n = self.u32()?;
        if n > self.limits.max_items {
            return Err(WireError::TooLarge(what));
        }
        if n > self.buf.len() / 4 {
            return Err(WireError::Truncated);
        }
        Ok(n)
    }

    fn name(&mut self, what: &'static str) -> Result<HeaderName, WireError> {
        HeaderName::from_bytes(self.run(self.limits.max_part, what)?)
            .map_err(|_| WireError::Invalid(what))
    }
}

fn micros(v: u64) -> Duration {
    Duration::from_micros(v)
}

/// Decodes one record made by [`encode`]. Never panics; refuses what the limits do not allow
/// and anything trailing the body. The record borrows its body from `buf`.
pub fn decode(buf: &[u8], limits: Limits) -> Result<Record<'_>, WireError> {
    let mut r = Reader { buf, limits };
    if r.take(3).map_err(|_| WireError::Magic)? != MAGIC {
        return Err(WireError::Magic);
    }
    match r.u8()? {
        VERSION => {}
        v => return Err(WireError::Version(v)),
    }
    let key = Key::parse(r.text("key")?).ok_or(WireError::Invalid("key"))?;
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| WireError::Invalid("status"))?;
    let mut t = [0u64; 7];
    for v in &mut t {
        *v = r.u64()?;
    }
    let [request, response, initial_age, lifetime, swr, sie, beyond] = t;
    if request > response {
        return Err(WireError::Invalid("timing"));
    }
    let source = *SOURCES
        .get(usize::from(r.u8()?))
        .ok_or(WireError::Invalid("lifetime source"))?;
    let flags = r.u8()?;
    let mut headers = HeaderMap::new();
    let mut header_bytes = 0usize;
    for _ in 0..r.count("header count")? {
        let name = r.name("header name")?;
        let value = r.run(limits.max_part, "header value")?;
        header_bytes += name.as_str().len() + value.len();
        if header_bytes > limits.max_part {
            return Err(WireError::TooLarge("headers"));
        }
        let value =
            HeaderValue::from_bytes(value).map_err(|_| WireError::Invalid("header value"))?;
        headers.append(name, value);
    }
    let mut tags = Vec::new();
    for _ in 0..r.count("tag count")? {
        tags.push(r.text("tag")?.to_string());
    }
    let mut fields = Vec::new();
    for _ in 0..r.count("variant count")? {
        let name = r.name("variant name")?;
        let value = match r.u8()? {
            0 => None,
            1 => Some(r.text("variant value")?.into()),
            _ => return Err(WireError::Invalid("variant flag")),
        };
        fields.push((name, value));
    }
    let body = r.run(limits.max_body, "body")?;
    if !r.buf.is_empty() {
        return Err(WireError::Invalid("trailing bytes"));
    }
    let response_time = UNIX_EPOCH + micros(response);
    Ok(Record {
        key,
        status,
        headers,
        body,
        timing: Timing {
            request_time: UNIX_EPOCH + micros(request),
            response_time,
            initial_age: micros(initial_age),
        },
        freshness: Freshness {
            lifetime: micros(lifetime),
            source,
            stale_while_revalidate: micros(swr),
            stale_if_error: micros(sie),
            forbids_stale: flags & 1 != 0,
            no_cache: flags & 2 != 0,
        },
        beyond: micros(beyond),
        tags,
        variant: Variant::from_fields(fields),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, body: &[u8], tags: &[&str], seq: u64) -> Entry {
        let now = UNIX_EPOCH + Duration::from_micros(1_790_000_000_123_456);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        let variant = Variant::from_fields(vec![(
            HeaderName::from_static("accept-language"),
            Some("fr".into()),
        )]);
        Entry::new(
            crate::key::KeyRef::parse(key).unwrap(),
            StatusCode::OK,
            &headers,
            body,
            Timing {
                request_time: now - Duration::from_millis(3),
                response_time: now,
                initial_age: Duration::from_secs(2),
            },
            Freshness {
                lifetime: Duration::from_secs(300),
                source: LifetimeSource::MaxAge,
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::ZERO,
                forbids_stale: false,
                no_cache: false,
            },
            tags,
            variant,
            seq,
            Duration::from_secs(3600),
        )
    }

    fn same(a: &Entry, b: &Entry) {
        assert_eq!(a.key(), b.key());
        assert_eq!(a.status(), b.status());
        assert_eq!(a.headers().to_map(), b.headers().to_map());
        assert_eq!(a.body_bytes(), b.body_bytes());
        assert_eq!(a.timing(), b.timing());
        assert_eq!(a.freshness(), b.freshness());
        assert_eq!(a.expires_at(), b.expires_at());
        assert_eq!(a.tags().collect::<Vec<_>>(), b.tags().collect::<Vec<_>>());
        assert_eq!(a.variant(), b.variant());
    }

    #[test]
    fn an_entry_comes_back_whole_with_the_receivers_sequence() {
        let e = entry("G|h|/a", b"hello", &["t1", "t2"], 9);
        let mut out = Vec::new();
        encode(&e, &mut out);
        let back = decode(&out, Limits::default()).unwrap().into_entry(2);
        same(&e, &back);
        assert_eq!(
            back.purge_seq(),
            2,
            "the receiver's sequence, not the donor's"
        );
    }

    #[test]
    fn a_decoded_body_is_the_buffers_own_bytes_not_a_copy() {
        let e = entry("G|h|/a", &[9u8; 4096], &[], 1);
        let mut out = Vec::new();
        encode(&e, &mut out);
        let record = decode(&out, Limits::default()).unwrap();
        let tail = &out[out.len() - 4096..];
        assert_eq!(
            record.body.as_ptr(),
            tail.as_ptr(),
            "the body must point into the decoded buffer"
        );
        assert_eq!(record.body, tail);
    }

    #[test]
    fn garbage_and_oversized_parts_are_errors() {
        let e = entry("G|h|/a", &[7u8; 1000], &["t"], 1);
        let mut out = Vec::new();
        encode(&e, &mut out);
        let l = Limits::default();
        assert_eq!(decode(b"", l).unwrap_err(), WireError::Magic);
        assert_eq!(decode(b"XYZ\x01", l).unwrap_err(), WireError::Magic);
        let mut v2 = out.clone();
        v2[3] = 2;
        assert_eq!(decode(&v2, l).unwrap_err(), WireError::Version(2));
        for cut in [5, 20, out.len() - 1] {
            assert!(decode(&out[..cut], l).is_err(), "cut at {cut}");
        }
        let small = Limits { max_body: 999, ..l };
        assert_eq!(
            decode(&out, small).unwrap_err(),
            WireError::TooLarge("body")
        );
        let mut trailing = out.clone();
        trailing.push(0);
        assert_eq!(
            decode(&trailing, l).unwrap_err(),
            WireError::Invalid("trailing bytes")
        );
        // A key length claiming 4 GiB is refused before anything is allocated.
        let mut huge = out[..4].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge, l).unwrap_err(), WireError::TooLarge("key"));
    }

    #[test]
    fn a_record_whose_key_is_not_a_cache_key_is_refused() {
        let e = entry("G|h|/a", b"x", &[], 1);
        let mut out = Vec::new();
        encode(&e, &mut out);
        let at = out.windows(6).position(|w| w == b"G|h|/a").unwrap();
        out[at + 1] = b'x'; // "Gxh|/a": no class tag, one separator
        assert_eq!(
            decode(&out, Limits::default()).unwrap_err(),
            WireError::Invalid("key")
        );
    }

    proptest::proptest! {
        /// Any entry round-trips exactly.
        #[test]
        fn any_entry_round_trips(
            key in "Gs?\\|[a-z0-9.:-]{1,30}\\|/[ -~]{0,170}",
            tags in proptest::collection::vec("[!-~]{0,50}", 0..20),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        ) {
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            let e = entry(&key, &body, &tags, 3);
            let mut out = Vec::new();
            encode(&e, &mut out);
            same(&e, &decode(&out, Limits::default()).unwrap().into_entry(0));
        }

        /// Any bytes decode to a record or an error, never a panic; flipping a byte of a
        /// valid record never panics either.
        #[test]
        fn any_bytes_are_safe(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            at in 0usize..400,
            to in proptest::num::u8::ANY,
        ) {
            let _ = decode(&junk, Limits::default());
            let mut out = Vec::new();
            encode(&entry("G|h|/x", b"body", &["a"], 1), &mut out);
            let i = at % out.len();
            out[i] = to;
            let _ = decode(&out, Limits::default());
        }
    }
}
