//! The stored form of an [`Entry`] in Redis: corral-core's entry record
//! ([`corral_core::entry::wire`]), the same one warm-up streams between replicas, so there is
//! one encoding of an entry and one hostile-input decoder for it.
//!
//! The format version [`FORMAT`] is part of every key's prefix (`corral:v2:`), so a new format
//! orphans old records (they expire by TTL) instead of misreading them; the record's own magic
//! bytes and version are a second check. `v1` was this crate's own record, retired for
//! core's. The hash field a variant is stored under ([`variant_field`]) is Redis's alone.

use corral_core::entry::wire::{self, Limits, Record, WireError};
use corral_core::entry::{Entry, Variant};

/// The stored format's version (in the key prefix).
pub const FORMAT: u8 = 2;

/// `e`'s record.
pub fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.body_bytes().len() + 512);
    wire::encode(e, &mut out);
    out
}

/// A stored record, checked as hostile input (Redis is shared: anything may have written it),
/// with bodies up to `max_body`. The record borrows its body from `buf` (the reply's bytes),
/// so an L2 hit copies a body once, from the reply into the entry.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Record<'_>, WireError> {
    wire::decode(
        buf,
        Limits {
            max_body,
            ..Limits::default()
        },
    )
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
    use std::time::{Duration, SystemTime};

    use corral_core::policy::freshness::{Freshness, LifetimeSource, Timing};
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use http::StatusCode;

    use super::*;

    fn entry() -> Entry {
        let mut h = HeaderMap::new();
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert("vary", HeaderValue::from_static("accept-language"));
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("de"));
        let variant = Variant::of(&req, &h, &[HeaderName::from_static("x-tenant")]);
        let now = SystemTime::now();
        Entry::new(
            corral_core::KeyRef::parse("G|h|/x").unwrap(),
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
    fn an_entry_comes_back_with_its_key_variant_and_field() {
        let e = entry();
        let stored = encode(&e);
        let r = decode(&stored, 1 << 20).unwrap();
        assert_eq!(r.key.as_str(), "G|h|/x");
        assert_eq!(r.body, b"hello body");
        assert!(
            stored.as_ptr_range().contains(&r.body.as_ptr()),
            "the body is the reply's bytes, not a copy"
        );
        assert_eq!(r.headers, e.headers().to_map());
        assert_eq!(&r.variant, e.variant());
        assert_eq!(variant_field(&r.variant), variant_field(e.variant()));
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        assert!(r.variant.matches(&de));
        assert!(!r.variant.matches(&HeaderMap::new()));
    }

    #[test]
    fn a_body_over_the_limit_and_a_v1_record_are_refused() {
        let good = encode(&entry());
        assert!(matches!(decode(&good, 4), Err(WireError::TooLarge(_))));
        // This crate's retired record ("CRL", version 1) is not misread as today's.
        assert_eq!(
            decode(b"CRL\x01rest", 1 << 20).unwrap_err(),
            WireError::Magic
        );
    }
}
