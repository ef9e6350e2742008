//! Loading: single-flight loads (one load per key however many callers wait; errors are
//! shared, never cached), refresh-ahead and XFetch in the background, and installing a loaded
//! or written value unless an invalidation or a newer version got there first.

use super::*;

struct FlightGuard<'a, K: Key, V> {
    inner: &'a Inner<K, V>,
    key: &'a K,
}

impl<K: Key, V> Drop for FlightGuard<'_, K, V> {
    fn drop(&mut self) {
        self.inner.flights.lock().remove(self.key);
    }
}

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

    /// The single-flight load. `init` runs only if this caller leads the load.
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
            let joined = {
                let mut flights = self.flights.lock();
                match flights.get(key) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(key.clone(), rx);
                        Ok(tx)
                    }
                }
            };
            match joined {
                Err(mut rx) => {
                    self.metrics.coalesced.inc();
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(v) => v.clone(),
                        Err(_) => None, // the leader was cancelled: try again
                    };
                    match outcome {
                        Some(Ok(v)) => return Ok(v),
                        Some(Err(any)) => {
                            if let Ok(e) = any.downcast::<E>() {
                                return Err(e);
                            }
                            // Another error type (another call site): load ourselves.
                        }
                        None => {}
                    }
                }
                Ok(tx) => {
                    let guard = FlightGuard { inner: self, key };
                    let Some(init) = init.take() else {
                        drop(guard);
                        continue;
                    };
                    let born = self.tick();
                    let born_ms = now_ms();
                    if let Some(tier) = &self.l2 {
                        if let Some((v, life)) = tier.get(&self.namespace, self.l2_key(key)).await {
                            let v = Some(v);
                            self.install(key, v.clone(), born, Duration::ZERO, Some(life));
                            drop(guard);
                            let _ = tx.send(Some(Ok(v.clone())));
                            return Ok(v);
                        }
                    }
                    self.metrics.loads.inc();
                    let start = Instant::now();
                    let result = init.await;
                    match result {
                        Ok(v) => {
                            let installed =
                                self.install(key, v.clone(), born, start.elapsed(), None);
                            if let (true, Some(value)) = (installed, &v) {
                                self.l2_put(key, value, born_ms);
                            }
                            drop(guard);
                            let _ = tx.send(Some(Ok(v.clone())));
                            return Ok(v);
                        }
                        Err(e) => {
                            self.metrics.load_errors.inc();
                            let e = Arc::new(e);
                            drop(guard);
                            let any: Arc<dyn Any + Send + Sync> = e.clone();
                            let _ = tx.send(Some(Err(any)));
                            return Err(e);
                        }
                    }
                }
            }
        }
    }
}
