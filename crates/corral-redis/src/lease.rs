//! The cluster-wide fill lease: on a miss, a replica takes a short lease in Redis
//! (`SET lease NX PX`) before going to the origin. The others wait for the L2 fill, woken by a
//! Redis pub/sub message the holder publishes when it has written L2 (or given up), with a
//! slow re-check as a safety net (never a tight loop), up to a bound; if the holder died, its
//! lease expires and one of the waiters takes over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_core::key::KeyRef;
use corral_core::Backoff;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::Value;
use tokio::sync::Notify;

use crate::client::RedisClient;
use crate::metrics::RedisMetrics;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The lease's life in Redis: a holder that dies frees it after this.
    pub ttl: Duration,
    /// How long a replica waits for another's fill before fetching itself.
    pub wait: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(5),
            wait: Duration::from_secs(3),
        }
    }
}

/// What [`Leases::acquire`] ended with.
pub enum Acquired {
    /// This replica holds the lease: fetch, then hand the guard to the L2 write.
    Held(LeaseGuard),
    /// Another replica's fill finished (or it gave up): look in L2 again.
    Filled,
    /// No lease (Redis unavailable, or the wait bound passed): fetch without one.
    Proceed,
}

/// Deletes only our own lease.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// The lease service of one replica.
pub struct Leases {
    client: Arc<RedisClient>,
    config: LeaseConfig,
    prefix: String,
    channel: String,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A held lease. Dropping it releases it (in the background) and wakes the waiters.
pub struct LeaseGuard {
    leases: Arc<Leases>,
    key: String,
    token: String,
    released: bool,
}

impl LeaseGuard {
    /// Releases the lease and tells the waiters the fill is done.
    pub async fn release(mut self) {
        self.released = true;
        self.leases.release(&self.key, &self.token).await;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (leases, key, token) = (self.leases.clone(), self.key.clone(), self.token.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { leases.release(&key, &token).await });
        }
    }
}

impl Leases {
    /// Starts the lease service and its subscription to fill notifications.
    pub fn start(client: Arc<RedisClient>, prefix: &str, config: LeaseConfig) -> Arc<Leases> {
        let l = Arc::new(Leases {
            client,
            config,
            prefix: prefix.to_string(),
            channel: format!("{prefix}fills"),
            waiters: Mutex::new(HashMap::new()),
        });
        tokio::spawn(l.clone().subscribe());
        l
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}lease:{key}", self.prefix)
    }

    fn metrics(&self) -> &RedisMetrics {
        self.client.metrics()
    }

    /// Takes the lease for `key`, or waits for its holder's fill.
    pub async fn acquire(self: &Arc<Self>, key: KeyRef<'_>) -> Acquired {
        let key = key.as_str();
        let lkey = self.lease_key(key);
        let token = format!("{:x}", rand::random::<u64>());
        let notify = self
            .waiters
            .lock()
            .entry(key.to_string())
            .or_default()
            .clone();
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let taken: Result<Value, _> = self
            .client
            .call(
                redis::cmd("SET")
                    .arg(&lkey)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.config.ttl.as_millis() as u64),
            )
            .await;
        let out = match taken {
            Ok(Value::Okay) | Ok(Value::SimpleString(_)) => {
                RedisMetrics::inc(&self.metrics().leases, "acquired");
                Acquired::Held(LeaseGuard {
                    leases: self.clone(),
                    key: key.to_string(),
                    token,
                    released: false,
                })
            }
            Ok(_) => self.wait(&lkey, notified).await,
            Err(_) => {
                RedisMetrics::inc(&self.metrics().leases, "unavailable");
                Acquired::Proceed
            }
        };
        self.forget_waiter(key, &notify);
        out
    }

    async fn wait(
        &self,
        lkey: &str,
        mut notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Acquired {
        RedisMetrics::inc(&self.metrics().leases, "waited");
        let start = Instant::now();
        let deadline = start + self.config.wait;
        let mut recheck = Duration::from_millis(50);
        let out = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                RedisMetrics::inc(&self.metrics().leases, "timeout");
                break Acquired::Proceed;
            }
            tokio::select! {
                () = &mut notified => {
                    RedisMetrics::inc(&self.metrics().leases, "filled");
                    break Acquired::Filled;
                }
                () = tokio::time::sleep(recheck.min(left)) => {}
            }
            recheck = (recheck * 2).min(Duration::from_millis(500));
            // The safety net: the holder may have died (its lease expired) or its message
            // may have been lost.
            match self
                .client
                .call::<bool>(redis::cmd("EXISTS").arg(lkey))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Gone without a word: its holder died and the lease expired (or the
                    // message was lost). Look in L2, then take the lease over.
                    RedisMetrics::inc(&self.metrics().leases, "takeover");
                    break Acquired::Filled;
                }
                Err(_) => {
                    RedisMetrics::inc(&self.metrics().leases, "unavailable");
                    break Acquired::Proceed;
                }
            }
        };
        self.metrics()
            .lease_wait
            .observe(start.elapsed().as_secs_f64());
        out
    }

    fn forget_waiter(&self, key: &str, notify: &Arc<Notify>) {
        let mut w = self.waiters.lock();
        // Only the map and this caller hold it: nobody else waits on this key.
        if Arc::strong_count(notify) <= 2 {
            w.remove(key);
        }
    }

    async fn release(&self, key: &str, token: &str) {
        let mut p = redis::pipe();
        p.cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(self.lease_key(key))
            .arg(token)
            .ignore();
        let _: Result<(), _> = self.client.pipe(&p).await;
        let _: Result<Value, _> = self
            .client
            .call(redis::cmd("PUBLISH").arg(&self.channel).arg(key))
            .await;
    }

    /// Follows fill notifications (a dedicated pub/sub connection; in a Redis Cluster,
    /// PUBLISH reaches subscribers on every node).
    async fn subscribe(self: Arc<Self>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        loop {
            match self.subscribe_once().await {
                Ok(()) => backoff.reset(),
                Err(e) => tracing::debug!(error = %e, "fill notifications: reconnecting"),
            }
            // Anyone waiting re-checks by itself meanwhile.
            backoff.wait().await;
        }
    }

    async fn subscribe_once(&self) -> redis::RedisResult<()> {
        let client = self.client.node_client()?;
        let mut ps = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "timed out")))??;
        ps.subscribe(&self.channel).await?;
        let mut stream = ps.on_message();
        while let Some(msg) = stream.next().await {
            let Ok(key) = msg.get_payload::<String>() else {
                continue;
            };
            let n = self.waiters.lock().get(&key).cloned();
            if let Some(n) = n {
                n.notify_waiters();
            }
        }
        Ok(())
    }
}
