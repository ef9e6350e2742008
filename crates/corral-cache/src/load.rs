//! Loading: single-flight loads (one load per key however many callers wait; errors are
//! shared, never cached), refresh-ahead and XFetch in the background, and installing a loaded
//! or written value unless an invalidation or a newer version got there first.

use super::*;

impl<K: Key, V: Clone + Send + Sync + 'static> Inner<K, V> {
    /// Starts a background reload of `key` unless one runs. True if one runs now.
    pub(crate) fn spawn_refresh(
        self: &Arc<Self>,
        key: &K,
        slot: &Arc<Slot<V>>,
        kind: &'static str,
    ) -> bool {
        let Some(loader) = self.loader.clone() else {
            return false;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if slot.refreshing.swap(true, Ordering::AcqRel) {
            return true;
        }
        self.metrics.kind(&self.metrics.family.refreshes, kind);
        let inner = self.clone();
        let key = key.clone();
        let slot = slot.clone();
        rt.spawn(async move {
            let born = inner.tick();
            let born_ms = now_ms();
            let start = Instant::now();
            match loader(key.clone()).await {
                Ok(v) => {
                    if inner.install(&key, v.clone(), born, start.elapsed(), None) {
                        if let Some(v) = &v {
                            inner.l2_put(&key, v, born_ms);
                        }
                    }
                }
                Err(e) => {
                    inner.metrics.refresh_errors.inc();
                    tracing::debug!(cache = %inner.namespace, error = %e, "background refresh failed; keeping the current value");
                }
            }
            slot.refreshing.store(false, Ordering::Release);
        });
        true
    }

    /// Stores a loaded value unless the entry was invalidated or rewritten since the load
    /// started. True if stored.
    pub(crate) fn install(
        &self,
        key: &K,
        value: Option<V>,
        born: u64,
        delta: Duration,
        life: Option<Duration>,
    ) -> bool {
        if value.is_none() && self.negative_ttl.is_none() {
            self.remove_if_older(key, born);
            return false;
        }
        if self.hard_clock.load(Ordering::Acquire) > born {
            return false;
        }
        let tags = value
            .as_ref()
            .map(|v| self.tags_for(key, v))
            .unwrap_or_default();
        let slot = self.slot_for(value, 0, born, delta, tags, life);
        if self.soft_clock.load(Ordering::Acquire) > born {
            slot.stale.store(true, Ordering::Release);
        }
        let r = self.store.entry(key.clone()).and_compute_with(|e| match e {
            Some(e) if e.value().born > born => Op::Nop,
            _ => Op::Put(slot),
        });
        self.update_gauges();
        matches!(
            r,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    pub(crate) fn remove_if_older(&self, key: &K, born: u64) {
        self.store.entry(key.clone()).and_compute_with(|e| match e {
            Some(e) if e.value().born < born => Op::Remove,
            _ => Op::Nop,
        });
    }

    pub(crate) fn insert_versioned(
        &self,
        key: K,
        value: V,
        version: u64,
        tags: Vec<String>,
    ) -> bool {
        let born = self.tick();
        let slot = self.slot(Some(value), version, born, Duration::ZERO, tags);
        let mut stored = false;
        self.store.entry(key.clone()).and_compute_with(|e| {
            let floor = self.versions.get(&key).unwrap_or(0);
            let current = e.map_or(0, |e| e.value().version);
            if version <= floor.max(current) {
                return Op::Nop;
            }
            self.versions.insert(key.clone(), version);
            stored = true;
            Op::Put(slot)
        });
        if !stored {
            self.metrics.version_rejected.inc();
        }
        self.update_gauges();
        stored
    }

    /// The single-flight load on core's [`Flights`]: one leader per key loads, the others
    /// share its outcome (errors too, never cached). `init` runs only if this caller leads.
    /// A leader dropped mid-load (its caller was cancelled) abandons its followers, and one of
    /// them leads the next round.
    pub(crate) async fn load<E: Send + Sync + 'static, Fut>(
        self: &Arc<Self>,
        key: &K,
        init: Fut,
    ) -> Result<Option<V>, Arc<E>>
    where
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let mut init = Some(init);
        loop {
            if let Found::Hit(v) = self.lookup(key) {
                return Ok(v);
            }
            match self.flights.join(key.clone()) {
                Role::Follower(follower) => {
                    self.metrics.coalesced.inc();
                    match follower.outcome().await {
                        Some(Ok(v)) => return Ok(v),
                        Some(Err(any)) => {
                            if let Ok(e) = any.downcast::<E>() {
                                return Err(e);
                            }
                            // Another error type (another call site): load ourselves.
                        }
                        None => {} // the leader was cancelled: try again
                    }
                }
                Role::Leader(leader) => {
                    // Already led once (a follower's error type did not match): the next
                    // round cannot load again, so it waits as a follower would.
                    let Some(init) = init.take() else {
                        drop(leader);
                        continue;
                    };
                    let result = self.lead(key, init).await;
                    let shared: Outcome<V> = match &result {
                        Ok(v) => Ok(v.clone()),
                        Err(e) => Err(e.clone()),
                    };
                    leader.finish(shared);
                    return result;
                }
            }
        }
    }

    /// The leader's load: the shared L2 first, then `init`; the value is installed unless an
    /// invalidation or a newer version got there first.
    async fn lead<E: Send + Sync + 'static>(
        &self,
        key: &K,
        init: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, Arc<E>> {
        let born = self.tick();
        let born_ms = now_ms();
        if let Some(tier) = &self.l2 {
            if let Some((v, life)) = tier.get(&self.namespace, self.l2_key(key)).await {
                let v = Some(v);
                self.install(key, v.clone(), born, Duration::ZERO, Some(life));
                return Ok(v);
            }
        }
        self.metrics.loads.inc();
        let start = Instant::now();
        match init.await {
            Ok(v) => {
                let installed = self.install(key, v.clone(), born, start.elapsed(), None);
                if let (true, Some(value)) = (installed, &v) {
                    self.l2_put(key, value, born_ms);
                }
                Ok(v)
            }
            Err(e) => {
                self.metrics.load_errors.inc();
                Err(Arc::new(e))
            }
        }
    }
}
