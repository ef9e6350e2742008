'use strict';
// For code that uses neither cache-manager nor NestJS: any Map-like store (a Map, lru-cache's
// LRUCache, QuickLRU: get/set/delete/clear) with tags, per-entry TTL and the feed.

const { Tracker } = require('./tracker.cjs');

class CorralMap extends Tracker {
  /** @param {Map<any, any>} [store] a Map-like store; a new Map by default */
  constructor(store = new Map(), o = {}) {
    super(o);
    for (const m of ['get', 'set', 'delete', 'clear']) {
      if (typeof store[m] !== 'function') throw new TypeError(`corralMap: the store needs ${m}()`);
    }
    this.store = store;
    this._ttl = o.ttl;
  }

  _get(key) { return this.get(key); }
  _del(key) { this.store.delete(key); }
  _clear() { this.store.clear(); }

  get(key) {
    const e = this.store.get(key);
    if (e === undefined) return undefined;
    if (e.expires <= Date.now()) {
      this.delete(key);
      return undefined;
    }
    return e.value;
  }

  has(key) {
    return this.get(key) !== undefined;
  }

  /** `set(key, value, { ttl, tags })` (or `value` = `tagged(value, tags)`); ttl in ms. */
  set(key, value, opts = {}) {
    const o = typeof opts === 'number' ? { ttl: opts } : opts;
    const [v, tags] = this._prepare(key, value);
    const ttl = o.ttl ?? this._ttl;
    this.store.set(key, { value: v, expires: ttl > 0 ? Date.now() + ttl : Infinity });
    this._record(key, o.tags || tags, ttl);
    return this;
  }

  delete(key) {
    this._forget(key);
    return this.store.delete(key);
  }

  clear() {
    this._keyTags.clear();
    this._byTag.clear();
    this.store.clear();
  }

  get size() {
    return this.store.size;
  }
}

/** `corralMap(new Map(), { subscription, namespace })`. */
function corralMap(store, o = {}) {
  const m = new CorralMap(store || new Map(), o);
  if (o.subscription) o.subscription.attach(m);
  return m;
}

module.exports = { corralMap, CorralMap };
