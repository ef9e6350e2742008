//! Cache-Control (request and response), Vary and key building never panic, whatever bytes an
//! origin or client sends.
#![no_main]

use corral_core::cache_control::{RequestDirectives, ResponseDirectives};
use corral_core::key::{primary_key, MethodClass, NamePattern, QueryPolicy, Scheme};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(http::header::CACHE_CONTROL, v.clone());
            headers.append(http::header::PRAGMA, v.clone());
            headers.append(http::header::EXPIRES, v.clone());
            headers.append(http::header::VARY, v);
        }
    }
    let r = ResponseDirectives::from_headers(&headers);
    let _ = r.forbids_stale();
    let _ = RequestDirectives::from_headers(&headers);
    let _ = corral_core::entry::Variant::of(&headers, &headers, &[]);
    let text = String::from_utf8_lossy(data);
    let policy = QueryPolicy { ignore: vec![NamePattern::new("utm_*"), NamePattern::new("*a*b*")], allow: None };
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    let _ = primary_key(MethodClass::Get, Scheme::Http, "h", path, Some(query), &policy);
});
