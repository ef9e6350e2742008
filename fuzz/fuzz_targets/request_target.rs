//! The request path's decisions on arbitrary targets and headers: normalisation, the key,
//! storability and the unkeyed-input rule never panic, and a request and its normalised form
//! always get the same key — which is also the key a purge of that URL names.
#![no_main]

use corral_core::cache_control::{RequestDirectives, ResponseDirectives};
use corral_core::key::{primary_key, Key, MethodClass, NamePattern, QueryPolicy, Scheme, UrlTarget};
use corral_core::policy::storability::{self, RequestFacts};
use corral_core::policy::unkeyed;
use corral_core::target::Target;
use corral_core::CachePolicy;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use libfuzzer_sys::fuzz_target;

fn key(t: &Target<'_>, policy: &QueryPolicy) -> Key {
    primary_key(MethodClass::Get, Scheme::Http, &t.host, &t.path, t.query, policy)
}

fuzz_target!(|data: &[u8]| {
    // Line 1: the request target; line 2: the Host header; the rest: header lines.
    let mut lines = data.split(|&b| b == b'\n');
    let (Some(target), Some(host)) = (lines.next(), lines.next()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(i) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let hosts = [host];
    let Ok(t) = Target::of(&uri, &mut hosts.iter().copied(), 80) else {
        return;
    };
    let policy = QueryPolicy {
        ignore: vec![NamePattern::new("utm_*")],
        allow: None,
    };
    let k = key(&t, &policy);
    // The normalised form, sent again as a request, is keyed the same.
    let again = t.path_and_query();
    let uri2: http::Uri = again.parse().expect("a normalised target is a valid URI");
    let host2 = [t.host.as_bytes()];
    let t2 = Target::of(&uri2, &mut host2.iter().copied(), 80).expect("normalised is accepted");
    assert_eq!(key(&t2, &policy), k);
    // A purge of this URL names exactly this key.
    let plain = QueryPolicy::default();
    let purge = UrlTarget::parse(&format!("http://{}{}", t.host, again)).expect("a purge target");
    assert_eq!(purge.as_str(), key(&t, &plain).target());
    // The decisions on this request never panic.
    let cc = RequestDirectives::from_headers(&headers);
    let resp = ResponseDirectives::from_headers(&headers);
    let facts = RequestFacts {
        method: &Method::GET,
        headers: &headers,
        directives: &cc,
    };
    let p = CachePolicy::default();
    for status in [200u16, 404, 500] {
        let _ = storability::check(&facts, StatusCode::from_u16(status).unwrap(), &headers, &resp, &p);
    }
    let _ = unkeyed::first_unkeyed(&headers, &headers, &p);
});
