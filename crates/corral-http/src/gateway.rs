//! The request lifecycle, one phase per function, as in Varnish's state machine:
//!
//! ```text
//! handle ─▶ recv (PURGE, limits, route, method class, key)
//!             ├─ unsafe method ─▶ pass ─▶ invalidate target URI on success (§4.4)
//!             ├─ not cacheable ─▶ pass
//!             └─ lookup ─▶ fresh ─▶ deliver (hit)
//!                  │  stale within stale-while-revalidate ─▶ deliver + background refresh
//!                  └─ miss / stale ─▶ coalesce ─▶ fetch (conditional if a validator is stored)
//!                                                   └─▶ store (tee) ─▶ deliver
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use corral_core::cache_control::{RequestDirectives, ResponseDirectives};
use corral_core::entry::{Entry, Variant};
use corral_core::flight::{Flights, Leader, Role, Wait};
use corral_core::policy::freshness::{self, Freshness, Reuse, RevalidateReason, Timing};
use corral_core::policy::storability::{self, RequestFacts};
use corral_core::store::{Lookup, Store};
use corral_core::tags::{Tag, TagPolicy};
use corral_core::{primary_key, CachePolicy, Cause, MethodClass, Selectors};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
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
use crate::shared::{FillLease, LeaseOutcome, SharedLookup, SharedTier};
use crate::upstream::UpstreamError;

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
    fn invalidate(&self, selectors: Selectors, soft: bool, cause: Cause, who: &str) -> PurgeReport;
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

type Flight = Leader<Arc<str>, FlightOutcome>;

/// The caching proxy: shared by every connection.
pub struct Gateway {
    store: Arc<Store>,
    router: Router,
    config: GatewayConfig,
    metrics: Metrics,
    sink: Arc<dyn InvalidationSink>,
    flights: Arc<Flights<Arc<str>, FlightOutcome>>,
    /// URLs whose last response was not storable (see [`GatewayConfig::hit_for_miss`]).
    uncacheable: moka::sync::Cache<Arc<str>, ()>,
    /// The shared tier (L2), when one is configured.
    shared: std::sync::OnceLock<Arc<dyn SharedTier>>,
}

/// The request facts every phase needs after the request itself was consumed.
struct Ctx {
    method: Method,
    headers: HeaderMap,
    cc: RequestDirectives,
    route: Arc<Route>,
    key: Arc<str>,
}

impl Gateway {
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
        let resp = self.recv(req, client).await;
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
        let key: Arc<str> = primary_key(
            MethodClass::Get,
            &arrival.host,
            &arrival.path,
            arrival.query.as_deref(),
            &route.policy.query,
        )
        .into();
        let pass = if MethodClass::of(req.method()).is_none() || !route.caches(req.method()) {
            Some(None)
        } else if arrival.has_body {
            Some(Some("request-body"))
        } else if overriding && route.policy.forward_override_headers {
            Some(Some("override-header"))
        } else if key.len() > route.policy.max_key_length {
            Some(Some("key-too-long"))
        } else {
            None
        };
        if let Some(why) = pass {
            let after = if is_unsafe(req.method()) {
                AfterPass::InvalidateWrite
            } else {
                AfterPass::Nothing
            };
            return self.pass(req, &route, client, after, why).await;
        }
        self.lookup(req, route, key, client).await
    }

    /// lookup: serve from the store when allowed, else go forward.
    async fn lookup(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: Arc<Route>,
        key: Arc<str>,
        client: SocketAddr,
    ) -> Response<Body> {
        let cc = RequestDirectives::from_headers(req.headers());
        let mut stale = None;
        let fwd = match self.store.lookup(&key, req.headers()) {
            Lookup::Found(entry) => {
                let (age, fresh) = entry.age_and_freshness(SystemTime::now());
                match freshness::reuse(
                    &fresh,
                    age,
                    &cc,
                    entry.is_soft_purged(),
                    route.policy.honor_request_no_cache,
                ) {
                    Reuse::Fresh { ttl } => {
                        self.metrics.answered(Outcome::Hit);
                        return deliver::entry(
                            &entry,
                            req.method(),
                            req.headers(),
                            CacheStatus::hit(ttl),
                            age,
                        );
                    }
                    Reuse::StaleAccepted => {
                        self.metrics.answered(Outcome::Stale);
                        let cs = stale_status(&entry, age, "stale");
                        return deliver::entry(&entry, req.method(), req.headers(), cs, age);
                    }
                    Reuse::StaleWhileRevalidate => {
                        self.metrics.answered(Outcome::Stale);
                        self.refresh_in_background(&req, &route, &key, &entry);
                        let cs = stale_status(&entry, age, "stale-while-revalidate");
                        return deliver::entry(&entry, req.method(), req.headers(), cs, age);
                    }
                    Reuse::Revalidate(reason) => {
                        stale = Some(entry);
                        if reason == RevalidateReason::Request {
                            Fwd::Request
                        } else {
                            Fwd::Stale
                        }
                    }
                }
            }
            Lookup::VaryMiss => Fwd::VaryMiss,
            Lookup::Miss => Fwd::Miss,
        };
        if cc.only_if_cached {
            self.metrics.answered(Outcome::Miss);
            let mut cs = CacheStatus::forward(fwd);
            cs.detail = Some("only-if-cached");
            return deliver::error(
                StatusCode::GATEWAY_TIMEOUT,
                "only-if-cached: no usable stored response",
                Some(cs),
            );
        }
        // A HEAD or range request that cannot be answered from the store is passed through:
        // neither gives us a whole body to store.
        if req.method() == Method::HEAD && !req.headers().contains_key(header::RANGE) {
            return self
                .pass(req, &route, client, AfterPass::FreshenFromHead(key), None)
                .await;
        }
        if req.headers().contains_key(header::RANGE) {
            return self
                .pass(req, &route, client, AfterPass::Nothing, None)
                .await;
        }
        let (parts, _body) = req.into_parts();
        let ctx = Ctx {
            method: parts.method,
            headers: parts.headers,
            cc,
            route,
            key,
        };
        self.coalesce(ctx, stale, fwd, client).await
    }

    /// coalesce: one fetch per key; everyone else waits for it and looks up again.
    async fn coalesce(
        self: &Arc<Self>,
        ctx: Ctx,
        stale: Option<Entry>,
        fwd: Fwd,
        client: SocketAddr,
    ) -> Response<Body> {
        if ctx.cc.no_store || self.uncacheable.contains_key(&ctx.key) {
            return self.fetch(ctx, stale, fwd, client, None, None).await;
        }
        for _ in 0..3 {
            let follower = match self.flights.join(ctx.key.clone()) {
                Role::Leader(leader) => {
                    if let Some(tier) = self.shared.get() {
                        let tier = tier.clone();
                        return self
                            .lead_with_tier(tier, ctx, stale, fwd, client, leader)
                            .await;
                    }
                    return self
                        .fetch(ctx, stale, fwd, client, Some(leader), None)
                        .await;
                }
                Role::Follower(f) => f,
            };
            self.metrics.coalesced.inc();
            match follower.wait(self.config.coalesce_timeout).await {
                Wait::Done(FlightOutcome::Stored(carried)) => {
                    if let Some(resp) = self.collapsed_hit(&ctx, fwd, carried) {
                        return resp;
                    }
                }
                Wait::Done(FlightOutcome::Uncacheable) => break,
                Wait::Done(FlightOutcome::Failed(err)) => {
                    if let Some(resp) = self.stale_on_error(&ctx, stale.as_ref()) {
                        return resp;
                    }
                    self.metrics.answered(Outcome::Miss);
                    let mut cs = CacheStatus::forward(fwd);
                    cs.collapsed = true;
                    cs.detail = Some(err.kind());
                    return deliver::error(err.status(), &err.to_string(), Some(cs));
                }
                Wait::Abandoned | Wait::TimedOut => {}
            }
        }
        self.fetch(ctx, stale, fwd, client, None, None).await
    }

    /// The coalescing leader with a shared tier: L2 first, then the cluster-wide fill lease
    /// (waiting for another replica's fill, bounded), then the origin.
    async fn lead_with_tier(
        self: &Arc<Self>,
        tier: Arc<dyn SharedTier>,
        ctx: Ctx,
        stale: Option<Entry>,
        fwd: Fwd,
        client: SocketAddr,
        leader: Flight,
    ) -> Response<Body> {
        let mut lease = None;
        let mut stale = stale;
        if fwd != Fwd::Request {
            for round in 0..3 {
                match self.shared_hit(&*tier, &ctx).await {
                    TierAnswer::Hit(resp) => {
                        leader.finish(FlightOutcome::Stored(None));
                        return resp;
                    }
                    // Stale or soft-purged in L2: still worth a conditional request.
                    TierAnswer::Stale(found) => stale = Some(found),
                    TierAnswer::Miss => {}
                    // The tier just failed: no lease call either.
                    TierAnswer::Unavailable => break,
                }
                if round == 2 {
                    break;
                }
                match tier.lease(&ctx.key).await {
                    LeaseOutcome::Held(l) => {
                        // Another replica may have filled L2 and released its lease between
                        // our lookup and our lease: look once more before the origin.
                        if let TierAnswer::Hit(resp) = self.shared_hit(&*tier, &ctx).await {
                            drop(l);
                            leader.finish(FlightOutcome::Stored(None));
                            return resp;
                        }
                        lease = Some(l);
                        break;
                    }
                    LeaseOutcome::Filled => {}
                    LeaseOutcome::Proceed => break,
                }
            }
        }
        self.fetch(ctx, stale, fwd, client, Some(leader), lease)
            .await
    }

    /// An answer from the shared tier, stored in L1 on the way, if it is fresh for this request;
    /// else the entry found, if any (to revalidate).
    async fn shared_hit(&self, tier: &dyn SharedTier, ctx: &Ctx) -> TierAnswer {
        let policy = &ctx.route.policy;
        let purge_seq = self.store.purge_seq();
        let found = match tier.lookup(&ctx.key, &ctx.headers, policy, purge_seq).await {
            SharedLookup::Found(f) => f,
            SharedLookup::Miss => return TierAnswer::Miss,
            SharedLookup::Unavailable => return TierAnswer::Unavailable,
        };
        let entry = self.store.insert(found.entry, policy.max_variants);
        if found.soft {
            entry.mark_soft_purged();
        }
        let (age, fresh) = entry.age_and_freshness(SystemTime::now());
        let Reuse::Fresh { ttl } = freshness::reuse(
            &fresh,
            age,
            &ctx.cc,
            entry.is_soft_purged(),
            policy.honor_request_no_cache,
        ) else {
            return TierAnswer::Stale(entry);
        };
        self.metrics.answered(Outcome::Hit);
        let mut cs = CacheStatus::hit(ttl);
        cs.detail = Some("l2");
        TierAnswer::Hit(deliver::entry(&entry, &ctx.method, &ctx.headers, cs, age))
    }

    /// A coalesced request's answer from what the leader stored, if it suits this request.
    fn collapsed_hit(&self, ctx: &Ctx, fwd: Fwd, carried: Option<Entry>) -> Option<Response<Body>> {
        let entry = match self.store.lookup(&ctx.key, &ctx.headers) {
            Lookup::Found(entry) => entry,
            // Not stored (refused by admission, or purged during the fetch, which the leader's
            // own client is answered with too): the fill still answers those who waited.
            _ => carried.filter(|e| e.variant().matches(&ctx.headers))?,
        };
        let (age, fresh) = entry.age_and_freshness(SystemTime::now());
        let Reuse::Fresh { ttl } =
            freshness::reuse(&fresh, age, &ctx.cc, entry.is_soft_purged(), false)
        else {
            return None;
        };
        self.metrics.answered(Outcome::Miss);
        let mut cs = CacheStatus::forward(fwd);
        cs.collapsed = true;
        cs.fwd_status = Some(entry.status().as_u16());
        cs.ttl = Some(ttl.as_secs() as i64);
        Some(deliver::entry(&entry, &ctx.method, &ctx.headers, cs, age))
    }

    /// fetch: ask the origin (conditionally when a validator is stored), then store and deliver.
    async fn fetch(
        self: &Arc<Self>,
        ctx: Ctx,
        stale: Option<Entry>,
        fwd: Fwd,
        client: SocketAddr,
        flight: Option<Flight>,
        lease: Option<Box<dyn FillLease>>,
    ) -> Response<Body> {
        let purge_seq = self.store.purge_seq();
        let request_time = SystemTime::now();
        let upstream_req = self.origin_request(&ctx, stale.as_ref(), Some(client));
        self.metrics.origin_requests.inc();
        let result = ctx.route.upstream.send(upstream_req).await;
        let response_time = SystemTime::now();
        let resp = match result {
            Ok(resp) => resp,
            Err(err) => {
                self.metrics
                    .upstream_errors
                    .get_or_create(&crate::metrics::KindLabel { kind: err.kind() })
                    .inc();
                tracing::warn!(upstream = %ctx.route.upstream.name, error = %err, "upstream request failed");
                if let Some(f) = flight {
                    f.finish(FlightOutcome::Failed(err.clone()));
                }
                if let Some(resp) = self.stale_on_error(&ctx, stale.as_ref()) {
                    return resp;
                }
                self.metrics.answered(Outcome::Miss);
                let mut cs = CacheStatus::forward(fwd);
                cs.detail = Some(err.kind());
                let msg = format!("upstream {:?}: {err}", ctx.route.upstream.name);
                return deliver::error(err.status(), &msg, Some(cs));
            }
        };
        let timing = Timing::new(request_time, response_time, resp.headers());
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            if let Some(old) = stale.as_ref() {
                return self.revalidated(ctx, old, resp, timing, purge_seq, fwd, flight);
            }
        }
        if status.is_server_error() {
            if let Some(resp) = self.stale_on_error(&ctx, stale.as_ref()) {
                if let Some(f) = flight {
                    f.finish(FlightOutcome::Failed(UpstreamError::Protocol(format!(
                        "status {status}"
                    ))));
                }
                return resp;
            }
        }
        self.store_and_deliver(ctx, resp, timing, purge_seq, fwd, flight, lease)
    }

    /// store: tee a storable response into the store while it streams to the client.
    #[allow(clippy::too_many_arguments)]
    fn store_and_deliver(
        self: &Arc<Self>,
        ctx: Ctx,
        resp: Response<UpstreamBody>,
        timing: Timing,
        purge_seq: u64,
        fwd: Fwd,
        flight: Option<Flight>,
        lease: Option<Box<dyn FillLease>>,
    ) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        hygiene::strip_hop_by_hop(&mut parts.headers);
        let status = parts.status;
        let resp_cc = ResponseDirectives::from_headers(&parts.headers);
        let policy = &ctx.route.policy;
        let facts = RequestFacts {
            method: &ctx.method,
            headers: &ctx.headers,
            directives: &ctx.cc,
        };
        let verdict = storability::check(&facts, status, &parts.headers, &resp_cc, policy);
        let tags = self.config.tags.parse(&parts.headers).tags;
        self.config.tags.strip(&mut parts.headers);
        let mut cs = CacheStatus::forward(fwd);
        cs.fwd_status = Some(status.as_u16());
        let expected = content_length(&parts.headers);
        let too_large = expected.is_some_and(|n| n > policy.max_object_size as u64);
        let storable = match verdict {
            Ok(()) if too_large => Err("too-large"),
            Ok(()) => Ok(()),
            Err(reason) => Err(reason.as_str()),
        };
        if let Err(reason) = storable {
            let request_specific = matches!(verdict, Err(r) if r.is_request_specific());
            self.not_storing(&ctx, reason, request_specific, flight);
            cs.detail = Some(reason);
            self.metrics.answered(Outcome::Miss);
            parts.headers.insert("cache-status", cs.to_header());
            return Response::from_parts(parts, Body::Upstream(body));
        }
        let freshness = Freshness::compute(status, &parts.headers, &resp_cc, &timing, policy);
        let mut stored_headers = parts.headers.clone();
        storability::strip_unshareable(&mut stored_headers, &resp_cc);
        let variant = Variant::of(&ctx.headers, &stored_headers, &policy.key_headers);
        cs.stored = true;
        cs.ttl = Some(freshness.ttl(timing.initial_age).as_secs() as i64);
        let fill = Fill {
            gateway: self.clone(),
            key: ctx.key.clone(),
            status,
            headers: stored_headers,
            timing,
            freshness,
            tags: tags.into_boxed_slice(),
            variant,
            purge_seq,
            policy: policy.clone(),
            flight,
            lease,
        };
        let body = FillBody::new(
            body,
            policy.max_object_size,
            expected,
            Some(ctx.route.upstream.timeouts.total),
            Box::new(move |end| fill.end(end)),
        );
        self.metrics.answered(Outcome::Miss);
        // The client already holds this representation: answer 304 and finish the fill in
        // the background.
        if status == StatusCode::OK && deliver::not_modified(&ctx.headers, &parts.headers) {
            let fill = Body::Fill(Box::new(body));
            tokio::spawn(async move {
                let _ = http_body_util::BodyExt::collect(fill).await;
            });
            return deliver::not_modified_response(&parts.headers, cs);
        }
        parts.headers.insert("cache-status", cs.to_header());
        Response::from_parts(parts, Body::Fill(Box::new(body)))
    }

    fn not_storing(
        &self,
        ctx: &Ctx,
        reason: &'static str,
        request_specific: bool,
        flight: Option<Flight>,
    ) {
        self.metrics
            .not_stored
            .get_or_create(&crate::metrics::KindLabel { kind: reason })
            .inc();
        // Request-specific reasons say nothing about this URL for the next request: neither
        // the stored response nor coalescing is affected (else any client could evict an
        // entry by sending `Authorization` or `Cache-Control: no-store`).
        if !request_specific {
            // What the origin says about this URL now supersedes what we stored before.
            self.store.remove(&ctx.key);
            self.uncacheable.insert(ctx.key.clone(), ());
        }
        if let Some(f) = flight {
            f.finish(FlightOutcome::Uncacheable);
        }
    }

    /// A 304 to our conditional request: freshen the stored response (§4.3.4) and serve it.
    #[allow(clippy::too_many_arguments)]
    fn revalidated(
        self: &Arc<Self>,
        ctx: Ctx,
        old: &Entry,
        resp: Response<UpstreamBody>,
        timing: Timing,
        purge_seq: u64,
        fwd: Fwd,
        flight: Option<Flight>,
    ) -> Response<Body> {
        let entry = self.freshen(
            &ctx.key,
            old,
            resp.headers(),
            timing,
            purge_seq,
            &ctx.route.policy,
        );
        if let Some(f) = flight {
            f.finish(FlightOutcome::Stored(Some(entry.clone())));
        }
        self.metrics.answered(Outcome::Revalidated);
        let age = entry.age(SystemTime::now());
        let mut cs = CacheStatus::forward(fwd);
        cs.fwd_status = Some(304);
        cs.stored = true;
        cs.ttl = Some(entry.freshness().ttl(age).as_secs() as i64);
        deliver::entry(&entry, &ctx.method, &ctx.headers, cs, age)
    }

    /// Merges a 304's headers into a stored response and stores the result (§3.2, §4.3.4).
    fn freshen(
        &self,
        key: &str,
        old: &Entry,
        update: &HeaderMap,
        timing: Timing,
        purge_seq: u64,
        policy: &CachePolicy,
    ) -> Entry {
        let mut headers = old.headers().to_map();
        let mut fresh = update.clone();
        hygiene::strip_hop_by_hop(&mut fresh);
        let parsed = self.config.tags.parse(&fresh);
        self.config.tags.strip(&mut fresh);
        fresh.remove(header::CONTENT_LENGTH);
        let mut replaced: Vec<HeaderName> = Vec::new();
        for (name, value) in fresh.iter() {
            if !replaced.contains(name) {
                headers.remove(name);
                replaced.push(name.clone());
            }
            headers.append(name.clone(), value.clone());
        }
        let cc = ResponseDirectives::from_headers(&headers);
        storability::strip_unshareable(&mut headers, &cc);
        let freshness = Freshness::compute(old.status(), &headers, &cc, &timing, policy);
        let tags: Vec<Tag> = if parsed.tags.is_empty() {
            old.tags().map(Tag::from).collect()
        } else {
            parsed.tags
        };
        let entry = Entry::new(
            key,
            old.status(),
            &headers,
            old.body_bytes(),
            timing,
            freshness,
            &tags,
            old.variant().clone(),
            purge_seq,
            policy.keep,
        );
        let entry = self.store.insert(entry, policy.max_variants);
        if let Some(tier) = self.shared.get() {
            tier.store(key, entry.clone(), None);
        }
        entry
    }

    /// §4.3.5: a HEAD response freshens the stored GET it validates (same strong ETag, or the
    /// same Last-Modified when neither has an ETag); one that contradicts it removes it.
    fn freshen_from_head(
        &self,
        key: &str,
        req: &HeaderMap,
        resp: &HeaderMap,
        timing: Timing,
        purge_seq: u64,
        policy: &CachePolicy,
    ) {
        let Lookup::Found(old) = self.store.lookup(key, req) else {
            return;
        };
        let strong = |v: &HeaderValue| !v.as_bytes().starts_with(b"W/");
        let same = match (old.etag(), resp.get(header::ETAG)) {
            (Some(a), Some(b)) => a == b && strong(&a),
            (None, None) => {
                old.last_modified().is_some()
                    && old.last_modified().as_ref() == resp.get(header::LAST_MODIFIED)
            }
            _ => false,
        };
        let length_differs = resp
            .get(header::CONTENT_LENGTH)
            .is_some_and(|l| l.as_bytes() != old.body_bytes().len().to_string().as_bytes());
        if same && !length_differs {
            self.freshen(key, &old, resp, timing, purge_seq, policy);
        } else if old.etag().is_some() || old.last_modified().is_some() || length_differs {
            self.store.remove(key);
        }
    }

    /// A stale response standing in for an upstream failure, when `stale-if-error` allows.
    fn stale_on_error(&self, ctx: &Ctx, stale: Option<&Entry>) -> Option<Response<Body>> {
        let entry = stale?;
        let (age, fresh) = entry.age_and_freshness(SystemTime::now());
        if !freshness::usable_on_error(&fresh, age, &ctx.cc) {
            return None;
        }
        self.metrics.answered(Outcome::Stale);
        let cs = stale_status(entry, age, "stale-if-error");
        Some(deliver::entry(entry, &ctx.method, &ctx.headers, cs, age))
    }

    /// Refreshes a stale entry in the background (stale-while-revalidate), once per key.
    fn refresh_in_background(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        route: &Arc<Route>,
        key: &Arc<str>,
        entry: &Entry,
    ) {
        let Role::Leader(flight) = self.flights.join(key.clone()) else {
            return; // a refresh or fetch is already under way
        };
        let ctx = Ctx {
            method: Method::GET,
            headers: req.headers().clone(),
            cc: RequestDirectives::default(),
            route: route.clone(),
            key: key.clone(),
        };
        let gateway = self.clone();
        let entry = entry.clone();
        tokio::spawn(async move { gateway.refresh(ctx, entry, flight).await });
    }

    async fn refresh(self: Arc<Self>, ctx: Ctx, old: Entry, flight: Flight) {
        let purge_seq = self.store.purge_seq();
        let request_time = SystemTime::now();
        let req = self.origin_request(&ctx, Some(&old), None);
        self.metrics.origin_requests.inc();
        let Ok(resp) = ctx.route.upstream.send(req).await else {
            return; // the stale entry stays; the next request tries again
        };
        let timing = Timing::new(request_time, SystemTime::now(), resp.headers());
        if resp.status() == StatusCode::NOT_MODIFIED {
            let entry = self.freshen(
                &ctx.key,
                &old,
                resp.headers(),
                timing,
                purge_seq,
                &ctx.route.policy,
            );
            flight.finish(FlightOutcome::Stored(Some(entry)));
            return;
        }
        if resp.status().is_server_error() {
            return;
        }
        // Drain the new response through the same tee a client request would use.
        let resp =
            self.store_and_deliver(ctx, resp, timing, purge_seq, Fwd::Stale, Some(flight), None);
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    }

    /// Builds the request sent upstream for a cacheable fetch.
    fn origin_request(
        &self,
        ctx: &Ctx,
        stale: Option<&Entry>,
        client: Option<SocketAddr>,
    ) -> Request<Body> {
        let mut headers = ctx.headers.clone();
        hygiene::strip_hop_by_hop(&mut headers);
        // We fetch the whole representation to store it, and answer the client's own
        // conditionals and ranges from it ourselves.
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(h);
        }
        if let Some(old) = stale {
            if let Some(etag) = old.etag() {
                headers.insert(header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = old.last_modified() {
                headers.insert(header::IF_MODIFIED_SINCE, lm);
            }
        }
        self.forward_headers(&mut headers, &ctx.route, client, http::Version::HTTP_11);
        let uri = request_path_uri(&ctx.key);
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req
    }

    fn forward_headers(
        &self,
        headers: &mut HeaderMap,
        route: &Route,
        client: Option<SocketAddr>,
        version: http::Version,
    ) {
        hygiene::add_via(headers, version);
        if let Some(c) = client {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let seen = Seen {
                client: c.ip(),
                host: &host,
                proto: "http",
                port: self.config.ingress.listen_port,
            };
            self.config.ingress.forwarding.set_forwarded(headers, &seen);
        } else {
            headers.remove(hygiene::KEY_CONTEXT);
        }
        match &self.config.host_header {
            HostHeader::Preserve => {}
            HostHeader::Upstream => {
                if let Ok(v) = HeaderValue::from_str(route.upstream.authority().as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
            HostHeader::Fixed(h) => {
                if let Ok(v) = HeaderValue::from_str(h) {
                    headers.insert(header::HOST, v);
                }
            }
        }
    }

    /// pass: forward a request the cache does not handle, streaming both bodies. A successful
    /// unsafe request invalidates what it may have changed (RFC 9111 §4.4).
    async fn pass(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: &Route,
        client: SocketAddr,
        after: AfterPass,
        why: Option<&'static str>,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let target = matches!(after, AfterPass::InvalidateWrite).then(|| {
            (
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                parts.uri.clone(),
            )
        });
        let head = match after {
            AfterPass::FreshenFromHead(key) => Some((
                key,
                parts.headers.clone(),
                self.store.purge_seq(),
                SystemTime::now(),
            )),
            _ => None,
        };
        hygiene::strip_hop_by_hop(&mut parts.headers);
        self.forward_headers(&mut parts.headers, route, Some(client), parts.version);
        // A body of unknown length (chunked, or HTTP/2 without Content-Length) is sent chunked:
        // left to itself the client would send a GET's body as no body at all.
        if !http_body::Body::is_end_stream(&body)
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let mut upstream_req = Request::from_parts(parts, Body::Incoming(body));
        *upstream_req.version_mut() = http::Version::HTTP_11;
        self.metrics.origin_requests.inc();
        let mut cs = CacheStatus::forward(Fwd::Bypass);
        cs.detail = why;
        let resp = match route.upstream.send(upstream_req).await {
            Ok(r) => r,
            Err(err) => {
                self.metrics.answered(Outcome::Bypass);
                cs.detail = Some(err.kind());
                let msg = format!("upstream {:?}: {err}", route.upstream.name);
                return deliver::error(err.status(), &msg, Some(cs));
            }
        };
        if let Some((Some(host), uri)) = target {
            let ok = resp.status().is_success() || resp.status().is_redirection();
            if ok {
                self.invalidate_after_write(&host, &uri, resp.headers(), route, client);
            }
        }
        if let Some((key, req_headers, purge_seq, request_time)) = head {
            if resp.status() == StatusCode::OK {
                let timing = Timing::new(request_time, SystemTime::now(), resp.headers());
                self.freshen_from_head(
                    &key,
                    &req_headers,
                    resp.headers(),
                    timing,
                    purge_seq,
                    &route.policy,
                );
            }
        }
        self.metrics.answered(Outcome::Bypass);
        let (mut parts, body) = resp.into_parts();
        hygiene::strip_hop_by_hop(&mut parts.headers);
        self.config.tags.strip(&mut parts.headers);
        cs.fwd_status = Some(parts.status.as_u16());
        parts.headers.insert("cache-status", cs.to_header());
        Response::from_parts(parts, Body::Upstream(body))
    }

    /// §4.4: the target URI, and `Location` / `Content-Location` on the same host.
    fn invalidate_after_write(
        &self,
        host: &str,
        uri: &http::Uri,
        resp: &HeaderMap,
        route: &Route,
        client: SocketAddr,
    ) {
        let mut urls = vec![self.url_selector(host, uri.path(), uri.query(), route)];
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(loc) = resp.get(h).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(loc) = loc.parse::<http::Uri>() else {
                continue;
            };
            let same_host = loc
                .authority()
                .is_none_or(|a| a.as_str().eq_ignore_ascii_case(host));
            if same_host && loc.path().starts_with('/') {
                urls.push(self.url_selector(host, loc.path(), loc.query(), route));
            }
        }
        urls.dedup();
        let selectors = Selectors {
            urls,
            ..Default::default()
        };
        self.sink.invalidate(
            selectors,
            false,
            Cause::UnsafeMethod,
            &client.ip().to_string(),
        );
    }

    /// The URL selector for a host and path, with the query normalised as the route keys it.
    fn url_selector(&self, host: &str, path: &str, query: Option<&str>, route: &Route) -> String {
        let key = primary_key(MethodClass::Get, host, path, query, &route.policy.query);
        format!("http://{}", &key[2..].replacen('|', "", 1))
    }

    /// `PURGE <path>`: every stored variant of the URL, for clients in `purge_allow` or
    /// holding the admin token.
    fn purge_method(
        &self,
        req: &Request<Incoming>,
        target: &Arrival,
        client: SocketAddr,
    ) -> Response<Body> {
        if !self.config.purge.permits(client.ip(), req.headers()) {
            tracing::warn!(client = %client.ip(), uri = %req.uri(), "PURGE refused");
            return deliver::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "PURGE is allowed from purge_allow addresses or with the admin token"}),
            );
        }
        let (host, path, query) = (&*target.host, &*target.path, target.query.as_deref());
        let url = match self.router.route(host, path) {
            Some(route) => self.url_selector(host, path, query, route),
            None => match query {
                Some(q) => format!("http://{host}{path}?{q}"),
                None => format!("http://{host}{path}"),
            },
        };
        let soft = req
            .headers()
            .get("soft-purge")
            .is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"));
        let selectors = Selectors {
            urls: vec![url],
            ..Default::default()
        };
        let report = self.sink.invalidate(
            selectors,
            soft,
            Cause::PurgeMethod,
            &client.ip().to_string(),
        );
        deliver::json(
            StatusCode::OK,
            &serde_json::json!({"purged": report.purged, "event": report.event}),
        )
    }
}

/// What the shared tier offered the coalescing leader (short-lived: not worth boxing).
#[allow(clippy::large_enum_variant)]
enum TierAnswer {
    /// Fresh for this request: the answer.
    Hit(Response<Body>),
    /// Found but not fresh for this request (stale, soft-purged): a validator to use.
    Stale(Entry),
    Miss,
    Unavailable,
}

/// What a passed-through request does once its response arrives.
enum AfterPass {
    Nothing,
    /// A successful unsafe request invalidates what it may have changed (§4.4).
    InvalidateWrite,
    /// A HEAD response may freshen the stored GET of this key (§4.3.5).
    FreshenFromHead(Arc<str>),
}

/// Completes a fill when its body ends: stores the entry and releases the waiters.
struct Fill {
    gateway: Arc<Gateway>,
    key: Arc<str>,
    status: StatusCode,
    headers: HeaderMap,
    timing: Timing,
    freshness: Freshness,
    tags: Box<[Tag]>,
    variant: Variant,
    purge_seq: u64,
    policy: Arc<CachePolicy>,
    flight: Option<Flight>,
    /// The cluster-wide fill lease, released once L2 holds the fill (or dropped on failure).
    lease: Option<Box<dyn FillLease>>,
}

impl Fill {
    fn end(self, end: FillEnd) {
        match end {
            FillEnd::Complete(body) => {
                let mut headers = self.headers;
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                let entry = Entry::new(
                    &self.key,
                    self.status,
                    &headers,
                    &body,
                    self.timing,
                    self.freshness,
                    &self.tags,
                    self.variant,
                    self.purge_seq,
                    self.policy.keep,
                );
                let entry = self.gateway.store.insert(entry, self.policy.max_variants);
                if let Some(f) = self.flight {
                    f.finish(FlightOutcome::Stored(Some(entry.clone())));
                }
                if let Some(tier) = self.gateway.shared.get() {
                    tier.store(&self.key, entry, self.lease);
                }
            }
            FillEnd::TooLarge => {
                let gateway = &self.gateway;
                gateway.store.remove(&self.key);
                gateway.uncacheable.insert(self.key.clone(), ());
                gateway
                    .metrics
                    .not_stored
                    .get_or_create(&crate::metrics::KindLabel { kind: "too-large" })
                    .inc();
                if let Some(f) = self.flight {
                    f.finish(FlightOutcome::Uncacheable);
                }
            }
            // Dropping `self` drops the flight, which releases the waiters to try again.
            FillEnd::Failed => {}
        }
    }
}

fn stale_status(entry: &Entry, age: Duration, detail: &'static str) -> CacheStatus {
    let mut cs = CacheStatus::hit(Duration::ZERO);
    cs.ttl = Some(entry.freshness().lifetime.as_secs() as i64 - age.as_secs() as i64);
    cs.detail = Some(detail);
    cs
}

fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The path and query to request upstream, recovered from a primary key.
fn request_path_uri(key: &str) -> http::Uri {
    let pq = corral_core::key::key_parts(key).map_or("/", |p| p.path_and_query);
    pq.parse().unwrap_or_else(|_| http::Uri::from_static("/"))
}
