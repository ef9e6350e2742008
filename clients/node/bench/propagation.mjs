// The time from `invalidate()` (a purge through Corral) in one pod to the entry gone in the
// other two: three pods (Node processes, cache-manager + keyv in memory), each following its
// own replica of a three-replica Corral cluster on loopback. One purge at a time, so each
// sample is the latency alone.   node bench/propagation.mjs [purges=1000]
import { fork } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cluster } from '../test/helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const purges = Number(process.argv[2] || 1000);
const nodes = await cluster(3);
for (const n of nodes) {
  for (;;) {
    const peers = (await (await fetch(`${n.admin}/peers`)).json()).peers;
    if (peers.length === 2 && peers.every((p) => p.last_ok_ms_ago !== null)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
}
const pods = nodes.map((n) => fork(path.join(here, 'pod.mjs'), [n.admin]));
const nextMessage = (pod, pred) => new Promise((resolve) => {
  const on = (m) => { if (pred(m)) { pod.off('message', on); resolve(m); } };
  pod.on('message', on);
});
await Promise.all(pods.map((p) => nextMessage(p, (m) => m.ready)));

const both = [];
const each = [];
for (let i = 0; i < purges; i++) {
  const key = `k${i}`;
  await Promise.all(pods.map((p) => { const s = nextMessage(p, (m) => m.stored === key); p.send({ set: key }); return s; }));
  const gone = pods.slice(1).map((p) => nextMessage(p, (m) => m.gone === key));
  const purged = nextMessage(pods[0], (m) => m.purged === key);
  pods[0].send({ purge: key });
  const { t0 } = await purged;
  const seen = await Promise.all(gone);
  if (!seen.every((s) => s.ok)) throw new Error(`${key} still cached after its event`);
  const lat = seen.map((s) => s.t - t0);
  each.push(...lat);
  both.push(Math.max(...lat));
}
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]; };
const f = (x) => x.toFixed(2);
console.log(`purges: ${purges}, pods: 3 (Node ${process.version}), Corral replicas: 3, loopback`);
console.log(`entry gone in both other pods: p50 ${f(q(both, 0.5))} ms, p99 ${f(q(both, 0.99))} ms, max ${f(Math.max(...both))} ms`);
console.log(`per pod:                       p50 ${f(q(each, 0.5))} ms, p99 ${f(q(each, 0.99))} ms`);
console.log(`JSON: ${JSON.stringify({ purges, p50_ms: +f(q(both, 0.5)), p99_ms: +f(q(both, 0.99)), max_ms: +f(Math.max(...both)) })}`);
for (const p of pods) p.send({ exit: true });
await Promise.all(pods.map((p) => new Promise((r) => p.once('exit', r))));
for (const n of nodes) await n.stop();
