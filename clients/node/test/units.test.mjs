// The pieces with no process behind them: the SSE parser (the feed's framing as the WHATWG
// specification defines it) and the key encoding shared with corral-cache.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, escapeKey, unescapeKey, keyUrl, corralMap } from '@corral-cache/client';

function parse(chunks) {
  const events = [];
  const ids = [];
  const p = new SseParser((e) => events.push(e), (id) => ids.push(id));
  for (const c of chunks) p.push(c);
  return { events, ids, last: p.lastEventId };
}

test('SSE: fields, comments, multi-line data, any line ending, any chunking', () => {
  const text = ': hello\r\nevent: invalidation\r\nid: e:1\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: gap\rid: e:2\rdata:x\r\r';
  const whole = parse([text]);
  assert.deepEqual(whole.events, [
    { type: 'invalidation', data: '{"a":\n1}', lastEventId: 'e:1' },
    { type: 'gap', data: 'x', lastEventId: 'e:2' },
  ]);
  // Byte by byte (a CR at a chunk's end may be half of a CRLF), the same events.
  assert.deepEqual(parse([...text]).events, whole.events);
});

test('SSE: an id-only block moves the last event id without an event; ids persist', () => {
  const r = parse(['data: a\n\n', ': keep-alive\nid: e:9\n\n', 'data: b\n\n', 'id\n\ndata: c\n\n']);
  assert.deepEqual(r.events.map((e) => [e.data, e.lastEventId]), [['a', ''], ['b', 'e:9'], ['c', '']]);
  assert.deepEqual(r.ids, ['e:9', ''], 'an empty id resets it, as the specification says');
  assert.equal(parse(['id: a\0b\ndata: x\n\n']).events[0].lastEventId, '', 'an id with NUL is ignored');
  assert.equal(parse(['event: x\ndata: 1']).events.length, 0, 'nothing until the blank line');
});

test('keys are percent-encoded as corral-cache encodes them, and round-trip', () => {
  assert.equal(escapeKey('Az09-._~'), 'Az09-._~');
  assert.equal(escapeKey('a/b c?é'), 'a%2Fb%20c%3F%C3%A9');
  assert.equal(escapeKey(42), '42');
  assert.equal(keyUrl('prices', 'x/1'), '/prices/x%2F1');
  for (const k of ['', 'plain', 'a/b', '100%', 'émoji 🎉', '?&=#']) assert.equal(unescapeKey(escapeKey(k)), k);
  for (const bad of ['%', '%zz', '%C3', 'é']) assert.equal(unescapeKey(bad), null, bad);
});

test('a Map adapter maps each selector kind to its entries, as documented', () => {
  const m = corralMap(new Map(), { namespace: 'ns' });
  const fill = () => {
    m.clear();
    m.set('a/1', 1, { tags: ['t1'] });
    m.set('a/2', 2, { tags: ['t2'] });
    m.set('b', 3);
  };
  const keys = () => [...m.store.keys()].sort();
  const cases = [
    [{ urls: ['/ns/a%2F1'] }, ['a/2', 'b']],
    [{ urls: ['http://host/ns/b'] }, ['a/1', 'a/2']],
    [{ urls: ['/other/b'] }, ['a/1', 'a/2', 'b']],
    [{ tags: ['t2'] }, ['a/1', 'b']],
    [{ prefixes: ['/ns/a%2F'] }, ['b']],
    [{ prefixes: ['/ns/'] }, []],
    [{ prefixes: ['/'] }, []],
    [{ prefixes: ['/other/'] }, ['a/1', 'a/2', 'b']],
    [{ all: true }, []],
  ];
  for (const [selectors, left] of cases) {
    fill();
    m.apply({ selectors, soft: false });
    assert.deepEqual(keys(), left, JSON.stringify(selectors));
  }
  fill();
  m.set('a/1', 9); // re-set without tags: the old tag no longer covers it
  m.apply({ selectors: { tags: ['t1'] } });
  assert.equal(m.get('a/1'), 9);
  assert.throws(() => corralMap(new Map(), { namespace: 'a/b' }), /without "\/"/);
  m.close();
});
