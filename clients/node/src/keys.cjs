'use strict';
// How a cache key travels on the feed, the same as corral-cache (docs/library.md): the URL
// `/{namespace}/{key}`, the key percent-encoded except `A-Z a-z 0-9 - . _ ~`.

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/** Percent-encodes a key for one path segment (UTF-8 bytes, upper-case hex). */
function escapeKey(key) {
  const text = String(key);
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += byte < 0x80 && UNRESERVED.test(c) ? c : '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Reverses escapeKey; null when `text` is not a well-formed escape of UTF-8. */
function unescapeKey(text) {
  const bytes = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '%') {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      const code = text.charCodeAt(i);
      if (code > 0x7f) return null;
      bytes.push(code);
    }
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return null;
  }
}

/** The feed URL of `key` in `namespace`. */
function keyUrl(namespace, key) {
  return `/${namespace}/${escapeKey(key)}`;
}

/** The path (and query) of a purge URL: itself when it is a path, else what follows the host. */
function urlPath(u) {
  if (u.startsWith('/')) return u;
  const rest = u.replace(/^https?:\/\//, '');
  const i = rest.indexOf('/');
  return i < 0 ? '/' : rest.slice(i);
}

module.exports = { escapeKey, unescapeKey, keyUrl, urlPath };
