//! The cache verifier: staleness as an SLO.
//!
//! In the background, samples entries, reloads each through the builder's
//! [`loader`](crate::CacheBuilder::loader), and compares. An entry that differs from the source
//! has *drifted* (a missed invalidation, a write that bypassed the cache): it is invalidated
//! here, and counted. `corral_library_verifier_drift_ratio` is drifted / checked in the last
//! round: alert on it. The sample costs the source one read per sampled entry per round; size
//! it accordingly.

use std::time::Duration;

use rand::seq::IteratorRandom;

use crate::{Cache, Key, State};

/// One verification round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries compared with the source.
    pub checked: usize,
    /// Entries that differed, now invalidated.
    pub drifted: usize,
    /// Entries whose reload failed (left alone).
    pub errors: usize,
}

impl VerifyReport {
    /// drifted / checked (0 when nothing was checked).
    pub fn drift_ratio(&self) -> f64 {
        if self.checked == 0 {
            0.0
        } else {
            self.drifted as f64 / self.checked as f64
        }
    }
}

impl<K: Key, V: Clone + PartialEq + Send + Sync + 'static> Cache<K, V> {
    /// Compares up to `sample` random fresh entries with the source, invalidates (locally)
    /// those that drifted, and reports. Needs a [`loader`](crate::CacheBuilder::loader);
    /// without one it checks nothing.
    pub async fn verify_sample(&self, sample: usize) -> VerifyReport {
        let inner = &self.inner;
        let mut report = VerifyReport::default();
        let Some(loader) = inner.loader.clone() else {
            return report;
        };
        let fam = &inner.metrics.family;
        let label = &inner.metrics.label;
        let picked: Vec<(K, Option<V>, u64)> = inner
            .store
            .iter()
            .filter(|(_, s)| inner.state(s) == State::Fresh)
            .map(|(k, s)| ((*k).clone(), s.value.clone(), s.born))
            .choose_multiple(&mut rand::thread_rng(), sample);
        for (k, cached, born) in picked {
            match loader(k.clone()).await {
                Ok(source) => {
                    report.checked += 1;
                    // Rewritten meanwhile? Then there is nothing to judge.
                    let unchanged = inner.store.get(&k).is_some_and(|s| s.born == born);
                    if unchanged && source != cached {
                        report.drifted += 1;
                        // Counted before the entry goes: whoever sees the fixed value can also
                        // see that it was counted.
                        fam.verifier_drifted.get_or_create(label).inc();
                        tracing::warn!(cache = %inner.namespace, key = %k.encode(), "verifier: cached entry drifted from the source; invalidated");
                        inner.invalidate_key(&k, crate::Mode::Hard);
                    }
                }
                Err(e) => {
                    report.errors += 1;
                    tracing::debug!(cache = %inner.namespace, error = %e, "verifier: reload failed");
                }
            }
        }
        fam.verifier_checked
            .get_or_create(label)
            .inc_by(report.checked as u64);
        fam.verifier_drift_ratio
            .get_or_create(label)
            .set(report.drift_ratio());
        report
    }

    /// Runs [`Cache::verify_sample`] every `every` until the returned task is aborted.
    pub fn spawn_verifier(&self, every: Duration, sample: usize) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                cache.verify_sample(sample).await;
            }
        })
    }
}
