//! A stored response ([`Entry`]) and the secondary key that selects it among the variants of
//! one URL ([`Variant`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, ETAG, LAST_MODIFIED, VARY};
use http::StatusCode;

use crate::policy::freshness::{Freshness, LifetimeSource, Timing};
pub use crate::stored_headers::StoredHeaders;
use crate::tags::Tag;

/// Fixed bookkeeping charged to every entry on top of its bytes: the `Arc<Entry>` (160 B),
/// the store's slot and index (~60 B), the tag list and the tag-count index, the allocator's
/// size-class rounding, and its fragmentation under churn (a full cache evicting as it fills
/// runs ~10 % over the steady-state cost per entry; that memory is as resident as the entries
/// themselves). Measured, not guessed (`cargo run --release -p corral-core --example
/// entry_memory`, and bench scenario 5 on the server): with less, a cache of small entries
/// overshoots its byte bound in resident memory; with more, it holds fewer entries than it
/// could.
pub const ENTRY_OVERHEAD: usize = 640;

/// A stored response. Immutable once built, apart from the soft-purge mark; revalidation makes
/// a new `Entry` that shares the body.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// End-to-end headers as they will be replayed (hop-by-hop, tag and unshareable headers
    /// already removed; no `Age`, which is computed per answer), in one compact block that
    /// owns its bytes: never a slice of a connection's read buffer.
    pub headers: StoredHeaders,
    /// The body: a hit hands out a clone of this, a reference count, never a copy.
    pub body: Bytes,
    /// [`Timing`]'s response time and initial age, to the microsecond: see [`Entry::timing`].
    times: [u64; 2],
    /// How long the response took to arrive, in microseconds (saturating at ~71 minutes):
    /// the request time is the response time minus this.
    request_delay: u32,
    /// [`Freshness`], to the microsecond: see [`Entry::freshness`].
    windows: [u64; 3],
    source: LifetimeSource,
    forbids_stale: bool,
    no_cache: bool,
    soft_purged: AtomicBool,
    /// Bytes charged against the store's bound.
    size: u32,
    pub tags: Box<[Tag]>,
    /// The request header values this response was selected by.
    pub variant: Variant,
    /// The store's purge sequence when the fetch that produced this entry *started*: a purge
    /// numbered after it covers this entry.
    pub purge_seq: u64,
    /// When the entry stops being useful at all (fresh + widest stale window + keep), in
    /// microseconds since the epoch; the store evicts it then.
    expires_at: u64,
}

// An `Arc<Entry>` is 16 + size_of::<Entry>() bytes, paid once per stored response: at 144 it
// fills the allocator's 160-byte size class exactly. Times are therefore kept as microseconds
// in a `u64` (8 bytes, not `SystemTime`'s or `Duration`'s 16), the request time as a 4-byte
// delay, the variant as a thin pointer; one more field spills every stored entry into the
// 192-byte class.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() <= 144);

fn micros_since_epoch(t: SystemTime) -> u64 {
    micros(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn epoch_plus(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

impl Entry {
    /// Builds an entry. `headers` must already be cleaned of what must not be stored.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        timing: Timing,
        freshness: Freshness,
        tags: Box<[Tag]>,
        variant: Variant,
        purge_seq: u64,
        keep: Duration,
    ) -> Entry {
        let headers = StoredHeaders::from_map(&headers);
        let size = ENTRY_OVERHEAD
            + body.len()
            + headers.byte_len()
            + tags.iter().map(|t| t.len() + 16).sum::<usize>()
            + variant.size();
        let fresh_left = freshness.lifetime.saturating_sub(timing.initial_age);
        let beyond = freshness.usable_beyond_fresh(keep);
        let expires_at = micros_since_epoch(timing.response_time)
            .saturating_add(micros(fresh_left))
            .saturating_add(micros(beyond));
        Entry {
            status,
            headers,
            body,
            times: [
                micros_since_epoch(timing.response_time),
                micros(timing.initial_age),
            ],
            request_delay: u32::try_from(micros(
                timing
                    .response_time
                    .duration_since(timing.request_time)
                    .unwrap_or_default(),
            ))
            .unwrap_or(u32::MAX),
            windows: [
                micros(freshness.lifetime),
                micros(freshness.stale_while_revalidate),
                micros(freshness.stale_if_error),
            ],
            source: freshness.source,
            forbids_stale: freshness.forbids_stale,
            no_cache: freshness.no_cache,
            soft_purged: AtomicBool::new(false),
            size: u32::try_from(size).unwrap_or(u32::MAX),
            tags,
            variant,
            purge_seq,
            expires_at,
        }
    }

    /// When the response was requested and received (to the microsecond; a response that
    /// took over an hour to arrive reads as requested ~71 minutes before it arrived).
    pub fn timing(&self) -> Timing {
        let [response, initial_age] = self.times;
        let response_time = epoch_plus(response);
        Timing {
            request_time: response_time
                .checked_sub(Duration::from_micros(self.request_delay.into()))
                .unwrap_or(response_time),
            response_time,
            initial_age: Duration::from_micros(initial_age),
        }
    }

    /// Its freshness facts, as decided when it was stored (windows to the microsecond).
    pub fn freshness(&self) -> Freshness {
        let [lifetime, swr, sie] = self.windows;
        Freshness {
            lifetime: Duration::from_micros(lifetime),
            source: self.source,
            stale_while_revalidate: Duration::from_micros(swr),
            stale_if_error: Duration::from_micros(sie),
            forbids_stale: self.forbids_stale,
            no_cache: self.no_cache,
        }
    }

    /// When the entry stops being useful at all (fresh + widest stale window + keep); the
    /// store evicts it then.
    pub fn expires_at(&self) -> SystemTime {
        epoch_plus(self.expires_at)
    }

    /// Bytes charged against the store's bound.
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.timing().age_at(now)
    }

    pub fn etag(&self) -> Option<HeaderValue> {
        self.headers.get(&ETAG)
    }

    pub fn last_modified(&self) -> Option<HeaderValue> {
        self.headers.get(&LAST_MODIFIED)
    }

    /// True when the origin can be asked "has it changed?" instead of "send it again".
    pub fn has_validator(&self) -> bool {
        self.etag().is_some() || self.last_modified().is_some()
    }

    /// Marks the entry stale: the next request revalidates (a soft purge).
    pub fn mark_soft_purged(&self) {
        self.soft_purged.store(true, Ordering::Relaxed);
    }

    pub fn is_soft_purged(&self) -> bool {
        self.soft_purged.load(Ordering::Relaxed)
    }
}

/// The secondary key of a stored response: for each header named by the response's `Vary`
/// (and the configured key headers), the normalised value the original request carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variant {
    /// `None` when nothing selects (the common case). Boxed twice so the field is one thin
    /// pointer: every stored `Entry` pays for it, few have a `Vary`.
    #[allow(clippy::redundant_allocation)]
    fields: Option<Box<Box<[Field]>>>,
}

/// A selecting header and the normalised value the original request carried.
type Field = (HeaderName, Option<Box<str>>);

impl Variant {
    fn new(fields: Vec<Field>) -> Variant {
        Variant {
            fields: (!fields.is_empty()).then(|| Box::new(fields.into_boxed_slice())),
        }
    }
}

impl Variant {
    /// The variant of `request` for a response whose headers are `response` and for the
    /// configured `key_headers`.
    pub fn of(request: &HeaderMap, response: &HeaderMap, key_headers: &[HeaderName]) -> Variant {
        let mut names: Vec<HeaderName> = key_headers.to_vec();
        for v in response.get_all(VARY) {
            for name in v.as_bytes().split(|&b| b == b',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim_ascii()) {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let fields: Vec<Field> = names
            .into_iter()
            .map(|n| {
                let v = normalized_value(request, &n);
                (n, v)
            })
            .collect();
        Variant::new(fields)
    }

    /// True when `request` selects this variant (RFC 9111 §4.1).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.fields()
            .iter()
            .all(|(n, v)| normalized_value(request, n).as_deref() == v.as_deref())
    }

    /// The header names this variant was selected by.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields().iter().map(|(n, _)| n)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_none()
    }

    /// The selecting header names and the normalised values the original request carried
    /// (`None`: the request did not have the header). For serialising a variant (the L2 tier).
    pub fn fields(&self) -> &[(HeaderName, Option<Box<str>>)] {
        self.fields.as_deref().map_or(&[], |f| &f[..])
    }

    /// A variant from fields as [`Variant::fields`] gave them (sorted by name here).
    pub fn from_fields(mut fields: Vec<(HeaderName, Option<Box<str>>)>) -> Variant {
        fields.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Variant::new(fields)
    }

    fn size(&self) -> usize {
        self.fields()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 24)
            .sum()
    }
}

/// A header's value for Vary matching: all field lines joined by `,`, each list member
/// trimmed, runs of whitespace collapsed. Absent is distinct from empty.
fn normalized_value(headers: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = String::new();
    for v in values {
        for member in String::from_utf8_lossy(v.as_bytes()).split(',') {
            let member = member.split_whitespace().collect::<Vec<_>>().join(" ");
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&member);
        }
    }
    Some(out.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::header_map as h;

    #[test]
    fn vary_matching_normalises() {
        let resp = h(&[("vary", "Accept-Encoding, accept-language")]);
        let v = Variant::of(&h(&[("accept-encoding", "gzip,  br")]), &resp, &[]);
        assert!(v.matches(&h(&[("accept-encoding", "gzip, br")])));
        assert!(v.matches(&h(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br")
        ])));
        assert!(!v.matches(&h(&[("accept-encoding", "br, gzip")])));
        assert!(!v.matches(&h(&[
            ("accept-encoding", "gzip, br"),
            ("accept-language", "en")
        ])));
    }

    #[test]
    fn absent_differs_from_empty() {
        let resp = h(&[("vary", "x-a")]);
        let v = Variant::of(&h(&[]), &resp, &[]);
        assert!(v.matches(&h(&[])));
        assert!(!v.matches(&h(&[("x-a", "")])));
    }

    #[test]
    fn key_headers_split_like_vary() {
        let key = [HeaderName::from_static("x-tenant")];
        let v = Variant::of(&h(&[("x-tenant", "a")]), &h(&[]), &key);
        assert!(v.matches(&h(&[("x-tenant", "a")])));
        assert!(!v.matches(&h(&[("x-tenant", "b")])));
    }

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
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::new(),
                timing,
                freshness,
                Box::new([]),
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
        // A response that took hours to arrive reads as requested ~71.6 minutes before.
        let slow = build(response - Duration::from_secs(3 * 3600)).timing();
        assert_eq!(
            slow.response_time
                .duration_since(slow.request_time)
                .unwrap(),
            Duration::from_micros(u32::MAX.into())
        );
    }
}
