// Three pods' cache-manager caches, each following its own replica of one Corral cluster:
// `wait` purges, tag purges reaching every pod's entries, key invalidations in the
// corral-cache wire form, and single-flight getOrSet.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createCache } from 'cache-manager';
import { Keyv } from 'keyv';
import { subscribe, purge, corralCache, tagged, CorralError } from '@corral-cache/client';
import { cluster, waitFor } from './helpers.mjs';

let nodes;
let pods;
before(async () => {
  nodes = await cluster(3);
  for (const n of nodes) {
    await waitFor(`${n.admin} to know its two peers`, async () => (await (await fetch(`${n.admin}/peers`)).json()).peers.length === 2);
  }
  pods = [];
  for (const n of nodes) {
    const subscription = subscribe({ url: n.admin });
    const cache = corralCache(createCache({ stores: [new Keyv()] }), {
      subscription,
      namespace: 'catalog',
      tagsOf: (key) => (key.startsWith('package:') ? [`package-${key.split(':')[1]}`] : []),
    });
    await subscription.ready();
    pods.push({ subscription, cache });
  }
});
after(async () => {
  for (const p of pods) await p.subscription.close();
  for (const n of nodes) await n.stop();
});

async function fill(key, value, ttl) {
  for (const p of pods) await p.cache.set(key, value, ttl);
}

test('a wait purge resolves with every peer acknowledged', async () => {
  const ack = await purge({ url: nodes[0].admin, tags: ['nothing-cached'], wait: true });
  assert.equal(ack.acknowledged.length, 2, JSON.stringify(ack));
  assert.deepEqual(ack.pending, []);
  assert.equal(ack.complete, true);
  assert.equal(typeof ack.purged, 'number');
  assert.match(ack.event, /-\d+$/);
});

test('a tag purge on one replica removes the tagged entries from every pod', async () => {
  await fill('price:1', tagged(100, ['price-1']), 60000);
  await fill('price:2', tagged(200, ['price-2']), 60000);
  await fill('package:7', { name: 'Lisbon weekend' }, 60000); // tagged package-7 by tagsOf
  assert.deepEqual(pods[1].cache.tagsOf('package:7'), ['package-7']);
  await pods[0].cache.invalidateTags('price-1', { wait: true });
  for (const [i, p] of pods.entries()) {
    await waitFor(`price:1 gone in pod ${i}`, async () => (await p.cache.get('price:1')) === undefined);
    assert.equal(await p.cache.get('price:2'), 200, `pod ${i} kept price:2`);
  }
  // An operator's purge (any language, any replica) by the tagsOf tag.
  await purge({ url: nodes[2].admin, tags: ['package-7'] });
  for (const [i, p] of pods.entries()) {
    await waitFor(`package:7 gone in pod ${i}`, async () => (await p.cache.get('package:7')) === undefined);
  }
});

test('a key invalidation travels as /{namespace}/{key}, as corral-cache sends it', async () => {
  await fill('user/é 1', 'x', 60000);
  await fill('other', 'y', 60000);
  const ack = await pods[1].cache.invalidate('user/é 1', { wait: true });
  assert.equal(ack.complete, true);
  for (const [i, p] of pods.entries()) {
    await waitFor(`key gone in pod ${i}`, async () => (await p.cache.get('user/é 1')) === undefined);
    assert.equal(await p.cache.get('other'), 'y');
  }
  // What a Rust service's `invalidate(&"other".to_string())` in namespace `catalog` sends:
  await purge({ url: nodes[0].admin, urls: ['/catalog/other'] });
  for (const p of pods) await waitFor('other gone', async () => (await p.cache.get('other')) === undefined);
  // A namespace bump (`prefixes: ["/catalog/"]`) empties the cache.
  await fill('a', 1, 60000);
  await purge({ url: nodes[0].admin, prefixes: ['/catalog/'] });
  for (const p of pods) await waitFor('namespace emptied', async () => (await p.cache.get('a')) === undefined);
});

test('getOrSet: a stampede costs one load; a load an invalidation overtook is not cached', async () => {
  const { cache } = pods[0];
  let loads = 0;
  let release;
  const gate = new Promise((r) => { release = r; });
  const loader = async () => { loads++; await gate; return { price: 42 }; };
  const callers = Array.from({ length: 100 }, () => cache.getOrSet('price:9', loader, { ttl: 60000, tags: ['price-9'] }));
  release();
  const values = await Promise.all(callers);
  assert.equal(loads, 1);
  assert.ok(values.every((v) => v.price === 42));
  assert.deepEqual(await cache.get('price:9'), { price: 42 });
  assert.deepEqual(cache.tagsOf('price:9'), ['price-9']);

  let slow;
  const slowGate = new Promise((r) => { slow = r; });
  const loading = cache.getOrSet('price:10', async () => { await slowGate; return 'old'; }, { tags: ['price-10'] });
  const seen = new Promise((r) => pods[0].subscription.on('invalidation', (e) => e.selectors.tags?.includes('price-10') && r()));
  await purge({ url: nodes[1].admin, tags: ['price-10'] });
  await seen;
  slow();
  assert.equal(await loading, 'old', 'the caller still gets its value');
  assert.equal(await cache.get('price:10'), undefined, 'but it was not cached');

  await assert.rejects(cache.getOrSet('boom', async () => { throw new Error('db down'); }), /db down/);
  assert.equal(await cache.get('boom'), undefined);
});

test('purge input is checked before anything is sent', async () => {
  await assert.rejects(purge({}), /url must be the admin URL/);
  await assert.rejects(purge({ url: nodes[0].admin }), /nothing to purge/);
  await assert.rejects(purge({ url: nodes[0].admin, keys: ['1'] }), /keys need a namespace/);
  await assert.rejects(purge({ url: nodes[0].admin, tags: 'x' }), /tags must be an array/);
  await assert.rejects(
    purge({ url: nodes[0].admin, urls: ['not-a-path'] }),
    (e) => e instanceof CorralError && e.status === 400 && /urls\[0\]/.test(e.message),
  );
});

test('wrap stores the plain value of a tagged() load and records its tags', async () => {
  const { cache } = pods[2];
  const v = await cache.wrap('wrapped:1', async () => tagged({ n: 1 }, ['wrap-1']), 60000);
  assert.deepEqual(v, { n: 1 });
  assert.deepEqual(await cache.get('wrapped:1'), { n: 1 }, 'the value, not the tag marker');
  assert.deepEqual(cache.tagsOf('wrapped:1'), ['wrap-1']);
  await purge({ url: nodes[0].admin, tags: ['wrap-1'] });
  await waitFor('wrapped:1 purged', async () => (await cache.get('wrapped:1')) === undefined);
});
