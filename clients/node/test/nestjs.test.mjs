// CorralCacheModule in real Nest applications: two "pods" (Nest apps on loopback), each with
// its own replica of one Corral cluster; a price update through one pod's admin endpoint is
// served by both as soon as the purge is acknowledged.
import 'reflect-metadata';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NestFactory } from '@nestjs/core';
import { Module, Controller, Injectable, Get, Post, Param, Body, Inject, UseInterceptors } from '@nestjs/common';
import { CACHE_MANAGER, CacheInterceptor } from '@nestjs/cache-manager';
import { CorralCacheModule, CorralCacheInterceptor, CacheTags, CORRAL_SUBSCRIPTION } from '@corral-cache/client/nestjs';
import { CorralCacheManager, CorralAuthError, purge } from '@corral-cache/client';
import { Corral, cluster, waitFor } from './helpers.mjs';

// The database both pods read (shared, like a real one).
const db = { prices: new Map([['1', 100], ['2', 200]]), reads: 0 };

// Plain-JS decorators: what TypeScript emits for @Injectable(), @Get(':id') and friends.
const decorate = (decorators, cls, method) =>
  Reflect.decorate(decorators, cls.prototype, method, Object.getOwnPropertyDescriptor(cls.prototype, method));

class Prices {
  get(id) { db.reads++; return { id, price: db.prices.get(id) }; }
}
Injectable()(Prices);

class PackagesController {
  constructor(prices, cache) { this.prices = prices; this.cache = cache; }
  tagged(id) { return this.prices.get(id); }
  plain(id) { return this.prices.get(id); }
  async update(id, body) {
    db.prices.set(id, body.price);
    return this.cache.invalidateTags([`package-${id}`], { wait: true });
  }
}
Inject(Prices)(PackagesController, undefined, 0);
Inject(CACHE_MANAGER)(PackagesController, undefined, 1);
decorate([Get(':id'), UseInterceptors(CorralCacheInterceptor), CacheTags('package-:id')], PackagesController, 'tagged');
Param('id')(PackagesController.prototype, 'tagged', 0);
decorate([Get(':id/plain'), UseInterceptors(CacheInterceptor)], PackagesController, 'plain');
Param('id')(PackagesController.prototype, 'plain', 0);
decorate([Post(':id/price')], PackagesController, 'update');
Param('id')(PackagesController.prototype, 'update', 0);
Body()(PackagesController.prototype, 'update', 1);
Controller('packages')(PackagesController);

function appModule(adminUrl) {
  class AppModule {}
  Module({
    imports: [CorralCacheModule.register({
      url: adminUrl,
      namespace: 'booking',
      ttl: 60000,
      // Keys of the stock CacheInterceptor are request URLs.
      tagsOf: (key) => { const m = /^\/packages\/(\d+)/.exec(key); return m ? [`package-${m[1]}`] : []; },
    })],
    controllers: [PackagesController],
    providers: [Prices],
  })(AppModule);
  return AppModule;
}

let nodes;
const pods = [];
before(async () => {
  nodes = await cluster(2);
  for (const n of nodes) {
    const app = await NestFactory.create(appModule(n.admin), { logger: ['error'] });
    await app.listen(0, '127.0.0.1');
    pods.push({ app, url: await app.getUrl() });
  }
});
after(async () => {
  for (const p of pods) await p.app.close();
  for (const n of nodes) await n.stop();
});

// The interceptor stores a value after the response has gone: wait for it before expecting a hit.
async function stored(pod, key) {
  const cache = pod.app.get(CACHE_MANAGER);
  await waitFor(`${key} stored`, async () => (await cache.get(key)) !== undefined);
}

async function get(pod, path) {
  const r = await fetch(`${pod.url}${path}`);
  return { cache: r.headers.get('x-cache'), body: await r.json() };
}

test('CACHE_MANAGER is the Corral-coherent cache and the feed is connected', async () => {
  const cache = pods[0].app.get(CACHE_MANAGER);
  assert.ok(cache instanceof CorralCacheManager);
  assert.equal(pods[0].app.get(CORRAL_SUBSCRIPTION).state.connected, true);
});

test('a price update on one pod is served by every pod once acknowledged', async () => {
  for (const p of pods) {
    assert.equal((await get(p, '/packages/1')).cache, 'MISS');
    await stored(p, '/packages/1');
    const hit = await get(p, '/packages/1');
    assert.deepEqual([hit.cache, hit.body.price], ['HIT', 100]);
  }
  const reads = db.reads;
  const r = await fetch(`${pods[0].url}/packages/1/price`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ price: 120 }),
  });
  const ack = await r.json();
  assert.equal(ack.complete, true, JSON.stringify(ack));
  for (const [i, p] of pods.entries()) {
    // Acknowledged means the replica applied it; the pod's feed delivers it right after.
    const fresh = await waitFor(`pod ${i} serving the new price`, async () => {
      const g = await get(p, '/packages/1');
      return g.body.price === 120 && g;
    });
    assert.equal(fresh.cache, 'MISS');
    await stored(p, '/packages/1');
    assert.equal((await get(p, '/packages/1')).cache, 'HIT');
  }
  assert.equal(db.reads, reads + 2, 'one reload per pod');
});

test('the stock CacheInterceptor is tagged through tagsOf, and an operator purge reaches it', async () => {
  for (const p of pods) {
    await get(p, '/packages/2/plain');
    await stored(p, '/packages/2/plain');
    assert.equal((await get(p, '/packages/2/plain')).cache, 'HIT');
  }
  db.prices.set('2', 250);
  await purge({ url: nodes[1].admin, tags: ['package-2'], wait: true });
  for (const [i, p] of pods.entries()) {
    await waitFor(`pod ${i} refreshed /packages/2/plain`, async () => (await get(p, '/packages/2/plain')).body.price === 250);
  }
});

test('a refused token fails the application start with the reason, not a silent TTL-only cache', async () => {
  const guarded = await Corral.start({ env: { CORRAL_ADMIN_TOKEN: 'nest-token-7' } });
  try {
    class BadModule {}
    Module({ imports: [CorralCacheModule.register({ url: guarded.admin, token: 'not-the-token' })] })(BadModule);
    const err = await NestFactory.create(BadModule, { logger: false, abortOnError: false }).catch((e) => e);
    assert.ok(err instanceof CorralAuthError, String(err));
    assert.match(err.message, /refused the feed \(401\)/);
    assert.ok(!err.message.includes('not-the-token'));
  } finally {
    await guarded.stop();
  }
});
