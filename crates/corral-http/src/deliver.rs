//! deliver: the response a client gets from a stored entry — with `Age` and `Cache-Status`,
//! answering the client's own conditionals (RFC 9110 §13) and single byte ranges (§14) from
//! the stored representation.

use std::time::{Duration, SystemTime};

use corral_core::entry::Entry;
use corral_core::policy::dates;
use corral_core::policy::partial::{self, ContentRange, RangeSpec};
use corral_core::policy::targeted::TargetedFields;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::Body;
use crate::cache_status::CacheStatus;

/// Headers a 304 carries from the stored response (RFC 9110 §15.4.5).
const NOT_MODIFIED_HEADERS: [header::HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// Builds the answer for `method` from a stored entry.
pub fn entry(
    entry: &Entry,
    method: &Method,
    req: &HeaderMap,
    cs: CacheStatus,
    age: Duration,
) -> Response<Body> {
    let age_value = HeaderValue::from(age.as_secs());
    let stored = entry.headers().to_map();
    if entry.status() == StatusCode::OK && not_modified(req, &stored) {
        let mut resp = not_modified_response(&stored, cs);
        resp.headers_mut().insert(header::AGE, age_value);
        return resp;
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = entry.status();
    *resp.headers_mut() = stored;
    let h = resp.headers_mut();
    h.insert(header::AGE, age_value);
    h.insert("cache-status", cs.to_header());
    if method == Method::HEAD {
        return resp;
    }
    if entry.status() == StatusCode::OK {
        if let Some(range) = req.get(header::RANGE) {
            if if_range_holds(req, entry) {
                return ranged(resp, entry, range);
            }
        }
    }
    *resp.body_mut() = Body::full(entry.body());
    resp
}

/// A 304 for a representation whose headers are `stored` (RFC 9110 §15.4.5).
pub fn not_modified_response(stored: &HeaderMap, cs: CacheStatus) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    for name in NOT_MODIFIED_HEADERS {
        for v in stored.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        h.insert(header::LAST_MODIFIED, lm.clone());
    }
    h.insert("cache-status", cs.to_header());
    resp
}

/// True when the client's validators say it already has the representation whose headers
/// are `stored`. `If-None-Match` (weak comparison) takes precedence over `If-Modified-Since`
/// (RFC 9110 §13.2.2).
pub fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    if req.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG) else {
            return false;
        };
        return req
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .flat_map(|v| split_etags(v.as_bytes()))
            .any(|candidate| candidate == b"*" || weak_eq(candidate, etag.as_bytes()));
    }
    let Some(since) = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(dates::parse)
    else {
        return false;
    };
    // Without a Last-Modified, the stored response's Date is the latest it can have changed
    // (RFC 9110 §13.1.3).
    let modified = stored
        .get(header::LAST_MODIFIED)
        .or_else(|| stored.get(header::DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(dates::parse);
    modified.is_some_and(|m| m <= since)
}

/// `If-Range`: a strong ETag match or an exact Last-Modified date; absent means "yes".
fn if_range_holds(req: &HeaderMap, entry: &Entry) -> bool {
    let Some(v) = req.get(header::IF_RANGE) else {
        return true;
    };
    let v = v.as_bytes();
    if v.starts_with(b"\"") {
        return entry.etag().is_some_and(|e| e.as_bytes() == v);
    }
    let date = std::str::from_utf8(v).ok().and_then(dates::parse);
    let lm = entry
        .last_modified()
        .and_then(|v| dates::parse(v.to_str().ok()?));
    matches!((date, lm), (Some(a), Some(b)) if a == b)
}

/// Answers a single `bytes=` range from the stored body; anything else gets the whole body.
fn ranged(mut resp: Response<Body>, entry: &Entry, range: &HeaderValue) -> Response<Body> {
    let len = entry.body_bytes().len() as u64;
    match partial::resolve(range.as_bytes(), len) {
        RangeSpec::Whole => {
            *resp.body_mut() = Body::full(entry.body());
        }
        RangeSpec::Unsatisfiable => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).unwrap(),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        }
        RangeSpec::Part(first, last) => {
            let whole = ContentRange {
                first: 0,
                last: len.saturating_sub(1),
                complete: len,
            };
            slice(&mut resp, entry, &whole, first, last);
        }
    }
    resp
}

/// Answers bytes `first..=last` (of the complete representation) from a stored part whose
/// `Content-Range` is `stored`, which holds them (see `partial::covered`).
pub fn part(
    entry: &Entry,
    stored: &ContentRange,
    (first, last): (u64, u64),
    cs: CacheStatus,
    age: Duration,
) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    *resp.headers_mut() = entry.headers().to_map();
    let h = resp.headers_mut();
    h.insert(header::AGE, HeaderValue::from(age.as_secs()));
    h.insert("cache-status", cs.to_header());
    slice(&mut resp, entry, stored, first, last);
    resp
}

/// Puts bytes `first..=last` of the representation into `resp`, from an entry whose body is
/// the range `stored` of it.
fn slice(resp: &mut Response<Body>, entry: &Entry, stored: &ContentRange, first: u64, last: u64) {
    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    let sent = ContentRange {
        first,
        last,
        complete: stored.complete,
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_RANGE, sent.header());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(sent.len()));
    let from = (first - stored.first) as usize;
    let to = (last - stored.first) as usize;
    *resp.body_mut() = Body::full(entry.body().slice(from..=to));
}

/// Applies the targeted-field settings to an answer: its `Cache-Status` names the targeted
/// field that decided (`targeted=cdn-cache-control`; none when `Cache-Control` did), and the
/// fields that target Corral alone are removed unless exposed (RFC 9213 §2.2).
pub fn targeted_fields(resp: &mut Response<Body>, targeted: &TargetedFields) {
    let h = resp.headers_mut();
    if !targeted.fields.iter().any(|f| h.contains_key(f)) {
        return;
    }
    if let Some((name, _)) = targeted.decided_by(h) {
        let status = h.get("cache-status").and_then(|v| v.to_str().ok());
        if let Some(with) = status
            .and_then(|v| HeaderValue::from_str(&format!("{v}; targeted={}", name.as_str())).ok())
        {
            h.insert("cache-status", with);
        }
    }
    let own: Vec<header::HeaderName> = targeted.own().cloned().collect();
    for name in own {
        h.remove(name);
    }
}

fn split_etags(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Weak comparison (RFC 9110 §8.8.3.2): opaque tags equal, `W/` ignored on both sides.
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| t.strip_prefix(b"W/").map_or(t, |s| s).to_vec();
    strip(a) == strip(b)
}

/// A plain-text error answer that says what went wrong.
/// A 400 for a request refused before routing. The connection is closed after it: whatever
/// follows a refused request on the wire (an unread body, a smuggled request) is never read
/// as a request of its own.
pub fn refused(msg: &str) -> Response<Body> {
    let mut resp = error(StatusCode::BAD_REQUEST, msg, None);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub fn error(status: StatusCode, msg: &str, cs: Option<CacheStatus>) -> Response<Body> {
    let mut resp = Response::new(Body::full(format!("corral: {msg}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cache-status", cs.unwrap_or_default().to_header());
    h.insert(
        header::DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())).unwrap(),
    );
    resp
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_comparison() {
        assert!(weak_eq(b"W/\"a\"", b"\"a\""));
        assert!(!weak_eq(b"\"a\"", b"\"b\""));
    }
}
