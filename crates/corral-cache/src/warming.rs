//! Warming: load a list of hot keys at start, staggered with jitter, and report ready only
//! after it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;

use crate::{Cache, Key};

/// How a warm-up ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmReport {
    pub loaded: usize,
    pub not_found: usize,
    pub failed: usize,
}

/// Warm-up pacing.
#[derive(Debug, Clone, Copy)]
pub struct Warm {
    /// Loads in flight at once (default 4).
    pub concurrency: usize,
    /// Each load waits a random delay in `0..=jitter` first, so N pods starting together do
    /// not hit the source in lockstep (default 50 ms).
    pub jitter: Duration,
}

impl Default for Warm {
    fn default() -> Self {
        Warm {
            concurrency: 4,
            jitter: Duration::from_millis(50),
        }
    }
}

impl<K: Key, V: Clone + Send + Sync + 'static> Cache<K, V> {
    /// Loads `keys` through the [`loader`](crate::CacheBuilder::loader) (single-flight, like
    /// any read). [`Cache::is_ready`] is false until it returns. Failures are counted, not
    /// fatal. Without a loader nothing is loaded.
    pub async fn warm(&self, keys: impl IntoIterator<Item = K>, pace: Warm) -> WarmReport {
        let inner = &self.inner;
        inner.warming.fetch_add(1, Ordering::AcqRel);
        struct Done<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _done = Done(&inner.warming);
        let mut report = WarmReport::default();
        if inner.loader.is_none() {
            return report;
        }
        let keys: Vec<K> = keys.into_iter().collect();
        let warmed = inner
            .metrics
            .family
            .warmed
            .get_or_create(&inner.metrics.label)
            .clone();
        for chunk in keys.chunks(pace.concurrency.max(1)) {
            let loads = chunk.iter().map(|k| {
                let cache = self.clone();
                let k = k.clone();
                let jitter = pace.jitter;
                async move {
                    if !jitter.is_zero() {
                        let d = rand::thread_rng().gen_range(Duration::ZERO..=jitter);
                        tokio::time::sleep(d).await;
                    }
                    cache.get_or_load(k).await
                }
            });
            for r in futures_util::future::join_all(loads).await {
                match r {
                    Ok(Some(_)) => {
                        report.loaded += 1;
                        warmed.inc();
                    }
                    Ok(None) => report.not_found += 1,
                    Err(_) => report.failed += 1,
                }
            }
        }
        report
    }
}
