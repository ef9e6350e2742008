'use strict';
// Follows a Corral replica's invalidation feed (`GET /_corral/v1/subscribe`, docs/feed.md):
// reconnects with jittered exponential backoff, resumes with Last-Event-ID so nothing is missed
// or applied twice across a disconnect, and turns a `gap` (the replica could not replay what
// was missed) into a flush of the attached caches.

const { EventEmitter } = require('node:events');
const { SseParser } = require('./sse.cjs');
const { purge } = require('./purge.cjs');
const { CorralError, CorralAuthError } = require('./errors.cjs');

const DEFAULTS = {
  backoff: { initial: 250, max: 30000 },
  idleTimeout: 45000, // three of Corral's default 15 s keep-alives
  clearOnFlush: true,
  flushOnConnect: true,
};

class Subscription extends EventEmitter {
  constructor(opts) {
    super();
    const o = opts || {};
    if (typeof o.url !== 'string' || !/^https?:\/\//.test(o.url)) {
      throw new TypeError('subscribe: url must be the admin URL of a Corral replica, e.g. http://127.0.0.1:9090');
    }
    for (const f of ['tags', 'prefixes']) {
      if (o[f] !== undefined && !(Array.isArray(o[f]) && o[f].every((s) => typeof s === 'string' && s))) {
        throw new TypeError(`subscribe: ${f} must be an array of non-empty strings`);
      }
    }
    this.url = o.url.replace(/\/+$/, '');
    this.namespace = o.namespace;
    this._token = o.token || undefined; // never logged, never in an error message
    this._fetch = o.fetch || globalThis.fetch;
    this._backoff = { ...DEFAULTS.backoff, ...(o.backoff || {}) };
    this._idleTimeout = o.idleTimeout ?? DEFAULTS.idleTimeout;
    this._idleTimeoutSet = o.idleTimeout !== undefined;
    this._clearOnFlush = o.clearOnFlush ?? DEFAULTS.clearOnFlush;
    this._flushOnConnect = o.flushOnConnect ?? DEFAULTS.flushOnConnect;
    const q = new URLSearchParams();
    for (const t of o.tags || []) q.append('tag', t);
    for (const p of o.prefixes || []) q.append('prefix', p);
    const qs = q.toString();
    this._feedUrl = `${this.url}/_corral/v1/subscribe${qs ? "?" + qs : ""}`;
    this._targets = new Set();
    this._closed = false;
    this._abort = null;
    this._wake = null;
    this._lastWasGap = false;
    this._state = {
      connected: false,
      lastEventId: o.lastEventId || null,
      lag: null,
      instance: null,
      events: 0,
      gaps: 0,
      flushes: 0,
      reconnects: 0,
      lastEventAt: null,
      error: null,
    };
    this._loop = this._run();
    /** Settles when the subscription stops following the feed: close(), or a fatal refusal. */
    this.done = this._loop;
  }

  /** For health checks: connected, lastEventId, lag (ms from an event's creation to its
   *  arrival here, for the latest), instance, counters, and the fatal error if it stopped. */
  get state() {
    return { ...this._state };
  }

  /** Applies every event to `target` (`{apply(event), flush(reason)}`); returns a detach function. */
  attach(target) {
    if (!target || typeof target.apply !== 'function' || typeof target.flush !== 'function') {
      throw new TypeError('attach: the target needs apply(event) and flush(reason)');
    }
    this._targets.add(target);
    if (typeof target._attached === 'function') target._attached(this);
    return () => this._targets.delete(target);
  }

  /** Resolves once connected; rejects on a fatal refusal (bad token) or after `timeout` ms. */
  ready(timeout = 5000) {
    if (this._state.connected) return Promise.resolve(this.state);
    if (this._state.error) return Promise.reject(this._state.error);
    return new Promise((resolve, reject) => {
      const done = (fn, v) => {
        clearTimeout(timer);
        this.off('connected', onOk);
        this.off('stopped', onErr);
        fn(v);
      };
      const onOk = () => done(resolve, this.state);
      const onErr = (e) => done(reject, e);
      const timer = setTimeout(() => done(reject, new CorralError(`not connected to ${this._feedUrl} within ${timeout} ms`)), timeout);
      this.on('connected', onOk);
      this.on('stopped', onErr);
    });
  }

  /** `purge()` through the replica this subscription follows (same token and namespace). */
  purge(selectors) {
    return purge({ namespace: this.namespace, ...selectors, url: this.url, token: this._token, fetch: this._fetch });
  }

  /** Stops following the feed. */
  async close() {
    const was = this._closed;
    this._closed = true;
    if (this._abort) this._abort.abort();
    if (this._wake) this._wake();
    await this._loop;
    if (!was && !this._state.error) this.emit('stopped', new CorralError('subscription closed'));
  }

  async _run() {
    let attempt = 0;
    while (!this._closed) {
      let outcome;
      try {
        outcome = await this._connect();
      } catch (e) {
        outcome = { error: e };
      }
      if (this._closed) {
        this._state.connected = false;
        break;
      }
      if (this._state.connected) {
        this._state.connected = false;
        this.emit('disconnected', outcome.error || null);
      }
      if (outcome.fatal) {
        this._state.error = outcome.fatal;
        if (this.listenerCount('error')) this.emit('error', outcome.fatal);
        this.emit('stopped', outcome.fatal);
        return;
      }
      attempt = outcome.healthy ? 1 : attempt + 1;
      // Full jitter: pods that lost the same replica do not come back in lockstep.
      const cap = Math.min(this._backoff.max, this._backoff.initial * 2 ** Math.min(attempt - 1, 20));
      const delay = Math.random() * cap;
      this._state.reconnects++;
      await new Promise((resolve) => {
        const t = setTimeout(resolve, delay);
        this._wake = () => { clearTimeout(t); resolve(); };
      });
      this._wake = null;
    }
  }

  /** One connection: resolves when it ends; `healthy` once it got its hello, `fatal` when
   *  retrying cannot help. */
  async _connect() {
    const controller = new AbortController();
    this._abort = controller;
    const headers = { accept: 'text/event-stream' };
    if (this._token) headers.authorization = `Bearer ${this._token}`;
    const sent = this._state.lastEventId;
    if (sent) headers['last-event-id'] = sent;
    let res;
    try {
      res = await this._fetch(this._feedUrl, { headers, signal: controller.signal });
    } catch (e) {
      return { error: e };
    }
    if (res.status === 401 || res.status === 403) {
      const why = await res.text().catch(() => '');
      return {
        fatal: new CorralAuthError(
          `Corral at ${this.url} refused the feed (${res.status}): ${errorText(why)}; ` +
          'check the token (the admin token, CORRAL_ADMIN_TOKEN). Not retrying.',
          { status: res.status },
        ),
      };
    }
    if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) {
      const why = await res.text().catch(() => '');
      return { fatal: new CorralError(`Corral at ${this.url} refused the feed (${res.status}): ${errorText(why)}`, { status: res.status }) };
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => {});
      return { error: new CorralError(`feed answered ${res.status}`, { status: res.status }) };
    }
    let healthy = false;
    const parser = new SseParser((ev) => {
      if (ev.type === 'hello') healthy = true;
      this._event(ev, sent);
    }, (id) => { if (id) this._state.lastEventId = id; });
    parser.lastEventId = sent || '';
    const decoder = new TextDecoder();
    let lastByte = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - lastByte > this._idleTimeout) controller.abort(new CorralError('feed idle: no keep-alive'));
    }, Math.min(this._idleTimeout, 1000));
    try {
      for await (const chunk of res.body) {
        lastByte = Date.now();
        parser.push(decoder.decode(chunk, { stream: true }));
        if (this._closed) break;
      }
      return { healthy, error: new CorralError('feed closed by the server') };
    } catch (e) {
      return { healthy, error: e };
    } finally {
      clearInterval(watchdog);
      controller.abort();
    }
  }

  _event(ev, sent) {
    const s = this._state;
    switch (ev.type) {
      case 'hello': {
        const hello = parse(ev.data) || {};
        s.instance = hello.instance || null;
        // Three missed keep-alives mean a dead connection, unless the caller chose a timeout.
        if (!this._idleTimeoutSet && Number.isFinite(hello.keepalive_ms) && hello.keepalive_ms > 0) {
          this._idleTimeout = Math.max(3 * hello.keepalive_ms, 1000);
        }
        s.connected = true;
        this._lastWasGap = false;
        if (!sent && this._flushOnConnect) this._flush('connected');
        this.emit('connected', { resumed: Boolean(hello.resumed), instance: s.instance });
        break;
      }
      case 'invalidation': {
        const e = parse(ev.data);
        this._lastWasGap = false;
        if (!e || !e.selectors) {
          // Unreadable: what it purged is unknown, so everything goes.
          this._flush('unreadable');
          break;
        }
        s.events++;
        s.lastEventAt = Date.now();
        if (typeof e.timestamp_ms === 'number') s.lag = Math.max(0, s.lastEventAt - e.timestamp_ms);
        for (const t of this._targets) {
          try { t.apply(e); } catch (err) { this._flush('apply failed'); this._report(err); }
        }
        this.emit('invalidation', e);
        break;
      }
      case 'gap': {
        const g = parse(ev.data) || {};
        s.gaps++;
        this._lastWasGap = true;
        this.emit('gap', g);
        this._flush(`gap: ${g.reason || 'unknown'}`);
        break;
      }
      case 'reset':
        // Sent right after a gap for consumers that predate it; on its own it still means flush.
        if (!this._lastWasGap) this._flush('reset');
        this._lastWasGap = false;
        break;
      default:
        break;
    }
    // Committed after the event was applied: a crash in between replays it, never skips it.
    if (ev.lastEventId) s.lastEventId = ev.lastEventId;
  }

  _flush(reason) {
    this._state.flushes++;
    if (this._clearOnFlush) {
      for (const t of this._targets) {
        try { t.flush(reason); } catch (err) { this._report(err); }
      }
    }
    this.emit('flush', { reason });
  }

  _report(err) {
    if (this.listenerCount('error')) this.emit('error', err);
  }
}

function parse(text) {
  try { return JSON.parse(text); } catch { return null; }
}

function errorText(body) {
  const j = parse(body);
  return (j && j.error) || body.slice(0, 200) || 'no reason given';
}

/** Follows the invalidation feed of the Corral replica at `url` (its admin listener). */
function subscribe(opts) {
  return new Subscription(opts);
}

module.exports = { subscribe, Subscription };
