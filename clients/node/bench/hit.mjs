// The client's overhead per cache hit: the same hot keys read through plain cache-manager
// (keyv in memory) and through corralCache() over it, then a Map against corralMap(). Several
// rounds, alternating, the median of each reported.   node bench/hit.mjs [reads=200000]
import { createCache } from 'cache-manager';
import { Keyv } from 'keyv';
import { corralCache, corralMap } from '@corral-cache/client';

const reads = Number(process.argv[2] || 200000);
const KEYS = 1000;
const plain = createCache({ stores: [new Keyv()] });
const wrapped = corralCache(createCache({ stores: [new Keyv()] }), { namespace: 'bench' });
const map = new Map();
const cmap = corralMap(new Map(), { namespace: 'bench' });
for (let i = 0; i < KEYS; i++) {
  await plain.set(`k${i}`, { i }, 600000);
  await wrapped.set(`k${i}`, { i }, 600000);
  map.set(`k${i}`, { i });
  cmap.set(`k${i}`, { i }, { ttl: 600000, tags: [`t${i % 10}`] });
}

async function timeAsync(f) {
  const t = process.hrtime.bigint();
  for (let i = 0; i < reads; i++) await f(`k${i % KEYS}`);
  return Number(process.hrtime.bigint() - t) / reads;
}
function timeSync(f) {
  const t = process.hrtime.bigint();
  let n = 0;
  for (let i = 0; i < reads; i++) if (f(`k${i % KEYS}`) !== undefined) n++;
  if (n !== reads) throw new Error('a miss');
  return Number(process.hrtime.bigint() - t) / reads;
}
const loader = async () => { throw new Error('a hit never loads'); };
const cases = {
  'cache-manager get': () => timeAsync((k) => plain.get(k)),
  'corralCache get': () => timeAsync((k) => wrapped.get(k)),
  'corralCache getOrSet (hit)': () => timeAsync((k) => wrapped.getOrSet(k, loader)),
  'Map get': () => timeSync((k) => map.get(k)),
  'corralMap get': () => timeSync((k) => cmap.get(k)),
};
const results = Object.fromEntries(Object.keys(cases).map((k) => [k, []]));
for (let round = 0; round < 7; round++) {
  for (const [name, run] of Object.entries(cases)) results[name].push(await run());
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
console.log(`${reads} reads per round, 7 rounds, ${KEYS} hot keys, Node ${process.version}; median ns per hit`);
const m = Object.fromEntries(Object.entries(results).map(([k, v]) => [k, median(v)]));
for (const [k, v] of Object.entries(m)) console.log(`${k.padEnd(28)} ${v.toFixed(0).padStart(6)} ns`);
console.log(`overhead: corralCache get ${(m['corralCache get'] - m['cache-manager get']).toFixed(0)} ns, ` +
  `getOrSet hit ${(m['corralCache getOrSet (hit)'] - m['cache-manager get']).toFixed(0)} ns, ` +
  `corralMap ${(m['corralMap get'] - m['Map get']).toFixed(0)} ns per hit`);
wrapped.close();
cmap.close();
