//! # corral-core
//!
//! Corral's cache engine, with no sockets: everything that decides *what* is cached, *for how
//! long*, and *what a purge removes*, so that each decision is unit-testable and fuzzable.
//!
//! | module | decides |
//! | --- | --- |
//! | [`key`] | which requests share a stored response (the primary key) |
//! | [`cache_control`] | what a `Cache-Control` header says |
//! | [`policy::storability`] | whether a response may be stored |
//! | [`policy::freshness`] | how long it is fresh, and whether a request may reuse it now |
//! | [`entry`] | what a stored response holds, and which variant a request selects |
//! | [`tags`] | which surrogate keys a response carries |
//! | [`store`] | where entries live, within a byte bound, and how purges apply (lazily, O(1)) |
//! | [`store::reclaim`] | when the memory of purged and expired entries is given back |
//! | [`invalidation`] | the one event type every purge becomes |
//! | [`flight`] | which caller fetches when many miss at once |

pub mod backoff;
pub mod cache_control;
pub mod clock;
pub mod entry;
pub mod flight;
pub mod invalidation;
pub mod judge;
pub mod key;
pub mod policy;
pub mod store;
pub mod stored_headers;
pub mod tags;
pub mod target;

pub use backoff::Backoff;
pub use cache_control::{RequestDirectives, ResponseDirectives};
pub use entry::{Entry, Variant};
pub use invalidation::{
    Applier, Appliers, Cause, EventSource, InvalidationEvent, Mode, Purge, Selectors,
};
pub use key::{primary_key, Key, KeyRef, MethodClass, QueryPolicy, Scheme, UrlTarget};
pub use policy::CachePolicy;
pub use store::reclaim::Reclaimer;
pub use store::{Lookup, Store, StoreConfig};

/// A header map from `(name, value)` pairs, in order (names may repeat), for tests.
#[cfg(test)]
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut m = http::HeaderMap::new();
    for (n, v) in pairs {
        m.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}
