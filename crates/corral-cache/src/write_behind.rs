//! Write-behind: writes land in the cache at once and reach the source later, in batches.
//!
//! **Not durable.** Queued writes live in this process's memory only: a crash, a `kill -9` or
//! a flusher that keeps failing loses them. Use it for data you can afford to lose or rebuild
//! (counters, last-seen timestamps, view statistics), never for money or orders; use
//! [`Cache::write_through`](crate::Cache::write_through) for those.
//!
//! The queue is bounded: [`WriteBehind::write`] waits for room when it is full (back-pressure),
//! [`WriteBehind::try_write`] refuses. A flusher task sends batches of at most `batch` writes
//! every `flush_interval` (sooner when a batch is full), retries a failed batch with backoff,
//! and after the last retry drops it and counts it in `corral_library_write_behind_failed`.
//! [`WriteBehind::shutdown`] flushes everything queued before it returns. Depth and the age of
//! the oldest queued write are metrics.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use corral_cache::{write_behind::WriteBehind, Cache};
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! let views: Cache<String, u64> = Cache::builder("views").max_entries(1000).build().unwrap();
//! let db = Arc::new(Mutex::new(Vec::new()));
//! let sink = db.clone();
//! let wb = WriteBehind::builder()
//!     .capacity(1000)
//!     .batch(100)
//!     .flush_interval(Duration::from_millis(50))
//!     .build(views.clone(), move |batch: Vec<(String, u64)>| {
//!         let sink = sink.clone();
//!         async move { sink.lock().unwrap().extend(batch); Ok::<_, std::io::Error>(()) }
//!     });
//! wb.write("home".to_string(), 42).await.unwrap();
//! assert_eq!(views.get(&"home".to_string()), Some(42)); // readable at once
//! wb.shutdown().await;                                 // flushes what is queued
//! assert_eq!(db.lock().unwrap().len(), 1);
//! # });
//! ```

use corral_core::Backoff;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use tokio::sync::{Notify, Semaphore};

use crate::{BoxError, BoxFuture, Cache, Key};

/// The queued writes; `done` once the flusher has exited (nothing more would be flushed).
struct Queue<K, V> {
    items: VecDeque<(K, V, Instant)>,
    done: bool,
}

type Flusher<K, V> = Arc<dyn Fn(Vec<(K, V)>) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the write-behind queue is full")]
    Full,
    #[error("the write-behind queue is shut down")]
    Closed,
}

/// Settings for [`WriteBehind`].
#[derive(Debug, Clone)]
pub struct WriteBehindBuilder {
    capacity: usize,
    batch: usize,
    flush_interval: Duration,
    retries: u32,
    backoff: Duration,
}

impl WriteBehindBuilder {
    /// Most writes queued at once (default 10,000).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }
    /// Most writes per flush call (default 500).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }
    /// Longest a write waits before its batch is flushed (default 1 s).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d.max(Duration::from_millis(1));
        self
    }
    /// Retries of a failed batch before it is dropped (default 3), the first after `backoff`
    /// (default 100 ms), doubling.
    pub fn retries(mut self, n: u32, backoff: Duration) -> Self {
        self.retries = n;
        self.backoff = backoff;
        self
    }

    /// Starts the flusher task (needs a Tokio runtime). `flush` writes one batch to the source.
    pub fn build<K, V, F, Fut, E>(self, cache: Cache<K, V>, flush: F) -> WriteBehind<K, V>
    where
        K: Key,
        V: Clone + Send + Sync + 'static,
        F: Fn(Vec<(K, V)>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let m = &cache.inner.metrics;
        let label = m.label.clone();
        let fam = &m.family;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                done: false,
            }),
            space: Semaphore::new(self.capacity),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            depth: fam.write_behind_depth.get_or_create(&label).clone(),
            oldest: fam
                .write_behind_oldest_seconds
                .get_or_create(&label)
                .clone(),
            flushed: fam.write_behind_flushed.get_or_create(&label).clone(),
            failed: fam.write_behind_failed.get_or_create(&label).clone(),
        });
        let flusher: Flusher<K, V> = Arc::new(move |b| {
            let fut = flush(b);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        let task = tokio::spawn(run(shared.clone(), flusher, self.clone()));
        WriteBehind {
            cache,
            shared,
            task: Mutex::new(Some(task)),
        }
    }
}

struct Shared<K, V> {
    queue: Mutex<Queue<K, V>>,
    space: Semaphore,
    wake: Notify,
    closing: AtomicBool,
    depth: Gauge,
    oldest: Gauge<f64, AtomicU64>,
    flushed: Counter,
    failed: Counter,
}

impl<K, V> Shared<K, V> {
    fn update(&self, q: &VecDeque<(K, V, Instant)>) {
        self.depth.set(q.len() as i64);
        self.oldest
            .set(q.front().map_or(0.0, |(_, _, t)| t.elapsed().as_secs_f64()));
    }
}

/// A write-behind queue in front of a [`Cache`]. See the [module docs](self).
pub struct WriteBehind<K, V> {
    cache: Cache<K, V>,
    shared: Arc<Shared<K, V>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WriteBehind<(), ()> {
    /// Settings, with defaults.
    pub fn builder() -> WriteBehindBuilder {
        WriteBehindBuilder {
            capacity: 10_000,
            batch: 500,
            flush_interval: Duration::from_secs(1),
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

impl<K: Key, V: Clone + Send + Sync + 'static> WriteBehind<K, V> {
    /// Stores `value` in the cache at once and queues it for the source; waits for room
    /// when the queue is full.
    pub async fn write(&self, key: K, value: V) -> Result<(), WriteError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        let permit = self
            .shared
            .space
            .acquire()
            .await
            .map_err(|_| WriteError::Closed)?;
        permit.forget();
        self.enqueue(key, value)
    }

    /// Like [`WriteBehind::write`], but refuses at once when the queue is full.
    pub fn try_write(&self, key: K, value: V) -> Result<(), WriteError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        match self.shared.space.try_acquire() {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(WriteError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(WriteError::Full),
        }
        self.enqueue(key, value)
    }

    fn enqueue(&self, key: K, value: V) -> Result<(), WriteError> {
        let mut q = self.shared.queue.lock();
        if q.done {
            // Raced with shutdown: the flusher is gone, so the write is refused, not lost.
            return Err(WriteError::Closed);
        }
        self.cache.insert(key.clone(), value.clone());
        q.items.push_back((key, value, Instant::now()));
        self.shared.update(&q.items);
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Writes queued and not yet flushed.
    pub fn depth(&self) -> usize {
        self.shared.queue.lock().items.len()
    }

    /// Stops accepting writes, flushes everything queued (with the usual retries), and
    /// returns when done.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.shared.space.close();
    }
}

async fn run<K, V>(shared: Arc<Shared<K, V>>, flusher: Flusher<K, V>, cfg: WriteBehindBuilder)
where
    K: Key,
    V: Clone + Send + Sync + 'static,
{
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        if !closing {
            // Wait for the interval, or less when a full batch is ready.
            let deadline = tokio::time::Instant::now() + cfg.flush_interval;
            loop {
                if shared.queue.lock().items.len() >= cfg.batch
                    || shared.closing.load(Ordering::Acquire)
                {
                    break;
                }
                if tokio::time::timeout_at(deadline, shared.wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        loop {
            let batch: Vec<(K, V)> = {
                let mut q = shared.queue.lock();
                let n = q.items.len().min(cfg.batch);
                let b = q.items.drain(..n).map(|(k, v, _)| (k, v)).collect();
                shared.update(&q.items);
                b
            };
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let mut attempt = 0;
            let mut backoff = Backoff::new(cfg.backoff, cfg.backoff * 64);
            loop {
                match flusher(batch.clone()).await {
                    Ok(()) => {
                        shared.flushed.inc_by(n as u64);
                        break;
                    }
                    Err(e) if attempt < cfg.retries => {
                        tracing::warn!(error = %e, attempt, "write-behind flush failed; retrying");
                        backoff.wait().await;
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, writes = n, "write-behind flush failed after every retry; writes dropped");
                        shared.failed.inc_by(n as u64);
                        break;
                    }
                }
            }
            shared.space.add_permits(n);
            if shared.queue.lock().items.len() < cfg.batch
                && !shared.closing.load(Ordering::Acquire)
            {
                break;
            }
        }
        if shared.closing.load(Ordering::Acquire) {
            let mut q = shared.queue.lock();
            if q.items.is_empty() {
                q.done = true;
                return;
            }
        }
    }
}
