//! A shared Redis L2 under the in-process cache (cargo feature `redis`), with the same client,
//! call timeouts and circuit breaker as the gateway's Redis tier ([`corral_redis`]).
//!
//! Lookup order: L1 → L2 → loader. A miss in L1 is looked up in L2 by the single-flight leader
//! only (still one load per pod), an L2 hit fills L1 (for the entry's remaining L2 life at
//! most), and a value loaded from the source is written to L2 behind the caller's back (the
//! caller never waits for Redis) with the cache's TTL (capped by [`RedisL2Config::max_ttl`]).
//! Absences (negative caching) stay in L1.
//!
//! # Invalidations reach L2 in O(1)
//! Entries are stored with the wall-clock time their load started. An invalidation never scans
//! Redis: it raises one *mark* (a time in milliseconds, only ever raised) for the key, the tag,
//! or the whole namespace; covered entries stay hidden until their TTL removes them (or a new
//! load overwrites them). A read judges the entry it found against
//! the namespace's mark, its key's mark and its tags' marks: any mark at or after the entry's
//! load start hides it. Every pod writes the marks of every invalidation it applies (local or
//! from another pod), so marks are idempotent; while this process's marks are not yet written
//! (Redis slow or down), it does not read L2 at all. L2 has no soft state: a soft invalidation
//! drops the entry there (the pods holding it in L1 still serve it while they refresh).
//!
//! # Failure
//! Every call is bounded by [`RedisConfig::timeout`] and goes through the breaker (opens on
//! error rate, p99 latency or a run of failures; half-open probe). An error, a timeout, an open
//! breaker or a Redis that is not connected yet is a miss: the caller goes on to the loader at
//! once, and never sees an error because Redis is sick.
//!
//! # Layout
//! `{prefix}:lib{FORMAT}:e:{namespace}:v{schema}:{key}` holds one entry (JSON: load start,
//! expiry, tags, value); marks are `{prefix}:lib{FORMAT}:m:{namespace}:…` (`{namespace}`
//! is a Redis Cluster hash tag: one round trip reads a namespace's marks). The format version
//! and the cache's schema version are in every key, so a layout change orphans old entries.
//!
//! ```no_run
//! # async fn f() {
//! use corral_cache::{redis_l2::{RedisL2, RedisL2Config}, Cache};
//! let l2 = RedisL2::start(RedisL2Config::new("redis://10.0.0.5:6379"));
//! let prices: Cache<u64, u32> = Cache::builder("prices").redis_l2(&l2).build().unwrap();
//! let p = prices.get_with(7, async { 1_250 }).await; // L1, then Redis, then the loader
//! # }
//! ```

use std::collections::VecDeque;
use std::marker::PhantomData;

use corral_core::judge::{judge, Verdict, WallMs};
use corral_core::{Backoff, Mode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_redis::client::CallError;
use corral_redis::metrics::Label;
use corral_redis::redis;
use corral_redis::{Limiter, RedisClient, RedisMetrics};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::builder::CacheBuilder;
use crate::{now_ms, BoxFuture, Key, TierMark, ValueTier};

pub use corral_redis::breaker::State as BreakerState;
/// The connection settings, breaker tuning and target, re-exported from [`corral_redis`].
pub use corral_redis::{BreakerConfig, RedisConfig, Target};

/// The layout version of library entries and marks in Redis (part of every key).
pub const FORMAT: u32 = 1;

/// Marks queued while Redis cannot take them before they collapse into whole-namespace marks.
const MAX_PENDING: usize = 1000;

/// How a process reaches its Redis L2.
#[derive(Debug, Clone)]
pub struct RedisL2Config {
    /// The connection, its per-call timeout and the breaker (the gateway's rules).
    pub redis: RedisConfig,
    /// Key prefix (`corral` → `corral:lib1:…`). Use the gateway's, or another.
    pub prefix: String,
    /// No entry lives longer than this in L2 (marks live this long, plus a minute).
    pub max_ttl: Duration,
    /// Values whose encoded form is larger are not written to L2.
    pub max_value_size: usize,
    /// After Redis comes back, L2 writes are rate-limited (per second) for
    /// [`RedisL2Config::recovery`], so that every pod refilling at once is no second stampede.
    pub refill_rate: u32,
    pub recovery: Duration,
}

impl RedisL2Config {
    /// The gateway's defaults for one standalone Redis (`redis://host:port[/db]`,
    /// `rediss://` for TLS): 20 ms per call, the default breaker (10 s window, 10 % errors or
    /// p99 over 10 ms, 5 failures in a row; open 2 s, then one probe).
    pub fn new(url: &str) -> RedisL2Config {
        RedisL2Config::with_target(Target::Url(url.to_string()))
    }

    /// Same, for any [`Target`] (Redis Cluster seed nodes).
    pub fn with_target(target: Target) -> RedisL2Config {
        RedisL2Config {
            redis: RedisConfig {
                target,
                username: None,
                password: None,
                timeout: Duration::from_millis(20),
                connect_timeout: Duration::from_secs(1),
                connections: 2,
                tls_ca: None,
                breaker: BreakerConfig::default(),
            },
            prefix: "corral".into(),
            max_ttl: Duration::from_secs(24 * 3600),
            max_value_size: 1 << 20,
            refill_rate: 500,
            recovery: Duration::from_secs(30),
        }
    }
}

/// The library's L2 metrics (`corral_library_l2_*`).
#[derive(Debug, Clone)]
struct L2Metrics {
    lookups: Family<Label, Counter>,
    writes: Family<Label, Counter>,
    latency: Histogram,
}

/// A process's connection to its Redis L2, shared by every cache built with it (one breaker per
/// Redis). Cheap to clone. Its mark writer stops within seconds of the last clone and the last
/// cache using it being dropped.
#[derive(Clone)]
pub struct RedisL2 {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisL2")
            .field("prefix", &self.shared.prefix)
            .field("target", &self.shared.client.config().target)
            .finish_non_exhaustive()
    }
}

struct PendingMarks {
    namespace: String,
    marks: Vec<String>,
    at_ms: u64,
    id: u64,
}

struct Shared {
    client: Arc<RedisClient>,
    prefix: String,
    max_ttl: Duration,
    max_value_size: usize,
    pending: Mutex<VecDeque<PendingMarks>>,
    next_id: std::sync::atomic::AtomicU64,
    flush: Notify,
    metrics: L2Metrics,
}

/// Raises a mark to ARGV[1] unless it is already higher.
const RAISE: &str = "local c = redis.call('GET', KEYS[1]) \
if (not c) or tonumber(c) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 1";

impl RedisL2 {
    /// Starts the client (it connects in the background: until it is connected, lookups are
    /// misses and nothing waits) and the mark writer. Needs a Tokio runtime.
    pub fn start(config: RedisL2Config) -> RedisL2 {
        // The gateway-named metrics of the client stay private; the library's are registered by
        // [`RedisL2::register_metrics`].
        let redis_metrics =
            RedisMetrics::register(&mut prometheus_client::registry::Registry::default());
        let client = RedisClient::start(
            config.redis.clone(),
            redis_metrics,
            Limiter::new(
                config.refill_rate,
                config.recovery,
                Duration::from_millis(200),
            ),
        );
        let shared = Arc::new(Shared {
            client,
            prefix: format!("{}:lib{FORMAT}:", config.prefix),
            max_ttl: config.max_ttl.max(Duration::from_secs(1)),
            max_value_size: config.max_value_size,
            pending: Mutex::new(VecDeque::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            flush: Notify::new(),
            metrics: L2Metrics {
                lookups: Family::default(),
                writes: Family::default(),
                latency: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            },
        });
        tokio::spawn(flusher(Arc::downgrade(&shared)));
        RedisL2 { shared }
    }

    /// True once the client is connected (lookups before that are misses).
    pub fn is_connected(&self) -> bool {
        self.shared.client.is_connected()
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.client.breaker_state()
    }

    /// Invalidation marks not yet written to Redis (L2 is not read while any are).
    pub fn marks_pending(&self) -> usize {
        self.shared.pending.lock().len()
    }

    /// The versioned key prefix (`corral:lib1:`).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Registers `corral_library_l2_lookups_total{kind=hit|miss|skipped|error|stale}`,
    /// `corral_library_l2_writes_total{kind=stored|too_large|rate_limited|skipped|error}`,
    /// `corral_library_l2_latency_seconds`, `corral_library_l2_redis_calls_total{kind}`,
    /// `corral_library_l2_breaker_state` (0 closed, 1 open, 2 half-open),
    /// `corral_library_l2_breaker_transitions_total{kind}` and
    /// `corral_library_l2_marks_pending`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("corral_library_l2");
        let m = &self.shared.metrics;
        let rm = self.shared.client.metrics();
        r.register("lookups", "L2 (Redis) lookups by result", m.lookups.clone());
        r.register("writes", "L2 (Redis) writes by result", m.writes.clone());
        r.register(
            "latency_seconds",
            "L2 lookup latency, marks included",
            m.latency.clone(),
        );
        r.register("redis_calls", "Redis calls by result", rm.calls.clone());
        r.register(
            "breaker_state",
            "Redis circuit breaker: 0 closed, 1 open, 2 half-open",
            rm.breaker_state.clone(),
        );
        r.register(
            "breaker_transitions",
            "Redis circuit breaker transitions, by state entered",
            rm.breaker_transitions.clone(),
        );
        r.register(
            "marks_pending",
            "Invalidation marks not yet written to Redis",
            rm.marks_pending.clone(),
        );
    }

    /// The counter of lookups of this `kind` so far (hit, miss, skipped, error, stale).
    pub fn lookups(&self, kind: &'static str) -> u64 {
        self.shared
            .metrics
            .lookups
            .get_or_create(&Label { kind })
            .get()
    }

    /// The counter of writes of this `kind` so far (stored, too_large, rate_limited, skipped,
    /// error).
    pub fn writes(&self, kind: &'static str) -> u64 {
        self.shared
            .metrics
            .writes
            .get_or_create(&Label { kind })
            .get()
    }
}

impl<K: Key, V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> CacheBuilder<K, V> {
    /// Adds a shared Redis L2 under this cache (see [`crate::redis_l2`]). Values travel as JSON
    /// (serde), hence the bounds.
    pub fn redis_l2(mut self, l2: &RedisL2) -> Self {
        self.l2 = Some(Arc::new(Typed::<V> {
            shared: l2.shared.clone(),
            _p: PhantomData,
        }));
        self
    }
}

struct Typed<V> {
    shared: Arc<Shared>,
    _p: PhantomData<fn() -> V>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, V> {
    /// Load start, ms since the Unix epoch.
    b: u64,
    /// Expiry, ms since the Unix epoch.
    x: u64,
    t: &'a [String],
    v: &'a V,
}

#[derive(Deserialize)]
struct EnvelopeIn<V> {
    b: u64,
    x: u64,
    #[serde(default)]
    t: Vec<String>,
    v: V,
}

impl Shared {
    fn entry_key(&self, key: &str) -> String {
        format!("{}e:{key}", self.prefix)
    }

    fn mark_key(&self, namespace: &str, what: &str) -> String {
        format!("{}m:{{{namespace}}}:{what}", self.prefix)
    }

    fn mark_ttl_ms(&self) -> u64 {
        (self.max_ttl + Duration::from_secs(60)).as_millis() as u64
    }

    fn count(family: &Family<Label, Counter>, kind: &'static str) {
        family.get_or_create(&Label { kind }).inc();
    }

    async fn lookup<V: DeserializeOwned>(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<(V, Duration)>, CallError> {
        let ekey = self.entry_key(key);
        let escaped = key.rsplit(':').next().unwrap_or(key);
        let bytes: Option<Vec<u8>> = self.client.call(redis::cmd("GET").arg(&ekey)).await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let Ok(env) = serde_json::from_slice::<EnvelopeIn<V>>(&bytes) else {
            // Unreadable (another layout under the same key): absent; it expires by its TTL.
            return Ok(None);
        };
        if env.x <= now_ms() {
            return Ok(None);
        }
        // Every mark of the namespace is in one hash slot: one MGET, in a Redis Cluster too.
        let mut names = vec![
            self.mark_key(namespace, "all"),
            self.mark_key(namespace, &format!("k:{escaped}")),
        ];
        names.extend(
            env.t
                .iter()
                .map(|t| self.mark_key(namespace, &format!("t:{t}"))),
        );
        let marks: Vec<Option<u64>> = self.client.call(redis::cmd("MGET").arg(&names)).await?;
        // L2 has no soft state: every mark is hard, judged in wall-clock ms.
        let by_mark = marks
            .iter()
            .filter_map(|m| Some((Mode::Hard, WallMs((*m)?))));
        let dead = judge(WallMs(env.b), by_mark) == Verdict::Gone;
        if dead {
            Self::count(&self.metrics.lookups, "stale");
            return Ok(None);
        }
        let left = env.x.saturating_sub(now_ms());
        if left == 0 {
            return Ok(None);
        }
        Ok(Some((env.v, Duration::from_millis(left))))
    }
}

impl<V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> ValueTier<V> for Typed<V> {
    fn get(&self, namespace: &str, key: String) -> BoxFuture<Option<(V, Duration)>> {
        let shared = self.shared.clone();
        let namespace = namespace.to_string();
        Box::pin(async move {
            if !shared.pending.lock().is_empty() {
                // Our own invalidations are not in Redis yet: L2 might still show what they cover.
                Shared::count(&shared.metrics.lookups, "skipped");
                return None;
            }
            let start = Instant::now();
            let out = shared.lookup::<V>(&namespace, &key).await;
            shared
                .metrics
                .latency
                .observe(start.elapsed().as_secs_f64());
            let kind = match &out {
                Ok(Some(_)) => "hit",
                Ok(None) => "miss",
                Err(CallError::Refused) => "skipped",
                Err(_) => "error",
            };
            Shared::count(&shared.metrics.lookups, kind);
            out.ok().flatten()
        })
    }

    fn put(
        &self,
        _namespace: &str,
        key: String,
        value: &V,
        tags: Vec<String>,
        born_ms: u64,
        ttl: Duration,
    ) {
        let shared = &self.shared;
        let ttl = ttl.min(shared.max_ttl);
        let Ok(bytes) = serde_json::to_vec(&EnvelopeOut {
            b: born_ms,
            x: born_ms.saturating_add(ttl.as_millis() as u64),
            t: &tags,
            v: value,
        }) else {
            Shared::count(&shared.metrics.writes, "error");
            return;
        };
        if bytes.len() > shared.max_value_size {
            Shared::count(&shared.metrics.writes, "too_large");
            return;
        }
        let Some(delay) = shared.client.limiter.admit() else {
            Shared::count(&shared.metrics.writes, "rate_limited");
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = shared.clone();
        rt.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let left = (born_ms + ttl.as_millis() as u64).saturating_sub(now_ms());
            if left < 10 {
                return;
            }
            let r: Result<(), _> = shared
                .client
                .call(
                    redis::cmd("SET")
                        .arg(shared.entry_key(&key))
                        .arg(bytes)
                        .arg("PX")
                        .arg(left),
                )
                .await;
            let kind = match r {
                Ok(()) => "stored",
                Err(CallError::Refused) => "skipped",
                Err(_) => "error",
            };
            Shared::count(&shared.metrics.writes, kind);
        });
    }

    fn purge(&self, namespace: &str, mark: TierMark) {
        let shared = &self.shared;
        // A key's mark covers the entry of every schema version (entries expire by TTL).
        let mark = match mark {
            TierMark::All => shared.mark_key(namespace, "all"),
            TierMark::Tag(t) => shared.mark_key(namespace, &format!("t:{t}")),
            TierMark::Key(k) => shared.mark_key(namespace, &format!("k:{k}")),
        };
        let id = || {
            shared
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        let mut q = shared.pending.lock();
        if q.len() >= MAX_PENDING {
            // Too much to remember: one mark per namespace covers it all.
            let mut namespaces: Vec<String> = q.drain(..).map(|m| m.namespace).collect();
            namespaces.sort();
            namespaces.dedup();
            let at_ms = now_ms();
            for ns in namespaces {
                let all = shared.mark_key(&ns, "all");
                q.push_back(PendingMarks {
                    namespace: ns,
                    marks: vec![all],
                    at_ms,
                    id: id(),
                });
            }
        }
        q.push_back(PendingMarks {
            namespace: namespace.to_string(),
            marks: vec![mark],
            at_ms: now_ms(),
            id: id(),
        });
        shared.client.metrics().marks_pending.set(q.len() as i64);
        drop(q);
        shared.flush.notify_one();
    }
}

async fn flusher(shared: std::sync::Weak<Shared>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let Some(s) = shared.upgrade() else { return };
        let next = {
            let q = s.pending.lock();
            q.front().map(|m| (m.marks.clone(), m.at_ms, m.id))
        };
        let Some((marks, at, id)) = next else {
            // Wake up now and then to notice the last handle going away.
            let _ = tokio::time::timeout(Duration::from_secs(5), s.flush.notified()).await;
            continue;
        };
        let ttl = s.mark_ttl_ms();
        let mut p = redis::pipe();
        for m in &marks {
            p.cmd("EVAL")
                .arg(RAISE)
                .arg(1)
                .arg(m)
                .arg(at)
                .arg(ttl)
                .ignore();
        }
        match s.client.pipe::<()>(&p).await {
            Ok(()) => {
                let mut q = s.pending.lock();
                if q.front().is_some_and(|m| m.id == id) {
                    q.pop_front();
                }
                s.client.metrics().marks_pending.set(q.len() as i64);
                backoff.reset();
            }
            Err(e) => {
                tracing::debug!(error = %e, "L2 invalidation marks not written yet; retrying");
                drop(s);
                backoff.wait().await;
            }
        }
    }
}
