//! A stored response ([`Entry`]) and the secondary key that selects it among the variants of
//! one URL ([`Variant`]).
//!
//! # Layout
//! An entry is **one allocation**, reached through a thin pointer: a reference count, a fixed
//! head (what the hit path reads: purge sequence, expiry, response time, status), and one byte
//! slice holding, in order,
//!
//! ```text
//! key_len key | initial_age request_delay lifetime swr sie | headers_len headers | tags_len tags | body
//! ```
//!
//! where lengths and times are varints (LEB128, microseconds for times), `headers` is a
//! [`StoredHeaders`] block and `tags` is a run of length-prefixed names. A cache of small
//! objects holds millions of entries: one allocation instead of six (entry, key, header block,
//! tag list, tag names, body) saves each one's size-class rounding and pointers, and keeps a
//! hit to one cache-missing allocation. A hit hands the body out as `Bytes` that share the
//! entry (one reference count, never a copy of the body).
//!
//! Invariant: the slice is only ever written by [`Entry::new`], so every length is in bounds,
//! the key is UTF-8 and the header block holds valid fields. Readers still decode defensively
//! (a malformed slice reads as empty parts, never a panic).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ETAG, LAST_MODIFIED};
use http::StatusCode;
use triomphe::ThinArc;

use crate::key::KeyRef;
use crate::policy::freshness::{Freshness, LifetimeSource, Timing};
pub use crate::stored_headers::StoredHeaders;
use crate::stored_headers::{encode_into, get_varint, put_varint};

mod variant;
pub mod wire;
pub use variant::{Variant, KEY_CONTEXT};

/// Bookkeeping charged to every entry besides its own allocation: the store's slot and index
/// and the live count of its tags (~60 B resident per stored URL at a million of them).
pub const ENTRY_OVERHEAD: usize = 64;

/// The bytes an entry is charged against the store's bound: its allocation as a size-class
/// allocator rounds it (four classes per doubling, as mimalloc and jemalloc do: up to a
/// quarter more than asked), plus [`ENTRY_OVERHEAD`], plus an eighth for fragmentation
/// under churn (a full cache evicting as it fills runs ~10 % over the steady-state cost per
/// entry; that memory is as resident as the entries themselves). Measured, not guessed
/// (`cargo run --release -p corral-core --example entry_memory`, and bench scenario 5 on the
/// server): with less, a cache overshoots its byte bound in resident memory; with more, it
/// holds fewer entries than it could.
pub fn charge(allocation: usize) -> usize {
    (size_class(allocation) + ENTRY_OVERHEAD).saturating_mul(9) / 8
}

/// The smallest size class holding `n` bytes: a multiple of 16 up to 128, then four classes
/// per doubling.
fn size_class(n: usize) -> usize {
    if n <= 128 {
        return n.div_ceil(16) * 16;
    }
    let step = 1usize << (usize::BITS - 1 - n.leading_zeros()).saturating_sub(2);
    n.div_ceil(step).saturating_mul(step)
}

/// A stored response: a cheap handle (one pointer; cloning it is a reference-count increment)
/// to an immutable allocation. Immutable once built, apart from the soft-purge mark;
/// revalidation makes a new `Entry`.
#[derive(Clone)]
pub struct Entry(ThinArc<Head, u8>);

/// What every lookup reads, at fixed offsets.
struct Head {
    /// The store's purge sequence when the fetch that produced this entry *started*: a purge
    /// numbered after it covers this entry.
    purge_seq: u64,
    /// When the entry stops being useful at all, in microseconds since the epoch.
    expires_at: u64,
    /// When the response arrived, in microseconds since the epoch.
    response_time: u64,
    /// The request header values this response was selected by (a thin pointer, null for most).
    variant: Variant,
    /// Bytes charged against the store's bound.
    size: u32,
    status: u16,
    /// [`LifetimeSource`] in the low three bits, then `forbids_stale` and `no_cache`.
    facts: u8,
    soft_purged: AtomicBool,
}

// The head is paid once per stored response, with the reference count and slice length
// (16 B) in front of it.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Head>() <= 40);

const SOURCES: [LifetimeSource; 6] = [
    LifetimeSource::SMaxAge,
    LifetimeSource::MaxAge,
    LifetimeSource::Expires,
    LifetimeSource::Heuristic,
    LifetimeSource::Default,
    LifetimeSource::None,
];
const FORBIDS_STALE: u8 = 1 << 3;
const NO_CACHE: u8 = 1 << 4;

fn micros_since_epoch(t: SystemTime) -> u64 {
    micros(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn epoch_plus(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    put_varint(out, usize::try_from(n).unwrap_or(usize::MAX));
}

/// Appends `bytes` prefixed by their length.
fn put_spelled(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Where each part lies in an entry's slice. Decoding it walks a few varints.
struct Parts {
    /// initial age, request delay, lifetime, stale-while-revalidate, stale-if-error (µs).
    times: [u64; 5],
    headers: std::ops::Range<usize>,
    tags: std::ops::Range<usize>,
    body: std::ops::Range<usize>,
}

/// Reads a length-prefixed run at `*at`; an empty range (at the end) if malformed.
fn spelled(data: &[u8], at: &mut usize) -> std::ops::Range<usize> {
    let len = get_varint(data, at).unwrap_or(0);
    let start = (*at).min(data.len());
    let end = start.saturating_add(len).min(data.len());
    *at = end;
    start..end
}

impl Parts {
    fn of(data: &[u8]) -> Parts {
        let mut at = 0;
        spelled(data, &mut at); // the key: see `Entry::key`
        let times = std::array::from_fn(|_| get_varint(data, &mut at).unwrap_or(0) as u64);
        let headers = spelled(data, &mut at);
        let tags = spelled(data, &mut at);
        let body = at.min(data.len())..data.len();
        Parts {
            times,
            headers,
            tags,
            body,
        }
    }
}

impl Entry {
    /// Builds the entry stored under `key`. `headers` must already be cleaned of what must not
    /// be stored. The body is copied into the entry's allocation, once.
    #[allow(clippy::too_many_arguments)]
    pub fn new<T: AsRef<str>>(
        key: KeyRef<'_>,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        timing: Timing,
        freshness: Freshness,
        tags: &[T],
        variant: Variant,
        purge_seq: u64,
        keep: Duration,
    ) -> Entry {
        let mut header_block = Vec::new();
        encode_into(&mut header_block, headers);
        let mut tag_block = Vec::new();
        for t in tags {
            put_spelled(&mut tag_block, t.as_ref().as_bytes());
        }
        let key = key.as_str();
        let mut data =
            Vec::with_capacity(key.len() + header_block.len() + tag_block.len() + body.len() + 48);
        put_spelled(&mut data, key.as_bytes());
        let request_delay = timing
            .response_time
            .duration_since(timing.request_time)
            .unwrap_or_default();
        for t in [
            timing.initial_age,
            request_delay,
            freshness.lifetime,
            freshness.stale_while_revalidate,
            freshness.stale_if_error,
        ] {
            put_u64(&mut data, micros(t));
        }
        put_spelled(&mut data, &header_block);
        put_spelled(&mut data, &tag_block);
        data.extend_from_slice(body);

        let allocation =
            std::mem::size_of::<usize>() * 2 + std::mem::size_of::<Head>() + data.len();
        let size = charge(allocation) + variant.size();
        let fresh_left = freshness.lifetime.saturating_sub(timing.initial_age);
        let beyond = freshness.usable_beyond_fresh(keep);
        let response_time = micros_since_epoch(timing.response_time);
        let source = SOURCES
            .iter()
            .position(|s| *s == freshness.source)
            .unwrap_or(SOURCES.len() - 1) as u8;
        let head = Head {
            purge_seq,
            expires_at: response_time
                .saturating_add(micros(fresh_left))
                .saturating_add(micros(beyond)),
            response_time,
            variant,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            status: status.as_u16(),
            facts: source
                | if freshness.forbids_stale {
                    FORBIDS_STALE
                } else {
                    0
                }
                | if freshness.no_cache { NO_CACHE } else { 0 },
            soft_purged: AtomicBool::new(false),
        };
        Entry(ThinArc::from_header_and_slice(head, &data))
    }

    fn head(&self) -> &Head {
        &self.0.header.header
    }

    fn data(&self) -> &[u8] {
        &self.0.slice
    }

    fn parts(&self) -> Parts {
        Parts::of(self.data())
    }

    /// The primary key it is stored under.
    pub fn key(&self) -> KeyRef<'_> {
        let data = self.data();
        let mut at = 0;
        let key = spelled(data, &mut at);
        // Written from a `KeyRef` by `new`; a malformed slice (ruled out) reads as no key.
        KeyRef::trusted(std::str::from_utf8(&data[key]).unwrap_or_default())
    }

    /// True when stored under `key`: a byte comparison, for the store's index probes.
    pub fn has_key(&self, key: KeyRef<'_>) -> bool {
        let data = self.data();
        let mut at = 0;
        let range = spelled(data, &mut at);
        &data[range] == key.as_str().as_bytes()
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.head().status).unwrap_or(StatusCode::OK)
    }

    /// End-to-end headers as they will be replayed (hop-by-hop, tag and unshareable headers
    /// already removed; no `Age`, which is computed per answer).
    pub fn headers(&self) -> StoredHeaders<&[u8]> {
        StoredHeaders::view(&self.data()[self.parts().headers])
    }

    /// The body, sharing the entry's allocation: a reference count, never a copy.
    pub fn body(&self) -> Bytes {
        Bytes::from_owner(BodyOf(self.clone()))
    }

    /// The body's bytes, borrowed.
    pub fn body_bytes(&self) -> &[u8] {
        &self.data()[self.parts().body]
    }

    /// The surrogate keys it was stored with.
    pub fn tags(&self) -> impl Iterator<Item = &str> + '_ {
        let data = self.data();
        let tags = &data[self.parts().tags];
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= tags.len() {
                return None;
            }
            let r = spelled(tags, &mut at);
            Some(std::str::from_utf8(&tags[r]).unwrap_or_default())
        })
    }

    /// The request header values this response was selected by.
    pub fn variant(&self) -> &Variant {
        &self.head().variant
    }

    /// The store's purge sequence when the fetch that produced this entry started.
    pub fn purge_seq(&self) -> u64 {
        self.head().purge_seq
    }

    /// When the response was requested and received (to the microsecond; a request time more
    /// than ~584,000 years before the response reads as the epoch).
    pub fn timing(&self) -> Timing {
        self.timing_from(self.parts().times)
    }

    fn timing_from(&self, times: [u64; 5]) -> Timing {
        let [initial_age, request_delay, ..] = times;
        let response_time = epoch_plus(self.head().response_time);
        Timing {
            request_time: response_time
                .checked_sub(Duration::from_micros(request_delay))
                .unwrap_or(UNIX_EPOCH),
            response_time,
            initial_age: Duration::from_micros(initial_age),
        }
    }

    /// Its age at `now` and its freshness facts, for deciding whether it may be reused:
    /// [`Entry::age`] and [`Entry::freshness`] with one decoding of the entry's times.
    pub fn age_and_freshness(&self, now: SystemTime) -> (Duration, Freshness) {
        let times = self.parts().times;
        (
            self.timing_from(times).age_at(now),
            self.freshness_from(times),
        )
    }

    /// Its freshness facts, as decided when it was stored (windows to the microsecond).
    pub fn freshness(&self) -> Freshness {
        self.freshness_from(self.parts().times)
    }

    fn freshness_from(&self, times: [u64; 5]) -> Freshness {
        let [_, _, lifetime, swr, sie] = times;
        let facts = self.head().facts;
        Freshness {
            lifetime: Duration::from_micros(lifetime),
            source: SOURCES[usize::from(facts & 0b111).min(SOURCES.len() - 1)],
            stale_while_revalidate: Duration::from_micros(swr),
            stale_if_error: Duration::from_micros(sie),
            forbids_stale: facts & FORBIDS_STALE != 0,
            no_cache: facts & NO_CACHE != 0,
        }
    }

    /// When the entry stops being useful at all: fresh time plus the larger of its widest
    /// stale window and `keep` (for every entry: a kept one serves conditional refreshes when
    /// it has a validator, and `max-stale` or `stale-if-error` requests either way). The store
    /// evicts it then.
    pub fn expires_at(&self) -> SystemTime {
        epoch_plus(self.head().expires_at)
    }

    /// Bytes charged against the store's bound.
    pub fn size(&self) -> usize {
        self.head().size as usize
    }

    /// Current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.timing().age_at(now)
    }

    pub fn etag(&self) -> Option<HeaderValue> {
        self.headers().get(&ETAG)
    }

    pub fn last_modified(&self) -> Option<HeaderValue> {
        self.headers().get(&LAST_MODIFIED)
    }

    /// Marks the entry stale: the next request revalidates (a soft purge).
    pub fn mark_soft_purged(&self) {
        self.head().soft_purged.store(true, Ordering::Relaxed);
    }

    pub fn is_soft_purged(&self) -> bool {
        self.head().soft_purged.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key())
            .field("status", &self.status())
            .field("body_len", &self.body_bytes().len())
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

/// Lends an entry's body to `Bytes`: the entry lives as long as any slice of its body.
struct BodyOf(Entry);

impl AsRef<[u8]> for BodyOf {
    fn as_ref(&self) -> &[u8] {
        self.0.body_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::header_map as h;

    #[test]
    fn times_and_windows_come_back_to_the_microsecond() {
        use crate::policy::freshness::LifetimeSource;
        let response = UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
        let build = |request: SystemTime| {
            let timing = Timing {
                request_time: request,
                response_time: response,
                initial_age: Duration::from_millis(1500),
            };
            let freshness = Freshness {
                lifetime: Duration::from_secs(60),
                source: LifetimeSource::MaxAge,
                stale_while_revalidate: Duration::from_millis(250),
                stale_if_error: Duration::from_secs(86_400),
                forbids_stale: false,
                no_cache: true,
            };
            Entry::new(
                KeyRef::parse("G|h|/").unwrap(),
                StatusCode::OK,
                &HeaderMap::new(),
                b"",
                timing,
                freshness,
                &[] as &[&str],
                Variant::default(),
                7,
                Duration::from_secs(10),
            )
        };
        let e = build(response - Duration::from_millis(20));
        let t = e.timing();
        assert_eq!(t.response_time, response - Duration::from_nanos(789));
        assert_eq!(t.response_time - Duration::from_millis(20), t.request_time);
        assert_eq!(t.initial_age, Duration::from_millis(1500));
        let f = e.freshness();
        assert_eq!(
            (f.lifetime, f.stale_while_revalidate, f.stale_if_error),
            (
                Duration::from_secs(60),
                Duration::from_millis(250),
                Duration::from_secs(86_400)
            )
        );
        assert!(f.no_cache && !f.forbids_stale && f.source == LifetimeSource::MaxAge);
        // A response that took hours to arrive keeps its request time.
        let slow = build(response - Duration::from_secs(3 * 3600)).timing();
        assert_eq!(
            slow.response_time
                .duration_since(slow.request_time)
                .unwrap(),
            Duration::from_secs(3 * 3600)
        );
        assert_eq!(e.purge_seq(), 7);
    }

    #[test]
    fn size_classes_round_up_by_at_most_a_quarter() {
        assert_eq!(size_class(1), 16);
        assert_eq!(size_class(128), 128);
        assert_eq!(size_class(129), 160);
        assert_eq!(size_class(172), 192);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 320);
        assert_eq!(size_class(100 * 1024 + 200), 112 * 1024);
        for n in [129, 1000, 4097, 1 << 20, (1 << 20) + 1] {
            let c = size_class(n);
            assert!(c >= n && c <= n + n / 4, "{n} -> {c}");
        }
    }

    #[test]
    fn every_part_comes_back_from_the_one_allocation() {
        let now = SystemTime::now();
        let headers = h(&[
            ("content-type", "text/plain"),
            ("etag", "\"v1\""),
            ("x-custom", "yes"),
        ]);
        let variant = Variant::of(
            &h(&[("accept-language", "fr")]),
            &h(&[("vary", "accept-language")]),
            &[],
        );
        let body = vec![7u8; 300];
        let e = Entry::new(
            KeyRef::parse("G|example.com|/a?b=1").unwrap(),
            StatusCode::NOT_FOUND,
            &headers,
            &body,
            Timing {
                request_time: now,
                response_time: now,
                initial_age: Duration::ZERO,
            },
            Freshness::default(),
            &["t1", "", &"x".repeat(200)],
            variant.clone(),
            3,
            Duration::ZERO,
        );
        assert_eq!(e.key().as_str(), "G|example.com|/a?b=1");
        let key = |s| KeyRef::parse(s).unwrap();
        assert!(e.has_key(key("G|example.com|/a?b=1")) && !e.has_key(key("G|example.com|/a")));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.headers().to_map(), headers);
        assert_eq!(e.etag().unwrap(), "\"v1\"");
        let tags: Vec<&str> = e.tags().collect();
        assert_eq!(tags, ["t1", "", &"x".repeat(200)]);
        assert_eq!(e.variant(), &variant);
        assert_eq!(e.body_bytes(), &body[..]);
        let shared = e.body();
        assert_eq!(&shared[..], &body[..]);
        assert_eq!(
            shared.as_ptr(),
            e.body_bytes().as_ptr(),
            "shared, not copied"
        );
        let part = shared.slice(10..20);
        drop((e, shared));
        assert_eq!(&part[..], &body[10..20], "a slice keeps the entry alive");
    }

    proptest::proptest! {
        /// Whatever the parts, each comes back from the one allocation exactly: lengths and
        /// times of any size, empty parts, long keys, many tags, large bodies.
        #[test]
        fn any_parts_round_trip(
            key in "Gs?\\|[a-z0-9.:-]{0,40}\\|[ -~]{0,260}",
            tags in proptest::collection::vec("[!-~]{0,300}", 0..70),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..5000),
            fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,200}"), 0..10),
            times in proptest::array::uniform5(0u64..(1u64 << 50)),
            seq in proptest::num::u64::ANY,
            status in 100u16..1000,
        ) {
            let mut headers = HeaderMap::new();
            for (n, v) in &fields {
                headers.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let us = Duration::from_micros;
            let response_time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let timing = Timing {
                request_time: response_time - us(times[0] % (1 << 40)),
                response_time,
                initial_age: us(times[1]),
            };
            let freshness = Freshness {
                lifetime: us(times[2]),
                source: LifetimeSource::Heuristic,
                stale_while_revalidate: us(times[3]),
                stale_if_error: us(times[4]),
                forbids_stale: times[0] % 2 == 0,
                no_cache: times[1] % 2 == 0,
            };
            let status = StatusCode::from_u16(status).unwrap();
            let e = Entry::new(
                KeyRef::parse(&key).unwrap(), status, &headers, &body, timing, freshness, &tags,
                Variant::default(), seq, Duration::ZERO,
            );
            proptest::prop_assert_eq!(e.key().as_str(), key.as_str());
            proptest::prop_assert!(e.has_key(KeyRef::parse(&key).unwrap()));
            proptest::prop_assert_eq!(e.status(), status);
            proptest::prop_assert_eq!(e.headers().to_map(), headers);
            proptest::prop_assert_eq!(e.tags().collect::<Vec<_>>(), tags.iter().map(|t| t.as_str()).collect::<Vec<_>>());
            proptest::prop_assert_eq!(e.body_bytes(), &body[..]);
            proptest::prop_assert_eq!(&e.body()[..], &body[..]);
            proptest::prop_assert_eq!(e.timing(), timing);
            proptest::prop_assert_eq!(e.freshness(), freshness);
            let later = response_time + Duration::from_secs(5);
            proptest::prop_assert_eq!(e.age_and_freshness(later), (e.age(later), freshness));
            proptest::prop_assert_eq!(e.purge_seq(), seq);
            proptest::prop_assert!(e.size() >= key.len() + body.len());
        }
    }
}
