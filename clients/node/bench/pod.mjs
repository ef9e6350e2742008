// One "pod" of the propagation benchmark: a cache-manager cache following its own Corral
// replica, driven over IPC by propagation.mjs.
import { createCache } from 'cache-manager';
import { Keyv } from 'keyv';
import { subscribe, corralCache } from '@corral-cache/client';

const [url] = process.argv.slice(2);
const subscription = subscribe({ url, namespace: 'bench' });
const cache = corralCache(createCache({ stores: [new Keyv()] }), { subscription, namespace: 'bench' });
const watching = new Set();
const now = () => performance.timeOrigin + performance.now();

subscription.on('invalidation', async (e) => {
  const t = now(); // the entry was deleted before this event was emitted
  for (const u of e.selectors.urls || []) {
    const key = decodeURIComponent(u.slice('/bench/'.length));
    if (watching.delete(key)) {
      const gone = (await cache.get(key)) === undefined;
      process.send({ gone: key, t, ok: gone });
    }
  }
});

process.on('message', async (m) => {
  if (m.set) {
    await cache.set(m.set, 'v', 600000);
    watching.add(m.set);
    process.send({ stored: m.set });
  } else if (m.purge) {
    watching.delete(m.purge);
    const t0 = now();
    await cache.invalidate(m.purge);
    process.send({ purged: m.purge, t0 });
  } else if (m.exit) {
    await subscription.close();
    process.exit(0);
  }
});
process.on('disconnect', () => process.exit(0)); // the driver is gone
await subscription.ready(10000);
process.send({ ready: true });
