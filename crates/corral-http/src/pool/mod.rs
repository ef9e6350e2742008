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
//! Connections are pooled and kept alive per endpoint (hyper-util's pool, keyed by address).
//! An `https` upstream connects with its [`UpstreamTls`](crate::tls::UpstreamTls): the same
//! connector serves requests and health checks, so both verify the same certificate under the
//! same name, and `h2` is used when the upstream agrees to it by ALPN.

pub mod balance;
mod endpoint;
pub mod health;
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
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
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
/// is closed by hyper, never reused, so no request can read the rest of another's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// An idle connection is closed after this long unused.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint; more are closed as they come back.
    pub max_idle_per_endpoint: usize,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 256,
        }
    }
}

/// `[upstream] protocol`: the HTTP version spoken to an upstream. The one place it is decided
/// (the pool's client and connector read nothing else).
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
    set: RwLock<Arc<EndpointSet>>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
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
        let client = client(&config);
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
            set: RwLock::default(),
            client,
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
        let (parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let hash = if self.config.balance == Balance::ConsistentHash {
            // The host without its port: gateways of a fleet may listen on different ports.
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map_or("", |h| crate::route::without_port(h));
            balance::stable_hash(&[host.as_bytes(), pq.as_str().as_bytes()])
        } else {
            0
        };
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
            let mut req = Request::new(body);
            *req.method_mut() = parts.method.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            *req.uri_mut() = Uri::builder()
                .scheme(self.scheme())
                .authority(ep.authority.clone())
                .path_and_query(pq.clone())
                .build()
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            let result = self.send_to(&ep, req).await;
            let again = retryable
                && (tried.len() as u32) <= self.config.retry.retries
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
        let deadline = tokio::time::Instant::now() + self.timeouts.total;
        let result =
            match tokio::time::timeout(self.timeouts.first_byte, self.client.request(req)).await {
                Err(_) => Err(UpstreamError::FirstByteTimeout(self.timeouts.first_byte)),
                Ok(Err(e)) if crate::tls::classify_upstream_error(&e).is_some() => Err(
                    UpstreamError::Tls(crate::tls::classify_upstream_error(&e).expect("checked")),
                ),
                Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
                Ok(Err(e)) => Err(UpstreamError::Protocol(error_chain(&e))),
                Ok(Ok(r)) => {
                    Ok(r.map(|body| UpstreamBody::new(body, in_flight, deadline, &self.watchdog)))
                }
            };
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

/// The pool's client: keep-alive connections reused (an h2 connection carries concurrent
/// requests); requests and health checks both go through it.
fn client(config: &UpstreamConfig) -> Client<HttpsConnector<HttpConnector>, Body> {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(config.keepalive.idle_timeout)
        .pool_max_idle_per_host(config.keepalive.max_idle_per_endpoint)
        .timer(hyper_util::rt::TokioTimer::new())
        // Without a pool timer, hyper-util only notices an expired idle connection when it
        // is checked out again: idle_timeout would never close anything by itself.
        .pool_timer(hyper_util::rt::TokioTimer::new());
    if config.protocol == Protocol::H2 {
        // Prior knowledge over plain TCP; over TLS, ALPN offers h2 alone (see `connector`).
        b.http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(20));
    }
    b.build(connector(config))
}

/// The pool's connector: plain TCP, with TLS on top for an `https` upstream, offering by ALPN
/// what `protocol` allows.
fn connector(config: &UpstreamConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.timeouts.connect));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let tls = config
        .tls
        .clone()
        .unwrap_or_else(crate::tls::UpstreamTls::unused);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http()
        .with_server_name_resolver(FixedServerNameResolver::new(tls.server_name.clone()));
    match config.protocol {
        Protocol::H2 => builder.enable_http2().wrap_connector(http),
        Protocol::Auto => builder.enable_all_versions().wrap_connector(http),
        Protocol::Http1 => builder.enable_http1().wrap_connector(http),
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
