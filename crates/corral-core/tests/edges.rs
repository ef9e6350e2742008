//! Table-driven checks of the edges of HTTP caching semantics beyond `decisions.rs`: targeted
//! cache control (RFC 9213), the three HTTP-date forms (RFC 9110 §5.6.7), malformed `Age`,
//! status codes and `must-understand`, partial content and language variants. Every row names
//! the behaviour it pins down; a failing table lists every row that broke.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corral_core::cache_control::RequestDirectives;
use corral_core::entry::Variant;
use corral_core::policy::freshness::{Freshness, Timing};
use corral_core::policy::partial::{self, ContentRange};
use corral_core::policy::storability::{self, RequestFacts};
use corral_core::policy::targeted::TargetedFields;
use corral_core::policy::{dates, language};
use corral_core::CachePolicy;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// A fixed "now" so Date/Expires arithmetic is exact.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// Header fields of a table row, in order.
type Pairs = Vec<(&'static str, &'static str)>;

/// What we expect of a response: stored with a freshness lifetime in seconds, or not.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Store(u64),
    Not(&'static str),
}
use Expect::*;

/// Runs the storability and freshness decisions as the gateway does, with `Date` = now.
fn decide(
    req: &[(&str, &str)],
    status: u16,
    resp: &[(&str, &str)],
    policy: &CachePolicy,
) -> Expect {
    let req = headers(req);
    let mut resp = headers(resp);
    if !resp.contains_key("date") {
        resp.insert(
            "date",
            HeaderValue::from_str(&httpdate::fmt_http_date(now())).unwrap(),
        );
    }
    let rd = RequestDirectives::from_headers(&req);
    let cc = policy.targeted.directives(&resp);
    let status = StatusCode::from_u16(status).unwrap();
    let facts = RequestFacts {
        method: &Method::GET,
        headers: &req,
        directives: &rd,
    };
    match storability::check(&facts, status, &resp, &cc, policy) {
        Err(reason) => Not(reason.as_str()),
        Ok(()) => {
            let timing = Timing::new(now(), now(), &resp);
            let f = Freshness::compute(status, &resp, &cc, &timing, policy);
            Store(f.ttl(timing.initial_age).as_secs())
        }
    }
}

fn report(failures: Vec<String>, total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {total} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn targeted_fields_table() {
    let p = CachePolicy::default();
    let cdn_first = CachePolicy {
        targeted: TargetedFields {
            fields: vec![HeaderName::from_static("cdn-cache-control")],
            expose_own: false,
        },
        ..Default::default()
    };
    let none = CachePolicy {
        targeted: TargetedFields {
            fields: vec![],
            expose_own: false,
        },
        ..Default::default()
    };
    #[rustfmt::skip]
    let rows: Vec<(&str, &CachePolicy, Pairs, Expect, Option<&str>)> = vec![
        ("Corral's field replaces Cache-Control", &p,
            vec![("cache-control", "max-age=30"), ("corral-cache-control", "max-age=600")], Store(600), Some("corral-cache-control")),
        ("CDN-Cache-Control replaces Cache-Control", &p,
            vec![("cache-control", "max-age=30"), ("cdn-cache-control", "max-age=300")], Store(300), Some("cdn-cache-control")),
        ("the first listed field wins", &p,
            vec![("cdn-cache-control", "max-age=300"), ("corral-cache-control", "max-age=600")], Store(600), Some("corral-cache-control")),
        ("the list order is the configured one", &cdn_first,
            vec![("cdn-cache-control", "max-age=300"), ("corral-cache-control", "max-age=600")], Store(300), Some("cdn-cache-control")),
        ("an invalid field is ignored as a whole", &p,
            vec![("cache-control", "max-age=30"), ("corral-cache-control", "max-age=600,")], Store(30), None),
        ("an invalid first field falls back to the next", &p,
            vec![("corral-cache-control", "Max-Age=600"), ("cdn-cache-control", "max-age=300")], Store(300), Some("cdn-cache-control")),
        ("an empty field is ignored", &p,
            vec![("cache-control", "max-age=30"), ("corral-cache-control", "")], Store(30), None),
        ("no configured fields: Cache-Control decides", &none,
            vec![("cache-control", "max-age=30"), ("corral-cache-control", "max-age=600")], Store(30), None),
        ("targeted no-store", &p,
            vec![("cache-control", "max-age=30"), ("corral-cache-control", "no-store")], Not("no-store"), Some("corral-cache-control")),
        ("targeted ?0 leaves no-store unset", &p,
            vec![("corral-cache-control", "no-store=?0, max-age=5")], Store(5), Some("corral-cache-control")),
        ("targeted private", &p,
            vec![("corral-cache-control", "private")], Not("private"), Some("corral-cache-control")),
        ("Cache-Control private is ignored under a targeted field", &p,
            vec![("cache-control", "private"), ("corral-cache-control", "max-age=60")], Store(60), Some("corral-cache-control")),
        ("Cache-Control no-store is ignored under a targeted field", &p,
            vec![("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")], Store(60), Some("cdn-cache-control")),
        ("Expires is ignored under a targeted field", &p,
            vec![("expires", "Thu, 01 Jan 1970 00:00:00 GMT"), ("corral-cache-control", "max-age=60")], Store(60), Some("corral-cache-control")),
        ("s-maxage over max-age", &p,
            vec![("corral-cache-control", "max-age=60, s-maxage=90")], Store(90), Some("corral-cache-control")),
        ("a negative max-age is stale", &p,
            vec![("corral-cache-control", "max-age=-1")], Store(0), Some("corral-cache-control")),
        ("a string max-age is stale", &p,
            vec![("corral-cache-control", "max-age=\"60\"")], Store(0), Some("corral-cache-control")),
        ("a decimal max-age is stale", &p,
            vec![("corral-cache-control", "max-age=1.5")], Store(0), Some("corral-cache-control")),
        ("parameters are ignored", &p,
            vec![("corral-cache-control", "max-age=60;foo=bar")], Store(60), Some("corral-cache-control")),
        ("extensions are ignored", &p,
            vec![("corral-cache-control", "max-age=60, x-ext=(a b), y=:AQ==:")], Store(60), Some("corral-cache-control")),
        ("field lines join into one dictionary", &p,
            vec![("corral-cache-control", "must-revalidate"), ("corral-cache-control", "max-age=45")], Store(45), Some("corral-cache-control")),
        ("a repeated key: the last wins", &p,
            vec![("corral-cache-control", "max-age=10, max-age=20")], Store(20), Some("corral-cache-control")),
        ("targeted no-cache is stored for revalidation", &p,
            vec![("corral-cache-control", "no-cache"), ("etag", "\"a\"")], Store(0), Some("corral-cache-control")),
        ("huge values saturate", &p,
            vec![("corral-cache-control", "max-age=999999999999999")], Store(86_400), Some("corral-cache-control")),
        ("an error is stored with targeted freshness", &p,
            vec![("corral-cache-control", "max-age=60")], Store(60), Some("corral-cache-control")),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (i, (name, policy, resp, expect, decided)) in rows.into_iter().enumerate() {
        let status = if i == total - 1 { 404 } else { 200 };
        let got = decide(&[], status, &resp, policy);
        let by = policy
            .targeted
            .decided_by(&headers(&resp))
            .map(|(n, _)| n.as_str().to_string());
        if got != expect || by.as_deref() != decided {
            failures.push(format!(
                "{name}: expected {expect:?} by {decided:?}, got {got:?} by {by:?}"
            ));
        }
    }
    report(failures, total);
}

#[test]
fn own_targeted_fields_are_not_shown_to_clients_unless_exposed() {
    let t = TargetedFields::default();
    let own: Vec<&str> = t.own().map(|n| n.as_str()).collect();
    assert_eq!(
        own,
        ["corral-cache-control"],
        "CDN-Cache-Control is forwarded"
    );
    let exposed = TargetedFields {
        expose_own: true,
        ..TargetedFields::default()
    };
    assert_eq!(exposed.own().count(), 0);
}

#[test]
fn http_date_forms_table() {
    let t = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    #[rustfmt::skip]
    let rows: Vec<(&str, Option<u64>)> = vec![
        ("Sun, 06 Nov 1994 08:49:37 GMT", Some(t)),
        ("sun, 06 nov 1994 08:49:37 gmt", Some(t)),
        ("SUN, 06 NOV 1994 08:49:37 GMT", Some(t)),
        ("Sunday, 06-Nov-94 08:49:37 GMT", Some(t)),
        ("sunday, 06-nov-94 08:49:37 Gmt", Some(t)),
        ("Sun Nov  6 08:49:37 1994", Some(t)),
        ("sun nov  6 08:49:37 1994", Some(t)),
        ("Sun Nov 06 08:49:37 1994", Some(t)),
        ("  Sun, 06 Nov 1994 08:49:37 GMT ", Some(t)),
        ("Mon, 06 Nov 1994 08:49:37 GMT", Some(t)), // a wrong weekday still names the date
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Nov 1994 08:49:37 +0000", None),
        ("Sun, 6 Nov 1994 08:49:37 GMT", None),
        ("Sun, 31 Nov 1994 08:49:37 GMT", None),
        ("Sun, 29 Feb 1993 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 24:00:00 GMT", None),
        ("Sun, 06 Nov 1994 8:49:37 GMT", None),
        ("Xyz, 06 Nov 1994 08:49:37 GMT", None),
        ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1969 08:49:37 GMT", None),
        ("0", None),
        ("-1", None),
        ("", None),
        ("yesterday", None),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (text, expect) in rows {
        let got = dates::parse(text).map(|d| d.duration_since(UNIX_EPOCH).unwrap().as_secs());
        if got != expect {
            failures.push(format!("{text:?}: expected {expect:?}, got {got:?}"));
        }
    }
    report(failures, total);
}

#[test]
fn expires_in_every_date_form_table() {
    let p = CachePolicy::default();
    let later = "Tue, 14 Nov 2023 22:15:00 GMT"; // now + 100 s
    #[rustfmt::skip]
    let rows: Vec<(&str, Pairs, Expect)> = vec![
        ("IMF-fixdate", vec![("expires", later)], Store(100)),
        ("IMF-fixdate, lowercase", vec![("expires", "tue, 14 nov 2023 22:15:00 gmt")], Store(100)),
        ("RFC 850", vec![("expires", "Tuesday, 14-Nov-23 22:15:00 GMT")], Store(100)),
        ("asctime", vec![("expires", "Tue Nov 14 22:15:00 2023")], Store(100)),
        ("invalid Expires is already expired", vec![("expires", "soon")], Store(0)),
        ("Expires 0 is already expired", vec![("expires", "0")], Store(0)),
        ("two Expires lines are already expired", vec![("expires", later), ("expires", later)], Store(0)),
        ("Date in RFC 850 form", vec![("expires", later), ("date", "Tuesday, 14-Nov-23 22:13:20 GMT")], Store(100)),
        ("Last-Modified in asctime form drives heuristics", vec![("last-modified", "Tue Nov 14 19:26:40 2023")], Store(1000)),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (name, resp, expect) in rows {
        let got = decide(&[], 200, &resp, &p);
        if got != expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    report(failures, total);
}

#[test]
fn malformed_age_table() {
    let p = CachePolicy::default();
    #[rustfmt::skip]
    let rows: Vec<(&str, Vec<&str>, Expect)> = vec![
        ("no Age", vec![], Store(100)),
        ("a valid Age ages it", vec!["40"], Store(60)),
        ("surrounding whitespace is fine", vec![" 40 "], Store(60)),
        ("a list is stale", vec!["10, 20"], Store(0)),
        ("two field lines are stale", vec!["10", "20"], Store(0)),
        ("a unit suffix is stale", vec!["10s"], Store(0)),
        ("a negative Age is stale", vec!["-5"], Store(0)),
        ("a fraction is stale", vec!["1.5"], Store(0)),
        ("a sign is stale", vec!["+5"], Store(0)),
        ("garbage is stale", vec!["abc"], Store(0)),
        ("an empty Age is stale", vec![""], Store(0)),
        ("a huge Age saturates: stale", vec!["99999999999999999999"], Store(0)),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (name, ages, expect) in rows {
        let mut resp = vec![("cache-control", "max-age=100")];
        resp.extend(ages.iter().map(|a| ("age", *a)));
        let got = decide(&[], 200, &resp, &p);
        if got != expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    report(failures, total);
}

#[test]
fn status_codes_table() {
    let p = CachePolicy::default();
    let lm = "Tue, 14 Nov 2023 19:26:40 GMT"; // now - 10,000 s: heuristic 1,000 s
    #[rustfmt::skip]
    let rows: Vec<(&str, u16, Pairs, Expect)> = vec![
        ("heuristics for 200", 200, vec![("last-modified", lm)], Store(1000)),
        ("heuristics for 203", 203, vec![("last-modified", lm)], Store(1000)),
        ("heuristics for 300", 300, vec![("last-modified", lm)], Store(1000)),
        ("heuristics for 308", 308, vec![("last-modified", lm)], Store(1000)),
        ("no heuristics for 302", 302, vec![("last-modified", lm)], Not("no-freshness")),
        ("no heuristics for 307", 307, vec![("last-modified", lm)], Not("no-freshness")),
        ("no heuristics for an unknown 2xx", 299, vec![("last-modified", lm)], Not("no-freshness")),
        ("an unknown 2xx with max-age", 299, vec![("cache-control", "max-age=60")], Store(60)),
        ("an unknown 5xx only with explicit freshness", 599, vec![("last-modified", lm)], Not("error-status")),
        ("an unknown 5xx with max-age", 599, vec![("cache-control", "max-age=60")], Store(60)),
        ("must-understand, unknown status", 299, vec![("cache-control", "must-understand, no-store, max-age=60")], Not("status")),
        ("must-understand, unknown status, no no-store", 299, vec![("cache-control", "must-understand, max-age=60")], Not("status")),
        ("must-understand, known status", 200, vec![("cache-control", "must-understand, no-store, max-age=60")], Store(60)),
        ("must-understand on a 404", 404, vec![("cache-control", "must-understand, no-store, max-age=60")], Store(60)),
        ("targeted must-understand, unknown status", 299, vec![("corral-cache-control", "must-understand, max-age=60")], Not("status")),
        ("100 is never stored", 100, vec![("cache-control", "max-age=60")], Not("status")),
        ("103 is never stored", 103, vec![("cache-control", "max-age=60")], Not("status")),
        ("a status beyond 599 is never stored", 600, vec![("cache-control", "max-age=60")], Not("status")),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (name, status, resp, expect) in rows {
        let got = decide(&[], status, &resp, &p);
        if got != expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    report(failures, total);
}

/// (name, policy, request, status, response, expected).
type PartialRow<'a> = (&'static str, &'a CachePolicy, Pairs, u16, Pairs, Expect);

#[test]
fn partial_content_storability_table() {
    let p = CachePolicy::default();
    let only_200 = CachePolicy {
        cacheable_statuses: Some(vec![200]),
        ..Default::default()
    };
    let cc = ("cache-control", "max-age=60");
    #[rustfmt::skip]
    let rows: Vec<PartialRow> = vec![
        ("a 206 to a single range is stored", &p, vec![("range", "bytes=0-9")], 206,
            vec![cc, ("content-range", "bytes 0-9/100")], Store(60)),
        ("a suffix range", &p, vec![("range", "bytes=-10")], 206,
            vec![cc, ("content-range", "bytes 90-99/100")], Store(60)),
        ("an open-ended range", &p, vec![("range", "bytes=50-")], 206,
            vec![cc, ("content-range", "bytes 50-99/100")], Store(60)),
        ("allowed where 200 is", &only_200, vec![("range", "bytes=0-9")], 206,
            vec![cc, ("content-range", "bytes 0-9/100")], Store(60)),
        ("an unknown complete length", &p, vec![("range", "bytes=0-9")], 206,
            vec![cc, ("content-range", "bytes 0-9/*")], Not("partial")),
        ("multipart passes", &p, vec![("range", "bytes=0-1,5-6")], 206,
            vec![cc, ("content-type", "multipart/byteranges; boundary=x")], Not("partial")),
        ("a multipart answer to one range passes", &p, vec![("range", "bytes=0-9")], 206,
            vec![cc, ("content-type", "multipart/byteranges; boundary=x"), ("content-range", "bytes 0-9/100")], Not("partial")),
        ("an If-Range request passes", &p, vec![("range", "bytes=0-9"), ("if-range", "\"a\"")], 206,
            vec![cc, ("content-range", "bytes 0-9/100")], Not("partial")),
        ("a 206 nobody asked for", &p, vec![], 206,
            vec![cc, ("content-range", "bytes 0-9/100")], Not("partial")),
        ("Content-Range on a 200", &p, vec![("range", "bytes=0-9")], 200,
            vec![cc, ("content-range", "bytes 0-9/100")], Not("partial")),
        ("a part is still subject to no-store", &p, vec![("range", "bytes=0-9")], 206,
            vec![("cache-control", "no-store"), ("content-range", "bytes 0-9/100")], Not("no-store")),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (name, policy, req, status, resp, expect) in rows {
        let got = decide(&req, status, &resp, policy);
        if got != expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    report(failures, total);
}

/// (name, stored part, requested range, bytes answered).
type CoverRow = (&'static str, ContentRange, &'static str, Option<(u64, u64)>);

#[test]
fn stored_parts_answer_ranges_they_cover_table() {
    let stored = ContentRange {
        first: 0,
        last: 499,
        complete: 1000,
    };
    let tail = ContentRange {
        first: 900,
        last: 999,
        complete: 1000,
    };
    #[rustfmt::skip]
    let rows: Vec<CoverRow> = vec![
        ("inside", stored, "bytes=10-19", Some((10, 19))),
        ("the whole part", stored, "bytes=0-499", Some((0, 499))),
        ("beyond the part", stored, "bytes=400-599", None),
        ("open-ended past the part", stored, "bytes=10-", None),
        ("suffix within a tail part", tail, "bytes=-50", Some((950, 999))),
        ("open-ended within a tail part", tail, "bytes=950-", Some((950, 999))),
        ("suffix longer than the part", tail, "bytes=-200", None),
        ("several ranges", stored, "bytes=0-1,3-4", None),
        ("another unit", stored, "items=0-1", None),
        ("unsatisfiable", stored, "bytes=1000-", None),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (name, part, range, expect) in rows {
        let got = partial::covered(&part, &headers(&[("range", range)]));
        if got != expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    report(failures, total);
}

#[test]
fn completing_a_stored_prefix() {
    let prefix = ContentRange {
        first: 0,
        last: 499,
        complete: 1000,
    };
    let h = headers(&[("etag", "\"v1\"")]);
    let [range, if_range] = partial::completion(&prefix, &h).unwrap();
    assert_eq!(
        (range.to_str().unwrap(), if_range.to_str().unwrap()),
        ("bytes=500-", "\"v1\"")
    );
    assert!(
        partial::completion(&prefix, &headers(&[("etag", "W/\"v1\"")])).is_none(),
        "weak"
    );
    assert!(
        partial::completion(&prefix, &headers(&[])).is_none(),
        "no validator"
    );
    let tail = ContentRange {
        first: 500,
        last: 999,
        complete: 1000,
    };
    assert!(partial::completion(&tail, &h).is_none(), "not a prefix");

    let rest = |etag: &str, cr: &str| headers(&[("etag", etag), ("content-range", cr)]);
    let joined = partial::continues(
        &prefix,
        &h,
        StatusCode::PARTIAL_CONTENT,
        &rest("\"v1\"", "bytes 500-999/1000"),
    );
    assert!(joined.is_some_and(|r| r.is_whole()));
    #[rustfmt::skip]
    let refused = [
        ("another ETag", rest("\"v2\"", "bytes 500-999/1000")),
        ("another length", rest("\"v1\"", "bytes 500-1199/1200")),
        ("a gap", rest("\"v1\"", "bytes 600-999/1000")),
    ];
    for (name, next) in refused {
        assert!(
            partial::continues(&prefix, &h, StatusCode::PARTIAL_CONTENT, &next).is_none(),
            "{name}"
        );
    }
    assert!(partial::continues(
        &prefix,
        &h,
        StatusCode::OK,
        &rest("\"v1\"", "bytes 500-999/1000")
    )
    .is_none());
}

#[test]
fn language_variants_table() {
    #[rustfmt::skip]
    let rows: Vec<(&str, &str, Option<&str>, &str, bool)> = vec![
        // (name, stored request's Accept-Language, stored Content-Language, new request's, reused)
        ("same value", "en-US", Some("en-US"), "en-US", true),
        ("case", "en-US", None, "EN-us", true),
        ("whitespace", "en-US,fr;q=0.5", None, " en-US ,  fr ; q=0.5 ", true),
        ("q-value spelling", "en-US, fr;q=0.5", None, "en-US, fr;q=0.500", true),
        ("order by weight", "en-US, fr;q=0.5", None, "fr;q=0.5, en-US", true),
        ("explicit q=1", "en", None, "en;q=1", true),
        ("different preferences, no Content-Language", "en", None, "fr", false),
        ("equal-weight order is preference", "en, fr", None, "fr, en", false),
        ("first preference selects the stored language", "fr", Some("fr"), "fr, en;q=0.5", true),
        ("a range selects a longer tag", "en-US", Some("en-US"), "en", true),
        ("a longer range does not select a shorter tag", "en", Some("en"), "en-US", false),
        ("a lower preference does not count", "fr", Some("fr"), "de, fr;q=0.9", false),
        ("q=0 excludes", "fr", Some("fr"), "fr;q=0", false),
        ("a wildcard selects", "fr", Some("fr"), "*", true),
        ("no Accept-Language is another variant", "fr", Some("fr"), "", false),
    ];
    let total = rows.len();
    let mut failures = Vec::new();
    for (name, stored_al, content_language, asked, expect) in rows {
        let mut resp = vec![("vary", "accept-language")];
        if let Some(cl) = content_language {
            resp.push(("content-language", cl));
        }
        let v = Variant::of(
            &headers(&[("accept-language", stored_al)]),
            &headers(&resp),
            &[],
        );
        let req = if asked.is_empty() {
            headers(&[])
        } else {
            headers(&[("accept-language", asked)])
        };
        let got = v.matches(&req);
        if got != expect {
            failures.push(format!("{name}: expected {expect}, got {got}"));
        }
    }
    report(failures, total);
    assert_eq!(
        language::normalize("fr;q=0.5, en-US").as_deref(),
        Some("en-us,fr;q=0.5")
    );
}
