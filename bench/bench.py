#!/usr/bin/env python3
"""Side-by-side benchmarks: Corral, Varnish (default VCL, malloc), nginx (proxy_cache,
proxy_cache_lock on) and a ceiling (nginx answering the same bytes from memory, no proxy).

Servers run on core 0, the load generator (wrk, or the stampede client) and the origin on
core 1. Every timed run is repeated (3 times) and the median is reported; ratios are what to
read on a shared machine, not absolute figures. See bench/README.md.
"""
import argparse, asyncio, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.abspath(__file__))
CORRAL = os.environ.get("CORRAL_BIN", os.path.join(ROOT, "..", "target", "release", "corral"))
NCPU = os.cpu_count() or 1
SERVER_CPU = ["taskset", "-c", "0"] if NCPU >= 2 else []
LOAD_CPU = ["taskset", "-c", "1"] if NCPU >= 2 else []

PORTS = dict(origin=18000, ceiling=18001, corral=18002, varnish=18003, nginx=18004)
CORRAL_ADMIN = 18102


def http(method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            http("GET", url, timeout=2)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


class Bench:
    def __init__(self, work, quick):
        self.work, self.quick = work, quick
        self.procs = []
        self.duration = 3 if quick else 10
        self.runs = 3

    # ------------------------------------------------------------------ processes
    def spawn(self, argv, name, cpu=SERVER_CPU, env=None):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen(cpu + argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["pkill", "-f", f"varnishd.*{self.work}"], stderr=subprocess.DEVNULL)
        self.procs = []

    def start_origin(self):
        self.spawn([CORRAL, "origin", "--listen", f"127.0.0.1:{PORTS['origin']}"], "origin", cpu=LOAD_CPU)
        wait_http(f"http://127.0.0.1:{PORTS['origin']}/health")

    def start_ceiling(self):
        www = os.path.join(self.work, "www")
        for n in (1024, 102400):
            os.makedirs(os.path.join(www, "bytes"), exist_ok=True)
            _, body = http("GET", f"http://127.0.0.1:{PORTS['origin']}/bytes/{n}")
            open(os.path.join(www, "bytes", str(n)), "wb").write(body)
        conf = os.path.join(self.work, "ceiling.conf")
        open(conf, "w").write(f"""
worker_processes 1; daemon off; pid {self.work}/ceiling.pid; error_log {self.work}/ceiling.err;
events {{ worker_connections 8192; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 10000000;
  open_file_cache max=1000 inactive=1h; open_file_cache_valid 1h;
  server {{ listen 127.0.0.1:{PORTS['ceiling']} reuseport; root {www};
    location / {{ default_type application/octet-stream; add_header Cache-Control "public, max-age=3600"; }} }} }}
""")
        self.spawn(["nginx", "-c", conf, "-p", self.work], "ceiling")
        wait_http(f"http://127.0.0.1:{PORTS['ceiling']}/bytes/1024")

    def start_corral(self, size, port=PORTS["corral"], admin=CORRAL_ADMIN, name="corral"):
        conf = os.path.join(self.work, f"{name}.toml")
        open(conf, "w").write(f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
[upstream]
url = "http://127.0.0.1:{PORTS['origin']}"
[cache]
max_size = "{size}"
max_object_size = "8MiB"
""")
        p = self.spawn([CORRAL, "serve", "--config", conf], name, env=dict(os.environ, CORRAL_LOG="warn"))
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        return p

    def start_varnish(self, size):
        vdir = os.path.join(self.work, "varnish")
        self.spawn(["varnishd", "-F", "-n", vdir, "-a", f"127.0.0.1:{PORTS['varnish']}",
                    "-b", f"127.0.0.1:{PORTS['origin']}", "-s", f"malloc,{size}",
                    "-T", "127.0.0.1:18103", "-p", "thread_pools=1"], "varnish")
        wait_http(f"http://127.0.0.1:{PORTS['varnish']}/bytes/1024")

    def start_nginx(self, size):
        conf = os.path.join(self.work, "nginx.conf")
        cache = os.path.join(self.work, "nginx-cache")
        os.makedirs(cache, exist_ok=True)
        open(conf, "w").write(f"""
worker_processes 1; daemon off; pid {self.work}/nginx.pid; error_log {self.work}/nginx.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000;
  proxy_cache_path {cache} levels=1:2 keys_zone=bench:64m max_size={size} inactive=1h use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{PORTS['origin']}; keepalive 64; }}
  server {{ listen 127.0.0.1:{PORTS['nginx']} reuseport;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache bench; proxy_cache_lock on; proxy_cache_lock_timeout 30s;
      proxy_cache_key $uri$is_args$args; }} }} }}
""")
        self.spawn(["nginx", "-c", conf, "-p", self.work], "nginx")
        wait_http(f"http://127.0.0.1:{PORTS['nginx']}/bytes/1024")

    def origin_count(self, kind):
        _, body = http("GET", f"http://127.0.0.1:{PORTS['origin']}/_origin/stats")
        return json.loads(body)["by_kind"].get(kind, 0)

    # ------------------------------------------------------------------ load
    def wrk(self, url, conns=64, script=None, duration=None):
        argv = LOAD_CPU + ["wrk", "-t1", f"-c{conns}", f"-d{duration or self.duration}s", "--latency", "--timeout", "10s"]
        if script:
            argv += ["-s", script]
        out = subprocess.run(argv + [url], capture_output=True, text=True).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        total = int(re.search(r"(\d+) requests in", out).group(1))
        def lat(p):
            m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
            v, unit = float(m.group(1)), m.group(2)
            return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
        return dict(rps=rps, p50=lat(50), p99=lat(99), total=total)

    def median_wrk(self, url, **kw):
        runs = [self.wrk(url, **kw) for _ in range(self.runs)]
        return {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "total")}


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


# ---------------------------------------------------------------------- scenarios
def hits(b, systems):
    print("\n## 1. Hits: throughput and latency, 64 connections\n")
    print("| body | system | req/s | p50 ms | p99 ms | vs ceiling |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary = []
    for size in (1024, 102400):
        res = {}
        for name in ["ceiling"] + systems:
            url = f"http://127.0.0.1:{PORTS[name]}/bytes/{size}"
            for _ in range(2):
                http("GET", url)
            res[name] = b.median_wrk(url)
        for name, r in res.items():
            print(f"| {size // 1024} KiB | {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {ratio(r['rps'], res['ceiling']['rps'])} |")
        summary.append((size, res))
    print()
    for size, res in summary:
        c = res["corral"]
        line = [f"{size // 1024} KiB: Corral/ceiling {ratio(c['rps'], res['ceiling']['rps'])}"]
        for other in ("varnish", "nginx"):
            if other in res:
                line.append(f"Corral/{other} {ratio(c['rps'], res[other]['rps'])} (p99 {c['p99']:.2f} vs {res[other]['p99']:.2f} ms)")
        print("* " + ", ".join(line))


def zipf(b, systems, keys):
    print(f"\n## 2. Zipf (s=1.0) over {keys} keys of 1 KiB, same memory bound (32 MiB) for all\n")
    script = os.path.join(b.work, "zipf.lua")
    open(script, "w").write(f"""
local n, s = {keys}, 1.0
local cdf, sum = {{}}, 0
for k = 1, n do sum = sum + 1 / k ^ s; cdf[k] = sum end
for k = 1, n do cdf[k] = cdf[k] / sum end
math.randomseed(42)
request = function()
  local r, lo, hi = math.random(), 1, n
  while lo < hi do local mid = math.floor((lo + hi) / 2); if cdf[mid] < r then lo = mid + 1 else hi = mid end end
  return wrk.format("GET", "/key/" .. PREFIX .. lo .. "?size=1024")
end
""")
    print("| system | req/s | p99 ms | hit ratio |")
    print("| --- | --- | --- | --- |")
    for name in systems:
        body = open(script).read().replace("PREFIX", f'"{name}-"')
        s2 = os.path.join(b.work, f"zipf-{name}.lua")
        open(s2, "w").write(body)
        before = b.origin_count("key")
        r = b.wrk(f"http://127.0.0.1:{PORTS[name]}", script=s2, duration=b.duration * 2)
        misses = b.origin_count("key") - before
        print(f"| {name} | {r['rps']:.0f} | {r['p99']:.2f} | {1 - misses / max(1, r['total']):.3f} |")


async def stampede_client(port, path, n):
    async def one():
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = (await reader.readline()).split()[1]
        await reader.read()
        writer.close()
        return time.perf_counter() - t0, status
    return await asyncio.gather(*[one() for _ in range(n)])


def stampede(b, systems):
    print("\n## 3. Stampede: 1,000 concurrent requests for one cold key, origin answers in 500 ms\n")
    print("| system | origin requests | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- |")
    for name in systems:
        rows = []
        for run in range(b.runs):
            before = b.origin_count("slow")
            res = asyncio.run(stampede_client(PORTS[name], f"/slow/500/{name}-{run}-{time.time_ns()}", 1000))
            lat = sorted(r[0] * 1000 for r in res)
            errors = sum(1 for r in res if r[1] != b"200")
            rows.append((b.origin_count("slow") - before, lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1], errors))
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        print(f"| {name} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} |")


def fill(b, port, n, tag, prefix, size=64):
    """Requests /key/<prefix>1..n once each (wrk, a counter per thread)."""
    script = os.path.join(b.work, f"fill-{prefix}.lua")
    open(script, "w").write(f"""
local i = 0
request = function()
  i = i + 1
  if i > {n} then i = 1 end
  return wrk.format("GET", "/key/{prefix}" .. i .. "?size={size}&tag={tag}")
end
""")
    # wrk runs for a duration: long enough at the miss rate, bounded.
    t0, before = time.time(), b.origin_count("key")
    while b.origin_count("key") - before < n and time.time() - t0 < 600:
        b.wrk(f"http://127.0.0.1:{port}", conns=32, script=script, duration=5)
    return b.origin_count("key") - before


def purge(b, systems, sizes):
    print("\n## 4. Purge one tag covering N entries (the purge call itself; memory is reclaimed afterwards)\n")
    print("| system | entries | purge time ms | hot-URL p99 ms while purging |")
    print("| --- | --- | --- | --- |")
    for n in sizes:
        for name in [s for s in systems if s in ("corral", "varnish")]:
            tag = f"hot{n}{name}"
            filled = fill(b, PORTS[name], n, tag, f"{tag}-")
            hot = f"http://127.0.0.1:{PORTS[name]}/bytes/1024"
            http("GET", hot)
            loader = subprocess.Popen(LOAD_CPU + ["wrk", "-t1", "-c16", "-d3s", "--latency", hot], stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            t0 = time.perf_counter()
            if name == "corral":
                http("POST", f"http://127.0.0.1:{CORRAL_ADMIN}/purge", {"tags": [tag]})
            else:
                subprocess.run(["varnishadm", "-n", os.path.join(b.work, "varnish"), "ban", "obj.http.Surrogate-Key", "~", tag],
                               check=True, capture_output=True)
            ms = (time.perf_counter() - t0) * 1000
            out = loader.communicate()[0]
            m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)
            p99 = float(m.group(1)) / (1000 if m.group(2) == "us" else 1) * (1000 if m.group(2) == "s" else 1)
            print(f"| {name} | {filled} | {ms:.2f} | {p99:.2f} |")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(name):
    _, text = http("GET", f"http://127.0.0.1:{CORRAL_ADMIN + 10}/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def memory(b, entries):
    print(f"\n## 5. Memory: {entries} small entries (16-byte bodies)\n")
    p = b.start_corral("2GiB", port=18012, admin=CORRAL_ADMIN + 10, name="corral-mem")
    time.sleep(0.5)
    before = rss_kib(p.pid)
    n = fill(b, 18012, entries, "m", "mem-", size=16)
    time.sleep(1)
    after = rss_kib(p.pid)
    per_entry = (after - before) * 1024 / max(1, n) - 16
    accounted = metric("corral_cache_bytes") / max(1, metric("corral_cache_entries"))
    p.terminate(); p.wait()
    bound = 64 << 20
    q = b.start_corral("64MiB", port=18012, admin=CORRAL_ADMIN + 10, name="corral-bound")
    fill(b, 18012, entries, "b", "bound-", size=200)
    time.sleep(1)
    charged = metric("corral_cache_bytes")
    rss = rss_kib(q.pid) * 1024
    q.terminate(); q.wait()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| entries stored | {n} |")
    print(f"| resident memory per entry beyond its body | {per_entry:.0f} B |")
    print(f"| bytes charged per entry (incl. body, headers, key) | {accounted:.0f} B |")
    print(f"| 64 MiB bound: bytes charged after {entries} x 200 B fills | {charged / (1 << 20):.1f} MiB ({charged / bound * 100:.1f} % of the bound) |")
    print(f"| 64 MiB bound: process RSS | {rss / (1 << 20):.1f} MiB |")


def propagation(b):
    print("\n## 6. Invalidation propagation to 10 replicas\n")
    subprocess.run([sys.executable, os.path.join(ROOT, "propagation.py"), "--corral", CORRAL, "--purges", "100" if b.quick else "500"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenario", action="append", choices=["hits", "zipf", "stampede", "purge", "memory", "propagation"])
    a = ap.parse_args()
    scenarios = a.scenario or ["hits", "zipf", "stampede", "purge", "memory", "propagation"]
    work = tempfile.mkdtemp(prefix="corral-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(work, 0o755)  # nginx and varnish workers run as their own users
    b = Bench(work, a.quick)
    print(f"# Corral benchmarks ({'quick' if a.quick else 'full'}), {time.strftime('%Y-%m-%d')}, {NCPU} CPUs: "
          f"servers on core 0, load on core 1; medians of {b.runs} runs")
    def stop(*_):
        b.stop_all(); shutil.rmtree(work, ignore_errors=True); sys.exit(1)
    signal.signal(signal.SIGINT, stop); signal.signal(signal.SIGTERM, stop)
    try:
        b.start_origin()
        systems = ["corral", "varnish", "nginx"]
        if any(s in scenarios for s in ("hits", "zipf", "stampede", "purge")):
            b.start_ceiling()
            b.start_corral("32MiB")
            b.start_varnish("32m")
            b.start_nginx("32m")
        if "hits" in scenarios:
            hits(b, systems)
        if "zipf" in scenarios:
            zipf(b, systems, 50_000 if a.quick else 200_000)
        if "stampede" in scenarios:
            stampede(b, systems)
        if "purge" in scenarios:
            b.stop_all(); b.start_origin(); b.start_corral("2GiB"); b.start_varnish("2g")
            purge(b, systems, [100_000] if a.quick else [100_000, 1_000_000])
        if "memory" in scenarios:
            memory(b, 200_000 if a.quick else 1_000_000)
        if "propagation" in scenarios:
            propagation(b)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
