//! Cache policy: the knobs an operator sets (per gateway, overridable per route) and the two
//! decisions made from them — may a response be stored ([`storability`]), and for how long is it
//! fresh ([`freshness`]).

pub mod dates;
pub mod freshness;
pub mod language;
pub mod partial;
pub mod storability;
pub mod targeted;
pub mod unkeyed;
pub mod update;

use std::time::Duration;

use crate::key::QueryPolicy;

/// Everything that shapes caching decisions for one route.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// Caching on or off; off means every request is passed to the origin.
    pub enabled: bool,
    /// Nothing stays fresh here longer than this after we received it (the safety net).
    pub max_ttl: Duration,
    /// Freshness for responses that carry no explicit freshness; `None` keeps RFC rules
    /// (heuristics, else stale on arrival).
    pub default_ttl: Option<Duration>,
    /// `stale-while-revalidate` when the origin gives none.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` when the origin gives none.
    pub stale_if_error: Duration,
    /// Upper bound for any stale window, the origin's included.
    pub max_stale_window: Duration,
    /// How long a stale response with a validator is kept for conditional refreshes.
    pub keep: Duration,
    /// Heuristic freshness: this fraction of the time since `Last-Modified` (§4.2.2)...
    pub heuristic_fraction: f64,
    /// ...capped at this.
    pub heuristic_max: Duration,
    /// Responses larger than this are streamed through and not stored.
    pub max_object_size: usize,
    /// `Set-Cookie` responses: `false` (default) passes them uncached; `true` strips the
    /// header and stores the rest.
    pub strip_set_cookie: bool,
    /// Honour a client's `no-cache` (revalidate). Off protects the origin from clients that
    /// send it on every request.
    pub honor_request_no_cache: bool,
    /// Statuses that may be stored; `None` means the RFC's rules alone decide.
    pub cacheable_statuses: Option<Vec<u16>>,
    /// Content types (prefix match, e.g. `application/json`) that may be stored; `None` = all.
    pub cacheable_content_types: Option<Vec<String>>,
    /// How the query string enters the key.
    pub query: QueryPolicy,
    /// Request headers that split the key (as if the origin had listed them in `Vary`).
    pub key_headers: Vec<http::HeaderName>,
    /// How many variants one URL may hold; the oldest is dropped beyond it.
    pub max_variants: usize,
    /// Statuses the `default_ttl` applies to. By default the heuristically cacheable statuses
    /// that are not errors: an error is stored only with the origin's explicit freshness, so
    /// one bad request cannot make an error the answer for everyone (CPDoS).
    pub default_ttl_statuses: Vec<u16>,
    /// Request headers (globs) beyond the built-in [`unkeyed::DEFAULT`] that are known never to
    /// change a response. A fill whose request carried any other header that is not part of
    /// the key (`Vary`, `key_headers`) is not stored.
    pub unkeyed_headers: Vec<crate::key::NamePattern>,
    /// Override headers (`X-Original-URL`, `X-HTTP-Method-Override`...) are forwarded to the
    /// origin; a request carrying one is then never served from or stored in the cache. Off
    /// (the default): they are removed before the origin sees them.
    pub forward_override_headers: bool,
    /// Longest primary key (host, path and query) that is cached; longer requests pass.
    pub max_key_length: usize,
    /// Targeted cache-control fields (RFC 9213) that decide instead of `Cache-Control`.
    pub targeted: targeted::TargetedFields,
}

impl CachePolicy {
    /// Whether `default_ttl` applies to a response with this status.
    pub fn default_ttl_for(&self, status: http::StatusCode) -> Option<Duration> {
        self.default_ttl
            .filter(|_| self.default_ttl_statuses.contains(&status.as_u16()))
    }
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            enabled: true,
            max_ttl: Duration::from_secs(24 * 3600),
            default_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            max_stale_window: Duration::from_secs(24 * 3600),
            keep: Duration::from_secs(3600),
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(24 * 3600),
            max_object_size: 8 << 20,
            strip_set_cookie: false,
            honor_request_no_cache: true,
            cacheable_statuses: None,
            cacheable_content_types: None,
            query: QueryPolicy::default(),
            key_headers: Vec::new(),
            max_variants: 32,
            default_ttl_statuses: vec![200, 203, 204, 300, 301, 308],
            unkeyed_headers: Vec::new(),
            forward_override_headers: false,
            max_key_length: 8192,
            targeted: targeted::TargetedFields::default(),
        }
    }
}
