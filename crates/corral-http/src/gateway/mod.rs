//! The request lifecycle, one phase per module, as in Varnish's state machine:
//!
//! ```text
//! handle ─▶ recv (ingress, PURGE, route, overrides, method class, key)      mod.rs, purge.rs
//!             ├─ unsafe method ─▶ pass ─▶ invalidate target URI on success (§4.4)   pass.rs
//!             ├─ not cacheable ─▶ pass
//!             └─ lookup ─▶ fresh ─▶ deliver (hit)                                 lookup.rs
//!                  │  stale within stale-while-revalidate ─▶ deliver + background refresh
//!                  └─ miss / stale ─▶ coalesce (L2, fill lease)                 coalesce.rs
//!                                      └─▶ fetch (conditional if a validator is stored) fetch.rs
//!                                           └─▶ store (tee) ─▶ deliver               store.rs
//! ```
//!
//! The phases hold no caching rules of their own: what is keyed, stored, fresh or
//! invalidated is decided in `corral-core` (`target`, `key`, `policy::*`), and the proxy only
//! applies the answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use corral_core::cache_control::RequestDirectives;
use corral_core::entry::{Entry, Variant};
use corral_core::flight::{Flights, Leader, Role, Wait};
use corral_core::policy::freshness::{self, Freshness, Reuse, RevalidateReason, Timing};
use corral_core::policy::storability::{self, RequestFacts};
use corral_core::store::{Lookup, Store};
use corral_core::tags::{Tag, TagPolicy};
use corral_core::{
    primary_key, CachePolicy, Cause, Key, KeyRef, MethodClass, Mode, Purge, Scheme, Selectors,
};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::access::PurgeAccess;
use crate::body::{Body, FillBody, FillEnd};
use crate::cache_status::{CacheStatus, Fwd};
use crate::deliver;
use crate::hygiene::{self, Seen};
use crate::ingress::{normalized_uri, Arrival, IngressPolicy};
use crate::metrics::{Metrics, Outcome};
use crate::pool::UpstreamBody;
use crate::route::{Route, Router};
use crate::server::Transport;
use crate::shared::{FillLease, LeaseOutcome, SharedLookup, SharedTier};
use crate::upstream::UpstreamError;

mod coalesce;
mod fetch;
mod lookup;
mod partial_fill;
mod pass;
mod purge;
mod store;

use pass::{is_unsafe, AfterPass};

/// What a purge did, as reported to whoever asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Entries covered (see `corral_core::store::PurgeOutcome::covered`).
    pub purged: usize,
    /// The invalidation event's id.
    pub event: String,
    /// The event's sequence number on this replica (for waiting on peer acknowledgements).
    pub seq: u64,
}

/// Where invalidations go: applied locally, then broadcast. Implemented by the binary, which
/// owns the cluster; the proxy only produces invalidations (PURGE, unsafe methods).
pub trait InvalidationSink: Send + Sync + 'static {
    /// Applies and propagates an invalidation. `who` names the requester for the audit log.
    fn invalidate(&self, purge: Purge, cause: Cause, who: &str) -> PurgeReport;
}

/// How the upstream request's `Host` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostHeader {
    /// The client's `Host` is forwarded (the default: origins often route on it).
    #[default]
    Preserve,
    /// The upstream's own `host:port`.
    Upstream,
    /// A fixed value.
    Fixed(String),
}

/// Gateway-wide settings (per-route ones live in [`Route`]).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub tags: TagPolicy,
    pub purge: PurgeAccess,
    /// How long a coalesced request waits for the leader's fetch before fetching itself.
    pub coalesce_timeout: Duration,
    /// How long a URL whose response could not be stored skips coalescing (Varnish's
    /// hit-for-miss): concurrent requests then go to the origin in parallel instead of
    /// queueing behind each other.
    pub hit_for_miss: Duration,
    pub host_header: HostHeader,
    /// One log line per request (target `corral::access`).
    pub access_log: bool,
    /// What of a request is accepted before it is routed, keyed or forwarded.
    pub ingress: IngressPolicy,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tags: TagPolicy::default(),
            purge: PurgeAccess::default(),
            coalesce_timeout: Duration::from_secs(30),
            hit_for_miss: Duration::from_secs(10),
            host_header: HostHeader::Preserve,
            access_log: false,
            ingress: IngressPolicy::default(),
        }
    }
}

/// What a coalesced fetch ended with, as seen by the requests that waited for it.
#[derive(Debug, Clone)]
enum FlightOutcome {
    /// A response was stored (or offered to the store, which may have refused it: admission,
    /// a purge during the fetch): look it up again, and fall back on the entry carried here
    /// when the lookup misses, so that a refused fill still answers everyone who waited for it.
    Stored(Option<Entry>),
    /// The response could not be stored: fetch by yourself.
    Uncacheable,
    /// The upstream failed.
    Failed(UpstreamError),
}

type Flight = Leader<Key, FlightOutcome>;

/// The caching proxy: shared by every connection.
pub struct Gateway {
    store: Arc<Store>,
    router: Router,
    config: GatewayConfig,
    metrics: Metrics,
    sink: Arc<dyn InvalidationSink>,
    flights: Arc<Flights<Key, FlightOutcome>>,
    /// URLs whose last response was not storable (see [`GatewayConfig::hit_for_miss`]).
    uncacheable: moka::sync::Cache<Key, ()>,
    /// The shared tier (L2), when one is configured.
    shared: std::sync::OnceLock<Arc<dyn SharedTier>>,
}

/// The request facts every phase needs after the request itself was consumed.
struct Ctx {
    method: Method,
    headers: HeaderMap,
    cc: RequestDirectives,
    route: Arc<Route>,
    key: Key,
    /// How the request arrived, for `X-Forwarded-Proto`/`-Port` (server::Transport).
    transport: Transport,
}

impl Gateway {
    /// The time now, by the store's clock (`corral_core::clock`): every age and freshness
    /// computation of the request path reads it here, so tests can drive it.
    #[inline]
    pub(crate) fn now(&self) -> SystemTime {
        self.store.now()
    }

    pub fn new(
        store: Arc<Store>,
        router: Router,
        config: GatewayConfig,
        metrics: Metrics,
        sink: Arc<dyn InvalidationSink>,
    ) -> Arc<Gateway> {
        let uncacheable = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.hit_for_miss.max(Duration::from_millis(1)))
            .build();
        Arc::new(Gateway {
            store,
            router,
            config,
            metrics,
            sink,
            flights: Arc::new(Flights::new()),
            uncacheable,
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Puts a shared tier (L2) behind the in-process store. Once; later calls are ignored.
    pub fn set_shared_tier(&self, tier: Arc<dyn SharedTier>) {
        let _ = self.shared.set(tier);
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Answers one request. Never fails: every error becomes a response that says what
    /// went wrong.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<Body> {
        let start = Instant::now();
        let method = req.method().clone();
        let uri = self.config.access_log.then(|| req.uri().clone());
        // Off, this is one `OnceLock` load: no span, no clock read (corral-telemetry).
        let resp = match corral_telemetry::RequestSpan::start(&req) {
            None => self.recv(req, client).await,
            Some(span) => span.run(self.recv(req, client)).await,
        };
        self.metrics
            .request_duration
            .observe(start.elapsed().as_secs_f64());
        if let Some(uri) = uri {
            tracing::info!(
                target: "corral::access",
                client = %client.ip(),
                %method,
                %uri,
                status = resp.status().as_u16(),
                cache_status = resp.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or(""),
                micros = start.elapsed().as_micros() as u64,
            );
        }
        resp
    }

    /// recv: decide what kind of request this is.
    async fn recv(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<Body> {
        let ingress = &self.config.ingress;
        let arrival = match ingress.admit(&mut req, client.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                self.metrics.refused.inc();
                tracing::debug!(client = %client.ip(), uri = %req.uri(), %refusal, "request refused");
                return deliver::refused(&refusal.to_string());
            }
        };
        // From here on the request line is the normalised one: what is routed and keyed is
        // what is forwarded, on every path (pass, HEAD, ranges).
        if req.uri().path() != arrival.path || req.uri().authority().is_some() {
            if let Some(uri) = normalized_uri(&arrival) {
                *req.uri_mut() = uri;
            }
        }
        if req.method().as_str() == "PURGE" {
            return self.purge_method(&req, &arrival, client);
        }
        let Some(route) = self.router.route(&arrival.host, &arrival.path) else {
            let msg = format!("no route for {}{}", arrival.host, arrival.path);
            return deliver::error(StatusCode::NOT_FOUND, &msg, None);
        };
        let route = route.clone();
        let overriding = ingress.carries_override(req.headers());
        if overriding && !route.policy.forward_override_headers {
            ingress.strip_overrides(req.headers_mut());
        }
        // The listener that accepted the request says its scheme (server::Listener).
        let scheme = req
            .extensions()
            .get::<Scheme>()
            .copied()
            .unwrap_or_default();
        let key = primary_key(
            MethodClass::Get,
            scheme,
            &arrival.host,
            &arrival.path,
            arrival.query.as_deref(),
            &route.policy.query,
        );
        let pass = if MethodClass::of(req.method()).is_none() || !route.caches(req.method()) {
            Some(None)
        } else if arrival.has_body {
            Some(Some("request-body"))
        } else if overriding && route.policy.forward_override_headers {
            Some(Some("override-header"))
        } else if key.as_str().len() > route.policy.max_key_length {
            Some(Some("key-too-long"))
        } else {
            None
        };
        if let Some(why) = pass {
            let after = if is_unsafe(req.method()) {
                AfterPass::InvalidateWrite {
                    key: key.clone(),
                    route: route.clone(),
                }
            } else {
                AfterPass::Nothing
            };
            return self.pass(req, &route, client, after, why).await;
        }
        self.lookup(req, route, key, client).await
    }
}
