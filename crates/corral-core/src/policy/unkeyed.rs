//! Unkeyed inputs: the rule that keeps a request header from changing a stored answer
//! without being part of its key.
//!
//! Everything a cacheable fetch sends the origin is one of three things:
//! 1. part of the key: the host, path and normalised query; the headers the response names
//!    in `Vary`; the route's `key_headers`; the forwarding context of a trusted proxy;
//! 2. a header on the allow-list of inputs that do not change a response — [`DEFAULT`] (the
//!    standard request headers whose effect RFC 9110 puts under `Vary` or that a shared cache
//!    handles itself, browser metadata, tracing) plus the operator's `unkeyed_headers`;
//! 3. anything else, and then the response is **not stored** (`Cache-Status: ...;
//!    detail=unkeyed-header`): a header we cannot see into may have shaped it, and storing it
//!    would hand that shape to every later client. The request is still answered, and later
//!    clients that do not carry the header are cached as usual.
//!
//! Headers Corral removes or rewrites before the origin sees them (hop-by-hop, the
//! forwarding headers of untrusted clients, override headers) never reach this check.

use http::header::{HeaderMap, HeaderName, VARY};

use super::CachePolicy;

/// Request headers that never make a response unstorable on their own. `Cookie` and
/// `Authorization` are here because their own rules apply (`Authorization` responses are
/// shared only when the origin says `public`/`s-maxage`/`must-revalidate`; `Set-Cookie`
/// responses are never shared), not because they cannot change an answer: an origin that
/// personalises on a cookie must say `private` or `Vary: Cookie`, as for any shared cache.
pub const DEFAULT: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "authorization",
    "b3",
    "baggage",
    "cache-control",
    "connection",
    "content-length",
    "cookie",
    "corral-key-context",
    "dnt",
    "forwarded",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "origin",
    "pragma",
    "priority",
    "purpose",
    "range",
    "referer",
    "sec-ch-*",
    "sec-fetch-*",
    "sec-gpc",
    "sec-purpose",
    "soft-purge",
    "te",
    "traceparent",
    "tracestate",
    "upgrade-insecure-requests",
    "user-agent",
    "via",
    "x-amzn-trace-id",
    "x-b3-*",
    "x-cloud-trace-context",
    // Corral's own marker on an owner's fill for a peer (`corral-cluster::shard`).
    "x-corral-forwarded",
    "x-correlation-id",
    "x-forwarded-*",
    "x-real-ip",
    "x-request-id",
    "x-requested-with",
];

/// The first request header that is neither keyed nor allowed, if any.
pub fn first_unkeyed<'a>(
    request: &'a HeaderMap,
    response: &HeaderMap,
    policy: &CachePolicy,
) -> Option<&'a HeaderName> {
    request.keys().find(|name| {
        !allowed(name.as_str(), policy)
            && !policy.key_headers.contains(name)
            && !varies_on(response, name)
    })
}

/// Whether a header name is on the allow-list (built-in or configured).
pub fn allowed(name: &str, policy: &CachePolicy) -> bool {
    DEFAULT
        .iter()
        .any(|p| crate::key::glob(p.as_bytes(), name.as_bytes()))
        || policy.unkeyed_headers.iter().any(|p| p.matches(name))
}

fn varies_on(response: &HeaderMap, name: &HeaderName) -> bool {
    response.get_all(VARY).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::NamePattern;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_rule_row_by_row() {
        let configured = CachePolicy {
            unkeyed_headers: vec![NamePattern::new("x-app-*")],
            key_headers: vec![HeaderName::from_static("x-tenant")],
            ..CachePolicy::default()
        };
        let plain = CachePolicy::default();
        // (request header, response Vary, policy, unkeyed?)
        let rows: &[(&str, &str, &CachePolicy, bool)] = &[
            ("accept-encoding", "", &plain, false),
            ("sec-fetch-mode", "", &plain, false),
            ("x-forwarded-host", "", &plain, false),
            ("x-device", "", &plain, true),
            ("x-device", "Accept, X-Device", &plain, false),
            ("x-app-version", "", &plain, true),
            ("x-app-version", "", &configured, false),
            ("x-tenant", "", &configured, false),
            ("x-http-method-override", "", &plain, true),
        ];
        for (name, vary, policy, unkeyed) in rows {
            let req = headers(&[(name, "1"), ("accept", "*/*")]);
            let resp = if vary.is_empty() {
                HeaderMap::new()
            } else {
                headers(&[("vary", vary)])
            };
            let found = first_unkeyed(&req, &resp, policy).map(|n| n.as_str().to_string());
            assert_eq!(
                found.is_some(),
                *unkeyed,
                "{name} with Vary {vary:?}: {found:?}"
            );
        }
    }
}
