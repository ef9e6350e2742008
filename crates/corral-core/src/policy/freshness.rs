//! Freshness: how long a stored response may be served without asking the origin
//! (RFC 9111 §4.2), and whether a given request may reuse it now (§4.2, §5.2.1, RFC 5861).
//!
//! This is the only module that computes lifetimes and ages. Times are wall-clock seconds
//! (`SystemTime`) because `Date`, `Expires` and `Age` are; a clock that steps backwards makes
//! responses look younger, never negative.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::StatusCode;

use super::CachePolicy;
use crate::cache_control::{Delta, RequestDirectives, ResponseDirectives};

/// When a response was requested and received, and how old it already was on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// `corrected_initial_age` of §4.2.3: the age the response had when it reached us.
    pub initial_age: Duration,
}

impl Timing {
    /// Computes the initial age of a response from its `Date` and `Age` headers (§4.2.3).
    pub fn new(request_time: SystemTime, response_time: SystemTime, headers: &HeaderMap) -> Self {
        let date = header_date(headers, DATE);
        let apparent_age = date
            .and_then(|d| response_time.duration_since(d).ok())
            .unwrap_or_default();
        let age_value = headers
            .get(AGE)
            .and_then(|v| crate::cache_control::parse_delta(v.as_bytes().trim_ascii()))
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or_default();
        let response_delay = response_time
            .duration_since(request_time)
            .unwrap_or_default();
        let corrected_age_value = age_value + response_delay;
        Timing {
            request_time,
            response_time,
            initial_age: apparent_age.max(corrected_age_value),
        }
    }

    /// `current_age` of §4.2.3.
    pub fn age_at(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }
}

/// The freshness facts of a stored response, fixed when it is stored (or revalidated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freshness {
    /// Freshness lifetime, already capped by `max_ttl`.
    pub lifetime: Duration,
    /// How the lifetime was decided, for `Cache-Status` detail and tests.
    pub source: LifetimeSource,
    /// `stale-while-revalidate` window (origin's, else the configured default).
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` window (origin's, else the configured default).
    pub stale_if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never serve stale.
    pub forbids_stale: bool,
    /// `no-cache`: validate before every reuse.
    pub no_cache: bool,
}

/// Where a freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LifetimeSource {
    SMaxAge,
    MaxAge,
    Expires,
    /// A fraction of the time since `Last-Modified` (§4.2.2).
    Heuristic,
    /// The route's `default_ttl`, for responses that carry no explicit freshness.
    Default,
    /// No freshness information at all: stale on arrival.
    #[default]
    None,
}

impl LifetimeSource {
    /// True for lifetimes the origin stated (s-maxage, max-age, Expires).
    pub fn is_explicit(self) -> bool {
        matches!(self, Self::SMaxAge | Self::MaxAge | Self::Expires)
    }
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 451 | 501
    )
}

/// A client or server error (4xx, 5xx).
pub fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// True when the response states its own freshness (§4.2.1): `s-maxage`, `max-age`, or
/// `Expires` — present, even if invalid (an invalid one means "already stale").
/// A targeted field (RFC 9213) replaces `Expires` along with `Cache-Control`.
pub fn has_explicit_freshness(cc: &ResponseDirectives, headers: &HeaderMap) -> bool {
    cc.s_maxage.is_present() || cc.max_age.is_present() || obeys_expires(cc, headers)
}

fn obeys_expires(cc: &ResponseDirectives, headers: &HeaderMap) -> bool {
    cc.targeted.is_none() && headers.contains_key(EXPIRES)
}

/// True when the response's `Age` is present but not one non-negative integer: several
/// field lines, a list (`1, 2`), a suffix (`10s`), a sign, a fraction or garbage. Such a
/// response is of unknown age, so it is treated as stale on arrival (RFC 9111 §5.1 would
/// take a list's first member and ignore an invalid value; a cache that cannot tell how old
/// a response is should not call it fresh).
pub fn age_is_malformed(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(AGE).iter();
    match (lines.next(), lines.next()) {
        (None, _) => false,
        (Some(v), None) => crate::cache_control::parse_delta(v.as_bytes().trim_ascii()).is_none(),
        _ => true,
    }
}

/// Status codes whose caching requirements Corral implements: the final codes RFC 9110
/// defines. `must-understand` responses with any other status are not stored (§5.2.2.3).
pub fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421..=426 | 428 | 429 | 431 | 451 | 500..=505
    )
}

impl Freshness {
    /// Decides the freshness of a response received at `timing`.
    pub fn compute(
        status: StatusCode,
        headers: &HeaderMap,
        cc: &ResponseDirectives,
        timing: &Timing,
        policy: &CachePolicy,
    ) -> Freshness {
        let (mut lifetime, source) = lifetime(status, headers, cc, timing, policy);
        if age_is_malformed(headers) {
            lifetime = Duration::ZERO;
        }
        // max_ttl bounds the time a response stays fresh *here*: an origin's max-age of a year
        // is cut so that it goes stale at most max_ttl after we received it.
        let cap = timing.initial_age.saturating_add(policy.max_ttl);
        let window = |d: Delta, default: Duration| match d {
            Delta::Seconds(s) => Duration::from_secs(s.into()),
            Delta::Invalid => Duration::ZERO,
            Delta::Absent => default,
        };
        Freshness {
            lifetime: lifetime.min(cap),
            source,
            stale_while_revalidate: window(
                cc.stale_while_revalidate,
                policy.stale_while_revalidate,
            )
            .min(policy.max_stale_window),
            stale_if_error: window(cc.stale_if_error, policy.stale_if_error)
                .min(policy.max_stale_window),
            forbids_stale: cc.forbids_stale(),
            no_cache: cc.no_cache,
        }
    }

    /// Remaining freshness at `age` (zero when stale).
    pub fn ttl(&self, age: Duration) -> Duration {
        self.lifetime.saturating_sub(age)
    }

    /// How long past freshness the entry may still be useful to anyone: the widest stale
    /// window, or `keep` if longer — a kept entry serves conditional refreshes (when it has a
    /// validator), `max-stale` requests and request `stale-if-error`.
    pub fn usable_beyond_fresh(&self, keep: Duration) -> Duration {
        let stale = if self.forbids_stale {
            Duration::ZERO
        } else {
            self.stale_while_revalidate.max(self.stale_if_error)
        };
        stale.max(keep)
    }
}

fn lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &ResponseDirectives,
    timing: &Timing,
    policy: &CachePolicy,
) -> (Duration, LifetimeSource) {
    let secs = |s: u32| Duration::from_secs(s.into());
    match cc.s_maxage {
        Delta::Seconds(s) => return (secs(s), LifetimeSource::SMaxAge),
        Delta::Invalid => return (Duration::ZERO, LifetimeSource::SMaxAge),
        Delta::Absent => {}
    }
    match cc.max_age {
        Delta::Seconds(s) => return (secs(s), LifetimeSource::MaxAge),
        Delta::Invalid => return (Duration::ZERO, LifetimeSource::MaxAge),
        Delta::Absent => {}
    }
    if obeys_expires(cc, headers) {
        // Several Expires lines, or an invalid date (including "0"), mean already expired.
        let expires = super::dates::header(headers, &EXPIRES);
        let date = header_date(headers, DATE).unwrap_or(timing.response_time);
        let life = expires
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or_default();
        return (life, LifetimeSource::Expires);
    }
    if let Some(ttl) = policy.default_ttl_for(status) {
        return (ttl, LifetimeSource::Default);
    }
    // Heuristics never make an error fresh: storability refuses errors without explicit
    // freshness, and a 304 cannot freshen what was never stored.
    if heuristically_cacheable(status) && !is_error(status) {
        if let Some(lm) = header_date(headers, LAST_MODIFIED) {
            let date = header_date(headers, DATE).unwrap_or(timing.response_time);
            if let Ok(since) = date.duration_since(lm) {
                let h = since.mul_f64(policy.heuristic_fraction);
                return (h.min(policy.heuristic_max), LifetimeSource::Heuristic);
            }
        }
    }
    (Duration::ZERO, LifetimeSource::None)
}

/// Parses an HTTP date header (a single, valid line) into a time.
pub fn header_date(headers: &HeaderMap, name: http::HeaderName) -> Option<SystemTime> {
    super::dates::header(headers, &name)
}

/// Whether a request may reuse a stored response now, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh (and fresh enough for the request's constraints): serve it.
    Fresh { ttl: Duration },
    /// Stale, but the request's `max-stale` accepts it.
    StaleAccepted,
    /// Stale within `stale-while-revalidate`: serve it and refresh in the background.
    StaleWhileRevalidate,
    /// Must be validated (or refetched) with the origin before use.
    Revalidate(RevalidateReason),
}

/// Why a stored response cannot be served as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevalidateReason {
    /// Past its freshness lifetime.
    Stale,
    /// The request asked for validation (`no-cache`, `max-age`, `min-fresh`).
    Request,
    /// The response requires validation on every reuse (`no-cache`).
    NoCache,
    /// A soft purge marked it stale.
    Purged,
}

/// Decides reuse of a response of `age` with `freshness` for a request with `req` directives.
///
/// `soft_purged` entries are stale whatever their lifetime; `honor_request_no_cache` is the
/// config switch that lets operators ignore client `no-cache` (a cheap way to force origin
/// fetches otherwise).
pub fn reuse(
    freshness: &Freshness,
    age: Duration,
    req: &RequestDirectives,
    soft_purged: bool,
    honor_request_no_cache: bool,
) -> Reuse {
    if soft_purged {
        return Reuse::Revalidate(RevalidateReason::Purged);
    }
    if freshness.no_cache {
        return Reuse::Revalidate(RevalidateReason::NoCache);
    }
    if req.no_cache && honor_request_no_cache {
        return Reuse::Revalidate(RevalidateReason::Request);
    }
    let lifetime = freshness.lifetime;
    let fresh = age < lifetime;
    if let Delta::Seconds(max_age) = req.max_age {
        if age > Duration::from_secs(max_age.into()) {
            return Reuse::Revalidate(RevalidateReason::Request);
        }
    }
    if fresh {
        let ttl = lifetime - age;
        if let Delta::Seconds(min_fresh) = req.min_fresh {
            if ttl < Duration::from_secs(min_fresh.into()) {
                return Reuse::Revalidate(RevalidateReason::Request);
            }
        }
        return Reuse::Fresh { ttl };
    }
    if freshness.forbids_stale {
        return Reuse::Revalidate(RevalidateReason::Stale);
    }
    let staleness = age - lifetime;
    if let Some(max_stale) = req.max_stale {
        if max_stale.is_none_or(|s| staleness <= Duration::from_secs(s.into())) {
            return Reuse::StaleAccepted;
        }
    }
    let constrained = req.max_age.is_present() || req.min_fresh.is_present();
    if !constrained && staleness < freshness.stale_while_revalidate {
        return Reuse::StaleWhileRevalidate;
    }
    Reuse::Revalidate(RevalidateReason::Stale)
}

/// Whether a stale response may stand in for an error (RFC 5861 §4): within the response's
/// `stale-if-error` window, or the request's, and never when `must-revalidate` forbids it.
pub fn usable_on_error(freshness: &Freshness, age: Duration, req: &RequestDirectives) -> bool {
    // §4.2.4: no stale response where a directive forbids it (must-revalidate, no-cache).
    if freshness.forbids_stale || freshness.no_cache {
        return false;
    }
    let staleness = age.saturating_sub(freshness.lifetime);
    let window = match req.stale_if_error {
        Delta::Seconds(s) => freshness.stale_if_error.max(Duration::from_secs(s.into())),
        _ => freshness.stale_if_error,
    };
    staleness <= window && window > Duration::ZERO
}
