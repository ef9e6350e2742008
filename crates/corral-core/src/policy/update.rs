//! What a response tells a cache about what it already stored: a 304's headers merged into
//! the stored response (RFC 9111 §3.2, §4.3.4), a HEAD response that freshens or contradicts
//! the stored GET (§4.3.5), and the URLs a successful unsafe request invalidates (§4.4).
//!
//! Pure functions over headers; the gateway applies their answers to the store.

use super::freshness::has_explicit_freshness;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_LOCATION, LOCATION,
};

/// Merges the header fields of a 304 (already stripped of hop-by-hop and tag fields) into
/// the stored response's: each field the 304 carries replaces every stored line of that
/// name; `Content-Length` is kept from the stored response (a 304 has no body of its own).
pub fn merge_not_modified(stored: &mut HeaderMap, update: &HeaderMap) {
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in update {
        if *name == CONTENT_LENGTH {
            continue;
        }
        if !replaced.contains(&name) {
            stored.remove(name);
            replaced.push(name);
        }
        stored.append(name.clone(), value.clone());
    }
}

/// What a HEAD response means for the stored GET of its URL (§4.3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// It validates the stored response: merge its headers as for a 304.
    Freshen,
    /// It describes another representation: the stored one is outdated.
    Remove,
    /// Nothing to compare: leave the stored response as it is.
    Keep,
}

/// The stored response's validators and length, as a HEAD is compared with them.
#[derive(Debug, Clone, Default)]
pub struct Validators {
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    pub length: usize,
}

/// A HEAD response freshens the stored GET it validates — the same strong `ETag`, or the
/// same `Last-Modified` when neither has an `ETag` — and a different `Content-Length` always
/// contradicts it. One that does not validate removes it when there was something to compare.
pub fn head_verdict(stored: &Validators, head: &HeaderMap) -> HeadVerdict {
    let strong = |v: &HeaderValue| !v.as_bytes().starts_with(b"W/");
    let same = match (&stored.etag, head.get(http::header::ETAG)) {
        (Some(a), Some(b)) => a == b && strong(a),
        (None, None) => {
            stored.last_modified.is_some()
                && stored.last_modified.as_ref() == head.get(http::header::LAST_MODIFIED)
        }
        _ => false,
    };
    let length_differs = head
        .get(CONTENT_LENGTH)
        .is_some_and(|l| l.as_bytes() != stored.length.to_string().as_bytes());
    if same && !length_differs {
        HeadVerdict::Freshen
    } else if stored.etag.is_some() || stored.last_modified.is_some() || length_differs {
        HeadVerdict::Remove
    } else {
        HeadVerdict::Keep
    }
}

/// The URLs (path, query) on `host` that a successful unsafe request to `path?query`
/// invalidates: the target itself, and the `Location` and `Content-Location` of the response
/// when they name the same host (§4.4; another host's URLs are not ours to invalidate).
pub fn invalidated_by_write<'a>(
    host: &str,
    path: &'a str,
    query: Option<&'a str>,
    response: &'a HeaderMap,
) -> Vec<(String, Option<String>)> {
    let mut out = vec![(path.to_string(), query.map(str::to_string))];
    for h in [LOCATION, CONTENT_LOCATION] {
        let Some(loc) = response.get(h).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(loc) = loc.parse::<http::Uri>() else {
            continue;
        };
        let same_host = loc
            .authority()
            .is_none_or(|a| a.as_str().eq_ignore_ascii_case(host));
        if same_host && loc.path().starts_with('/') {
            out.push((loc.path().to_string(), loc.query().map(str::to_string)));
        }
    }
    out.dedup();
    out
}

/// Whether the response to a `POST` may answer later `GET`s of its target (RFC 9110 §9.3.3,
/// RFC 9111 §3): a `200` or `203` whose `Content-Location` names the target URI itself (the
/// response is then the target's new representation, §8.7) and that states its freshness
/// (`max-age`, `s-maxage`, `Expires`). Only the target is reused: a `Content-Location` naming
/// any other URL is invalidated (§4.4), never stored.
pub fn post_answers_get(
    host: &str,
    path: &str,
    query: Option<&str>,
    status: http::StatusCode,
    response: &HeaderMap,
    cc: &crate::cache_control::ResponseDirectives,
) -> bool {
    if !matches!(status.as_u16(), 200 | 203) || !has_explicit_freshness(cc, response) {
        return false;
    }
    let mut lines = response.get_all(CONTENT_LOCATION).iter();
    let (Some(loc), None) = (lines.next(), lines.next()) else {
        return false;
    };
    let Some(loc) = loc.to_str().ok().and_then(|l| l.parse::<http::Uri>().ok()) else {
        return false;
    };
    let same_host = loc
        .authority()
        .is_none_or(|a| a.as_str().eq_ignore_ascii_case(host));
    same_host && loc.path() == path && loc.query() == query
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn a_304_replaces_what_it_carries_and_keeps_the_length() {
        let mut stored = h(&[
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("etag", "\"v1\""),
        ]);
        let update = h(&[
            ("cache-control", "max-age=60"),
            ("x-a", "3"),
            ("x-a", "4"),
            ("content-length", "0"),
        ]);
        merge_not_modified(&mut stored, &update);
        assert_eq!(stored["content-length"], "5");
        assert_eq!(stored["cache-control"], "max-age=60");
        let xa: Vec<_> = stored.get_all("x-a").iter().collect();
        assert_eq!(xa, ["3", "4"]);
        assert_eq!(stored["etag"], "\"v1\"");
    }

    #[test]
    fn head_verdicts() {
        let etag = |v: &str| Validators {
            etag: Some(v.parse().unwrap()),
            last_modified: None,
            length: 5,
        };
        let lm = Validators {
            etag: None,
            last_modified: Some("Mon, 01 Jan 2024 00:00:00 GMT".parse().unwrap()),
            length: 5,
        };
        // (case, stored, HEAD response headers, verdict)
        type Row<'a> = (
            &'a str,
            &'a Validators,
            &'a [(&'a str, &'a str)],
            HeadVerdict,
        );
        let rows: &[Row] = &[
            (
                "same strong etag",
                &etag("\"a\""),
                &[("etag", "\"a\"")],
                HeadVerdict::Freshen,
            ),
            (
                "weak etags never validate",
                &etag("W/\"a\""),
                &[("etag", "W/\"a\"")],
                HeadVerdict::Remove,
            ),
            (
                "another etag",
                &etag("\"a\""),
                &[("etag", "\"b\"")],
                HeadVerdict::Remove,
            ),
            (
                "same etag, other length",
                &etag("\"a\""),
                &[("etag", "\"a\""), ("content-length", "6")],
                HeadVerdict::Remove,
            ),
            (
                "same Last-Modified",
                &lm,
                &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                HeadVerdict::Freshen,
            ),
            (
                "other Last-Modified",
                &lm,
                &[("last-modified", "Tue, 02 Jan 2024 00:00:00 GMT")],
                HeadVerdict::Remove,
            ),
            (
                "nothing to compare",
                &Validators {
                    length: 5,
                    ..Default::default()
                },
                &[],
                HeadVerdict::Keep,
            ),
            (
                "only a length, and it differs",
                &Validators {
                    length: 5,
                    ..Default::default()
                },
                &[("content-length", "9")],
                HeadVerdict::Remove,
            ),
        ];
        for (name, stored, head, want) in rows {
            assert_eq!(head_verdict(stored, &h(head)), *want, "{name}");
        }
    }

    #[test]
    fn writes_invalidate_the_target_and_same_host_locations() {
        let resp = h(&[
            ("location", "/items/7?x=1"),
            ("content-location", "http://other.example/items/7"),
        ]);
        let got = invalidated_by_write("shop.example", "/items", None, &resp);
        assert_eq!(
            got,
            vec![
                ("/items".to_string(), None),
                ("/items/7".to_string(), Some("x=1".to_string()))
            ]
        );
        let same = h(&[("location", "http://SHOP.example/a")]);
        assert_eq!(
            invalidated_by_write("shop.example", "/a", None, &same).len(),
            1,
            "deduplicated"
        );
    }

    #[test]
    fn a_post_answers_get_only_for_its_own_target_with_explicit_freshness() {
        let ok = http::StatusCode::OK;
        let check = |status: http::StatusCode, pairs: &[(&str, &str)]| {
            let resp = h(pairs);
            let cc = crate::cache_control::ResponseDirectives::from_headers(&resp);
            post_answers_get("shop.example", "/cart", Some("id=1"), status, &resp, &cc)
        };
        let fresh = ("cache-control", "max-age=60");
        assert!(check(ok, &[fresh, ("content-location", "/cart?id=1")]));
        assert!(check(
            ok,
            &[fresh, ("content-location", "http://SHOP.example/cart?id=1")]
        ));
        assert!(
            !check(ok, &[("content-location", "/cart?id=1")]),
            "no explicit freshness"
        );
        assert!(
            !check(ok, &[fresh, ("content-location", "/cart")]),
            "another query"
        );
        assert!(
            !check(ok, &[fresh, ("content-location", "/orders/7")]),
            "another URL"
        );
        assert!(!check(
            ok,
            &[fresh, ("content-location", "http://evil.example/cart?id=1")]
        ));
        assert!(!check(ok, &[fresh]), "no Content-Location");
        assert!(!check(
            http::StatusCode::CREATED,
            &[fresh, ("content-location", "/cart?id=1")]
        ));
    }
}
