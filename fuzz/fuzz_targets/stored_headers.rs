//! Whatever headers an origin sends, the compact stored form gives back exactly the same
//! fields, in the same order (dates kept as numbers, recurring values in the dictionary,
//! everything else spelled out).
#![no_main]

use corral_core::entry::StoredHeaders;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// Names the encoding treats specially, so the fuzzer reaches every path.
const NAMES: [&str; 8] = [
    "date",
    "last-modified",
    "expires",
    "content-type",
    "cache-control",
    "etag",
    "vary",
    "x-other",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&first, rest)) = line.split_first() else {
            continue;
        };
        // The first byte picks a name: a special one, or the start of a spelled-out one.
        let name = match NAMES.get(usize::from(first % 16)) {
            Some(n) => HeaderName::from_static(n),
            None => match rest.iter().position(|&b| b == b':') {
                Some(i) => match HeaderName::from_bytes(&rest[..i]) {
                    Ok(n) => n,
                    Err(_) => continue,
                },
                None => continue,
            },
        };
        if let Ok(v) = HeaderValue::from_bytes(rest) {
            headers.append(name, v);
        }
    }
    let stored = StoredHeaders::from_map(&headers);
    assert_eq!(stored.to_map(), headers);
    assert_eq!(stored.len(), headers.len());
});
