'use strict';
// A cache-manager (v6/v7, keyv-based) cache that follows the feed: `set` records tags (from
// `tagged(value, tags)` or the `tagsOf` option), feed events delete the entries they name, a
// gap clears the cache. Every other method is the wrapped cache's own, so existing code (and
// @nestjs/cache-manager's CacheInterceptor) keeps working unchanged.

const { Tracker } = require('./tracker.cjs');

class CorralCacheManager extends Tracker {
  constructor(cache, o = {}) {
    super(o);
    if (!cache || typeof cache.get !== 'function' || typeof cache.set !== 'function' || typeof cache.del !== 'function') {
      throw new TypeError('corralCache: expected a cache-manager cache (createCache() of cache-manager v6 or v7)');
    }
    this.cache = cache;
    this._ttl = o.ttl;
  }

  _get(key) { return this.cache.get(key); }
  _del(key) { return this.cache.del(key); }
  _clear() { return this.cache.clear(); }

  get(key) { return this.cache.get(key); }
  mget(keys) { return this.cache.mget(keys); }
  ttl(key) { return this.cache.ttl(key); }

  /** cache-manager's `set(key, value, ttl)`; `value` may be `tagged(value, tags)`. */
  async set(key, value, ttl) {
    const [v, tags] = this._prepare(key, value);
    const t = ttl ?? this._ttl;
    const out = await (t === undefined ? this.cache.set(key, v) : this.cache.set(key, v, t));
    this._record(key, tags, t);
    return out;
  }

  async mset(list) {
    const plain = list.map(({ key, value, ttl }) => {
      const [v, tags] = this._prepare(key, value);
      return { key, value: v, ttl: ttl ?? this._ttl, tags };
    });
    const out = await this.cache.mset(plain.map(({ key, value, ttl }) => (ttl === undefined ? { key, value } : { key, value, ttl })));
    for (const p of plain) this._record(p.key, p.tags, p.ttl);
    return out;
  }

  /** Local only, as in cache-manager; `invalidate(key)` drops it in every pod. */
  async del(key) {
    this._forget(key);
    return this.cache.del(key);
  }

  async mdel(keys) {
    for (const k of keys) this._forget(k);
    return this.cache.mdel(keys);
  }

  async clear() {
    this._keyTags.clear();
    this._byTag.clear();
    return this.cache.clear();
  }

  /** cache-manager's `wrap`; `fn` may return `tagged(value, tags)`, else `tagsOf` tags it. */
  async wrap(key, fn, ttl, refreshThreshold) {
    const t = ttl ?? this._ttl;
    let loaded = null;
    const value = await this.cache.wrap(key, async () => {
      const [v, tags] = this._prepare(key, await fn());
      loaded = tags;
      return v;
    }, t, refreshThreshold);
    if (loaded) this._record(key, loaded, typeof t === 'number' ? t : undefined);
    else if (!this._keyTags.has(key)) this._record(key, this._prepare(key, value)[1], typeof t === 'number' ? t : undefined);
    return value;
  }

  on(event, listener) { return this.cache.on(event, listener); }
  off(event, listener) { return this.cache.off(event, listener); }
  disconnect() { this.close(); return this.cache.disconnect?.(); }
  get stores() { return this.cache.stores; }
  get cacheId() { return this.cache.cacheId; }
}

/**
 * Wraps a cache-manager cache: `corralCache(createCache({ stores: [new Keyv()] }), { subscription, namespace, tagsOf })`.
 */
function corralCache(cache, o = {}) {
  const c = new CorralCacheManager(cache, o);
  if (o.subscription) o.subscription.attach(c);
  return c;
}

module.exports = { corralCache, CorralCacheManager };
