//! Invalidation: by key, tag, prefix or everything, hard or soft, here and in every pod. The
//! public calls apply the invalidation here and publish it to every attached transport; events
//! from elsewhere arrive through [`Applier`] (`corral-core`'s one trait for that). Marks are
//! lazy: a lookup compares an entry's birth tick with the marks, so a tag purge is O(1)
//! whatever it covers.

use super::*;

impl<K: Key, V: Clone + Send + Sync + 'static> Cache<K, V> {
    /// Drops `key` here and in every pod.
    pub fn invalidate(&self, key: &K) {
        self.invalidate_key_inner(key, Mode::Hard);
    }

    /// Marks `key` stale here and in every pod: served while a reload runs (with a loader),
    /// else treated as a miss.
    pub fn soft_invalidate(&self, key: &K) {
        self.invalidate_key_inner(key, Mode::Soft);
    }

    pub(crate) fn invalidate_key_inner(&self, key: &K, mode: Mode) {
        self.inner.invalidate_key(key, mode);
        self.inner
            .publish(Purge::new(Selectors::default(), mode).url(self.wire_path(key)));
    }

    /// Drops every entry tagged `tag` here and in every pod. O(1): entries are checked on
    /// lookup.
    pub fn invalidate_tag(&self, tag: &str) {
        self.invalidate_tag_inner(tag, Mode::Hard);
    }

    /// Marks every entry tagged `tag` stale here and in every pod.
    pub fn soft_invalidate_tag(&self, tag: &str) {
        self.invalidate_tag_inner(tag, Mode::Soft);
    }

    fn invalidate_tag_inner(&self, tag: &str, mode: Mode) {
        self.inner.invalidate_tag(tag, mode);
        self.inner
            .publish(Purge::new(Selectors::default(), mode).tag(tag));
    }

    /// Bumps the namespace version here and in every pod: every entry of this cache is
    /// orphaned at once. Returns the new local version.
    pub fn bump_namespace(&self) -> u64 {
        self.inner.invalidate_all(Mode::Hard);
        self.inner
            .publish(Purge::hard().prefix(format!("/{}/", self.inner.namespace)));
        self.namespace_version()
    }

    /// Marks every entry of this cache stale, here and in every pod.
    pub fn soft_invalidate_all(&self) {
        self.inner.invalidate_all(Mode::Soft);
        self.inner
            .publish(Purge::soft().prefix(format!("/{}/", self.inner.namespace)));
    }

    /// Applies an invalidation locally only (what transports do with events from elsewhere).
    pub fn apply_local(&self, purge: &Purge) {
        self.inner.apply_purge(purge);
    }
}

impl<K: Key, V: Clone + Send + Sync + 'static> Inner<K, V> {
    pub(crate) fn invalidate_key(&self, key: &K, mode: Mode) {
        let now = self.tick();
        if mode.is_soft() {
            self.soft_clock.fetch_max(now, Ordering::AcqRel);
            if let Some(s) = self.store.get(key) {
                s.stale.store(true, Ordering::Release);
            }
            self.metrics
                .kind(&self.metrics.family.invalidations, "key_soft");
        } else {
            self.hard_clock.fetch_max(now, Ordering::AcqRel);
            self.store.invalidate(key);
            self.metrics.kind(&self.metrics.family.invalidations, "key");
        }
        // The shared tier has no soft state: a soft invalidation drops the key there.
        self.l2_purge(TierMark::Key(key::escape(&key.encode())));
        self.update_gauges();
    }

    fn invalidate_tag(&self, tag: &str, mode: Mode) {
        let now = self.tick();
        let mut marks = self.tag_marks.write();
        let at = Instant::now();
        let m = marks.entry(Arc::from(tag)).or_insert(Mark {
            hard: 0,
            soft: 0,
            at,
        });
        match mode {
            Mode::Hard => m.hard = now,
            Mode::Soft => m.soft = now,
        }
        m.at = at;
        self.l2_purge(TierMark::Tag(tag.to_string()));
        if marks.len() > MARKS_PRUNE_AT {
            // Every entry a mark older than the TTL could cover has expired.
            let ttl = self.ttl;
            marks.retain(|_, m| m.at.elapsed() < ttl);
        }
        self.metrics.kind(
            &self.metrics.family.invalidations,
            match mode {
                Mode::Hard => "tag",
                Mode::Soft => "tag_soft",
            },
        );
    }

    fn invalidate_all(&self, mode: Mode) {
        self.l2_purge(TierMark::All);
        self.invalidate_all_here(mode);
    }

    /// Invalidates every entry of this process only (not the shared tier).
    fn invalidate_all_here(&self, mode: Mode) {
        let now = self.tick();
        if mode.is_soft() {
            self.soft_all.fetch_max(now, Ordering::AcqRel);
            self.metrics
                .kind(&self.metrics.family.invalidations, "all_soft");
        } else {
            self.hard_clock.fetch_max(now, Ordering::AcqRel);
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.store.invalidate_all();
            self.tag_marks.write().clear();
            self.metrics.kind(&self.metrics.family.invalidations, "all");
        }
        self.update_gauges();
    }

    fn invalidate_key_prefix(&self, prefix: &str, mode: Mode) {
        let now = self.tick();
        if mode.is_soft() {
            self.soft_clock.fetch_max(now, Ordering::AcqRel);
        } else {
            self.hard_clock.fetch_max(now, Ordering::AcqRel);
        }
        // Marks in the shared tier name keys, not prefixes: the whole namespace goes there.
        self.l2_purge(TierMark::All);
        for (k, s) in self.store.iter() {
            if key::escape(&k.encode()).starts_with(prefix) {
                if mode.is_soft() {
                    s.stale.store(true, Ordering::Release);
                } else {
                    self.store.invalidate(&*k);
                }
            }
        }
        self.metrics
            .kind(&self.metrics.family.invalidations, "prefix");
        self.update_gauges();
    }

    pub(crate) fn publish(&self, purge: Purge) {
        for p in self.publishers.read().iter() {
            p.publish(purge.clone());
        }
    }

    /// Applies a purge made elsewhere to this cache, never re-published: a URL counts when it
    /// names a key of this namespace (`/{namespace}/{key}`), a prefix when it covers the
    /// namespace or keys in it.
    fn apply_purge(&self, purge: &Purge) {
        let (s, mode) = (&purge.selectors, purge.mode);
        if s.all {
            self.invalidate_all(mode);
            return;
        }
        let own = format!("/{}/", self.namespace);
        for u in &s.urls {
            let Some(rest) = u.strip_prefix(&own) else {
                continue;
            };
            let rest = rest.split('?').next().unwrap_or(rest);
            if let Some(k) = key::unescape(rest).and_then(|t| K::decode(&t)) {
                self.invalidate_key(&k, mode);
            }
        }
        for t in &s.tags {
            self.invalidate_tag(t, mode);
        }
        for p in &s.prefixes {
            if own.starts_with(p.as_str()) {
                self.invalidate_all(mode);
            } else if let Some(rest) = p.strip_prefix(&own) {
                self.invalidate_key_prefix(rest, mode);
            }
        }
    }
}

impl<K: Key, V: Clone + Send + Sync + 'static> Applier for Inner<K, V> {
    fn apply_remote(&self, event: &corral_core::InvalidationEvent) {
        self.apply_purge(&event.purge);
    }

    /// Unlike an `all` event it does not reach a shared L2: the pods that applied the missed
    /// events wrote their marks there.
    fn purge_everything(&self, _reason: &str) {
        self.invalidate_all_here(Mode::Hard);
    }
}
