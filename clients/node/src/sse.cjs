'use strict';
// A server-sent-events parser (WHATWG HTML, "Interpreting an event stream"), fed text as it
// arrives. It keeps the last event id the way EventSource does: an `id:` field sets it, it
// survives events without one, and a block with an `id:` but no `data:` moves it without
// dispatching an event (Corral's keep-alives carry a filtered stream's position that way).

class SseParser {
  /** @param {(ev: {type: string, data: string, lastEventId: string}) => void} onEvent
   *  @param {(lastEventId: string) => void} [onId] called when a block moved only the id */
  constructor(onEvent, onId) {
    this.onEvent = onEvent;
    this.onId = onId || (() => {});
    this.buf = '';
    this.lastEventId = '';
    this._reset();
  }

  _reset() {
    this.type = '';
    this.data = [];
    this.idBuf = null;
  }

  /** Feeds decoded text. */
  push(text) {
    this.buf += text;
    let start = 0;
    for (;;) {
      const nl = this._lineEnd(start);
      if (nl < 0) break;
      const line = this.buf.slice(start, nl);
      start = nl + (this.buf[nl] === '\r' && this.buf[nl + 1] === '\n' ? 2 : 1);
      this._line(line);
    }
    this.buf = this.buf.slice(start);
    if (this.buf.length > 16 << 20) {
      throw new Error('SSE line longer than 16 MiB: not a Corral feed');
    }
  }

  _lineEnd(from) {
    for (let i = from; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (c === '\n') return i;
      if (c === '\r') {
        // A lone CR at the very end may be the first half of CRLF: wait for more.
        if (i + 1 === this.buf.length) return -1;
        return i;
      }
    }
    return -1;
  }

  _line(line) {
    if (line === '') return this._dispatch();
    if (line[0] === ':') return;
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
    }
    switch (field) {
      case 'event': this.type = value; break;
      case 'data': this.data.push(value); break;
      case 'id': if (!value.includes('\0')) this.idBuf = value; break;
      default: break; // `retry` and unknown fields are ignored
    }
  }

  _dispatch() {
    const moved = this.idBuf !== null && this.idBuf !== this.lastEventId;
    if (this.idBuf !== null) this.lastEventId = this.idBuf;
    if (this.data.length === 0) {
      this._reset();
      if (moved) this.onId(this.lastEventId);
      return;
    }
    const ev = { type: this.type || 'message', data: this.data.join('\n'), lastEventId: this.lastEventId };
    this._reset();
    this.onEvent(ev);
  }
}

module.exports = { SseParser };
