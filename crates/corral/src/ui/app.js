// Corral's dashboard: polls GET /ui/state once a second and draws it. Everything the server
// sends is written as text (textContent), never as markup: URLs and tags in the purge stream
// come from clients. The admin token, when the replica has one, lives in this tab's session
// storage and travels only in the Authorization header.
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "corral-admin-token";
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let timer = null;
let pendingPurge = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

async function poll() {
  clearTimeout(timer);
  try {
    const r = await fetch("/ui/state", { headers: headers(), cache: "no-store" });
    if (r.status === 401) {
      $("auth").hidden = false;
      setStatus("auth", token ? "the token was refused" : "this replica needs its admin token");
      return; // polling resumes once a token is given
    }
    if (!r.ok) throw new Error("/ui/state answered " + r.status);
    $("auth").hidden = true;
    draw(await r.json());
    setStatus("ok", "updated " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus("error", String(e.message || e));
  }
  timer = setTimeout(poll, POLL_MS);
}

// ---- formatting -------------------------------------------------------------------------

const fmt = {
  num: (v, d = 0) => (v == null ? "–" : Number(v).toFixed(d)),
  pct: (v) => (v == null ? "–" : (v * 100).toFixed(1) + " %"),
  ms: (v) => (v == null ? "–" : v < 1 ? v.toFixed(2) + " ms" : v.toFixed(1) + " ms"),
  size(b) {
    if (b == null) return "–";
    for (const [u, n] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
      if (b >= n) return (b / n).toFixed(1) + " " + u;
    }
    return b + " B";
  },
  time: (ms) => new Date(ms).toLocaleTimeString(),
};

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    cell(tr, empty).colSpan = 7;
    tbody.appendChild(tr);
  }
}

// ---- charts: SVG polylines, gaps where there was no traffic ------------------------------

// `slots`: how many points a full window has; the newest point is at the right edge, so a
// young replica's short series does not stretch across the whole chart.
function line(svg, values, slots, top, cls) {
  const offset = Math.max(slots - values.length, 0);
  let points = [];
  const flush = () => {
    if (points.length > 1) {
      const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      p.setAttribute("points", points.join(" "));
      p.setAttribute("class", cls);
      svg.appendChild(p);
    }
    points = [];
  };
  values.forEach((v, i) => {
    if (v == null) return flush();
    const x = slots > 1 ? ((offset + i) / (slots - 1)) * 300 : 0;
    const y = 58 - (top > 0 ? Math.min(v / top, 1) : 0) * 56;
    points.push(x.toFixed(1) + "," + y.toFixed(1));
  });
  flush();
}

function chart(id, slots, series) {
  const svg = $(id);
  svg.replaceChildren();
  for (const [values, top, cls] of series) line(svg, values, slots, top, cls);
}

// ---- sections ---------------------------------------------------------------------------

function draw(s) {
  $("instance").textContent = s.instance + " · " + s.version;
  drawTraffic(s.traffic);
  drawStore(s.store, s.redis);
  drawPurges(s.purges, s.cluster);
  drawPeers(s.cluster);
  drawUpstreams(s.upstreams.upstreams || []);
  drawSources(s.sources || []);
}

function drawTraffic(t) {
  const m = t.last_minute || {};
  $("rps").textContent = fmt.num(m.rps, 1);
  $("hit-ratio").textContent = fmt.pct(m.hit_ratio);
  $("p50").textContent = fmt.ms(m.p50_ms);
  $("p99").textContent = fmt.ms(m.p99_ms);
  const pts = t.points;
  const seconds = pts.length * t.interval_s;
  $("span").textContent = seconds < 120 ? seconds + " s" : Math.round(seconds / 60) + " min";
  const rps = pts.map((p) => p.rps);
  const peakRps = Math.max(0, ...rps);
  $("peak-rps").textContent = fmt.num(peakRps, 1);
  chart("chart-rps", t.capacity, [[rps, peakRps, "rps"]]);
  chart("chart-hit", t.capacity, [[pts.map((p) => p.hit_ratio), 1, "hit"]]);
  const p99 = pts.map((p) => p.p99_ms);
  const peakLatency = Math.max(0, ...p99.filter((v) => v != null));
  $("peak-latency").textContent = fmt.ms(peakLatency);
  chart("chart-latency", t.capacity, [
    [pts.map((p) => p.p50_ms), peakLatency, "p50"],
    [p99, peakLatency, "p99"],
  ]);
}

function drawStore(st, redis) {
  $("store-meter").value = st.max_bytes ? st.bytes / st.max_bytes : 0;
  $("store-bytes").textContent = fmt.size(st.bytes);
  $("store-max").textContent = fmt.size(st.max_bytes);
  $("store-share").textContent = st.max_bytes ? fmt.pct(st.bytes / st.max_bytes) : "–";
  $("entries").textContent = fmt.num(st.entries);
  $("refused").textContent = fmt.num(st.admissions_refused);
  const b = $("breaker");
  b.dataset.state = redis ? redis.breaker : "none";
  b.textContent = redis ? "breaker " + redis.breaker : "not configured";
}

function describe(what, soft) {
  const parts = [];
  if (what.all) parts.push("everything");
  for (const [kind, key] of [["tag", "tags"], ["URL", "urls"], ["prefix", "prefixes"]]) {
    for (const v of what[key] || []) parts.push(kind + " " + v);
  }
  if (what.more) parts.push("+" + what.more + " more");
  return parts.join(", ") + (soft ? " (soft)" : "");
}

// How far a purge's fan-out got: settled by the server's tracker, or counted live from the
// peers' acknowledged sequence numbers while it waits.
function fanout(p, cluster) {
  const f = p.fanout;
  const peers = cluster.peers || [];
  switch (f.state) {
    case "acknowledged":
      return [f.peers === 0 ? "no peers" : "all " + f.peers + " in " + f.after_ms + " ms", f.peers, f.peers, "ok"];
    case "waiting": {
      const acked = peers.filter((x) => x.last_acknowledged_seq >= p.seq).length;
      return ["waiting: " + acked + " of " + peers.length, acked, peers.length, "warn"];
    }
    case "pending":
      return ["pending after 30 s: " + f.pending.join(", "), f.acknowledged.length,
              f.acknowledged.length + f.pending.length, "bad"];
    case "untracked":
      return ["not tracked (too many at once)", null, null, ""];
    default:
      if (p.source === "peer") return ["from " + p.origin, null, null, ""];
      if (p.source === "reset") return ["local reset", null, null, "warn"];
      return ["no cluster configured", null, null, ""];
  }
}

function drawPurges(list, cluster) {
  const rows = list.map((p) => {
    const tr = document.createElement("tr");
    const [text, acked, peers, cls] = fanout(p, cluster);
    tr.dataset.event = p.id;
    tr.dataset.fanout = p.fanout.state;
    if (acked != null) tr.dataset.acked = acked;
    if (peers != null) tr.dataset.peers = peers;
    cell(tr, fmt.time(p.applied_ms));
    cell(tr, p.source);
    cell(tr, p.cause.replace("_", " ") + " · " + p.who);
    cell(tr, describe(p.what, p.soft), "what");
    cell(tr, p.purged, "purged");
    cell(tr, text, "fanout " + cls);
    return tr;
  });
  fill($("purge-rows"), rows, "no purges yet");
}

function drawPeers(c) {
  const self = c.self || {};
  $("self").textContent = c.cluster === "not configured"
    ? "no cluster configured"
    : "this replica " + (self.address || "") + " · last seq " + self.last_seq;
  const rows = (c.peers || []).map((p) => {
    const tr = document.createElement("tr");
    tr.dataset.peer = p.address;
    tr.dataset.lag = p.lag;
    cell(tr, p.address);
    cell(tr, p.origin);
    cell(tr, p.last_acknowledged_seq, "acked");
    cell(tr, p.lag, p.lag > 0 ? "warn" : "");
    cell(tr, p.queue);
    cell(tr, p.silent ? "silent" : "ok", p.silent ? "bad" : "ok");
    cell(tr, p.last_error || "–", p.last_error ? "error" : "");
    return tr;
  });
  fill($("peer-rows"), rows, "no peers");
}

// One row per [[sources]] entry; the section shows only when there is one. Lag and position
// are the leader's own: another replica shows who leads and "following elsewhere".
function drawSources(sources) {
  $("sources").hidden = sources.length === 0;
  const rows = sources.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.source = s.name;
    cell(tr, s.name + " (" + s.kind + ")");
    cell(tr, (s.leader || "–") + (s.is_leader ? " (this replica)" : "") + " · " + s.leadership);
    const state = s.streaming ? "streaming" : s.is_leader ? "connecting" : "following elsewhere";
    cell(tr, state, s.streaming ? "ok" : s.is_leader ? "warn" : "");
    cell(tr, s.confirmed_lsn || "–");
    cell(tr, s.lag_seconds == null ? "–" : s.lag_seconds.toFixed(2) + " s · " + s.lag_bytes + " B",
      s.lag_seconds > 1 ? "warn" : "");
    cell(tr, s.transactions, "transactions");
    const last = s.last_transaction;
    cell(tr, last ? "xid " + last.xid + " at " + new Date(last.commit_time_ms).toISOString() : "–");
    cell(tr, s.last_error || "–", s.last_error ? "error" : "");
    return tr;
  });
  fill($("source-rows"), rows, "no sources");
}

function drawUpstreams(ups) {
  const rows = [];
  for (const u of ups) {
    const eps = u.endpoints.length ? u.endpoints : [null];
    for (const e of eps) {
      const tr = document.createElement("tr");
      cell(tr, u.name + (u.panic ? " (panic)" : ""));
      cell(tr, (u.routes || []).join(", "));
      if (!e) {
        cell(tr, "no endpoints", "bad");
      } else {
        tr.dataset.endpoint = e.address;
        cell(tr, e.address);
        cell(tr, e.healthy ? "healthy" : "unhealthy", e.healthy ? "ok" : "bad");
        cell(tr, e.ejected ? "for " + e.ejected_for_ms + " ms" : "no", e.ejected ? "warn" : "");
        cell(tr, e.in_flight);
        cell(tr, e.requests + " · " + e.failures);
      }
      rows.push(tr);
    }
  }
  fill($("upstream-rows"), rows, "no upstreams");
}

// ---- the purge form: asks first, then POST /purge -----------------------------------------

function askToPurge(ev) {
  ev.preventDefault();
  const kind = $("purge-kind").value;
  const value = $("purge-value").value.trim();
  if (!value) return;
  const soft = $("purge-mode").value === "soft";
  pendingPurge = { kind, value, soft };
  const label = { tags: "tag", urls: "URL", prefixes: "prefix" }[kind];
  $("purge-confirm-text").textContent =
    (soft ? "Mark stale" : "Drop") + " everything under " + label + " “" + value +
    "” on this replica and every peer?";
  $("purge-confirm").hidden = false;
}

async function purge() {
  const p = pendingPurge;
  pendingPurge = null;
  $("purge-confirm").hidden = true;
  if (!p) return;
  const result = $("purge-result");
  const body = { soft: p.soft };
  body[p.kind] = [p.value];
  try {
    const r = await fetch("/purge", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(r.status + ": " + (answer.error || "refused"));
    result.dataset.state = "done";
    result.dataset.event = answer.event;
    result.textContent = "purged " + answer.purged + " entries here (event " + answer.event + ")";
    poll();
  } catch (e) {
    result.dataset.state = "error";
    result.textContent = "purge failed: " + (e.message || e);
  }
}

function cancelPurge() {
  pendingPurge = null;
  $("purge-confirm").hidden = true;
}

function useToken(ev) {
  ev.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  poll();
}

function forgetToken() {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", useToken);
  $("token-forget").addEventListener("click", forgetToken);
  $("purge-form").addEventListener("submit", askToPurge);
  $("purge-confirm-yes").addEventListener("click", purge);
  $("purge-confirm-no").addEventListener("click", cancelPurge);
  poll();
});
