//! A stored response ([`Entry`]) and the secondary key that selects it among the variants of
//! one URL ([`Variant`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, ETAG, LAST_MODIFIED, VARY};
use http::StatusCode;

use crate::policy::freshness::{Freshness, Timing};
pub use crate::stored_headers::StoredHeaders;
use crate::tags::Tag;

/// Fixed bookkeeping charged to every entry on top of its bytes: the `Entry` itself (~250 B),
/// moka's node, deque and timer-wheel links, the tag-count index, the `Arc`s, the map slot and
/// the allocator's own overhead. Measured, not guessed (`cargo run --release -p corral-core
/// --example entry_memory`, and bench scenario 5 on the server): with less, a cache of small
/// entries overshoots its byte bound in resident memory. The figure includes the allocator's
/// fragmentation under churn (a full cache evicting as it fills: ~9 % over the steady-state
/// cost per entry), since that memory is as resident as the entries themselves.
pub const ENTRY_OVERHEAD: usize = 1024;
/// Charged per header field beyond its name and value bytes (the map's own storage).
pub const HEADER_OVERHEAD: usize = 32;

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
    pub timing: Timing,
    pub freshness: Freshness,
    pub tags: Box<[Tag]>,
    /// The request header values this response was selected by.
    pub variant: Variant,
    /// The store's purge sequence when the fetch that produced this entry *started*: a purge
    /// numbered after it covers this entry.
    pub purge_seq: u64,
    soft_purged: AtomicBool,
    /// Bytes charged against the store's bound.
    pub size: usize,
    /// When the entry stops being useful at all (fresh + widest stale window + keep); the
    /// store evicts it then.
    pub expires_at: SystemTime,
}

// An `Arc<Entry>` is 16 + size_of::<Entry>() bytes: at 240 it fills the allocator's 256-byte
// size class exactly; one more field spills every stored entry into the 320-byte class.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() <= 240);

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
        Entry {
            status,
            headers,
            body,
            timing,
            freshness,
            tags,
            variant,
            purge_seq,
            soft_purged: AtomicBool::new(false),
            size,
            expires_at: SystemTime::UNIX_EPOCH,
        }
        .with_expiry(keep)
    }

    fn with_expiry(mut self, keep: Duration) -> Entry {
        let fresh_left = self
            .freshness
            .lifetime
            .saturating_sub(self.timing.initial_age);
        let beyond = self.freshness.usable_beyond_fresh(keep);
        self.expires_at = self.timing.response_time + fresh_left + beyond;
        self
    }

    /// Current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.timing.age_at(now)
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

/// Approximate bytes a header map holds, as the store charges it.
pub fn headers_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + HEADER_OVERHEAD)
        .sum()
}

/// The secondary key of a stored response: for each header named by the response's `Vary`
/// (and the configured key headers), the normalised value the original request carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variant {
    fields: Box<[(HeaderName, Option<Box<str>>)]>,
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
        let fields = names
            .into_iter()
            .map(|n| {
                let v = normalized_value(request, &n);
                (n, v)
            })
            .collect();
        Variant { fields }
    }

    /// True when `request` selects this variant (RFC 9111 §4.1).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.fields
            .iter()
            .all(|(n, v)| normalized_value(request, n).as_deref() == v.as_deref())
    }

    /// The header names this variant was selected by.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields.iter().map(|(n, _)| n)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The selecting header names and the normalised values the original request carried
    /// (`None`: the request did not have the header). For serialising a variant (the L2 tier).
    pub fn fields(&self) -> &[(HeaderName, Option<Box<str>>)] {
        &self.fields
    }

    /// A variant from fields as [`Variant::fields`] gave them (sorted by name here).
    pub fn from_fields(mut fields: Vec<(HeaderName, Option<Box<str>>)>) -> Variant {
        fields.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Variant {
            fields: fields.into_boxed_slice(),
        }
    }

    fn size(&self) -> usize {
        self.fields
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

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
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
}
