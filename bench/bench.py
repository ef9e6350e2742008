#!/usr/bin/env python3
"""Side-by-side benchmarks: Corral, Varnish (default VCL, malloc storage), nginx (proxy_cache,
proxy_cache_lock on) and a ceiling (nginx answering the same bytes from memory, no proxying).

The servers under test run on core 0; the load generator (wrk, or the stampede client in this
file), the origin and this driver on core 1. Every timed run is repeated (3 times by default)
and the median is reported; on a shared machine read the ratios, not the absolute figures.
Everything listens on 127.0.0.1 only. See bench/README.md.

    bench/bench.py [--quick] [--scenario hits|zipf|stampede|purge|memory|coherence]...
                   [--runs N] [--duration S] [--out FILE.md]

Run it through bench/run.sh, which installs the tools and builds Corral.
"""
import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.abspath(__file__))
CORRAL = os.environ.get("CORRAL_BIN", os.path.join(ROOT, "..", "target", "release", "corral"))
NCPU = os.cpu_count() or 1
PINNED = NCPU >= 2 and shutil.which("taskset") is not None
SERVER_CPU = ["taskset", "-c", "0"] if PINNED else []
LOAD_CPU = ["taskset", "-c", "1"] if PINNED else []
HOST = "127.0.0.1"  # load only ever targets loopback

# Every port the benchmark binds is BASE + a fixed offset; BENCH_PORT_BASE moves them all.
BASE = int(os.environ.get("BENCH_PORT_BASE", "18000"))
PORTS = dict(origin=BASE, ceiling=BASE + 1, corral=BASE + 2, varnish=BASE + 3, nginx=BASE + 4)
CORRAL_ADMIN = BASE + 102
VARNISH_CLI = BASE + 103
MEM_PORT, MEM_ADMIN = BASE + 12, BASE + 112
SYSTEMS = ["corral", "varnish", "nginx"]
SCENARIOS = ["hits", "zipf", "stampede", "purge", "memory", "coherence"]
CACHE_SIZE = "32MiB"  # the same bound for every proxy in hits/zipf/stampede
COHERENCE_ISSUE = "Coherent invalidation across replicas"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def http(method, url, body=None, timeout=30, headers=None):
    """(status, headers, body); HTTP error statuses are returned, not raised."""
    assert url.startswith(f"http://{HOST}:"), url
    data = None if body is None else json.dumps(body).encode()
    h = {"content-type": "application/json"} if body is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def wait_http(url, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            if http("GET", url, timeout=2)[0] < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {secs}s")


def ports_in_use(ports):
    """The ports among `ports` something already listens on (a stray server would answer in
    place of the system under test and make every figure meaningless)."""
    busy = []
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((HOST, port)) == 0:
                busy.append(port)
    return busy


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(sorted_xs, p):
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(round(p / 100 * (len(sorted_xs) - 1)))))
    return sorted_xs[k]


def fmt(v, digits=0, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "n/a"


class Bench:
    def __init__(self, work, quick, runs, duration):
        self.work, self.quick = work, quick
        self.procs = {}
        self.duration = duration or (3 if quick else 8)
        self.runs = runs
        self.runs_large = 1  # 1M-entry purge fills cost a minute or more each: one run
        self.summary = []  # rows of the final table
        self.details = []  # Markdown blocks, per scenario

    # ------------------------------------------------------------------ processes
    def spawn(self, argv, name, cpu=SERVER_CPU, env=None):
        out = open(os.path.join(self.work, f"{name}.log"), "w")
        # Own process group: stop() ends the whole tree (varnishd's child, nginx's workers).
        p = subprocess.Popen(cpu + argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=wait)
                # The group may outlive its leader (workers): make sure it is gone.
                os.killpg(p.pid, signal.SIGKILL)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue
            break

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def group_pids(self, name):
        pgid = self.procs[name].pid
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.getpgid(int(pid)) == pgid:
                        yield int(pid)
                except (OSError, ProcessLookupError):
                    continue

    def cpu_seconds(self, name):
        """CPU time (user + system, every thread) used so far by a process group's live
        members: the server's cost, whoever else shares its core."""
        ticks = 0
        for pid in self.group_pids(name):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                continue
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_kib(self, name):
        """Resident memory of a process group (the process and its children), in KiB."""
        total = 0
        for pid in self.group_pids(name):
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (OSError, ProcessLookupError):
                continue
        return total

    # ------------------------------------------------------------------ systems
    def start_origin(self):
        self.spawn([CORRAL, "origin", "--listen", f"{HOST}:{PORTS['origin']}"], "origin", cpu=LOAD_CPU,
                   env=dict(os.environ, CORRAL_LOG="warn"))
        wait_http(f"http://{HOST}:{PORTS['origin']}/health")

    def origin_count(self, kind=None):
        _, _, body = http("GET", f"http://{HOST}:{PORTS['origin']}/_origin/stats")
        v = json.loads(body)
        return v["total"] if kind is None else v["by_kind"].get(kind, 0)

    def start_ceiling(self):
        www = os.path.join(self.work, "www", "bytes")
        os.makedirs(www, exist_ok=True)
        for n in (1024, 102400):
            _, _, body = http("GET", f"http://{HOST}:{PORTS['origin']}/bytes/{n}")
            with open(os.path.join(www, str(n)), "wb") as f:
                f.write(body)
        conf = os.path.join(self.work, "ceiling.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1; daemon off; pid {self.work}/ceiling.pid; error_log {self.work}/ceiling.err;
events {{ worker_connections 8192; }}
http {{ access_log off; sendfile off; output_buffers 1 128k; keepalive_requests 10000000;
  open_file_cache max=1000 inactive=1h; open_file_cache_valid 1h;
  server {{ listen {HOST}:{PORTS['ceiling']} backlog=4096; root {self.work}/www;
    location / {{ default_type application/octet-stream; add_header Cache-Control "public, max-age=3600"; }} }} }}
""")
        self.spawn(["nginx", "-c", conf, "-p", self.work], "ceiling")
        wait_http(f"http://{HOST}:{PORTS['ceiling']}/bytes/1024")

    def start_corral(self, size, port=PORTS["corral"], admin=CORRAL_ADMIN, name="corral"):
        conf = os.path.join(self.work, f"{name}.toml")
        with open(conf, "w") as f:
            f.write(f'[cache]\nmax_size = "{size}"\nmax_object_size = "8MiB"\n')
        argv = [CORRAL, "serve", "--config", conf, "--listen", f"{HOST}:{port}",
                "--admin-listen", f"{HOST}:{admin}", "--upstream", f"http://{HOST}:{PORTS['origin']}"]
        env = dict(os.environ, CORRAL_LOG="warn")
        env.pop("CORRAL_ADMIN_TOKEN", None)
        p = self.spawn(argv, name, env=env)
        try:
            wait_http(f"http://{HOST}:{admin}/readyz")
        except RuntimeError:
            wait_http(f"http://{HOST}:{port}/bytes/1")  # an admin API without /readyz
        return p

    def start_varnish(self, size):
        vdir = os.path.join(self.work, "varnish")
        self.spawn(["varnishd", "-F", "-n", vdir, "-a", f"{HOST}:{PORTS['varnish']}",
                    "-b", f"{HOST}:{PORTS['origin']}", "-s", f"malloc,{size}",
                    "-T", f"{HOST}:{VARNISH_CLI}", "-p", "thread_pools=1", "-p", "listen_depth=4096"],
                   "varnish")
        wait_http(f"http://{HOST}:{PORTS['varnish']}/health", secs=60)

    def varnishadm(self, *args):
        return subprocess.run(["varnishadm", "-n", os.path.join(self.work, "varnish"), *args],
                              capture_output=True, text=True, timeout=60)

    def start_nginx(self, size, zone="16m"):
        conf = os.path.join(self.work, "nginx.conf")
        cache = os.path.join(self.work, "nginx-cache")  # the work dir is on tmpfs (/dev/shm)
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        with open(conf, "w") as f:
            f.write(f"""
user root; worker_processes 1; daemon off; pid {self.work}/nginx.pid; error_log {self.work}/nginx.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000;
  proxy_cache_path {cache} levels=1:2 keys_zone=bench:{zone} max_size={size} inactive=1h use_temp_path=off;
  upstream origin {{ server {HOST}:{PORTS['origin']}; keepalive 64; }}
  server {{ listen {HOST}:{PORTS['nginx']} backlog=4096;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache bench; proxy_cache_lock on; proxy_cache_lock_timeout 30s; proxy_cache_lock_age 30s;
      proxy_cache_key $uri$is_args$args; add_header X-Cache-Status $upstream_cache_status; }} }} }}
""")
        self.spawn(["nginx", "-c", conf, "-p", self.work], "nginx")
        wait_http(f"http://{HOST}:{PORTS['nginx']}/health")

    def corral_metric(self, name, admin=CORRAL_ADMIN, label=None):
        """A Prometheus sample's value (summed over series matching `label`), None if absent."""
        try:
            status, _, text = http("GET", f"http://{HOST}:{admin}/metrics", timeout=10)
        except OSError:
            return None
        if status != 200:
            return None
        total, seen = 0.0, False
        for line in text.decode().splitlines():
            if line.startswith("#"):
                continue
            m = re.match(rf"{name}(\{{[^}}]*\}})?\s+(\S+)", line)
            if m and (label is None or (m.group(1) and label in m.group(1))):
                total += float(m.group(2))
                seen = True
        return total if seen else None

    def is_hit(self, system, url):
        """Whether `url` is answered from the system's cache now (asked twice)."""
        http("GET", url)
        _, h, _ = http("GET", url)
        if system == "corral":
            return "hit" in (h.get("cache-status") or "")
        if system == "varnish":
            return len((h.get("x-varnish") or "").split()) == 2
        if system == "nginx":
            return h.get("x-cache-status") == "HIT"
        return True

    # ------------------------------------------------------------------ load
    def wrk(self, url, conns=64, script=None, duration=None, timeout="10s"):
        assert url.startswith(f"http://{HOST}:"), url
        d = duration or self.duration
        argv = LOAD_CPU + ["wrk", "-t1", f"-c{conns}", f"-d{d}s", "--latency", "--timeout", timeout]
        if script:
            argv += ["-s", script]
        out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=d + 60).stdout
        return parse_wrk(out)

    def fill(self, port, n, tag, prefix, size=64):
        """Requests /key/<prefix>1..n once each through the proxy (wrk: a counter, 1 thread)
        until the origin has seen n such requests; bounded at 15 minutes."""
        t0, before = time.time(), self.origin_count("key")
        done = 0
        while done < n and time.time() - t0 < 900:
            # Each wrk run resumes after the keys already fetched (a counter, one thread).
            script = os.path.join(self.work, f"fill-{prefix}.lua")
            with open(script, "w") as f:
                f.write(f"""
local i = {done}
request = function()
  i = i + 1
  if i > {n} then i = 1 end
  return wrk.format("GET", "/key/{prefix}" .. i .. "?size={size}&tag={tag}")
end
""")
            self.wrk(f"http://{HOST}:{port}", conns=32, script=script,
                     duration=max(2, min(30, (n - done) // 15000 + 2)))
            done = self.origin_count("key") - before
        filled = self.origin_count("key") - before
        log(f"  filled {filled} entries (tag {tag}) in {time.time() - t0:.0f}s")
        return filled


def parse_wrk(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk failed:\n{out}")

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return dict(rps=float(m.group(1)), p50=lat(50), p99=lat(99),
                total=int(re.search(r"(\d+) requests in", out).group(1)),
                errors=errors + (int(non2xx.group(1)) if non2xx else 0))


# ---------------------------------------------------------------------- scenarios
def hits(b):
    rows, block = {}, ["## 1. Hits: throughput and latency, 64 connections, keep-alive", "",
                       "| body | system | req/s | p50 ms | p99 ms | vs ceiling | req per server CPU-second | errors | origin requests during runs |",
                       "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    names = ["ceiling"] + SYSTEMS
    for size in (1024, 102400):
        runs = {n: [] for n in names}
        origin = {n: 0 for n in names}
        for name in names:
            url = f"http://{HOST}:{PORTS[name]}/bytes/{size}"
            if not b.is_hit(name, url):
                log(f"  warning: {name} does not answer {url} from cache")
            b.wrk(url, duration=max(1, b.duration // 3))  # warm-up, not measured
        for _ in range(b.runs):  # runs interleaved across systems, so drift hits all alike
            for name in names:
                before, cpu = b.origin_count(), b.cpu_seconds(name)
                r = b.wrk(f"http://{HOST}:{PORTS[name]}/bytes/{size}")
                cpu = b.cpu_seconds(name) - cpu
                # Requests per CPU-second of the server: what a saturated load generator hides.
                r["per_cpu"] = r["total"] / cpu if cpu > 0 else None
                runs[name].append(r)
                origin[name] += b.origin_count() - before
        res = {n: {k: med(r[k] for r in runs[n]) for k in ("rps", "p50", "p99", "per_cpu")} for n in names}
        for n in names:
            r = res[n]
            block.append(f"| {size // 1024} KiB | {n} | {fmt(r['rps'])} | {fmt(r['p50'], 2)} | {fmt(r['p99'], 2)} | "
                         f"{ratio(r['rps'], res['ceiling']['rps'])} | {fmt(r['per_cpu'])} | "
                         f"{sum(x['errors'] for x in runs[n])} | {origin[n]} |")
        rows[size] = res
        kib = f"{size // 1024} KiB"
        add_row(b, "1. hits", f"{kib} req/s", res, "rps", 0, "≥0.9× ceiling, ≥1.2× Varnish",
                lambda r: r["corral"] >= 0.9 * r["ceiling"] and r["corral"] >= 1.2 * r["varnish"])
        add_row(b, "1. hits", f"{kib} req per server CPU-second", res, "per_cpu", 0, "")
        add_row(b, "1. hits", f"{kib} p50 ms", res, "p50", 3, "")
        add_row(b, "1. hits", f"{kib} p99 ms", res, "p99", 3, "≤ nginx", lambda r: r["corral"] <= r["nginx"])
    b.details.append("\n".join(block))


def add_row(b, scenario, metric, res, key, digits, target, check=None):
    v = {n: (res[n][key] if n in res and res[n] is not None else None) for n in ["ceiling"] + SYSTEMS}
    met = ""
    if check:
        try:
            met = "yes" if check(v) else "no"
        except TypeError:
            met = "n/a"
    b.summary.append((scenario, metric, v, digits, target, met))


ZIPF_LUA = """
local n, s = {keys}, {s}
local cdf, sum = {{}}, 0
for k = 1, n do sum = sum + 1 / k ^ s; cdf[k] = sum end
for k = 1, n do cdf[k] = cdf[k] / sum end
math.randomseed({seed})
request = function()
  local r, lo, hi = math.random(), 1, n
  while lo < hi do local mid = math.floor((lo + hi) / 2); if cdf[mid] < r then lo = mid + 1 else hi = mid end end
  return wrk.format("GET", "/key/{prefix}" .. lo .. "?size=1024")
end
"""


def zipf_ideal(keys, s, capacity):
    """Hit ratio of a perfect static cache holding the `capacity` most popular keys."""
    w = [1 / k ** s for k in range(1, keys + 1)]
    return sum(w[:capacity]) / sum(w)


def zipf(b, keys):
    s = 1.0
    block = [f"## 2. Zipf (s = {s}) over {keys:,} keys of 1 KiB, the same {CACHE_SIZE} bound for all", "",
             f"Keys needed to hold everything: {keys * 1024 / 2**20:.0f} MiB of bodies. For reference, a perfect "
             f"cache of the most popular keys holding 32 MiB / 1.3 KiB ≈ {32 * 1024 // 1.3:,.0f} entries would hit "
             f"{zipf_ideal(keys, s, int(32 * 1024 / 1.3)):.3f}.", "",
             "| system | req/s | p50 ms | p99 ms | hit ratio (1 − origin requests / requests) | errors |",
             "| --- | --- | --- | --- | --- | --- |"]
    runs = {n: [] for n in SYSTEMS}

    def script(name, run):
        # A fresh seed per run: a replayed sequence would only ask for keys already cached.
        path = os.path.join(b.work, f"zipf-{name}-{run}.lua")
        with open(path, "w") as f:
            f.write(ZIPF_LUA.format(keys=keys, s=s, seed=1000 * run + SYSTEMS.index(name), prefix=f"z{name}-"))
        return path
    for name in SYSTEMS:  # warm-up, not measured: long enough to fill 32 MiB
        b.wrk(f"http://{HOST}:{PORTS[name]}", script=script(name, 0), duration=2 * b.duration)
    for run in range(1, b.runs + 1):
        for name in SYSTEMS:
            before = b.origin_count("key")
            r = b.wrk(f"http://{HOST}:{PORTS[name]}", script=script(name, run))
            r["hit"] = 1 - (b.origin_count("key") - before) / max(1, r["total"])
            runs[name].append(r)
    res = {n: {k: med(r[k] for r in runs[n]) for k in ("rps", "p50", "p99", "hit")} for n in SYSTEMS}
    for n in SYSTEMS:
        r = res[n]
        block.append(f"| {n} | {fmt(r['rps'])} | {fmt(r['p50'], 2)} | {fmt(r['p99'], 2)} | {fmt(r['hit'], 3)} | "
                     f"{sum(x['errors'] for x in runs[n])} |")
    b.details.append("\n".join(block))
    add_row(b, "2. zipf", "req/s", res, "rps", 0, "")
    add_row(b, "2. zipf", "hit ratio", res, "hit", 3, "")
    add_row(b, "2. zipf", "p99 ms", res, "p99", 3, "")


async def stampede_client(port, path, n, timeout=30):
    """n connections opened first, then n requests for `path` written at once; per-request
    latency from the write to the end of the response, and its status."""
    conns = await asyncio.gather(*[asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
                                   for _ in range(n)], return_exceptions=True)
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()

    async def one(c):
        if isinstance(c, BaseException):
            return None, "connect"
        reader, writer = c
        t0 = time.perf_counter()
        try:
            writer.write(req)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = head.split(b" ", 2)[1].decode()
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if m:
                await asyncio.wait_for(reader.readexactly(int(m.group(1))), timeout)
            else:
                await asyncio.wait_for(reader.read(), timeout)
            return time.perf_counter() - t0, status
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, IndexError) as e:
            return None, type(e).__name__
        finally:
            writer.close()

    return await asyncio.gather(*[one(c) for c in conns])


def stampede(b, n=1000, ms=500):
    block = [f"## 3. Stampede: {n:,} concurrent requests (one connection each) for one cold key; the origin answers in {ms} ms", "",
             "| system | origin requests | p50 ms | p99 ms | max ms | errors |", "| --- | --- | --- | --- | --- | --- |"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * n), hard))
    runs = {name: [] for name in SYSTEMS}
    for run in range(b.runs):
        for name in SYSTEMS:
            before = b.origin_count("slow")
            res = asyncio.run(stampede_client(PORTS[name], f"/slow/{ms}/{name}-{run}-{time.time_ns()}", n))
            time.sleep(0.5)  # let any straggling origin fetch be counted
            lat = sorted(r[0] * 1000 for r in res if r[0] is not None)
            errors = sum(1 for r in res if r[1] != "200")
            runs[name].append(dict(origin=b.origin_count("slow") - before, p50=pct(lat, 50), p99=pct(lat, 99),
                                   max=lat[-1] if lat else None, errors=errors))
    res = {name: {k: med(r[k] for r in runs[name]) for k in ("origin", "p50", "p99", "max", "errors")} for name in SYSTEMS}
    for name in SYSTEMS:
        r = res[name]
        per_run = ", ".join(str(x["origin"]) for x in runs[name])
        block.append(f"| {name} | {fmt(r['origin'])} (runs: {per_run}) | {fmt(r['p50'])} | {fmt(r['p99'])} | "
                     f"{fmt(r['max'])} | {fmt(r['errors'])} |")
    b.details.append("\n".join(block))
    add_row(b, "3. stampede", "origin requests", res, "origin", 0, "exactly 1",
            lambda r: all(x["origin"] == 1 for x in runs["corral"]))
    add_row(b, "3. stampede", "p99 ms", res, "p99", 0, "")


def hot_p99(b, port, secs, action=None, at=2.0):
    """wrk on a hot URL for `secs`, running `action` `at` seconds in; (p99 ms, action result)."""
    hot = f"http://{HOST}:{port}/bytes/1024"
    http("GET", hot)
    loader = subprocess.Popen(LOAD_CPU + ["wrk", "-t1", "-c16", f"-d{secs}s", "--latency", hot],
                              stdout=subprocess.PIPE, text=True)
    result = None
    try:
        if action:
            time.sleep(at)
            result = action()
        out = loader.communicate(timeout=secs + 60)[0]
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.wait()
    return parse_wrk(out)["p99"], result


def watch_reclaim(b, target, out):
    """Seconds until corral_cache_entries falls to `target` (memory of purged entries freed)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 60:
        e = b.corral_metric("corral_cache_entries")
        if e is None:
            return
        if e <= target:
            out["secs"] = time.perf_counter() - t0
            return
        time.sleep(0.05)


def corral_purge(tag):
    t0 = time.perf_counter()
    try:
        status, _, body = http("POST", f"http://{HOST}:{CORRAL_ADMIN}/purge", {"tags": [tag]}, timeout=120)
    except OSError as e:
        return None, f"unreachable: {e}"
    ms = (time.perf_counter() - t0) * 1000
    if status != 200:
        return None, f"HTTP {status}: {body[:100]!r}"
    try:
        return ms, json.loads(body).get("purged")
    except ValueError:
        return ms, None


def purge(b, sizes):
    block = ["## 4. Purge one tag covering N entries, with request latency on a hot URL meanwhile", "",
             "Corral: `POST /purge {\"tags\": [T]}` on the admin port (answered when the purge is applied). "
             "Varnish: `ban obj.http.Surrogate-Key ~ T` through varnishadm (a ban is lazy: it is tested against "
             "each object at lookup or by the ban lurker afterwards). nginx (open source) has no tag purge.", "",
             "| system | entries | purge call ms | purged (reported) | purged URLs now missing | hot p99 ms before | hot p99 ms while purging | entries reclaimed after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    wrk_secs = 4 if b.quick else 6
    res = {}
    for n in sizes:
        runs = max(1, b.runs if n <= 100_000 else (1 if b.quick else b.runs_large))
        for name in ("corral", "varnish"):
            port = PORTS[name]
            rows = []
            for run in range(runs):
                tag = f"t{n}{name}{run}"
                filled = b.fill(port, n, tag, f"{tag}-")
                p99_before, _ = hot_p99(b, port, wrk_secs)
                reclaim = {}
                if name == "corral":
                    entries_before = b.corral_metric("corral_cache_entries")

                    def purge_and_watch():
                        out = corral_purge(tag)
                        if out[0] is not None and entries_before is not None:
                            reclaim["thread"] = threading.Thread(
                                target=watch_reclaim, args=(b, entries_before - 0.99 * filled, reclaim), daemon=True)
                            reclaim["thread"].start()
                        return out
                    p99_during, (ms, reported) = hot_p99(b, port, wrk_secs, purge_and_watch)
                else:
                    def ban():
                        t0 = time.perf_counter()
                        r = b.varnishadm("ban", "obj.http.Surrogate-Key", "~", tag)
                        return ((time.perf_counter() - t0) * 1000 if r.returncode == 0 else None), \
                            ("ban" if r.returncode == 0 else r.stdout + r.stderr)
                    p99_during, (ms, reported) = hot_p99(b, port, wrk_secs, ban)
                # Sample purged URLs: each must now miss (reach the origin).
                sample = [1, n // 2, n] if filled >= n else [1]
                before = b.origin_count("key")
                for i in sample:
                    http("GET", f"http://{HOST}:{port}/key/{tag}-{i}?size=64&tag={tag}")
                missing = f"{b.origin_count('key') - before}/{len(sample)}"
                if "thread" in reclaim:
                    reclaim["thread"].join(timeout=70)
                reclaimed = ("lazy (ban lurker)" if name == "varnish"
                             else f"{reclaim['secs']:.2f} s" if "secs" in reclaim
                             else "> 60 s" if "thread" in reclaim else "n/a")
                rows.append(dict(ms=ms, reported=reported, missing=missing, before=p99_before, during=p99_during,
                                 reclaimed=reclaimed, filled=filled))
                if ms is None:
                    log(f"  {name} purge failed: {reported}")
                    break
            r = {k: med(x[k] for x in rows) for k in ("ms", "before", "during")}
            res[(name, n)] = r
            last = rows[-1]
            note = "" if ms is not None else f" ({last['reported']})"
            block.append(f"| {name} | {last['filled']:,} | {fmt(r['ms'], 2)}{note} | {fmt(last['reported'])} | {last['missing']} | "
                         f"{fmt(r['before'], 2)} | {fmt(r['during'], 2)} | {last['reclaimed']} |")
    b.details.append("\n".join(block))
    for n in sizes:
        row = {"corral": res.get(("corral", n)), "varnish": res.get(("varnish", n))}
        add_row(b, "4. purge", f"{n:,} entries: purge ms", row, "ms", 2, "")
        add_row(b, "4. purge", f"{n:,} entries: hot p99 ms while purging", row, "during", 2, "")
    if len(sizes) > 1:
        a, z = res.get(("corral", sizes[0])), res.get(("corral", sizes[-1]))
        o1 = (a and z and a["ms"] and z["ms"]) and z["ms"] / a["ms"]
        b.summary.append(("4. purge", f"Corral purge time {sizes[-1]:,} / {sizes[0]:,} entries",
                          {"corral": o1}, 2, "O(1): ≈ 1", "n/a" if o1 is None else ("yes" if o1 < 2 else "no")))


def memory(b, entries, body=16):
    block = [f"## 5. Memory: {entries:,} small entries ({body}-byte bodies)", ""]
    bound_mib = 64
    res = {}
    # Corral: RSS growth per entry, and the bytes it charges against its bound.
    b.start_corral("4GiB", port=MEM_PORT, admin=MEM_ADMIN, name="corral-mem")
    time.sleep(0.5)
    http("GET", f"http://{HOST}:{MEM_PORT}/bytes/1")
    rss0 = b.rss_kib("corral-mem")
    n = b.fill(MEM_PORT, entries, "m", "mem-", size=body)
    time.sleep(2)
    rss1 = b.rss_kib("corral-mem")
    stored = b.corral_metric("corral_cache_entries", admin=MEM_ADMIN)
    charged = b.corral_metric("corral_cache_bytes", admin=MEM_ADMIN)
    b.stop("corral-mem")
    per = (rss1 - rss0) * 1024 / max(1, n) - body
    res["corral"] = dict(per=per, charged=(charged / stored if charged and stored else None), stored=stored)
    # Varnish, the same entries, for comparison (its malloc storage plus its object headers).
    b.stop("varnish")
    b.start_varnish("4g")
    http("GET", f"http://{HOST}:{PORTS['varnish']}/bytes/1")
    v0 = b.rss_kib("varnish")
    vn = b.fill(PORTS["varnish"], entries, "vm", "vmem-", size=body)
    time.sleep(2)
    v1 = b.rss_kib("varnish")
    b.stop("varnish")
    res["varnish"] = dict(per=(v1 - v0) * 1024 / max(1, vn) - body, charged=None, stored=vn)
    # The bound: 64 MiB, fed about 3x that.
    fill_n = entries
    q = b.start_corral(f"{bound_mib}MiB", port=MEM_PORT, admin=MEM_ADMIN, name="corral-bound")
    del q
    http("GET", f"http://{HOST}:{MEM_PORT}/bytes/1")
    base = b.rss_kib("corral-bound")
    b.fill(MEM_PORT, fill_n, "b", "bound-", size=200)
    time.sleep(2)
    bytes_charged = b.corral_metric("corral_cache_bytes", admin=MEM_ADMIN)
    bound_entries = b.corral_metric("corral_cache_entries", admin=MEM_ADMIN)
    rss = b.rss_kib("corral-bound")
    b.stop("corral-bound")
    bound = bound_mib << 20
    growth = (rss - base) * 1024
    block += ["| measure | corral | varnish |", "| --- | --- | --- |",
              f"| entries stored | {fmt(res['corral']['stored'])} | {fmt(vn)} |",
              f"| resident memory per entry beyond its {body}-byte body | {fmt(res['corral']['per'])} B | {fmt(res['varnish']['per'])} B |",
              f"| bytes charged against the bound per entry (body, headers, key) | {fmt(res['corral']['charged'])} B | n/a |",
              "", f"Bound: Corral with `max_size = \"{bound_mib}MiB\"` fed {fill_n:,} entries of 200 B "
              f"(≈ {fill_n * 200 / 2**20:.0f} MiB of bodies alone):", "",
              "| measure | value |", "| --- | --- |",
              f"| entries kept | {fmt(bound_entries)} |",
              f"| bytes charged | {fmt(bytes_charged and bytes_charged / 2**20, 1)} MiB ({fmt(bytes_charged and bytes_charged / bound * 100, 1)} % of the bound) |",
              f"| RSS growth of the process | {growth / 2**20:.1f} MiB ({growth / bound * 100:.1f} % of the bound) |",
              f"| RSS total | {rss / 1024:.1f} MiB |"]
    b.details.append("\n".join(block))
    add_row(b, "5. memory", "bytes per entry beyond the body (RSS)", res, "per", 0, "≤ 256 B",
            lambda r: r["corral"] <= 256)
    held = bytes_charged is not None and bytes_charged <= 1.05 * bound
    b.summary.append(("5. memory", f"{bound_mib} MiB bound: charged / RSS growth",
                      {"corral": f"{fmt(bytes_charged and bytes_charged / bound * 100, 1)} % / {growth / bound * 100:.0f} %"},
                      0, "exceeded by < 5 %", "yes" if held and growth <= 1.05 * bound else "no"))


def coherence(b):
    block = ["## 6. Invalidation propagation to 10 replicas", ""]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "propagation.py"), "--corral", CORRAL,
                        "--replicas", "10", "--purges", "100" if b.quick else "300", "--json"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode == 3:
        msg = f"skipped: needs coherence (issue: {COHERENCE_ISSUE})"
        block.append(msg)
        b.summary.append(("6. coherence", "propagation to 10 replicas", {"corral": msg}, 0, "", "n/a"))
    elif r.returncode != 0:
        block.append(f"failed:\n```\n{(r.stdout + r.stderr)[-2000:]}\n```")
        b.summary.append(("6. coherence", "propagation to 10 replicas", {"corral": "failed"}, 0, "", "n/a"))
    else:
        out = r.stdout.split("JSON:", 1)
        block.append(out[0].strip())
        v = json.loads(out[1]) if len(out) > 1 else {}
        b.summary.append(("6. coherence", "all 10 acknowledged p50 ms", {"corral": v.get("p50")}, 2, "", ""))
        b.summary.append(("6. coherence", "all 10 acknowledged p99 ms", {"corral": v.get("p99")}, 2, "", ""))
    b.details.append("\n".join(block))


def summary_table(b):
    lines = ["| scenario | metric | ceiling | corral | varnish | nginx | corral/ceiling | corral/varnish | corral/nginx | target | met |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for scenario, metric, v, digits, target, met in b.summary:
        c = v.get("corral")
        lines.append(f"| {scenario} | {metric} | {fmt(v.get('ceiling'), digits)} | {fmt(c, digits)} | {fmt(v.get('varnish'), digits)} | "
                     f"{fmt(v.get('nginx'), digits)} | {ratio(c, v.get('ceiling'))} | {ratio(c, v.get('varnish'))} | "
                     f"{ratio(c, v.get('nginx'))} | {target} | {met} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs, fewer entries")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS + ["propagation"])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median shown)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 8, quick 3)")
    ap.add_argument("--entries", type=int,
                    help="entries for purge and memory (default 1M, quick 200k); purge uses N/10 and N")
    ap.add_argument("--out", help="also write the report (Markdown) to this file")
    a = ap.parse_args()
    scenarios = [("coherence" if s == "propagation" else s) for s in (a.scenario or SCENARIOS)]
    if not os.access(CORRAL, os.X_OK):
        sys.exit(f"no corral binary at {CORRAL}: cargo build --release -p corral, or set CORRAL_BIN")
    if PINNED:
        os.sched_setaffinity(0, {1})  # this driver and the stampede client: the load core
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = tempfile.mkdtemp(prefix="corral-bench-", dir=base)
    os.chmod(work, 0o755)
    b = Bench(work, a.quick, max(1, a.runs), a.duration)
    started = time.time()

    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    head = (f"# Corral benchmarks ({'quick' if a.quick else 'full'})\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {NCPU} CPUs ({cpu}); "
            + ("servers pinned to core 0, load generator and origin to core 1" if PINNED else "no CPU pinning")
            + f"; medians of {b.runs} runs of {b.duration} s; `{' '.join(['bench/run.sh'] + sys.argv[1:])}`; "
            f"{subprocess.run([CORRAL, '--version'], capture_output=True, text=True).stdout.strip()}, "
            f"{subprocess.run(['varnishd', '-V'], capture_output=True, text=True).stderr.splitlines()[0]}, "
            f"{subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}")
    log(head)
    entries = a.entries or (200_000 if a.quick else 1_000_000)

    def run(name, fn):
        """Runs one scenario; a failure is reported in the output and the others still run."""
        if name not in scenarios:
            return
        log(f"scenario {name} ...")
        t0 = time.time()
        try:
            fn()
        except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            log(f"  scenario {name} failed: {e}")
            if os.environ.get("BENCH_TRACE"):
                traceback.print_exc()
            b.details.append(f"## {name}\n\nfailed: `{e}`")
            b.summary.append((name, "failed", {"corral": "failed"}, 0, "", "n/a"))
        log(f"  {name}: {time.time() - t0:.0f}s")

    def proxies():
        b.start_ceiling()
        b.start_corral(CACHE_SIZE)
        b.start_varnish("32m")
        b.start_nginx("32m")

    def purge_all():
        b.start_corral("4GiB")
        b.start_varnish("4g")
        purge(b, [entries // 10, entries] if a.entries or not a.quick else [100_000])
        b.stop("corral")
        b.stop("varnish")

    busy = ports_in_use(list(PORTS.values()) + [CORRAL_ADMIN, VARNISH_CLI, MEM_PORT, MEM_ADMIN])
    if busy:
        sys.exit(f"bench: ports already in use on {HOST}: {busy}; stop whatever holds them "
                 "or move every port with BENCH_PORT_BASE=N")
    interrupted = None
    try:
        b.start_origin()
        if any(s in scenarios for s in ("hits", "zipf", "stampede")):
            proxies()
            run("hits", lambda: hits(b))
            run("zipf", lambda: zipf(b, 100_000 if a.quick else 200_000))
            run("stampede", lambda: stampede(b))
            for name in ("ceiling", "corral", "varnish", "nginx"):
                b.stop(name)
        run("purge", purge_all)
        run("memory", lambda: memory(b, entries))
        run("coherence", lambda: coherence(b))
    except (SystemExit, KeyboardInterrupt, RuntimeError) as e:
        interrupted = e
        log(f"stopped early: {e!r}")
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    report = "\n\n".join([head, "## Summary", summary_table(b),
                          "Latency rows: lower is better, so a ratio below 1 favours Corral. "
                          "Throughput rows: higher is better."] + b.details)
    report += f"\n\n(total time {time.time() - started:.0f} s{'; INTERRUPTED, partial' if interrupted else ''})\n"
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
    if interrupted is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
