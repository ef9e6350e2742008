#!/usr/bin/env python3
"""The forwarding path side by side: Corral, nginx (`proxy_pass`, upstream keep-alive, no cache;
`proxy_cache` for stored misses) and Varnish (`return (pass)` for what the client asks not to
store, its default VCL otherwise), in one run, servers on core 0, origin and wrk on core 1.

Scenarios, at 1 KiB and 100 KiB (`--sizes`):
  pass    GET /bytes/N with `Cache-Control: no-store`: every request goes to the origin
  post    POST /bytes/N with a 4 KiB body (the origin answers `no-store`)
  miss    GET /key/<unique>?size=N: every request a new key, stored (the cache churns)
  hit     GET /bytes/1024 warmed: the hit path, to see that it did not move
  large   one GET of /stream/10 MiB and /stream/100 MiB each, passed (`no-store`) and as a miss
          (over `max_object_size`): peak RSS of the server during the transfer above idle

Reported per system: requests/s, requests per server CPU-second (/proc/<pid>/stat utime+stime
of the server's process group: the figure a saturated load generator does not hide), p50/p99,
upstream connections opened (the origin counts accepted connections) and origin requests per
request. Medians of `--runs` interleaved runs.

    bench/forwarding.py [--quick] [--runs N] [--duration S] [--scenario pass|post|miss|hit|large]...
                        [--sizes 1024,102400] [--out FILE.md]

`CORRAL_BIN` is the Corral under test, `ORIGIN_BIN` (default: the same) the origin's binary.
Reuses bench.py's process handling, wrk driver and tables. Ports: BENCH_PORT_BASE (default
18400 here, so a bench.py run on 18000 does not collide). Run through bench/run.sh's setup
(tools installed, `CORRAL_BIN` or target/release/corral).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

os.environ.setdefault("BENCH_PORT_BASE", "18400")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import CORRAL, HOST, PINNED, PORTS, Bench, fmt, log, med, ratio  # noqa: E402

NGINX_CACHE = bench.BASE + 5  # nginx's proxy_cache server, for stored misses
SYSTEMS = ["corral", "nginx", "varnish"]
SCENARIOS = ["pass", "post", "miss", "hit", "large"]
NO_STORE = "Cache-Control: no-store"


def origin_stats():
    _, _, body = bench.http("GET", f"http://{HOST}:{PORTS['origin']}/_origin/stats")
    v = json.loads(body)
    return v["total"], v.get("connections")


# The origin needs /stream/{n}, POST /bytes/{n} and its connection counter: with an older
# CORRAL_BIN under test (a before/after comparison), point ORIGIN_BIN at a newer binary.
ORIGIN_BIN = os.environ.get("ORIGIN_BIN", CORRAL)


class Forwarding(Bench):
    def start_origin(self):
        self.spawn([ORIGIN_BIN, "origin", "--listen", f"{HOST}:{PORTS['origin']}"], "origin",
                   cpu=bench.LOAD_CPU, env=dict(os.environ, CORRAL_LOG="warn"))
        bench.wait_http(f"http://{HOST}:{PORTS['origin']}/health")

    def start_nginx_pass(self, size):
        """Two servers in one nginx: a plain `proxy_pass` with upstream keep-alive (pass, post)
        and the same with `proxy_cache` (stored misses)."""
        conf = os.path.join(self.work, "nginx.conf")
        cache = os.path.join(self.work, "nginx-cache")
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        proxy = ('proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; '
                 f'proxy_temp_path {self.work}/nginx-temp;')
        with open(conf, "w") as f:
            f.write(f"""
user root; worker_processes 1; daemon off; pid {self.work}/nginx.pid; error_log {self.work}/nginx.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000; client_body_buffer_size 16k;
  proxy_cache_path {cache} levels=1:2 keys_zone=bench:16m max_size={size} inactive=1h use_temp_path=off;
  upstream origin {{ server {HOST}:{PORTS['origin']}; keepalive 64; keepalive_requests 10000000; }}
  server {{ listen {HOST}:{PORTS['nginx']} backlog=4096; location / {{ {proxy} }} }}
  server {{ listen {HOST}:{NGINX_CACHE} backlog=4096;
    location / {{ {proxy} proxy_cache bench; proxy_cache_key $uri$is_args$args;
      add_header X-Cache-Status $upstream_cache_status; }} }} }}
""")
        self.spawn(["nginx", "-c", conf, "-p", self.work], "nginx")
        bench.wait_http(f"http://{HOST}:{PORTS['nginx']}/health")

    def start_varnish_pass(self, size):
        vcl = os.path.join(self.work, "pass.vcl")
        with open(vcl, "w") as f:
            f.write(f"""vcl 4.1;
backend default {{ .host = "{HOST}"; .port = "{PORTS['origin']}"; }}
sub vcl_recv {{ if (req.http.Cache-Control ~ "no-store") {{ return (pass); }} }}
""")
        vdir = os.path.join(self.work, "varnish")
        self.spawn(["varnishd", "-F", "-n", vdir, "-a", f"{HOST}:{PORTS['varnish']}", "-f", vcl,
                    "-s", f"malloc,{size}", "-T", f"{HOST}:{bench.VARNISH_CLI}",
                    "-p", "thread_pools=1", "-p", "listen_depth=4096"], "varnish")
        bench.wait_http(f"http://{HOST}:{PORTS['varnish']}/health", secs=60)

    def port(self, system, scenario):
        return NGINX_CACHE if (system == "nginx" and scenario == "miss") else PORTS[system]

    def script(self, name, text):
        path = os.path.join(self.work, f"{name}.lua")
        with open(path, "w") as f:
            f.write(text)
        return path

    def load(self, system, scenario, size, run):
        """One timed wrk run: its figures plus the server's CPU and the origin's counters."""
        port = self.port(system, scenario)
        if scenario == "pass":
            script = self.script("pass", f'wrk.headers["Cache-Control"] = "no-store"\n'
                                         f'wrk.path = "/bytes/{size}"\n')
        elif scenario == "post":
            script = self.script("post", f'wrk.method = "POST"\nwrk.path = "/bytes/{size}"\n'
                                         f'wrk.body = string.rep("p", 4096)\n'
                                         f'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        elif scenario == "miss":
            # A fresh prefix per system, size and run: every key is new to every cache.
            script = self.script("miss", f"""
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/key/f-{system}-{size}-{run}-" .. i .. "?size={size}")
end
""")
        else:
            script = self.script("hit", f'wrk.path = "/bytes/{size}"\n')
        before, conns = origin_stats()
        cpu = self.cpu_seconds(system)
        r = self.wrk(f"http://{HOST}:{port}", script=script)
        cpu = self.cpu_seconds(system) - cpu
        after, conns_after = origin_stats()
        r["per_cpu"] = r["total"] / cpu if cpu > 0 else None
        r["conns"] = (conns_after - conns) if conns is not None else None
        r["origin_share"] = (after - before) / r["total"] if r["total"] else None
        return r


def run_scenario(b, scenario, sizes):
    title = {"pass": "pass-through GET (`Cache-Control: no-store`)",
             "post": "POST with a 4 KiB body",
             "miss": "stored misses (a new key per request)",
             "hit": "hits (warmed)"}[scenario]
    block = [f"## {title}, wrk -c64", "",
             "| body | system | req/s | req per server CPU-second | p50 ms | p99 ms | upstream connections opened | origin requests per request | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in sizes:
        runs = {s: [] for s in SYSTEMS}
        for s in SYSTEMS:  # warm-up: connections, allocator, JIT-free but page-cache warm
            b.load(s, scenario, size, "w")
        for run in range(b.runs):
            for s in SYSTEMS:
                runs[s].append(b.load(s, scenario, size, run))
        res = {s: {k: med(r[k] for r in runs[s]) for k in ("rps", "per_cpu", "p50", "p99", "conns", "origin_share")}
               for s in SYSTEMS}
        for s in SYSTEMS:
            r = res[s]
            block.append(f"| {size // 1024} KiB | {s} | {fmt(r['rps'])} | {fmt(r['per_cpu'])} | {fmt(r['p50'], 2)} | "
                         f"{fmt(r['p99'], 2)} | {fmt(r['conns'])} | {fmt(r['origin_share'], 3)} | "
                         f"{sum(x['errors'] for x in runs[s])} |")
        kib = f"{size // 1024} KiB"
        for key, what, digits in (("per_cpu", "req per server CPU-second", 0), ("rps", "req/s", 0),
                                  ("p99", "p99 ms", 2)):
            b.summary.append((scenario, f"{kib} {what}", {s: res[s][key] for s in SYSTEMS}, digits))
    b.details.append("\n".join(block))


def fetch_sampling(b, system, port, path, headers):
    """GETs `path` once, reading as fast as it can, while a thread samples the server's RSS;
    (bytes read, seconds, peak RSS KiB above what it was before)."""
    idle = b.rss_kib(system)
    peak, done = [idle], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], b.rss_kib(system))
            time.sleep(0.01)
    t = threading.Thread(target=sample)
    t.start()
    t0, got = time.time(), 0
    try:
        with socket.create_connection((HOST, port), timeout=60) as sock:
            extra = "".join(f"{h}\r\n" for h in headers)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n".encode())
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
    finally:
        done.set()
        t.join()
    return got, time.time() - t0, peak[0] - idle


def large(b):
    block = ["## Large bodies: one GET each, RSS of the server above idle during the transfer", "",
             "| body | how | system | bytes received | MiB/s | peak RSS above idle, MiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for mib in (10, 100):
        for how, headers in (("pass (`no-store`)", [NO_STORE]), ("miss (over max_object_size)", [])):
            for s in SYSTEMS:
                port = b.port(s, "miss" if not headers else "pass")
                path = f"/stream/{mib << 20}?v={s}{time.time_ns()}"
                got, secs, grew = fetch_sampling(b, s, port, path, headers)
                block.append(f"| {mib} MiB | {how} | {s} | {got:,} | {fmt(mib / secs if secs else None)} | "
                             f"{fmt(grew / 1024, 1)} |")
                if mib == 100:
                    b.summary.append(("large", f"100 MiB {how.split()[0]}: RSS above idle MiB",
                                      {s: grew / 1024}, 1))
    b.details.append("\n".join(block))


def summary_table(b):
    lines = ["| scenario | metric | corral | nginx | varnish | corral/nginx | corral/varnish |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    merged = {}
    for scenario, metric, v, digits in b.summary:
        merged.setdefault((scenario, metric, digits), {}).update(v)
    for (scenario, metric, digits), v in merged.items():
        c = v.get("corral")
        lines.append(f"| {scenario} | {metric} | {fmt(c, digits)} | {fmt(v.get('nginx'), digits)} | "
                     f"{fmt(v.get('varnish'), digits)} | {ratio(c, v.get('nginx'))} | {ratio(c, v.get('varnish'))} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s runs")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int)
    ap.add_argument("--sizes", default="1024,102400")
    ap.add_argument("--out")
    a = ap.parse_args()
    scenarios = a.scenario or SCENARIOS
    sizes = [int(x) for x in a.sizes.split(",")]
    if not os.access(CORRAL, os.X_OK):
        sys.exit(f"no corral binary at {CORRAL}: cargo build --release -p corral, or set CORRAL_BIN")
    if PINNED:
        os.sched_setaffinity(0, {1})
    busy = bench.ports_in_use(list(PORTS.values()) + [NGINX_CACHE, bench.CORRAL_ADMIN, bench.VARNISH_CLI])
    if busy:
        sys.exit(f"forwarding: ports in use on {HOST}: {busy}; move them with BENCH_PORT_BASE=N")
    work = tempfile.mkdtemp(prefix="corral-fwd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(work, 0o755)
    b = Forwarding(work, a.quick, max(1, a.runs), a.duration)
    b.summary = []

    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop)
    head = (f"# Forwarding path: Corral, nginx, Varnish\n\n{time.strftime('%Y-%m-%d %H:%M %Z')}; "
            + ("servers on core 0, wrk and origin on core 1" if PINNED else "no CPU pinning")
            + f"; medians of {b.runs} runs of {b.duration} s; `bench/forwarding.py {' '.join(sys.argv[1:])}`")
    log(head)
    try:
        b.start_origin()
        b.start_corral("256MiB")
        b.start_nginx_pass("256m")
        b.start_varnish_pass("256m")
        for sc in scenarios:
            log(f"scenario {sc} ...")
            if sc == "large":
                large(b)
            else:
                run_scenario(b, sc, [1024] if sc == "hit" else sizes)
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    report = "\n\n".join([head, "## Summary", summary_table(b),
                          "Throughput rows: higher is better; p99 and RSS: lower is better."] + b.details)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
