'use strict';
const { subscribe, Subscription } = require('./subscribe.cjs');
const { purge } = require('./purge.cjs');
const { corralCache, CorralCacheManager } = require('./cache-manager.cjs');
const { corralMap, CorralMap } = require('./map.cjs');
const { Tracker, tagged } = require('./tracker.cjs');
const { CorralError, CorralAuthError } = require('./errors.cjs');
const { escapeKey, unescapeKey, keyUrl } = require('./keys.cjs');
const { SseParser } = require('./sse.cjs');

module.exports = {
  subscribe,
  Subscription,
  purge,
  corralCache,
  CorralCacheManager,
  corralMap,
  CorralMap,
  Tracker,
  tagged,
  CorralError,
  CorralAuthError,
  escapeKey,
  unescapeKey,
  keyUrl,
  SseParser,
};
