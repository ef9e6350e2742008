// The ES module entry: the same objects as the CommonJS one (one copy, one state).
import cjs from './index.cjs';

export const {
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
} = cjs;
export default cjs;
