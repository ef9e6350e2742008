//! Upstream pools: a named upstream's discovered endpoints, how a request picks one
//! ([`balance`]), how the pool learns which are sick ([`health`]), and when a request is sent
//! again ([`retry`]).
//!
//! A cache hit never gets here: the pool is reached only by fetches and passes.
//!
//! Choosing an endpoint for a request (each retry excludes the endpoints already tried):
//! 1. the *usable* endpoints — healthy by active checks and not ejected — that discovery reports
//!    ready;
//! 2. else the usable ones discovery reports serving (terminating pods still answering);
//! 3. else, if no endpoint at all is usable, **panic mode**: every endpoint, because failing
//!    closed would turn a health-check mistake into an outage. Panic mode is logged when it
//!    starts and ends and shown in `corral_upstream_panic{upstream}`.
//!
//! Connections are pooled and kept alive per endpoint by the pool itself (`pool/idle.rs`,
//! made by `pool/conn.rs`): a stack of idle HTTP/1.1 connections, or one shared h2 connection,
//! per endpoint.
//! An `https` upstream connects with its [`UpstreamTls`](crate::tls::UpstreamTls): the same
//! connector serves requests and health checks, so both verify the same certificate under the
//! same name, and `h2` is used when the upstream agrees to it by ALPN.

pub mod balance;
mod conn;
mod endpoint;
pub mod health;
mod idle;
mod metrics;
pub mod retry;
mod upstream_body;
mod watchdog;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use parking_lot::RwLock;
use tokio::sync::watch;

pub use balance::Balance;
pub use endpoint::EndpointState;
pub use health::{HealthCheck, Outlier};
pub use metrics::PoolMetrics;
pub use retry::RetryPolicy;
pub use upstream_body::UpstreamBody;

use crate::body::Body;
use crate::upstream::{Timeouts, UpstreamError};
use endpoint::now_ms;
use metrics::UpstreamMetrics;

/// How an upstream behaves (everything but where its endpoints are).
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub timeouts: Timeouts,
    pub balance: Balance,
    pub retry: RetryPolicy,
    pub health: Option<HealthCheck>,
    pub outlier: Outlier,
    /// The configured `url`'s authority, sent as `Host` under `host_header = "upstream"`.
    pub host: Option<Authority>,
    /// `https://`: how to connect (else plain HTTP).
    pub tls: Option<crate::tls::UpstreamTls>,
    /// Which HTTP version the pool speaks to the upstream.
    pub protocol: Protocol,
    /// How idle connections are kept.
    pub keepalive: Keepalive,
}

/// How an upstream's idle connections are kept (`keepalive = { ... }`).
///
/// A connection goes back to the pool only when its response was read to its end; one whose
/// body was dropped early (client gone, too large to store and nobody reading, total timeout)
/// is closed, never reused, so no request can read the rest of another's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// An idle connection is closed after this long unused.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint; more are closed as they come back.
    pub max_idle_per_endpoint: usize,
    /// Requests a connection carries before it is closed (0 = no limit), like nginx's
    /// `keepalive_requests`: bounds what one connection's state can grow to on either side.
    pub max_requests: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 256,
            max_requests: 1000,
        }
    }
}

/// `[upstream] protocol`: the HTTP version spoken to an upstream. The one place it is decided
/// (the pool's connector, `pool/conn.rs`, reads nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 only (ALPN `http/1.1` over TLS).
    Http1,
    /// HTTP/2 only: ALPN `h2` over TLS, prior knowledge (h2c) over plain TCP. One connection
    /// per endpoint carries concurrent requests.
    H2,
    /// Over TLS, ALPN offers `h2` and `http/1.1` and the upstream chooses; plain HTTP is
    /// HTTP/1.1 (cleartext has no negotiation worth trusting).
    #[default]
    Auto,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "http1" => Some(Protocol::Http1),
            "h2" => Some(Protocol::H2),
            "auto" => Some(Protocol::Auto),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Auto => "auto",
        }
    }
}

impl UpstreamConfig {
    pub fn new(name: impl Into<String>) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            timeouts: Timeouts::default(),
            balance: Balance::RoundRobin,
            retry: RetryPolicy::default(),
            health: None,
            outlier: Outlier::default(),
            host: None,
            tls: None,
            protocol: Protocol::Auto,
            keepalive: Keepalive::default(),
        }
    }
}

/// One immutable endpoint set (replaced whole when discovery changes it).
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<EndpointState>>,
    ring: balance::Ring,
}

/// A named upstream: discovered endpoints, load balancing, health, retries, pooled
/// keep-alive connections.
pub struct Upstream {
    pub name: String,
    pub timeouts: Timeouts,
    config: UpstreamConfig,
    /// The discovery kind (`static`, `dns`, ...), for `/upstreams`.
    source: &'static str,
    discovery: Option<Arc<corral_discovery::Health>>,
    /// Shared with the idle-connection reaper, which ends when the upstream is dropped.
    set: Arc<RwLock<Arc<EndpointSet>>>,
    connector: conn::Connector,
    reaping: AtomicBool,
    turn: AtomicUsize,
    budget: retry::Budget,
    panic: AtomicBool,
    metrics: UpstreamMetrics,
    watchdog: Arc<watchdog::Watchdog>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream at fixed `bases` (`http://ip:port` each), round robin, no health checks:
    /// the shortcut for tests and `--upstream`. Needs no runtime.
    pub fn new(
        name: impl Into<String>,
        bases: &[Uri],
        timeouts: Timeouts,
    ) -> Result<Arc<Upstream>, String> {
        let mut endpoints = Vec::new();
        for base in bases {
            if base.scheme().is_some_and(|s| *s != Scheme::HTTP) {
                return Err(format!("{base}: only http:// is supported"));
            }
            let addr: SocketAddr = base
                .authority()
                .ok_or_else(|| format!("{base} has no host"))?
                .as_str()
                .parse()
                .map_err(|_| format!("{base}: expected an ip:port address"))?;
            endpoints.push(corral_discovery::Endpoint::new(addr));
        }
        if endpoints.is_empty() {
            return Err("an upstream needs at least one endpoint".into());
        }
        let mut config = UpstreamConfig::new(name);
        config.timeouts = timeouts;
        config.host = bases[0].authority().cloned();
        let up = Upstream::build(config, "static", None, &PoolMetrics::default());
        up.apply(&endpoints);
        Ok(Arc::new(up))
    }

    /// Starts an upstream following `endpoints`, with its active health checks. Must run
    /// inside a tokio runtime; the background tasks end when the upstream is dropped.
    pub fn start(
        config: UpstreamConfig,
        source: &'static str,
        discovery: Arc<corral_discovery::Health>,
        mut endpoints: watch::Receiver<Vec<corral_discovery::Endpoint>>,
        metrics: &PoolMetrics,
    ) -> Arc<Upstream> {
        let check = config.health.clone();
        let up = Arc::new(Upstream::build(config, source, Some(discovery), metrics));
        up.apply(&endpoints.borrow_and_update());
        let weak = Arc::downgrade(&up);
        tokio::spawn(async move {
            while endpoints.changed().await.is_ok() {
                let Some(up) = weak.upgrade() else { return };
                let set = endpoints.borrow_and_update().clone();
                up.apply(&set);
            }
        });
        if let Some(check) = check {
            tokio::spawn(health::run(Arc::downgrade(&up), check));
        }
        up
    }

    fn build(
        config: UpstreamConfig,
        source: &'static str,
        discovery: Option<Arc<corral_discovery::Health>>,
        metrics: &PoolMetrics,
    ) -> Upstream {
        let connector = conn::Connector::new(&config);
        if config.tls.as_ref().is_some_and(|t| t.insecure) {
            tracing::warn!(upstream = %config.name, "tls.insecure_skip_verify: the upstream's certificate is NOT verified");
        }
        Upstream {
            name: config.name.clone(),
            timeouts: config.timeouts,
            metrics: metrics.upstream(&config.name),
            config,
            source,
            discovery,
            set: Arc::default(),
            connector,
            reaping: AtomicBool::new(false),
            turn: AtomicUsize::new(0),
            budget: retry::Budget::default(),
            panic: AtomicBool::new(false),
            watchdog: Arc::default(),
        }
    }

    /// `https` for a TLS upstream, else `http`.
    pub fn scheme(&self) -> Scheme {
        if self.config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    /// Replaces the endpoint set, keeping the state of endpoints that stay. An empty set from
    /// discovery is applied (the service has no endpoints) — sources only publish one when it
    /// is an authoritative answer.
    fn apply(&self, discovered: &[corral_discovery::Endpoint]) {
        let old = self.snapshot();
        let endpoints: Vec<Arc<EndpointState>> = discovered
            .iter()
            .map(|d| match old.endpoints.iter().find(|e| e.addr == d.addr) {
                Some(e) if e.weight == d.weight && e.ready == d.ready && e.serving == d.serving => {
                    e.clone()
                }
                Some(e) => Arc::new(e.rediscovered(d)),
                None => Arc::new(EndpointState::new(d, self.metrics.endpoint(&d.addr))),
            })
            .collect();
        for gone in old
            .endpoints
            .iter()
            .filter(|e| !endpoints.iter().any(|n| n.addr == e.addr))
        {
            self.metrics.forget(&gone.addr);
        }
        self.metrics.endpoints.set(endpoints.len() as i64);
        let ring = if self.config.balance == Balance::ConsistentHash {
            balance::Ring::build(&endpoints)
        } else {
            balance::Ring::default()
        };
        *self.set.write() = Arc::new(EndpointSet { endpoints, ring });
    }

    /// Waits until discovery has found at least one endpoint, at most `timeout`.
    pub async fn wait_for_endpoints(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.snapshot().endpoints.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The current endpoint set.
    pub fn snapshot(&self) -> Arc<EndpointSet> {
        self.set.read().clone()
    }

    /// The `Host` sent under `host_header = "upstream"`: the configured URL's authority, else
    /// the first endpoint's address.
    pub fn authority(&self) -> Authority {
        if let Some(h) = &self.config.host {
            return h.clone();
        }
        self.snapshot()
            .endpoints
            .first()
            .map(|e| e.authority.clone())
            .unwrap_or_else(|| Authority::from_static("invalid"))
    }

    /// Picks an endpoint not in `tried`; `None` when there is none left to try.
    fn pick(&self, hash: u64, tried: &[SocketAddr]) -> Option<Arc<EndpointState>> {
        let set = self.snapshot();
        let now = now_ms();
        let fresh = |e: &&Arc<EndpointState>| !tried.contains(&e.addr);
        let tiers: [&dyn Fn(&EndpointState) -> bool; 2] =
            [&|e| e.ready && e.is_usable(now), &|e| {
                e.serving && e.is_usable(now)
            }];
        let mut candidates: Vec<&Arc<EndpointState>> = Vec::new();
        for tier in tiers {
            if set.endpoints.iter().any(|e| tier(e)) {
                candidates = set
                    .endpoints
                    .iter()
                    .filter(|e| tier(e))
                    .filter(fresh)
                    .collect();
                self.set_panic(false, set.endpoints.len());
                break;
            }
        }
        if candidates.is_empty() && !set.endpoints.iter().any(|e| e.serving && e.is_usable(now)) {
            // Nothing is usable: route to all rather than fail closed.
            if set.endpoints.is_empty() {
                return None;
            }
            self.set_panic(true, set.endpoints.len());
            self.metrics.panic_requests.inc();
            candidates = set.endpoints.iter().filter(fresh).collect();
        }
        if candidates.is_empty() {
            return None;
        }
        let i = match self.config.balance {
            Balance::RoundRobin => {
                // A retry does not take a turn: the failing endpoint's turns stay its own.
                let turn = if tried.is_empty() {
                    self.turn.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.turn.load(Ordering::Relaxed)
                };
                balance::round_robin(&candidates, turn)
            }
            Balance::LeastRequest => balance::least_request(&candidates),
            Balance::ConsistentHash => {
                let chosen = set.ring.pick(hash, |i| {
                    candidates.iter().any(|c| Arc::ptr_eq(c, &set.endpoints[i]))
                })?;
                return Some(set.endpoints[chosen].clone());
            }
        };
        Some(candidates[i].clone())
    }

    fn set_panic(&self, on: bool, endpoints: usize) {
        if self.panic.swap(on, Ordering::Relaxed) != on {
            self.metrics.panic.set(i64::from(on));
            if on {
                tracing::error!(upstream = %self.name, endpoints, "panic mode: every endpoint is unhealthy; routing to all of them");
            } else {
                tracing::info!(upstream = %self.name, "panic mode over: healthy endpoints are back");
            }
        }
    }

    /// Sends `req` (whose URI holds only a path and query) to an endpoint, retrying idempotent
    /// requests on another endpoint after connect errors and 502/503 (see [`retry`]).
    pub async fn send(&self, req: Request<Body>) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let hash = if self.config.balance == Balance::ConsistentHash {
            // The host without its port: gateways of a fleet may listen on different ports.
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map_or("", |h| crate::route::without_port(h));
            let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            balance::stable_hash(&[host.as_bytes(), pq.as_bytes()])
        } else {
            0
        };
        // Origin-form is what HTTP/1.1 sends (h2 adds scheme and authority per connection).
        if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
            let pq = parts.uri.path_and_query().cloned();
            parts.uri = Uri::from(pq.unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
        // A body we can send again: empty, or held in memory.
        let replay = match &body {
            Body::Empty => Some(None),
            Body::Full(b) => Some(b.clone()),
            Body::Incoming(b) if http_body::Body::is_end_stream(b) => Some(None),
            _ => None,
        };
        let retryable = retry::idempotent(&parts.method) && replay.is_some();
        let mut body = Some(body);
        let mut guard = self.budget.request();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let Some(mut ep) = self.pick(hash, &tried) else {
            return Err(UpstreamError::Unavailable(format!(
                "no endpoints ({} discovery has found none)",
                self.source
            )));
        };
        loop {
            tried.push(ep.addr);
            let body = match body.take() {
                Some(b) => b,
                None => match &replay {
                    Some(Some(b)) => Body::full(b.clone()),
                    _ => Body::empty(),
                },
            };
            // The head is moved into the last attempt there can be, cloned for the others.
            let last = !retryable || tried.len() as u32 > self.config.retry.retries;
            let mut req = Request::new(body);
            *req.method_mut() = parts.method.clone();
            if last {
                *req.headers_mut() = std::mem::take(&mut parts.headers);
                *req.uri_mut() = std::mem::take(&mut parts.uri);
            } else {
                *req.headers_mut() = parts.headers.clone();
                *req.uri_mut() = parts.uri.clone();
            }
            if !req.headers().contains_key(http::header::HOST) {
                let host = http::HeaderValue::from_str(ep.authority.as_str())
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                req.headers_mut().insert(http::header::HOST, host);
            }
            let result = self.send_to(&ep, req).await;
            let again = !last
                && match &result {
                    Ok(r) => retry::retry_status(r.status()),
                    Err(e) => matches!(
                        e,
                        UpstreamError::Connect(_)
                            | UpstreamError::Protocol(_)
                            | UpstreamError::Tls(_)
                    ),
                };
            if !again {
                return result;
            }
            // No endpoint left to try: this answer is the answer.
            let Some(next) = self.pick(hash, &tried) else {
                return result;
            };
            if !guard.try_retry(self.config.retry.budget) {
                self.metrics.budget_exhausted.inc();
                return result;
            }
            self.metrics.retries.inc();
            tracing::debug!(upstream = %self.name, from = %ep.addr, to = %next.addr, "retrying on another endpoint");
            ep = next;
        }
    }

    /// One attempt on one endpoint, recorded for passive health.
    async fn send_to(
        &self,
        ep: &Arc<EndpointState>,
        req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let in_flight = ep.start();
        let result = self.exchange(ep, req, Some(in_flight)).await;
        let failure = match &result {
            Ok(r) if r.status().is_server_error() => Some(format!("answered {}", r.status())),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        let eject = ep.passive(failure.is_some(), &self.config.outlier);
        if let Some(why) = failure {
            ep.metrics.failures.inc();
            ep.note_error(why.clone());
            if eject {
                self.eject(ep, why);
            }
        }
        result
    }

    /// Sends `req` to `ep` through the pool, within the first-byte timeout; the body carries
    /// the connection back to the pool when it is read to its end. Requests and health checks
    /// both come here.
    async fn exchange(
        &self,
        ep: &EndpointState,
        req: Request<Body>,
        in_flight: Option<endpoint::InFlight>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.start_reaper();
        let deadline = tokio::time::Instant::now() + self.timeouts.total;
        let sent = tokio::time::timeout(self.timeouts.first_byte, self.connector.send(ep, req));
        match sent.await {
            Err(_) => Err(UpstreamError::FirstByteTimeout(self.timeouts.first_byte)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((resp, lease))) => Ok(resp
                .map(|body| UpstreamBody::new(body, in_flight, lease, deadline, &self.watchdog))),
        }
    }

    /// Starts the idle-connection reaper once, from inside the runtime (`Upstream::new` may
    /// run outside one).
    fn start_reaper(&self) {
        if !self.reaping.load(Ordering::Relaxed) && !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(idle::reap(
                Arc::downgrade(&self.set),
                self.config.keepalive.idle_timeout,
            ));
        }
    }

    /// Ejects `ep` unless `max_ejected_percent` of the endpoints are ejected already.
    fn eject(&self, ep: &Arc<EndpointState>, why: String) {
        let o = &self.config.outlier;
        let now = now_ms();
        let set = self.snapshot();
        if ep.is_ejected(now) {
            return;
        }
        let ejected = set.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let allowed = (set.endpoints.len() * o.max_ejected_percent as usize / 100).max(1);
        if ejected + 1 > allowed {
            tracing::warn!(upstream = %self.name, endpoint = %ep.addr, ejected, "not ejecting: max_ejected_percent reached");
            return;
        }
        let time = ep.eject(o.ejection_time, o.max_ejection_time);
        tracing::warn!(upstream = %self.name, endpoint = %ep.addr, error = %why, ejected_for = ?time, "endpoint ejected (outlier detection)");
    }

    /// The upstream's entry in `GET /upstreams`.
    pub fn json(&self) -> serde_json::Value {
        let now = now_ms();
        let set = self.snapshot();
        serde_json::json!({
            "name": self.name,
            "source": self.source,
            "balance": self.config.balance.name(),
            "scheme": self.scheme().as_str(),
            "tls": self.config.tls.as_ref().map(|t| serde_json::json!({
                "server_name": format!("{:?}", t.server_name),
                "insecure_skip_verify": t.insecure,
                "http2": t.http2,
            })),
            "protocol": self.config.protocol.name(),
            "panic": self.panic.load(Ordering::Relaxed),
            "health_checks": self.config.health.as_ref().map(|h| serde_json::json!({
                "path": h.path,
                "interval_ms": h.interval.as_millis() as u64,
                "unhealthy_interval_ms": h.unhealthy_interval.as_millis() as u64,
                "healthy_after": h.healthy_after,
                "unhealthy_after": h.unhealthy_after,
            })),
            "discovery": self.discovery.as_ref().map(|d| d.json()),
            "endpoints": set.endpoints.iter().map(|e| e.json(self.source, now)).collect::<Vec<_>>(),
        })
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
