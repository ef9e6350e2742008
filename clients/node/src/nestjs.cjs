'use strict';
// NestJS: `CorralCacheModule.register({...})` provides @nestjs/cache-manager's CACHE_MANAGER as
// a Corral-coherent cache (a `CorralCacheManager` over cache-manager's `createCache`), so
// `CacheInterceptor`, `@Inject(CACHE_MANAGER)` and existing code keep working; `@CacheTags()`
// with `CorralCacheInterceptor` tags what the interceptor caches.

const { Module, Injectable, SetMetadata, Logger } = require('@nestjs/common');
const { CACHE_MANAGER, CacheInterceptor } = require('@nestjs/cache-manager');
const { createCache } = require('cache-manager');
const { subscribe } = require('./subscribe.cjs');
const { corralCache } = require('./cache-manager.cjs');
const { tagged } = require('./tracker.cjs');
const { CorralAuthError } = require('./errors.cjs');

const CORRAL_SUBSCRIPTION = 'CORRAL_SUBSCRIPTION';
const CACHE_TAGS_METADATA = 'corral:cache_tags';

/**
 * Tags for what `CorralCacheInterceptor` caches from this handler: templates whose `:name`
 * parts are the route's parameters (`@CacheTags('package-:id')`), or one function
 * `(context, response) => string[]`.
 */
function CacheTags(...tags) {
  return SetMetadata(CACHE_TAGS_METADATA, tags.length === 1 && typeof tags[0] === 'function' ? tags[0] : tags);
}

function resolveTags(spec, context, response) {
  if (typeof spec === 'function') return Array.from(spec(context, response) || []);
  const params = context.switchToHttp().getRequest()?.params || {};
  return spec.map((t) => t.replace(/:([A-Za-z_][A-Za-z0-9_]*)/g, (m, name) => (name in params ? String(params[name]) : m)));
}

/** `CacheInterceptor`, plus the handler's `@CacheTags()` on what it stores. */
class CorralCacheInterceptor extends CacheInterceptor {
  async intercept(context, next) {
    const spec = this.reflector.get(CACHE_TAGS_METADATA, context.getHandler()) ?? this.reflector.get(CACHE_TAGS_METADATA, context.getClass());
    if (!spec) return super.intercept(context, next);
    const cache = this.cacheManager;
    const tagging = {
      get: (key) => cache.get(key),
      set: (key, value, ttl) => cache.set(key, tagged(value, resolveTags(spec, context, value)), ttl),
    };
    // The parent's logic, with a cache manager that tags this request's value.
    return super.intercept.call(Object.create(this, { cacheManager: { value: tagging } }), context, next);
  }
}
Injectable()(CorralCacheInterceptor);

class CorralCacheModule {
  /**
   * @param {object} o
   * @param {string} o.url the admin URL of the local Corral (`http://127.0.0.1:9090`)
   * @param {string} [o.token] the admin token (needed off loopback and to publish)
   * @param {string} [o.namespace] keys travel as `/{namespace}/{key}` (default `http`)
   * @param {number} [o.ttl] default TTL in ms, the safety net under every invalidation
   * @param {(key: string, value: unknown) => string[]} [o.tagsOf] tags for every value set
   * @param {unknown[]} [o.stores] Keyv instances for cache-manager (default: in memory)
   * @param {boolean} [o.isGlobal]
   * @param {number} [o.connectTimeout] how long start-up waits for the feed (default 5000 ms)
   * @param {boolean} [o.requireConnected] fail start-up when the feed is not connected by then
   */
  static register(o = {}) {
    const logger = new Logger('CorralCacheModule');
    const namespace = o.namespace ?? 'http';
    const timeout = o.connectTimeout ?? 5000;
    return {
      module: CorralCacheModule,
      global: Boolean(o.isGlobal),
      providers: [
        {
          provide: CORRAL_SUBSCRIPTION,
          useFactory: async () => {
            const sub = subscribe({ ...(o.subscription || {}), url: o.url, token: o.token, namespace, tags: o.tags, prefixes: o.prefixes });
            try {
              await sub.ready(timeout);
            } catch (e) {
              if (e instanceof CorralAuthError || o.requireConnected) {
                await sub.close();
                throw e;
              }
              logger.warn(`${e.message}; serving from cache with TTL only until it connects`);
            }
            return sub;
          },
        },
        {
          provide: CACHE_MANAGER,
          useFactory: (subscription) => corralCache(createCache({ stores: o.stores, ttl: o.ttl }), {
            subscription, namespace, tagsOf: o.tagsOf, ttl: o.ttl,
          }),
          inject: [CORRAL_SUBSCRIPTION],
        },
        {
          provide: 'CORRAL_LIFECYCLE',
          useFactory: (subscription, cache) => ({
            async onModuleDestroy() {
              cache.close();
              await subscription.close();
            },
          }),
          inject: [CORRAL_SUBSCRIPTION, CACHE_MANAGER],
        },
        CorralCacheInterceptor,
      ],
      exports: [CACHE_MANAGER, CORRAL_SUBSCRIPTION, CorralCacheInterceptor],
    };
  }
}
Module({})(CorralCacheModule);

module.exports = { CorralCacheModule, CorralCacheInterceptor, CacheTags, CORRAL_SUBSCRIPTION, CACHE_TAGS_METADATA, CACHE_MANAGER };
