//! The header section of a stored response, kept as one compact block.
//!
//! A `HeaderMap` is built for fast edits: a hash index, a bucket of about a hundred bytes per
//! field, and one allocation per value. A stored response is never edited, only replayed, and a
//! cache of small objects holds millions of them: as a `HeaderMap`, six headers cost ~1 KB,
//! more than most bodies. [`StoredHeaders`] keeps every field in one contiguous allocation
//! (`[name_len: u16][value_len: u32][name][value]`, repeated, lengths little-endian) and builds a
//! `HeaderMap` only when a response is delivered; values are slices of the block, never copies.
//!
//! Invariant: the block only ever holds fields that came from a valid `HeaderMap`, so every
//! name parses as a `HeaderName` and every value as a `HeaderValue`.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Bytes of framing per field: the name length (u16) and the value length (u32).
const FRAME: usize = 6;

/// The immutable header section of a stored response. Cloning is a reference count.
///
/// Deliberately one `Bytes` and nothing else (the field count is recounted on demand): it
/// keeps `Entry` at 240 bytes, so an `Arc<Entry>` fills the allocator's 256-byte size class
/// exactly instead of spilling into the 320-byte one (64 B per stored entry).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    block: Bytes,
}

impl StoredHeaders {
    /// Copies `headers` into one block of their exact size. Fields whose name is longer than
    /// 64 KiB or whose value is longer than 4 GiB cannot come from a server with sane limits;
    /// they are dropped rather than truncated.
    pub fn from_map(headers: &HeaderMap) -> StoredHeaders {
        let fits = |n: &HeaderName, v: &HeaderValue| {
            u16::try_from(n.as_str().len()).is_ok() && u32::try_from(v.len()).is_ok()
        };
        let size: usize = headers
            .iter()
            .filter(|(n, v)| fits(n, v))
            .map(|(n, v)| FRAME + n.as_str().len() + v.len())
            .sum();
        let mut block = Vec::with_capacity(size);
        for (name, value) in headers.iter().filter(|(n, v)| fits(n, v)) {
            block.extend_from_slice(&(name.as_str().len() as u16).to_le_bytes());
            block.extend_from_slice(&(value.len() as u32).to_le_bytes());
            block.extend_from_slice(name.as_str().as_bytes());
            block.extend_from_slice(value.as_bytes());
        }
        StoredHeaders {
            block: Bytes::from(block),
        }
    }

    /// Number of fields (a header repeated on several lines counts once per line). Walks the
    /// block: a handful of length prefixes.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    /// Bytes held: names, values and framing.
    pub fn byte_len(&self) -> usize {
        self.block.len()
    }

    /// Every field as `(name, value)` bytes, in stored order.
    pub fn iter(&self) -> Fields<'_> {
        Fields {
            block: &self.block,
            at: 0,
        }
    }

    /// The first value of `name` (lowercase, as every stored name is).
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.get_all(name).next()
    }

    /// True when a field named `name` is stored.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.iter().any(|(n, _)| n == name.as_str().as_bytes())
    }

    /// Every value of `name`, in stored order; each a slice of the block.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = HeaderValue> + 'a {
        let wanted = name.as_str().as_bytes();
        self.spans()
            .filter(move |s| &self.block[s.name.clone()] == wanted)
            .map(|s| self.value(s.value))
    }

    /// The fields as a `HeaderMap`, ready to send. Values share the block.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len());
        for s in self.spans() {
            // The invariant makes both conversions infallible; a field that somehow failed
            // would be left out rather than sent malformed.
            if let Ok(name) = HeaderName::from_bytes(&self.block[s.name]) {
                map.append(name, self.value(s.value));
            }
        }
        map
    }

    fn value(&self, range: std::ops::Range<usize>) -> HeaderValue {
        HeaderValue::from_maybe_shared(self.block.slice(range))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let s = span(&self.block, at)?;
            at = s.value.end;
            Some(s)
        })
    }
}

impl From<&HeaderMap> for StoredHeaders {
    fn from(headers: &HeaderMap) -> Self {
        StoredHeaders::from_map(headers)
    }
}

impl std::fmt::Debug for StoredHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

/// Where one field's name and value lie in the block.
struct Span {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

fn span(block: &[u8], at: usize) -> Option<Span> {
    let frame = block.get(at..at + FRAME)?;
    let name_len = usize::from(u16::from_le_bytes([frame[0], frame[1]]));
    let value_len = u32::from_le_bytes([frame[2], frame[3], frame[4], frame[5]]) as usize;
    let name = at + FRAME..at + FRAME + name_len;
    let value = name.end..name.end + value_len;
    (value.end <= block.len()).then_some(Span { name, value })
}

/// Iterator over the stored fields as `(name, value)` bytes.
pub struct Fields<'a> {
    block: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let s = span(self.block, self.at)?;
        self.at = s.value.end;
        Some((&self.block[s.name], &self.block[s.value]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn round_trips_every_field_in_order() {
        let m = map(&[
            ("content-type", "text/plain"),
            ("x-custom", "a"),
            ("set-thing", "1"),
            ("x-custom", "b"),
            ("etag", "\"v1\""),
            ("x-empty", ""),
        ]);
        let s = StoredHeaders::from_map(&m);
        assert_eq!(s.len(), 6);
        assert_eq!(s.to_map(), m);
        let all: Vec<_> = s
            .get_all(&HeaderName::from_static("x-custom"))
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(s.get(&header::ETAG).unwrap(), "\"v1\"");
        assert!(s.contains(&HeaderName::from_static("x-empty")));
        assert!(s.get(&header::LAST_MODIFIED).is_none());
    }

    #[test]
    fn block_is_exactly_the_fields_plus_framing() {
        let m = map(&[("etag", "\"abc\""), ("date", "x")]);
        let s = StoredHeaders::from_map(&m);
        assert_eq!(s.byte_len(), 2 * FRAME + 4 + 5 + 4 + 1);
    }

    #[test]
    fn empty() {
        let s = StoredHeaders::from_map(&HeaderMap::new());
        assert!(s.is_empty());
        assert!(s.to_map().is_empty());
        assert_eq!(s.iter().count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn any_valid_map_round_trips(
            fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..12)
        ) {
            let mut m = HeaderMap::new();
            for (n, v) in &fields {
                m.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            proptest::prop_assert_eq!(StoredHeaders::from_map(&m).to_map(), m);
        }
    }
}
