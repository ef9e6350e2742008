'use strict';
const { keyUrl } = require('./keys.cjs');
const { CorralError, CorralAuthError } = require('./errors.cjs');

function list(name, v) {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new TypeError(`purge: ${name} must be an array`);
  for (const [i, s] of v.entries()) {
    if (typeof s !== 'string' && !(name === 'keys' && typeof s === 'number')) {
      throw new TypeError(`purge: ${name}[${i}] must be a string`);
    }
  }
  return v;
}

/**
 * Publishes an invalidation through a Corral replica's admin API (`POST /purge`); the cluster
 * fans it out to every replica and every subscribed pod. Resolves with Corral's answer:
 * `{purged, event}`, plus `{acknowledged, pending}` (peer addresses) with `wait: true`.
 */
async function purge(opts) {
  const { url, token, namespace, soft = false, wait = false, all = false, timeout = 10000 } = opts || {};
  if (typeof url !== 'string' || !/^https?:\/\//.test(url)) {
    throw new TypeError('purge: url must be the admin URL of a Corral replica, e.g. http://127.0.0.1:9090');
  }
  const keys = list('keys', opts.keys);
  if (keys.length && !namespace) {
    throw new TypeError('purge: keys need a namespace (they travel as /{namespace}/{key})');
  }
  const body = {
    urls: [...list('urls', opts.urls), ...keys.map((k) => keyUrl(namespace, k))],
    tags: list('tags', opts.tags),
    prefixes: list('prefixes', opts.prefixes),
    all: Boolean(all),
    soft: Boolean(soft),
    wait: Boolean(wait),
  };
  if (!body.urls.length && !body.tags.length && !body.prefixes.length && !body.all) {
    throw new TypeError('purge: nothing to purge: give keys, tags, urls, prefixes or all');
  }
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const doFetch = opts.fetch || globalThis.fetch;
  const target = url.replace(/\/+$/, '') + '/purge';
  let res;
  try {
    res = await doFetch(target, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(timeout) });
  } catch (e) {
    throw new CorralError(`purge: ${target} unreachable: ${e.cause?.code || e.message}`);
  }
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* reported below */ }
  if (res.status === 401 || res.status === 403) {
    throw new CorralAuthError(`purge refused by ${target} (${res.status}): ${json?.error || text}`, { status: res.status, body: json });
  }
  if (!res.ok || !json) {
    throw new CorralError(`purge failed at ${target} (${res.status}): ${json?.error || text}`, { status: res.status, body: json });
  }
  if (wait) json.complete = Array.isArray(json.pending) && json.pending.length === 0;
  return json;
}

module.exports = { purge };
