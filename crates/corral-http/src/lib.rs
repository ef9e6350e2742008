//! # corral-http
//!
//! Corral's RFC 9111 caching reverse proxy. A request walks named phases, each one place in
//! the code:
//!
//! | phase | where |
//! | --- | --- |
//! | accept, limits, drain | [`server`] |
//! | recv, lookup, coalesce, fetch, store, pass, PURGE | [`gateway`] |
//! | deliver (Age, Cache-Status, conditionals, ranges) | [`deliver`] |
//! | which upstream and policy | [`route`] |
//! | talking to the origin, timeouts | [`upstream`] |
//! | endpoints, balancing, health, retries | [`pool`] |
//! | what of a request is accepted: target, forwarding and override headers, bodies | [`ingress`] |
//! | what a proxy strips and adds | [`hygiene`] |
//! | `Cache-Status` | [`cache_status`] |
//!
//! The decisions themselves (keys, storability, freshness, purges) live in `corral-core`.

pub mod access;
pub mod body;
pub mod cache_status;
pub mod deliver;
pub mod gateway;
pub mod hygiene;
pub mod ingress;
pub mod metrics;
pub mod pool;
pub mod route;
pub mod server;
pub mod shared;
pub mod tls;
pub mod upstream;

pub use gateway::{Gateway, GatewayConfig, HostHeader, InvalidationSink, PurgeReport};
pub use hygiene::ForwardingPolicy;
pub use ingress::{GetBody, IngressPolicy};
pub use metrics::Metrics;
pub use pool::{PoolMetrics, UpstreamConfig};
pub use route::{Route, Router};
pub use server::{serve, ServerLimits};
pub use shared::{FillLease, LeaseOutcome, SharedEntry, SharedLookup, SharedTier};
pub use upstream::{Timeouts, Upstream};
