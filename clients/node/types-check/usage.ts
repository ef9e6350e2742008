// Compiled (never run) by `npm run check-types`: the declarations describe the API as used.
import { subscribe, purge, corralCache, corralMap, tagged, CorralAuthError, type PurgeAck, type InvalidationEvent } from '@corral-cache/client';
import { CorralCacheModule, CorralCacheInterceptor, CacheTags } from '@corral-cache/client/nestjs';
import { createCache } from 'cache-manager';
import { Keyv } from 'keyv';

async function main(): Promise<void> {
  const sub = subscribe({ url: 'http://127.0.0.1:9090', token: process.env.CORRAL_ADMIN_TOKEN, namespace: 'prices', tags: ['price-*'] });
  sub.on('invalidation', (e: InvalidationEvent) => console.log(e.selectors.tags?.length));
  sub.on('gap', (g) => console.log(g.reason));
  const state = await sub.ready(5000);
  const lag: number | null = state.lag;
  const cache = corralCache(createCache({ stores: [new Keyv()] }), { subscription: sub, namespace: 'prices', ttl: 60_000 });
  await cache.set('1', tagged({ price: 1 }, ['price-1']), 1000);
  const v: { price: number } = await cache.getOrSet('2', async () => ({ price: 2 }), { ttl: 1000, tags: (x) => [`price-${x.price}`] });
  const ack: PurgeAck = await cache.invalidateTags('price-1', { wait: true });
  const map = corralMap<number>(new Map(), { subscription: sub, namespace: 'stock' });
  map.set('a', 1, { ttl: 10, tags: ['t'] });
  const n: number | undefined = map.get('a');
  const p = await purge({ url: 'http://127.0.0.1:9090', keys: [1, 'x'], namespace: 'prices', soft: true });
  try { await sub.close(); } catch (e) { if (e instanceof CorralAuthError) console.log(e.status); }
  const mod = CorralCacheModule.register({ url: 'http://127.0.0.1:9090', ttl: 1000, tagsOf: (k) => [k] });
  console.log(lag, v, ack.complete, n, p.event, mod.module, CorralCacheInterceptor, CacheTags('package-:id'));
}
void main();
