//! # corral-redis
//!
//! Redis as an optional tier that only ever makes things better:
//!
//! | module | what |
//! | --- | --- |
//! | [`client`] | the Redis client (standalone or Redis Cluster, TLS, auth), a tight timeout per call, behind the breaker |
//! | [`breaker`] | the circuit breaker: opens on error rate or p99 latency, half-opens to probe |
//! | [`codec`] | the stored form of an entry: core's entry record under a versioned key prefix |
//! | [`l2`] | the shared L2 cache: lookups, write-behind fills, purge marks (O(1) per selector) |
//! | [`lease`] | the cluster-wide fill lease (`SET NX PX`, pub/sub wake-up, bounded wait, takeover) |
//! | [`bus`] | the Redis Streams invalidation bus (XADD MAXLEN ~, XREAD BLOCK from the last id) |
//! | [`limiter`] | the jittered rate limit on L2 re-fills after Redis comes back |
//! | [`metrics`] | the tier's Prometheus metrics |
//!
//! Nothing here sits on a request's path unbounded: every call has a tight timeout, and an open
//! breaker refuses calls without touching the network.

pub mod breaker;
pub mod bus;
pub mod client;
pub mod codec;
pub mod l2;
pub mod lease;
pub mod limiter;
pub mod metrics;

pub use breaker::{Breaker, BreakerConfig};
pub use bus::{Bus, BusConfig};
pub use client::{RedisClient, RedisConfig, Target};
pub use l2::{Found, L2Config, L2};
pub use lease::{Acquired, LeaseConfig, LeaseGuard, Leases};
pub use limiter::Limiter;
pub use metrics::RedisMetrics;
pub use redis;
