'use strict';
// What every adapter shares: which keys carry which tags, how a feed event maps to this
// cache's entries (the same mapping as corral-cache, docs/library.md), and single-flight
// getOrSet. Subclasses store values (`_get`, `_set`, `_del`, `_clear`).

const { escapeKey, unescapeKey, urlPath } = require('./keys.cjs');

const TAGGED = Symbol.for('corral.tagged');

/** Marks a value with tags for `set`: `cache.set(key, tagged(value, ['price-7']), ttl)`. */
function tagged(value, tags) {
  return { [TAGGED]: true, value, tags: Array.from(tags || []) };
}

function untag(v) {
  return v && v[TAGGED] === true ? [v.value, v.tags] : [v, null];
}

class Tracker {
  /**
   * @param {object} o
   * @param {string} [o.namespace] keys travel as `/{namespace}/{key}`; without one, only tag
   *   and purge-everything events reach this cache
   * @param {(key: string, value: unknown) => string[]} [o.tagsOf] tags for values set without `tagged()`
   */
  constructor(o = {}) {
    if (o.namespace !== undefined && (typeof o.namespace !== 'string' || !o.namespace || o.namespace.includes('/'))) {
      throw new TypeError('namespace must be a non-empty string without "/"');
    }
    this.namespace = o.namespace;
    this._tagsOf = o.tagsOf;
    this._keyTags = new Map(); // key → { tags, expires }
    this._byTag = new Map(); // tag → Set<key>
    this._flights = new Map(); // key → { promise, tags, dirty }
    this._subscription = null;
    this.stats = { applied: 0, deleted: 0, flushed: 0, loads: 0, coalesced: 0 };
    this._sweep = setInterval(() => this._sweepExpired(), 30000);
    this._sweep.unref();
  }

  _attached(sub) {
    this._subscription = sub;
  }

  /** Records `key`'s tags (replacing earlier ones); `ttl` in ms bounds how long. */
  _record(key, tags, ttl) {
    this._forget(key);
    const list = tags && tags.length ? Array.from(new Set(tags)) : [];
    this._keyTags.set(key, { tags: list, expires: ttl > 0 ? Date.now() + ttl : Infinity });
    for (const t of list) {
      let set = this._byTag.get(t);
      if (!set) this._byTag.set(t, (set = new Set()));
      set.add(key);
    }
  }

  _forget(key) {
    const old = this._keyTags.get(key);
    if (!old) return;
    this._keyTags.delete(key);
    for (const t of old.tags) {
      const set = this._byTag.get(t);
      if (set) {
        set.delete(key);
        if (!set.size) this._byTag.delete(t);
      }
    }
  }

  _sweepExpired() {
    const now = Date.now();
    for (const [k, v] of this._keyTags) if (v.expires <= now) this._forget(k);
  }

  /** Tags recorded for `key`. */
  tagsOf(key) {
    return this._keyTags.get(key)?.tags || [];
  }

  _prepare(key, value) {
    const [v, tags] = untag(value);
    return [v, tags || (this._tagsOf ? Array.from(this._tagsOf(key, v) || []) : [])];
  }

  /** Applies one feed event to this cache (soft events drop entries too: these caches keep no stale state). */
  apply(event) {
    const s = event.selectors || {};
    this.stats.applied++;
    if (s.all) return this.flush('all');
    const root = this.namespace ? `/${this.namespace}/` : null;
    const gone = new Set();
    for (const u of s.urls || []) {
      if (!root) continue;
      const path = urlPath(u);
      if (path.startsWith(root)) {
        const k = unescapeKey(path.slice(root.length));
        if (k !== null) gone.add(k);
      }
    }
    for (const p of s.prefixes || []) {
      if ((root || '/').startsWith(p)) return this.flush(`prefix ${p}`);
      if (root && p.startsWith(root)) {
        const escaped = p.slice(root.length);
        for (const k of this._keyTags.keys()) if (escapeKey(k).startsWith(escaped)) gone.add(k);
        for (const [k, f] of this._flights) if (escapeKey(k).startsWith(escaped)) f.dirty = true;
      }
    }
    for (const t of s.tags || []) {
      for (const k of this._byTag.get(t) || []) gone.add(k);
      for (const f of this._flights.values()) {
        if (typeof f.tags === 'function' || (f.tags || []).includes(t)) f.dirty = true;
      }
    }
    for (const k of gone) {
      const f = this._flights.get(k);
      if (f) f.dirty = true;
      this._forget(k);
      this.stats.deleted++;
      this._swallow(this._del(k));
    }
  }

  /** Drops every entry (a gap, a purge of everything). */
  flush() {
    this.stats.flushed++;
    for (const f of this._flights.values()) f.dirty = true;
    this._keyTags.clear();
    this._byTag.clear();
    this._swallow(this._clear());
  }

  _swallow(p) {
    if (p && typeof p.catch === 'function') p.catch(() => {});
  }

  /**
   * The cached value, or the loader's: concurrent callers of a missing key share one load. A
   * load that an invalidation of its key (or tags, or everything) overtook returns its value
   * but does not cache it: it may have read the data before the write.
   * @param {{ttl?: number, tags?: string[] | ((value: unknown) => string[])}} [opts]
   */
  async getOrSet(key, loader, opts = {}) {
    const hit = await this._get(key);
    if (hit !== undefined && hit !== null) return hit;
    const running = this._flights.get(key);
    if (running) {
      this.stats.coalesced++;
      return running.promise;
    }
    const flight = { tags: opts.tags, dirty: false, promise: null };
    this._flights.set(key, flight);
    this.stats.loads++;
    flight.promise = (async () => {
      try {
        const value = await loader(key);
        if (!flight.dirty && value !== undefined && value !== null) {
          const tags = typeof opts.tags === 'function' ? opts.tags(value) : opts.tags;
          await this.set(key, tags ? tagged(value, tags) : value, opts.ttl);
        }
        return value;
      } finally {
        this._flights.delete(key);
      }
    })();
    return flight.promise;
  }

  /** Drops `keys` here at once and in every pod through Corral; resolves with the acknowledgement. */
  async invalidate(keys, opts = {}) {
    const list = Array.isArray(keys) ? keys : [keys];
    if (!this.namespace) throw new TypeError('invalidate: keys need the cache\'s namespace');
    for (const k of list) this.apply({ selectors: { urls: [`/${this.namespace}/${escapeKey(k)}`] } });
    return this._publish({ keys: list, ...opts });
  }

  /** Drops the entries tagged `tags` here at once and in every pod through Corral. */
  async invalidateTags(tags, opts = {}) {
    const list = Array.isArray(tags) ? tags : [tags];
    this.apply({ selectors: { tags: list } });
    return this._publish({ tags: list, ...opts });
  }

  _publish(selectors) {
    if (!this._subscription) throw new Error('invalidate: attach this cache to a subscription first');
    return this._subscription.purge({ namespace: this.namespace, ...selectors });
  }

  /** Stops the background sweep of expired tag records. */
  close() {
    clearInterval(this._sweep);
  }
}

module.exports = { Tracker, tagged, untag, TAGGED };
