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
    this.afterCR = false;
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
    let t = text;
    // A CR ended the previous chunk's last line; an LF starting this one is its other half.
    if (this.afterCR && t[0] === '\n') t = t.slice(1);
    this.afterCR = false;
    this.buf += t;
    let start = 0;
    for (;;) {
      const m = /\r\n|\r|\n/g;
      m.lastIndex = start;
      const hit = m.exec(this.buf);
      if (!hit) break;
      this._line(this.buf.slice(start, hit.index));
      start = hit.index + hit[0].length;
      if (hit[0] === '\r' && start === this.buf.length) this.afterCR = true;
    }
    this.buf = this.buf.slice(start);
    if (this.buf.length > 16 << 20) {
      throw new Error('SSE line longer than 16 MiB: not a Corral feed');
    }
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
