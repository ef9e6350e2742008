//! The header section of a stored response, kept as one compact block.
//!
//! A `HeaderMap` is built for fast edits: a hash index, a bucket of about a hundred bytes per
//! field, and one allocation per value. A stored response is never edited, only replayed, and a
//! cache of small objects holds millions of them: as a `HeaderMap`, six headers cost ~1 KB,
//! more than most bodies. [`StoredHeaders`] keeps every field in one contiguous allocation and
//! builds a `HeaderMap` only when a response is delivered.
//!
//! # Encoding
//! Each field is a *name* then a *value*, repeated. The name is one byte:
//! - `0xFF` (`LITERAL`): the name is spelled out (its length as a varint, then its bytes) and so is
//!   the value;
//! - otherwise the low six bits index `COMMON`, the names most responses carry (so
//!   `last-modified` costs one byte, not fourteen), and the top two say how the value is kept:
//!   - `00`: spelled out: its length as a varint (LEB128: one byte below 128), then its bytes;
//!   - `01`: a 2-byte number in the process-wide `dictionary` of recurring values (for
//!     names whose values recur: `content-type`, `cache-control`, `vary`...);
//!   - `10`: an HTTP date as 4 bytes of seconds (see `dates`), for `date`,
//!     `last-modified` and `expires`.
//!
//! Numbers are little-endian. Six typical response headers take ~40 bytes instead of ~220.
//!
//! Invariant: the block only ever holds fields that came from a valid `HeaderMap`, so every
//! name parses as a `HeaderName` and every value as a `HeaderValue`.

mod dates;
mod dictionary;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Names stored as one byte: their index here (at most 63 of them). Blocks never leave the
/// process, so the table may change between versions.
const COMMON: [HeaderName; 24] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CACHE_CONTROL,
    header::ETAG,
    header::LAST_MODIFIED,
    header::DATE,
    header::EXPIRES,
    header::VARY,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_DISPOSITION,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::X_CONTENT_TYPE_OPTIONS,
    header::STRICT_TRANSPORT_SECURITY,
    header::SERVER,
    header::LINK,
    header::LOCATION,
    header::X_FRAME_OPTIONS,
    header::CONTENT_SECURITY_POLICY,
    header::REFERRER_POLICY,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ALT_SVC,
];

/// Common names whose values recur across responses and go to the dictionary.
fn recurs(name: &HeaderName) -> bool {
    [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::VARY,
        header::CONTENT_ENCODING,
        header::CONTENT_LANGUAGE,
        header::ACCEPT_RANGES,
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::X_CONTENT_TYPE_OPTIONS,
        header::STRICT_TRANSPORT_SECURITY,
        header::SERVER,
        header::X_FRAME_OPTIONS,
        header::CONTENT_SECURITY_POLICY,
        header::REFERRER_POLICY,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ALT_SVC,
    ]
    .contains(name)
}

fn is_date(name: &HeaderName) -> bool {
    [header::DATE, header::LAST_MODIFIED, header::EXPIRES].contains(name)
}

/// The name byte that announces a name spelled out.
const LITERAL: u8 = 0xFF;
/// Value kinds, in the top two bits of a common name's byte.
const SPELLED: u8 = 0b00 << 6;
const DICTIONARY: u8 = 0b01 << 6;
const DATE: u8 = 0b10 << 6;
const CODE: u8 = 0b0011_1111;

/// The immutable header section of a stored response.
///
/// Deliberately one boxed slice and nothing else (16 bytes; the field count is recounted on
/// demand): every byte of `Entry` is paid once per stored response. Not `Bytes`, whose 32
/// bytes would grow by a shared header the first time a hit sliced a value out of it; the
/// values still spelled out (an `ETag`, rarer headers) are short, and copied per answer.
///
/// Generic over where the block lives: `StoredHeaders` owns it; a stored [`Entry`] keeps it
/// inside its own allocation and lends it out as a `StoredHeaders<&[u8]>`.
///
/// [`Entry`]: crate::entry::Entry
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders<B = Box<[u8]>> {
    block: B,
}

fn common_index(name: &HeaderName) -> Option<u8> {
    COMMON.iter().position(|c| c == name).map(|i| i as u8)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a varint at `*at`, advancing it. `None` when the block ends first or the number
/// does not fit.
pub(crate) fn get_varint(block: &[u8], at: &mut usize) -> Option<usize> {
    let mut n: usize = 0;
    for shift in (0..usize::BITS).step_by(7) {
        let b = *block.get(*at)?;
        *at += 1;
        n |= usize::from(b & 0x7F).checked_shl(shift)?;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

fn put_spelled(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends one field to `out`.
fn encode(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    let Some(code) = common_index(name) else {
        out.push(LITERAL);
        put_spelled(out, name.as_str().as_bytes());
        put_spelled(out, value.as_bytes());
        return;
    };
    if is_date(name) {
        if let Some(secs) = dates::parse_exact(value.as_bytes()) {
            out.push(DATE | code);
            out.extend_from_slice(&secs.to_le_bytes());
            return;
        }
    }
    if recurs(name) {
        if let Some(id) = dictionary::intern(value) {
            out.push(DICTIONARY | code);
            out.extend_from_slice(&id.to_le_bytes());
            return;
        }
    }
    out.push(SPELLED | code);
    put_spelled(out, value.as_bytes());
}

impl StoredHeaders {
    /// Encodes `headers` into one block of its exact size.
    pub fn from_map(headers: &HeaderMap) -> StoredHeaders {
        let mut block = Vec::new();
        encode_into(&mut block, headers);
        StoredHeaders {
            block: block.into_boxed_slice(),
        }
    }
}

/// Appends the encoding of `headers` to `out`: a block [`StoredHeaders::view`] can read.
pub fn encode_into(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        encode(out, name, value);
    }
}

impl<'a> StoredHeaders<&'a [u8]> {
    /// Reads a block written by [`encode_into`]. Any other bytes decode to whatever valid
    /// fields they happen to start with, never to a panic.
    pub fn view(block: &'a [u8]) -> Self {
        StoredHeaders { block }
    }
}

impl<B: AsRef<[u8]>> StoredHeaders<B> {
    /// Number of fields (a header repeated on several lines counts once per line). Walks the
    /// block: a handful of length prefixes.
    pub fn len(&self) -> usize {
        self.fields().count()
    }

    pub fn is_empty(&self) -> bool {
        self.block.as_ref().is_empty()
    }

    /// Bytes held: names, values and framing.
    pub fn byte_len(&self) -> usize {
        self.block.as_ref().len()
    }

    /// Every field, in stored order.
    pub fn iter(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        self.fields()
            .filter_map(|f| Some((self.name(&f.name)?, self.value(&f.value)?)))
    }

    /// The first value of `name` (lowercase, as every stored name is).
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.get_all(name).next()
    }

    /// True when a field named `name` is stored.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.get_all(name).next().is_some()
    }

    /// Every value of `name`, in stored order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = HeaderValue> + 'a {
        let code = common_index(name);
        self.fields()
            .filter(move |f| match (&f.name, code) {
                (Name::Common(a), Some(b)) => *a == b,
                (Name::Spelled(r), None) => {
                    &self.block.as_ref()[r.clone()] == name.as_str().as_bytes()
                }
                _ => false,
            })
            .filter_map(|f| self.value(&f.value))
    }

    /// The fields as a `HeaderMap`, ready to send.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len());
        // The invariant makes every conversion infallible; a field that somehow failed would
        // be left out rather than sent malformed.
        for (name, value) in self.iter() {
            map.append(name, value);
        }
        map
    }

    fn name(&self, name: &Name) -> Option<HeaderName> {
        match name {
            Name::Common(code) => Some(COMMON[usize::from(*code)].clone()),
            Name::Spelled(r) => HeaderName::from_bytes(&self.block.as_ref()[r.clone()]).ok(),
        }
    }

    fn value(&self, value: &Value) -> Option<HeaderValue> {
        match value {
            Value::Spelled(r) => HeaderValue::from_bytes(&self.block.as_ref()[r.clone()]).ok(),
            Value::Dictionary(id) => dictionary::get(*id),
            Value::Date(secs) => HeaderValue::from_bytes(&dates::format(*secs)).ok(),
        }
    }

    fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || field(self.block.as_ref(), &mut at))
    }
}

impl From<&HeaderMap> for StoredHeaders {
    fn from(headers: &HeaderMap) -> Self {
        StoredHeaders::from_map(headers)
    }
}

impl<B: AsRef<[u8]>> std::fmt::Debug for StoredHeaders<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            }))
            .finish()
    }
}

/// A field's name: an index into [`COMMON`], or where its bytes lie in the block.
enum Name {
    Common(u8),
    Spelled(std::ops::Range<usize>),
}

/// A field's value: where its bytes lie, its dictionary number, or a date.
enum Value {
    Spelled(std::ops::Range<usize>),
    Dictionary(u16),
    Date(u32),
}

/// One decoded field.
struct Field {
    name: Name,
    value: Value,
}

fn spelled(block: &[u8], at: &mut usize) -> Option<std::ops::Range<usize>> {
    let len = get_varint(block, at)?;
    let r = *at..at.checked_add(len)?;
    if r.end > block.len() {
        return None;
    }
    *at = r.end;
    Some(r)
}

fn fixed<const N: usize>(block: &[u8], at: &mut usize) -> Option<[u8; N]> {
    let bytes = block.get(*at..*at + N)?.try_into().ok()?;
    *at += N;
    Some(bytes)
}

/// Decodes the field at `*at`, advancing it past the field. `None` at the end of the block
/// (or on a malformed block, which the invariant rules out: decoding stops there).
fn field(block: &[u8], at: &mut usize) -> Option<Field> {
    let byte = *block.get(*at)?;
    *at += 1;
    if byte == LITERAL {
        let name = Name::Spelled(spelled(block, at)?);
        let value = Value::Spelled(spelled(block, at)?);
        return Some(Field { name, value });
    }
    let code = byte & CODE;
    if usize::from(code) >= COMMON.len() {
        return None;
    }
    let value = match byte & !CODE {
        SPELLED => Value::Spelled(spelled(block, at)?),
        DICTIONARY => Value::Dictionary(u16::from_le_bytes(fixed(block, at)?)),
        DATE => Value::Date(u32::from_le_bytes(fixed(block, at)?)),
        _ => return None,
    };
    Some(Field {
        name: Name::Common(code),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    use crate::header_map as map;

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
    fn common_names_cost_one_byte_and_short_values_one_more() {
        let m = map(&[("etag", "\"abc\""), ("date", "x")]);
        let s = StoredHeaders::from_map(&m);
        assert_eq!(s.byte_len(), (1 + 1 + 5) + (1 + 1 + 1));
        assert_eq!(s.to_map(), m);
        let m = map(&[("x-rare", "v")]);
        assert_eq!(StoredHeaders::from_map(&m).byte_len(), 1 + 1 + 6 + 1 + 1);
    }

    #[test]
    fn dates_take_four_bytes_and_print_back_exactly() {
        let m = map(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("expires", "0"),
        ]);
        let s = StoredHeaders::from_map(&m);
        assert_eq!(s.byte_len(), (1 + 4) + (1 + 1 + 30) + (1 + 1 + 1));
        assert_eq!(s.to_map(), m);
        assert_eq!(
            s.get(&header::DATE).unwrap(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn recurring_values_take_two_bytes() {
        let m = map(&[
            ("content-type", "application/json; charset=utf-8"),
            ("cache-control", "public, max-age=60"),
        ]);
        let s = StoredHeaders::from_map(&m);
        assert_eq!(s.byte_len(), 2 * (1 + 2));
        assert_eq!(s.to_map(), m);
        assert_eq!(StoredHeaders::from_map(&m), s);
    }

    #[test]
    fn long_values_take_a_longer_length() {
        let long = "v".repeat(70_000);
        let m = map(&[("x-long", &long), ("etag", "\"e\""), ("vary", &long)]);
        let s = StoredHeaders::from_map(&m);
        assert_eq!(s.to_map(), m);
        assert_eq!(
            s.byte_len(),
            (1 + 1 + 6 + 3 + 70_000) + (1 + 1 + 3) + (1 + 3 + 70_000)
        );
    }

    #[test]
    fn a_truncated_block_decodes_what_it_holds_and_no_more() {
        let m = map(&[
            ("etag", "\"abc\""),
            ("x-a", "1"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("content-type", "text/plain"),
        ]);
        let s = StoredHeaders::from_map(&m);
        for cut in 0..s.byte_len() {
            let t = StoredHeaders::view(&s.block[..cut]);
            assert!(t.len() < 4);
            let _ = t.to_map();
        }
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

        #[test]
        fn common_names_dates_and_recurring_values_round_trip(
            fields in proptest::collection::vec(
                (0..COMMON.len(), "[ -~]{0,40}", proptest::option::of(0u32..=u32::MAX)),
                0..12,
            )
        ) {
            let mut m = HeaderMap::new();
            for (i, v, date) in &fields {
                let v = match date {
                    Some(secs) => String::from_utf8(dates::format(*secs).to_vec()).unwrap(),
                    None => v.clone(),
                };
                m.append(COMMON[*i].clone(), HeaderValue::from_str(&v).unwrap());
            }
            proptest::prop_assert_eq!(StoredHeaders::from_map(&m).to_map(), m);
        }

        #[test]
        fn any_bytes_decode_without_panicking(block in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let s = StoredHeaders::view(&block[..]);
            let _ = s.to_map();
            let _ = s.len();
            let _ = s.get(&header::ETAG);
            let _ = format!("{s:?}");
        }
    }
}
