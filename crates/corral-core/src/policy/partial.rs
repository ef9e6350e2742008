//! Partial content (RFC 9110 §14, RFC 9111 §3.3, §3.4): which byte range a request asks
//! for, which stored `206` can answer it, and how a stored prefix is completed.
//!
//! * A `206` to a single-range request is stored with its `Content-Range` as it came, when
//!   the complete length is known (`bytes 0-99/1000`, not `bytes 0-99/*`); multipart
//!   (`multipart/byteranges`) answers pass unstored.
//! * A later request whose range (single `a-b`, suffix `-n`, open-ended `a-`) lies within the
//!   stored part is answered from it.
//! * A request for more than a stored prefix (`0-b`) asks the origin for the rest only
//!   (`Range: bytes=b+1-`, `If-Range` with the stored strong `ETag`); a `206` carrying the
//!   same strong `ETag` and complete length is appended (§3.4), and once the parts reach the
//!   complete length the entry becomes a whole `200`.

use http::header::{HeaderMap, HeaderValue, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, RANGE};
use http::StatusCode;

/// A byte range `first..=last` of a representation `complete` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub complete: u64,
}

impl ContentRange {
    /// Parses `Content-Range: bytes first-last/complete` (one field line, a known length,
    /// `first <= last < complete`).
    pub fn of(headers: &HeaderMap) -> Option<ContentRange> {
        let mut lines = headers.get_all(CONTENT_RANGE).iter();
        let (Some(v), None) = (lines.next(), lines.next()) else {
            return None;
        };
        let spec = v.to_str().ok()?.trim().strip_prefix("bytes ")?;
        let (range, complete) = spec.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let r = ContentRange {
            first: digits(first)?,
            last: digits(last)?,
            complete: digits(complete)?,
        };
        (r.first <= r.last && r.last < r.complete).then_some(r)
    }

    /// The header value for this range.
    pub fn header(&self) -> HeaderValue {
        let v = format!("bytes {}-{}/{}", self.first, self.last, self.complete);
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("bytes */0"))
    }

    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false // first <= last, always
    }

    /// True when this range is the whole representation.
    pub fn is_whole(&self) -> bool {
        self.first == 0 && self.last + 1 == self.complete
    }
}

fn digits(s: &str) -> Option<u64> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// What a `Range` header asks of a representation `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No range, another unit, several ranges or a syntax error: the whole representation
    /// is the answer (RFC 9110 §14.2 lets a server ignore `Range`).
    Whole,
    /// No part of it exists: 416.
    Unsatisfiable,
    /// Bytes `first..=last`.
    Part(u64, u64),
}

/// One requested byte range before the representation's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// `a-b` or `a-` (`last` = `None`).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// The single byte range of a `Range` header; `None` for anything else (absent, several
/// ranges, another unit, bad syntax).
pub fn requested(range: &[u8]) -> Option<Requested> {
    let spec = std::str::from_utf8(range)
        .ok()?
        .trim()
        .strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (false, true) => Some(Requested::From {
            first: digits(a)?,
            last: None,
        }),
        (false, false) => {
            let (first, last) = (digits(a)?, digits(b)?);
            (first <= last).then_some(Requested::From {
                first,
                last: Some(last),
            })
        }
        (true, false) => Some(Requested::Suffix(digits(b)?)),
        (true, true) => None,
    }
}

impl Requested {
    /// The bytes this asks of a representation `len` bytes long.
    pub fn resolve(self, len: u64) -> RangeSpec {
        match self {
            Requested::From { first, .. } if first >= len => RangeSpec::Unsatisfiable,
            Requested::From { first, last } => {
                RangeSpec::Part(first, last.unwrap_or(len - 1).min(len - 1))
            }
            Requested::Suffix(0) => RangeSpec::Unsatisfiable,
            Requested::Suffix(_) if len == 0 => RangeSpec::Unsatisfiable,
            Requested::Suffix(n) => RangeSpec::Part(len.saturating_sub(n), len - 1),
        }
    }
}

/// What a `Range` header asks of a stored representation `len` bytes long.
pub fn resolve(range: &[u8], len: u64) -> RangeSpec {
    requested(range).map_or(RangeSpec::Whole, |r| r.resolve(len))
}

/// A range request whose `206` Corral may fetch and store: a single byte range and no
/// `If-Range` (whose answer would depend on the client's validator, not ours).
pub fn storable_request(request: &HeaderMap) -> Option<Requested> {
    if request.contains_key(IF_RANGE) || request.get_all(RANGE).iter().count() != 1 {
        return None;
    }
    requested(request.get(RANGE)?.as_bytes())
}

/// True when a response is a `206` that may be stored: one byte range of a known complete
/// length, not multipart.
pub fn storable_part(status: StatusCode, headers: &HeaderMap) -> bool {
    let multipart = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/byteranges")
        });
    status == StatusCode::PARTIAL_CONTENT && !multipart && ContentRange::of(headers).is_some()
}

/// The bytes of a stored part (`stored`, from its `Content-Range`) that answer `request`'s
/// range, as `first..=last` of the complete representation. `None` when the request asks for
/// bytes the part does not hold (or for the whole).
pub fn covered(stored: &ContentRange, request: &HeaderMap) -> Option<(u64, u64)> {
    match requested(request.get(RANGE)?.as_bytes())?.resolve(stored.complete) {
        RangeSpec::Part(first, last) if stored.first <= first && last <= stored.last => {
            Some((first, last))
        }
        _ => None,
    }
}

/// The request headers that ask the origin for the rest of a stored prefix: `Range` from the
/// byte after it, `If-Range` with its strong `ETag`. `None` when the part is not a prefix or
/// has no strong validator (a weak one cannot join parts, RFC 9110 §13.1.5).
pub fn completion(stored: &ContentRange, stored_headers: &HeaderMap) -> Option<[HeaderValue; 2]> {
    let etag = stored_headers
        .get(ETAG)
        .filter(|e| e.as_bytes().starts_with(b"\""))?;
    if stored.first != 0 || stored.is_whole() {
        return None;
    }
    let range = HeaderValue::from_str(&format!("bytes={}-", stored.last + 1)).ok()?;
    Some([range, etag.clone()])
}

/// Whether a `206` to a completion request continues the stored part: the same strong
/// `ETag`, the same complete length, starting right after it (RFC 9111 §3.4). Returns the
/// range the two parts make together.
pub fn continues(
    stored: &ContentRange,
    stored_headers: &HeaderMap,
    status: StatusCode,
    next: &HeaderMap,
) -> Option<ContentRange> {
    let etag = stored_headers
        .get(ETAG)
        .filter(|e| e.as_bytes().starts_with(b"\""))?;
    let part = ContentRange::of(next)?;
    let same = status == StatusCode::PARTIAL_CONTENT
        && next.get(ETAG) == Some(etag)
        && part.complete == stored.complete
        && part.first == stored.last + 1;
    same.then_some(ContentRange {
        first: stored.first,
        last: part.last,
        complete: stored.complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let h = crate::header_map(&[("content-range", "bytes 0-99/1000")]);
        let r = ContentRange::of(&h).unwrap();
        assert_eq!((r.first, r.last, r.complete, r.len()), (0, 99, 1000, 100));
        for bad in [
            "bytes 0-99/*",
            "bytes 5-1/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes */10",
        ] {
            let h = crate::header_map(&[("content-range", bad)]);
            assert_eq!(ContentRange::of(&h), None, "{bad}");
        }
    }

    #[test]
    fn ranges_resolve() {
        assert_eq!(resolve(b"bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(resolve(b"bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(resolve(b"bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(resolve(b"bytes=95-200", 100), RangeSpec::Part(95, 99));
        assert_eq!(resolve(b"bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(resolve(b"bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(resolve(b"bytes=0-1,5-6", 100), RangeSpec::Whole);
        assert_eq!(resolve(b"items=0-1", 100), RangeSpec::Whole);
        assert_eq!(resolve(b"bytes=5-1", 100), RangeSpec::Whole);
        assert_eq!(resolve(b"bytes=x-1", 100), RangeSpec::Whole);
    }
}
