//! The Redis client: a standalone server or a Redis Cluster, a few multiplexed connections,
//! a tight timeout on every call, and the [`Breaker`] in front of it all.
//!
//! The client never blocks start-up: it connects in the background and refuses calls (at once,
//! without waiting) until connected. A refused or failed call is an error the caller treats as
//! a miss; nothing on a request's path ever waits longer than the call timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_core::Backoff;
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, IntoConnectionInfo, Pipeline};

use crate::breaker::{Breaker, BreakerConfig, Permit, State, Transition};
use crate::limiter::Limiter;
use crate::metrics::RedisMetrics;

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// One server: `redis://host:port[/db]` or `rediss://` (TLS).
    Url(String),
    /// Redis Cluster seed nodes.
    Nodes(Vec<String>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Url(u) => write!(f, "{}", redact(u)),
            Target::Nodes(n) => {
                let n: Vec<String> = n.iter().map(|u| redact(u)).collect();
                write!(f, "{n:?}")
            }
        }
    }
}

/// A URL with any password replaced by `***`, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Connection settings.
#[derive(Clone)]
pub struct RedisConfig {
    pub target: Target,
    pub username: Option<String>,
    /// Never logged (see the `Debug` impl).
    pub password: Option<String>,
    /// Every call's bound, start to answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Multiplexed connections (standalone), used round-robin.
    pub connections: usize,
    /// PEM root certificate(s) that `rediss://` servers are verified against, instead of the
    /// system's trust store.
    pub tls_ca: Option<Vec<u8>>,
    pub breaker: BreakerConfig,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &self.target)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connections", &self.connections)
            .field("tls_ca", &self.tls_ca.is_some())
            .finish()
    }
}

/// Why a call gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("refused: the breaker is open or Redis is not connected")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(String),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The shared client.
pub struct RedisClient {
    config: RedisConfig,
    conns: RwLock<Vec<Conn>>,
    next: AtomicUsize,
    breaker: Breaker,
    metrics: RedisMetrics,
    /// Rate-limits L2 re-fills after a recovery.
    pub limiter: Limiter,
}

impl RedisClient {
    /// A client that connects in the background.
    pub fn start(config: RedisConfig, metrics: RedisMetrics, limiter: Limiter) -> Arc<RedisClient> {
        let c = Arc::new(RedisClient {
            breaker: Breaker::new(config.breaker.clone()),
            config,
            conns: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            metrics,
            limiter,
        });
        tokio::spawn(c.clone().connect_loop());
        c
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    pub fn metrics(&self) -> &RedisMetrics {
        &self.metrics
    }

    pub fn breaker_state(&self) -> State {
        self.breaker.state()
    }

    pub fn is_connected(&self) -> bool {
        !self.conns.read().is_empty()
    }

    /// A client for one node (the URL, or the first cluster node), with credentials and TLS.
    pub fn node_client(&self) -> redis::RedisResult<redis::Client> {
        let url = match &self.config.target {
            Target::Url(u) => u.clone(),
            Target::Nodes(n) => n.first().cloned().unwrap_or_default(),
        };
        open_client(&url, &self.config)
    }

    async fn connect_loop(self: Arc<Self>) {
        // Jittered, so that replicas that lost Redis together do not reconnect in lockstep.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut warned = false;
        loop {
            match self.connect().await {
                Ok(conns) => {
                    *self.conns.write() = conns;
                    tracing::info!(target = ?self.config.target, "connected to Redis");
                    return;
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(target = ?self.config.target, error = %e, "cannot connect to Redis yet; the tier stays off until it can (retrying quietly)");
                }
                Err(e) => {
                    tracing::debug!(target = ?self.config.target, error = %e, "cannot connect to Redis yet");
                }
            }
            backoff.wait().await;
        }
    }

    async fn connect(&self) -> redis::RedisResult<Vec<Conn>> {
        let timeout = self.config.timeout;
        match &self.config.target {
            Target::Url(url) => {
                let client = open_client(url, &self.config)?;
                let mut out = Vec::new();
                for _ in 0..self.config.connections.max(1) {
                    let cfg = ConnectionManagerConfig::new()
                        .set_connection_timeout(self.config.connect_timeout)
                        .set_response_timeout(timeout)
                        .set_number_of_retries(1)
                        .set_max_delay(500);
                    let m = tokio::time::timeout(
                        self.config.connect_timeout * 2,
                        client.get_connection_manager_with_config(cfg),
                    )
                    .await
                    .map_err(|_| {
                        redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out"))
                    })??;
                    out.push(Conn::Single(m));
                }
                Ok(out)
            }
            Target::Nodes(nodes) => {
                let mut infos = Vec::new();
                for n in nodes {
                    infos.push(with_auth(n, &self.config)?);
                }
                let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(self.config.connect_timeout)
                    .response_timeout(timeout)
                    .retries(1);
                if let Some(ca) = &self.config.tls_ca {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    });
                }
                let client = builder.build()?;
                let c = tokio::time::timeout(
                    self.config.connect_timeout * 4,
                    client.get_async_connection(),
                )
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out"))
                })??;
                Ok(vec![Conn::Cluster(c)])
            }
        }
    }

    fn pick(&self) -> Option<Conn> {
        let conns = self.conns.read();
        if conns.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        Some(conns[i].clone())
    }

    /// Runs one command under the breaker and the call timeout.
    pub async fn call<T: FromRedisValue + Send>(&self, cmd: &Cmd) -> Result<T, CallError> {
        self.guarded(|conn| async move {
            match conn {
                Conn::Single(mut c) => cmd.query_async(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        })
        .await
    }

    /// Runs a pipeline under the breaker and the call timeout.
    pub async fn pipe<T: FromRedisValue + Send>(&self, p: &Pipeline) -> Result<T, CallError> {
        self.guarded(|conn| async move {
            match conn {
                Conn::Single(mut c) => p.query_async(&mut c).await,
                Conn::Cluster(mut c) => p.query_async(&mut c).await,
            }
        })
        .await
    }

    async fn guarded<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (permit, t) = self.breaker.allow();
        self.transition(t);
        let Some(permit) = permit else {
            RedisMetrics::inc(&self.metrics.calls, "refused");
            return Err(CallError::Refused);
        };
        let Some(conn) = self.pick() else {
            if permit == Permit::Probe {
                self.breaker.release_probe();
            }
            RedisMetrics::inc(&self.metrics.calls, "refused");
            return Err(CallError::Refused);
        };
        let start = Instant::now();
        let result = tokio::time::timeout(self.config.timeout, f(conn)).await;
        let elapsed = start.elapsed();
        let (out, ok, kind) = match result {
            Ok(Ok(v)) => (Ok(v), true, "ok"),
            Ok(Err(e)) => {
                // A server-side answer error (wrong type, script error) is our bug, not
                // Redis being sick: it does not count against the breaker.
                let sick = e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::BusyLoadingError
                            | redis::ErrorKind::TryAgain
                            | redis::ErrorKind::ClusterDown
                            | redis::ErrorKind::MasterDown
                    );
                (Err(CallError::Redis(e.to_string())), !sick, "error")
            }
            Err(_) => (Err(CallError::Timeout), false, "timeout"),
        };
        RedisMetrics::inc(&self.metrics.calls, kind);
        let t = self.breaker.record(permit, ok, elapsed);
        self.transition(t);
        out
    }

    fn transition(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        self.metrics.breaker_state.set(t.to.as_gauge());
        RedisMetrics::inc(&self.metrics.breaker_transitions, t.to.as_str());
        match t.to {
            State::Open => tracing::warn!(
                from = t.from.as_str(),
                "Redis breaker open: the tier is bypassed"
            ),
            State::HalfOpen => tracing::info!("Redis breaker half-open: probing"),
            State::Closed => {
                tracing::info!(
                    "Redis breaker closed: the tier is back (re-fills rate-limited for a while)"
                );
                self.limiter.start_recovery();
            }
        }
    }
}

/// A client for `url` with the configured credentials and, for `rediss://`, the configured
/// root certificates.
pub fn open_client(url: &str, cfg: &RedisConfig) -> redis::RedisResult<redis::Client> {
    let info = with_auth(url, cfg)?;
    match &cfg.tls_ca {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => redis::Client::open(info),
    }
}

/// The connection info of `url` with the configured credentials (which win over the URL's).
pub fn with_auth(url: &str, cfg: &RedisConfig) -> redis::RedisResult<redis::ConnectionInfo> {
    let mut info = url.into_connection_info()?;
    if let Some(p) = &cfg.password {
        info.redis.password = Some(p.clone());
    }
    if let Some(u) = &cfg.username {
        info.redis.username = Some(u.clone());
    }
    Ok(info)
}
