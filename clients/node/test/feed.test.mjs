// The feed client against real corral processes: resumption across a dropped connection, the
// gap path (a window too short, a restarted replica), filters, and a bad token.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe, purge, corralMap, CorralAuthError } from '@corral-cache/client';
import { Corral, Relay, waitFor, next } from './helpers.mjs';

const cleanup = [];
after(async () => { for (const f of cleanup.reverse()) await f(); });

const fast = { initial: 20, max: 200 };

function record(sub) {
  const seen = [];
  sub.on('invalidation', (e) => seen.push(...(e.selectors.tags || [])));
  return seen;
}

test('events sent while the connection was down arrive exactly once after it resumes', async () => {
  const corral = await Corral.start();
  cleanup.push(() => corral.stop());
  const relay = await Relay.start(corral.admin);
  cleanup.push(() => relay.cut());
  const sub = subscribe({ url: relay.url, backoff: fast });
  cleanup.push(() => sub.close());
  const seen = record(sub);
  await sub.ready();
  await purge({ url: corral.admin, tags: ['before'] });
  await waitFor('the first event', () => seen.includes('before'));
  const lastBefore = sub.state.lastEventId;
  assert.match(lastBefore, /^[0-9a-f]+:\d+$/);

  const down = next(sub, 'disconnected');
  await relay.cut();
  await down;
  await purge({ url: corral.admin, tags: ['away-1'] });
  await purge({ url: corral.admin, tags: ['away-2'] });
  const back = next(sub, 'connected');
  await relay.open();
  assert.equal((await back).resumed, true, 'resumed from Last-Event-ID');
  await purge({ url: corral.admin, tags: ['after'] });
  await waitFor('the live event after resuming', () => seen.includes('after'));
  assert.deepEqual(seen, ['before', 'away-1', 'away-2', 'after'], 'each event once, in order');
  assert.equal(sub.state.gaps, 0);
  assert.equal(sub.state.connected, true);
  assert.ok(sub.state.lag >= 0 && sub.state.lag < 10000, `lag ${sub.state.lag}`);
  assert.ok(relay.accepted >= 2);
});

test('a gap the replica cannot replay flushes the attached caches, then the feed goes on', async () => {
  const corral = await Corral.start({ config: '[admin]\nfeed_replay = 2\n' });
  cleanup.push(() => corral.stop());
  const relay = await Relay.start(corral.admin);
  cleanup.push(() => relay.cut());
  const sub = subscribe({ url: relay.url, backoff: fast });
  cleanup.push(() => sub.close());
  const prices = corralMap(new Map(), { subscription: sub, namespace: 'prices' });
  await sub.ready();
  prices.set('1', 100, { tags: ['price-1'] });
  prices.set('2', 200, { tags: ['price-2'] });

  const down = next(sub, 'disconnected');
  await relay.cut();
  await down;
  for (const t of ['x', 'y', 'z']) await purge({ url: corral.admin, tags: [t] }); // more than the window
  const flushed = next(sub, 'flush');
  await relay.open();
  assert.equal((await flushed).reason, 'gap: too_old');
  assert.equal(prices.size, 0, 'the default handler emptied the cache');
  assert.equal(sub.state.gaps, 1);

  // Live again: a purge reaches the refilled cache.
  prices.set('3', 300, { tags: ['price-3'] });
  await purge({ url: corral.admin, tags: ['price-3'] });
  await waitFor('price-3 purged', () => !prices.has('3'));

  // A restarted replica cannot replay the old one's events: another gap.
  prices.set('4', 400);
  const again = next(sub, 'flush');
  await corral.restart();
  assert.equal((await again).reason, 'gap: other_instance');
  assert.equal(prices.size, 0);
  await purge({ url: corral.admin, urls: ['/prices/5'] });
  prices.set('5', 500);
  await purge({ url: corral.admin, keys: ['5'], namespace: 'prices' });
  await waitFor('key 5 purged on the new replica', () => !prices.has('5'));
});

test('server-side filters deliver only the tags and prefixes asked for', async () => {
  const corral = await Corral.start();
  cleanup.push(() => corral.stop());
  const sub = subscribe({ url: corral.admin, tags: ['price-*'], prefixes: ['/packages/'] });
  cleanup.push(() => sub.close());
  const got = [];
  sub.on('invalidation', (e) => got.push(e.selectors));
  await sub.ready();
  for (const body of [{ tags: ['stock-1'] }, { tags: ['price-1'] }, { urls: ['/users/1'] }, { urls: ['/packages/9'] }]) {
    await purge({ url: corral.admin, ...body });
  }
  await waitFor('two matching events', () => got.length >= 2);
  assert.deepEqual(got, [{ tags: ['price-1'] }, { urls: ['/packages/9'] }]);
  assert.throws(() => subscribe({ url: corral.admin, tags: 'price-*' }), /tags must be an array/);
  const bad = subscribe({ url: corral.admin, tags: ['a*b'] });
  await assert.rejects(bad.ready(), /may only end a pattern/);
  await bad.done;
});

test('a bad token is a clear error and no retry storm', async () => {
  const token = 'node-test-token-42';
  const corral = await Corral.start({ env: { CORRAL_ADMIN_TOKEN: token } });
  cleanup.push(() => corral.stop());
  const relay = await Relay.start(corral.admin);
  cleanup.push(() => relay.cut());
  const sub = subscribe({ url: relay.url, token: 'wrong-secret-value', backoff: fast });
  const err = await sub.ready().catch((e) => e);
  assert.ok(err instanceof CorralAuthError, String(err));
  assert.match(err.message, /refused the feed \(401\).*check the token.*Not retrying/);
  assert.ok(!err.message.includes('wrong-secret-value'), 'the token never appears in errors');
  await sub.done; // the loop ended: no further attempt can happen
  assert.equal(relay.accepted, 1, 'one attempt, no retries');
  assert.equal(sub.state.connected, false);
  assert.equal(sub.state.error, err);

  await assert.rejects(purge({ url: corral.admin, token: 'wrong', tags: ['t'] }), (e) => e instanceof CorralAuthError && /401/.test(e.message));
  const ok = subscribe({ url: corral.admin, token });
  cleanup.push(() => ok.close());
  await ok.ready();
  const ack = await ok.purge({ tags: ['t'] });
  assert.match(ack.event, /-\d+$/);
});
