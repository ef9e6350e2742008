//! May this response be stored by a shared cache? (RFC 9111 §3, §3.5, §5.2.)
//!
//! The only module that answers that question. The answer comes with a reason, which ends up
//! in `Cache-Status: ...; detail=` and in tests.

use http::header::{HeaderMap, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, SET_COOKIE, VARY};
use http::{Method, StatusCode};

use super::freshness::{has_explicit_freshness, heuristically_cacheable, is_error, understood};
use super::{partial, CachePolicy};
use crate::cache_control::{RequestDirectives, ResponseDirectives};

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Disabled,
    Method,
    Status,
    NoStore,
    /// The request said `no-store`.
    RequestNoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
    ContentType,
    Partial,
    /// An error status without explicit freshness (and not listed for the default TTL).
    ErrorStatus,
    /// The request carried a header that is neither keyed nor known not to change the answer.
    UnkeyedHeader,
}

impl NotStored {
    /// True when the reason lies in the request, not in the response: it says nothing about
    /// the next request for the URL, so the stored response stays.
    pub fn is_request_specific(self) -> bool {
        matches!(
            self,
            NotStored::Method
                | NotStored::Partial
                | NotStored::Authorization
                | NotStored::RequestNoStore
                | NotStored::UnkeyedHeader
        )
    }

    /// A short token for `Cache-Status` `detail` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Disabled => "disabled",
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::ContentType => "content-type",
            NotStored::Partial => "partial",
            NotStored::ErrorStatus => "error-status",
            NotStored::UnkeyedHeader => "unkeyed-header",
        }
    }
}

/// The request side of the decision.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub directives: &'a RequestDirectives,
}

/// Decides whether a response may be stored. `Ok(())` means store it (after
/// [`strip_unshareable`]).
pub fn check(
    req: &RequestFacts<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &ResponseDirectives,
    policy: &CachePolicy,
) -> Result<(), NotStored> {
    if !policy.enabled {
        return Err(NotStored::Disabled);
    }
    // Only GET responses are stored: HEAD responses have no body to reuse (they refresh a
    // stored GET instead, §4.3.5), and POST caching needs Content-Location matching nobody uses.
    if req.method != Method::GET {
        return Err(NotStored::Method);
    }
    // A 206 is stored only as the answer to the single range it was asked for (§3.3).
    let partial = status == StatusCode::PARTIAL_CONTENT || headers.contains_key(CONTENT_RANGE);
    if partial
        && !(partial::storable_request(req.headers).is_some()
            && partial::storable_part(status, headers))
    {
        return Err(NotStored::Partial);
    }
    // Final statuses only (1xx are interim, 600 and up are no class at all); 304 only ever
    // updates a stored response.
    let code = status.as_u16();
    if !(200..600).contains(&code) || status == StatusCode::NOT_MODIFIED {
        return Err(NotStored::Status);
    }
    // must-understand: store only what we understand (§5.2.2.3), whatever else it says.
    if cc.must_understand && !understood(status) {
        return Err(NotStored::Status);
    }
    if let Some(allowed) = &policy.cacheable_statuses {
        // A part is allowed where the whole is.
        let as_whole = if partial { 200 } else { status.as_u16() };
        if !allowed.contains(&as_whole) {
            return Err(NotStored::Status);
        }
    }
    if req.directives.no_store {
        return Err(NotStored::RequestNoStore);
    }
    // must-understand overrides no-store for the statuses we understand (§5.2.2.3), the only
    // ones that get this far with it.
    if cc.no_store && !cc.must_understand {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if req.headers.contains_key(AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_present() || cc.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    if headers.contains_key(SET_COOKIE) && !policy.strip_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if vary_star(headers) {
        return Err(NotStored::VaryStar);
    }
    if let Some(types) = &policy.cacheable_content_types {
        let ct = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !types.iter().any(|t| ct.starts_with(t.as_str())) {
            return Err(NotStored::ContentType);
        }
    }
    let explicit = has_explicit_freshness(cc, headers);
    let default_ttl = policy.default_ttl_for(status).is_some();
    // CPDoS: an error becomes everyone's answer only when the origin says for how long (or
    // the operator listed its status for the default TTL).
    if is_error(status) && !explicit && !default_ttl {
        return Err(NotStored::ErrorStatus);
    }
    // §3: something must make it reusable — explicit freshness, public, a default TTL, a
    // heuristically cacheable status, or a validator (no-cache responses are stored to be
    // revalidated).
    let reusable =
        explicit || cc.public || cc.no_cache || default_ttl || heuristically_cacheable(status);
    if !reusable {
        return Err(NotStored::NoFreshness);
    }
    if let Some(_name) = super::unkeyed::first_unkeyed(req.headers, headers, policy) {
        return Err(NotStored::UnkeyedHeader);
    }
    Ok(())
}

/// True when `Vary` contains `*`: no request can ever match the response.
pub fn vary_star(headers: &HeaderMap) -> bool {
    headers.get_all(VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii() == b"*")
    })
}

/// Removes from `headers` what a shared cache must not store or replay: `Set-Cookie` (when
/// the policy stores such responses), fields named by `private="..."` and `no-cache="..."`.
pub fn strip_unshareable(headers: &mut HeaderMap, cc: &ResponseDirectives) {
    headers.remove(SET_COOKIE);
    headers.remove("set-cookie2");
    for f in cc.private_fields.iter().chain(&cc.no_cache_fields) {
        if let Ok(name) = http::HeaderName::from_bytes(f.as_bytes()) {
            headers.remove(name);
        }
    }
}
