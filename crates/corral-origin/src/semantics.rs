//! Routes for the HTTP-semantics edges a cache must get right: byte ranges answered `206`
//! with a strong `ETag` (and `If-Range`), and language negotiation with `Content-Language`.
//!
//! Informational responses (`103 Early Hints`) are not offered: hyper's server cannot send
//! them (see `docs/rfc9111.md`).

use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::{body_bytes, cacheable, full, Body};

/// `GET /ranged/{n}?ttl=N&v=V`: `n` pattern bytes with the strong `ETag` `"r{n}-{v}"`; a
/// single byte range is answered `206` with `Content-Range` (when `If-Range` is absent or
/// names this `ETag`), several ranges or a failed `If-Range` with the whole `200`, a range
/// beyond the end with `416`.
pub(super) fn ranged(
    req: &HeaderMap,
    n: usize,
    ttl: u64,
    version: u64,
    started: SystemTime,
) -> Response<Body> {
    let etag = format!("\"r{n}-{version}\"");
    let body = body_bytes(n);
    let if_range_holds = req
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = req
        .get(header::RANGE)
        .filter(|_| if_range_holds)
        .and_then(|v| single_range(v.as_bytes(), n as u64));
    let mut r = match range {
        None => Response::new(full(body)),
        Some(None) => {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            insert(
                r.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{n}"),
            );
            r
        }
        Some(Some((first, last))) => {
            let part = body.slice(first as usize..=last as usize);
            let mut r = Response::new(full(part));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            insert(
                r.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes {first}-{last}/{n}"),
            );
            r
        }
    };
    r.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    cacheable(&mut r, ttl, &format!("ranged ranged-{n}"), &etag, started);
    r
}

/// One byte range of a representation `len` long: `None` when the header is not a single
/// byte range (answer the whole), `Some(None)` when unsatisfiable.
fn single_range(v: &[u8], len: u64) -> Option<Option<(u64, u64)>> {
    let spec = std::str::from_utf8(v).ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| s.trim().parse::<u64>().ok();
    let (first, last) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, true) => (num(a)?, len.saturating_sub(1)),
        (false, false) => (num(a)?, num(b)?.min(len.saturating_sub(1))),
        (true, false) => (len.saturating_sub(num(b)?), len.saturating_sub(1)),
        (true, true) => return None,
    };
    if first >= len || len == 0 {
        return Some(None);
    }
    (first <= last).then_some(Some((first, last)))
}

/// The languages `/lang` is available in, with their greeting.
const LANGUAGES: [(&str, &str); 3] = [("en", "hello"), ("fr", "bonjour"), ("de", "hallo")];

/// `GET /lang?ttl=N`: a greeting in English, French or German, chosen by the request's
/// `Accept-Language` (the highest-weighted range whose primary subtag is available; English
/// otherwise), with `Content-Language` and `Vary: Accept-Language`.
pub(super) fn lang(req: &HeaderMap, ttl: u64, started: SystemTime) -> Response<Body> {
    let (tag, greeting) = negotiate(req);
    let mut r = Response::new(full(Bytes::from(format!("{greeting}\n"))));
    let h = r.headers_mut();
    h.insert(header::CONTENT_LANGUAGE, HeaderValue::from_static(tag));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    cacheable(&mut r, ttl, "lang", &format!("\"lang-{tag}\""), started);
    r
}

fn negotiate(req: &HeaderMap) -> (&'static str, &'static str) {
    let value = req
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut prefs: Vec<(u32, usize, String)> = value
        .split(',')
        .enumerate()
        .filter_map(|(i, m)| {
            let mut parts = m.split(';');
            let range = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=")?.parse::<f32>().ok())
                .unwrap_or(1.0);
            (q > 0.0 && !range.is_empty()).then_some(((q * 1000.0) as u32, i, range))
        })
        .collect();
    prefs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    prefs
        .iter()
        .find_map(|(_, _, range)| {
            let primary = range.split('-').next()?;
            LANGUAGES.iter().find(|(t, _)| *t == primary).copied()
        })
        .unwrap_or(LANGUAGES[0])
}

fn insert(h: &mut HeaderMap, name: header::HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(single_range(b"bytes=0-9", 100), Some(Some((0, 9))));
        assert_eq!(single_range(b"bytes=-10", 100), Some(Some((90, 99))));
        assert_eq!(single_range(b"bytes=90-", 100), Some(Some((90, 99))));
        assert_eq!(single_range(b"bytes=100-", 100), Some(None));
        assert_eq!(single_range(b"bytes=0-1,4-5", 100), None);
    }

    #[test]
    fn negotiation_picks_the_best_available() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(negotiate(&h("fr-CH, fr;q=0.9, en;q=0.8")).0, "fr");
        assert_eq!(negotiate(&h("ja, de;q=0.5")).0, "de");
        assert_eq!(negotiate(&h("ja")).0, "en");
        assert_eq!(negotiate(&HeaderMap::new()).0, "en");
    }
}
