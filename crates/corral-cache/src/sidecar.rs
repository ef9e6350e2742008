//! Coherence through the local Corral sidecar, for pods that already run one.
//!
//! A [`Sidecar`] follows the sidecar's `GET /_corral/v1/subscribe` feed (server-sent events of
//! every invalidation the sidecar applies: its own, its peers', the bus's) and applies each to
//! the attached caches; and it sends the caches' own invalidations to the sidecar's
//! `POST /purge`, which broadcasts them to the cluster. The service then needs no cluster
//! secret, no discovery and no listener of its own.
//!
//! When the feed breaks (sidecar restart, lag), events may have been missed: on reconnecting,
//! and on a `reset` event, every attached cache is invalidated. TTL stays the safety net.
//!
//! ```no_run
//! # async fn f() {
//! use corral_cache::{sidecar::Sidecar, Cache};
//! let prices: Cache<u64, u32> = Cache::builder("prices").build().unwrap();
//! let sidecar = Sidecar::connect("http://127.0.0.1:9090", None);
//! sidecar.attach(&prices);
//! sidecar.wait_connected(std::time::Duration::from_secs(5)).await;
//! prices.invalidate(&7); // reaches every pod's `prices` cache through the cluster
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use corral_core::{InvalidationEvent, Selectors};
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::{Apply, Cache, Key, Publish};

/// A connection to the local Corral's invalidation feed. See the [module docs](self).
pub struct Sidecar {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    admin: String,
    token: Option<String>,
    client: reqwest::Client,
    caches: RwLock<Vec<Weak<dyn Apply>>>,
    connected: AtomicBool,
    connected_notify: Notify,
    applied: AtomicU64,
    reconnects: AtomicU64,
}

impl Sidecar {
    /// Follows the feed of the Corral whose admin listener is `admin_url`
    /// (`http://127.0.0.1:9090`). `token` is the admin bearer token, if one is configured
    /// (needed to publish). Reconnects with backoff until dropped.
    pub fn connect(admin_url: &str, token: Option<String>) -> Sidecar {
        let shared = Arc::new(Shared {
            admin: admin_url.trim_end_matches('/').to_string(),
            token,
            client: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client builds"),
            caches: RwLock::default(),
            connected: AtomicBool::new(false),
            connected_notify: Notify::new(),
            applied: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        let task = tokio::spawn(follow(shared.clone()));
        Sidecar { shared, task }
    }

    /// Applies the feed to `cache`, and publishes `cache`'s invalidations through the sidecar.
    pub fn attach<K: Key, V: Clone + Send + Sync + 'static>(&self, cache: &Cache<K, V>) {
        self.shared.caches.write().push(cache.applier());
        cache.attach_publisher(Arc::new(Publisher(Arc::downgrade(&self.shared))));
    }

    /// True while the feed is connected.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Waits until the feed is connected, at most `timeout`. True if connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.shared.connected_notify.notified();
            if self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return self.is_connected();
            }
        }
    }

    /// Events applied from the feed so far.
    pub fn applied(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn each(&self, f: impl Fn(&dyn Apply)) {
        for c in self.caches.read().iter() {
            if let Some(c) = c.upgrade() {
                f(&*c);
            }
        }
    }

    fn everything(&self) {
        let all = Selectors {
            all: true,
            ..Default::default()
        };
        self.each(|c| c.apply(&all, false));
    }
}

async fn follow(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let url = format!("{}/_corral/v1/subscribe", shared.admin);
        match shared
            .client
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await
        {
            Ok(mut resp) if resp.status().is_success() => {
                if !first {
                    // Events may have been missed while away.
                    shared.everything();
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                backoff = Duration::from_millis(100);
                shared.connected.store(true, Ordering::Release);
                shared.connected_notify.notify_waiters();
                let mut buf = String::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        handle_block(&shared, &block);
                    }
                }
                shared.connected.store(false, Ordering::Release);
                tracing::warn!(url, "invalidation feed closed; reconnecting");
            }
            Ok(resp) => {
                tracing::warn!(url, status = %resp.status(), "invalidation feed refused");
            }
            Err(e) => {
                tracing::debug!(url, error = %e, "invalidation feed unreachable");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One SSE event block: `event:` and `data:` lines.
fn handle_block(shared: &Shared, block: &str) {
    let mut event = "message";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    match event {
        "invalidation" => match serde_json::from_str::<InvalidationEvent>(&data) {
            Ok(e) => {
                shared.each(|c| c.apply(&e.selectors, e.soft));
                shared.applied.fetch_add(1, Ordering::AcqRel);
            }
            Err(err) => {
                tracing::warn!(error = %err, "unreadable invalidation on the feed; invalidating everything");
                shared.everything();
            }
        },
        "reset" => shared.everything(),
        _ => {}
    }
}

struct Publisher(Weak<Shared>);

impl Publish for Publisher {
    fn publish(&self, selectors: Selectors, soft: bool) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no Tokio runtime: invalidation not sent to the sidecar");
            return;
        };
        rt.spawn(async move {
            let body = serde_json::json!({
                "urls": selectors.urls,
                "tags": selectors.tags,
                "prefixes": selectors.prefixes,
                "all": selectors.all,
                "soft": soft,
            });
            let mut backoff = Duration::from_millis(50);
            for attempt in 0..5 {
                let mut req = shared
                    .client
                    .post(format!("{}/purge", shared.admin))
                    .timeout(Duration::from_secs(5))
                    .json(&body);
                if let Some(t) = &shared.token {
                    req = req.bearer_auth(t);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) if r.status().is_client_error() => {
                        tracing::error!(status = %r.status(), "the sidecar refused an invalidation");
                        return;
                    }
                    Ok(r) => tracing::warn!(status = %r.status(), attempt, "sidecar purge failed; retrying"),
                    Err(e) => tracing::warn!(error = %e, attempt, "sidecar purge failed; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            tracing::error!("invalidation not delivered to the sidecar; other pods rely on TTL");
        });
    }
}
