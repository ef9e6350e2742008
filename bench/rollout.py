#!/usr/bin/env python3
"""A rolling deploy under load (issue 24): how many requests reach the origin while three
replicas are replaced one at a time, as a Kubernetes Deployment replaces pods.

Three `corral serve` replicas on 127.0.0.11-.13 (static discovery, one cluster secret) sit in
front of one `corral origin`. A load generator sends a Zipf mix over --keys keys, round-robin
over the replicas that are up. After a prefill (every key fetched through every replica, the
steady state of a fleet that has served the mix for a while) and --warm seconds of load, each
replica in turn is stopped (SIGTERM: it drains), started again with an empty memory, waited
for on /readyz, and given --pause seconds of traffic (a Deployment's minReadySeconds) before
the next one goes; traffic keeps flowing to the others meanwhile.

Reported per mode, over the rollout window (from the first stop to the last pause's end):
origin requests, the hit ratio the clients saw, and failed requests. Modes:

  cold     no warm-up: each restarted replica starts empty
  warm     [cluster] warmup: a restarted replica streams its peers' hottest entries first
  owner    warm-up and [cluster] shard (owner routing of misses, no Redis)
  varnish  three varnishd restarted the same way, for reference (no peers, no warm-up)

And the cluster stampede: 3 replicas x --stampede concurrent requests for one cold key, with
owner routing and no Redis: origin requests for that key (goal: 1).

    bench/rollout.py [--modes cold,warm,owner,varnish] [--keys 2000] [--rate 300] [--pause 5]
                     [--stampede 1000] [--corral target/release/corral]

Counts, not speeds: the figures mean the same on a loaded 2-core machine (only how long a
rollout takes moves). Goal: at least 80 % fewer origin requests during the rollout with warm-up
than without, and no failed request.
"""
import argparse
import bisect
import concurrent.futures
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from propagation import free_port, ip_of  # noqa: E402

IPS = [ip_of(i) for i in range(3)]


def get(ip, port, path, timeout=10):
    """(status, headers) of one GET on a fresh connection; status 0 on a connection error."""
    c = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        # The service's name, as clients behind a Service ask for it: the host is in the key,
        # and each replica's own address would give each its own keys.
        c.request("GET", path, headers={"Host": "shop.example"})
        r = c.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    except OSError:
        return 0, {}
    finally:
        c.close()


def wait_ready(ip, port, path, secs=120):
    deadline = time.time() + secs
    while time.time() < deadline:
        if get(ip, port, path, timeout=2)[0] == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{ip}:{port}{path} not ready within {secs}s")


class Origin:
    def __init__(self, corral, work):
        self.port = free_port("127.0.0.1")
        self.proc = subprocess.Popen([corral, "origin", "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=open(os.path.join(work, "origin.log"), "w"),
                                     stderr=subprocess.STDOUT, env=dict(os.environ, CORRAL_LOG="warn"))
        wait_ready("127.0.0.1", self.port, "/health")

    def key_requests(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/_origin/stats")
        v = json.loads(c.getresponse().read())
        c.close()
        return v["by_kind"].get("key", 0)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Fleet:
    """Three replicas of one kind (a corral mode or varnish), each restartable."""

    def __init__(self, mode, corral, origin, work):
        self.mode, self.corral, self.origin, self.work = mode, corral, origin, work
        self.port = free_port(IPS[0])
        self.admin = free_port(IPS[0])
        self.procs = [None] * 3
        self.up = [False] * 3
        # Requests sent to each replica and not yet answered: a replica leaves the balancer,
        # then the ones already on their way finish, then it gets SIGTERM (a Service's
        # endpoint removal and a preStop hook, without which a rollout drops requests anywhere).
        self.inflight = [0] * 3
        self.inflight_lock = threading.Lock()
        self.env = dict(os.environ, CORRAL_CLUSTER_SECRET=secrets.token_hex(32), CORRAL_LOG="warn")
        self.env.pop("CORRAL_ADMIN_TOKEN", None)

    def config(self, ip):
        peers = ", ".join(f'"{p}:{self.admin}"' for p in IPS)
        extra = {"cold": "", "warm": 'warmup = { enabled = true, deadline = "30s" }\n',
                 "owner": 'warmup = { enabled = true, deadline = "30s" }\nshard = { replicas_per_key = 1 }\n'}
        return (f'[server]\nlisten = "{ip}:{self.port}"\nadmin_listen = "{ip}:{self.admin}"\n'
                f'[upstream]\nurl = "http://127.0.0.1:{self.origin.port}"\n'
                f'[cache]\nmax_size = "256MiB"\n'
                f'[cluster]\ndiscovery = {{ kind = "static", addresses = [{peers}] }}\n'
                f'heartbeat = "500ms"\n' + extra[self.mode])

    def start(self, i):
        ip, log = IPS[i], open(os.path.join(self.work, f"{self.mode}-{i}.log"), "a")
        if self.mode == "varnish":
            vdir = os.path.join(self.work, f"varnish-{i}")
            shutil.rmtree(vdir, ignore_errors=True)
            argv = ["varnishd", "-F", "-n", vdir, "-a", f"{ip}:{self.port}",
                    "-b", f"127.0.0.1:{self.origin.port}", "-s", "malloc,256m",
                    "-T", f"{ip}:{free_port(ip)}", "-p", "thread_pools=1"]
            ready = (self.port, "/health")
        else:
            cfg = os.path.join(self.work, f"{self.mode}-{i}.toml")
            with open(cfg, "w") as f:
                f.write(self.config(ip))
            argv = [self.corral, "serve", "--config", cfg]
            ready = (self.admin, "/readyz")
        self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        wait_ready(ip, *ready)
        self.up[i] = True

    def wait_members(self, secs=60):
        """Until every corral replica has heard from both others (its owners agree with theirs)."""
        if self.mode == "varnish":
            return
        deadline = time.time() + secs
        for ip in IPS:
            while True:
                c = http.client.HTTPConnection(ip, self.admin, timeout=5)
                try:
                    c.request("GET", "/peers")
                    peers = json.loads(c.getresponse().read())["peers"]
                    if sum(1 for p in peers if p.get("last_seq_seen") is not None and not p["silent"]) >= 2:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                finally:
                    c.close()
                if time.time() > deadline:
                    raise RuntimeError(f"{ip}: peers not all heard within {secs}s")
                time.sleep(0.05)

    def stop(self, i):
        # Out of the load balancer first (a pod leaving the Service's endpoints), then SIGTERM.
        with self.inflight_lock:
            self.up[i] = False
        while True:
            with self.inflight_lock:
                if self.inflight[i] == 0:
                    break
            time.sleep(0.001)
        p = self.procs[i]
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def warmed(self, i):
        """Entries replica i received from its peers at start (None for Varnish)."""
        if self.mode == "varnish":
            return None
        c = http.client.HTTPConnection(IPS[i], self.admin, timeout=5)
        try:
            c.request("GET", "/metrics")
            for line in c.getresponse().read().decode().splitlines():
                if line.startswith("corral_warmup_entries_total"):
                    return int(float(line.split()[-1]))
            return 0
        finally:
            c.close()

    def stop_all(self):
        for i, p in enumerate(self.procs):
            if p and p.poll() is None:
                self.stop(i)


class Load:
    """Zipf-distributed GETs, round-robin over the replicas that are up, from a few threads."""

    def __init__(self, fleet, keys, s, rate, seed=7):
        self.fleet, self.rate = fleet, rate
        weights = [1 / (k ** s) for k in range(1, keys + 1)]
        total = sum(weights)
        self.cdf, acc = [], 0.0
        for w in weights:
            acc += w / total
            self.cdf.append(acc)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "hits": 0, "failed": 0}
        # Latencies (s) of the requests the up replicas answered, split by whether a replica
        # was starting (warming from them, in the warm modes) when the request was sent.
        self.latency = {"steady": [], "starting": []}
        self.starting = False
        self.running = True
        self.next = 0

    def pick(self):
        """A key and an up replica, counted in flight to it (the caller calls `done`)."""
        with self.lock:
            k = bisect.bisect_left(self.cdf, self.rng.random())
            self.next += 1
        with self.fleet.inflight_lock:
            up = [i for i in range(3) if self.fleet.up[i]]
            i = up[self.next % len(up)] if up else None
            if i is not None:
                self.fleet.inflight[i] += 1
        return k, i

    def done(self, i):
        with self.fleet.inflight_lock:
            self.fleet.inflight[i] -= 1

    def worker(self, threads):
        interval = threads / self.rate
        while self.running:
            t0 = time.perf_counter()
            k, i = self.pick()
            if i is not None:
                phase = "starting" if self.starting else "steady"
                sent = time.perf_counter()
                status, h = get(IPS[i], self.fleet.port, f"/key/{k}?size=2048")
                self.done(i)
                with self.lock:
                    self.latency[phase].append(time.perf_counter() - sent)
                    self.counts["requests"] += 1
                    if status != 200:
                        self.counts["failed"] += 1
                        print(f"failed: replica {i} answered {status or 'no connection'}", file=sys.stderr)
                    elif "hit" in h.get("cache-status", "") or len(h.get("x-varnish", "").split()) == 2:
                        self.counts["hits"] += 1
            time.sleep(max(0.0, interval - (time.perf_counter() - t0)))

    def snapshot(self):
        with self.lock:
            return dict(self.counts)


def prefill(fleet, keys):
    """Every key on every replica, once: the steady state of a fleet that has served the mix for
    a while, so that the rollout window counts the misses the rollout causes, not first touches."""
    jobs = [(ip, k) for ip in IPS for k in range(keys)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda j: get(j[0], fleet.port, f"/key/{j[1]}?size=2048")[0], jobs))
    bad = sum(1 for s in statuses if s != 200)
    if bad:
        raise RuntimeError(f"prefill: {bad} of {len(jobs)} requests failed")


def rollout(mode, a, corral, work):
    origin = Origin(corral, work)
    fleet = Fleet(mode, corral, origin, work)
    load = Load(fleet, a.keys, a.zipf, a.rate)
    threads = [threading.Thread(target=load.worker, args=(a.threads,), daemon=True) for _ in range(a.threads)]
    try:
        for i in range(3):
            fleet.start(i)
        fleet.wait_members()
        prefill(fleet, a.keys)
        for t in threads:
            t.start()
        time.sleep(a.warm)  # the warm phase: a duration of traffic, not a wait for a state
        load.latency = {"steady": [], "starting": []}
        before, o0, t0 = load.snapshot(), origin.key_requests(), time.time()
        warmed = []
        for i in range(3):
            fleet.stop(i)
            load.starting = True
            fleet.start(i)
            load.starting = False
            warmed.append(fleet.warmed(i))
            time.sleep(a.pause)  # minReadySeconds: traffic on the new replica before the next goes
        after, o1, took = load.snapshot(), origin.key_requests(), time.time() - t0
    finally:
        load.running = False
        for t in threads:
            t.join(timeout=15)
        fleet.stop_all()
        origin.stop()
    requests = after["requests"] - before["requests"]
    hits = after["hits"] - before["hits"]
    return {"mode": mode, "origin_requests": o1 - o0, "requests": requests,
            "hit_ratio": hits / requests if requests else 0.0,
            "failed": after["failed"] - before["failed"], "seconds": took, "warmed": warmed,
            "p99_ms": {ph: percentile(v, 0.99) for ph, v in load.latency.items()},
            "p50_ms": {ph: percentile(v, 0.50) for ph, v in load.latency.items()}}


def percentile(values, q):
    """The q-quantile of `values` in milliseconds (nearest rank); None when there are none."""
    if not values:
        return None
    v = sorted(values)
    return round(1000 * v[min(len(v) - 1, int(q * len(v)))], 2)


def stampede(a, corral, work):
    """3 owner-routing replicas, --stampede concurrent requests on each for one cold key."""
    origin = Origin(corral, work)
    fleet = Fleet("owner", corral, origin, work)
    try:
        for i in range(3):
            fleet.start(i)
        fleet.wait_members()
        before = origin.key_requests()
        jobs = [(IPS[i % 3], f"/key/stampede?size=1024&ttl=600") for i in range(3 * a.stampede)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(600, len(jobs))) as pool:
            statuses = list(pool.map(lambda j: get(j[0], fleet.port, j[1], timeout=60)[0], jobs))
        return {"requests": len(jobs), "origin_requests": origin.key_requests() - before,
                "failed": sum(1 for s in statuses if s != 200)}
    finally:
        fleet.stop_all()
        origin.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default=os.environ.get(
        "CORRAL_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "release", "corral")))
    ap.add_argument("--modes", default="cold,warm,owner,varnish")
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent")
    ap.add_argument("--rate", type=float, default=300, help="requests per second offered")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--warm", type=float, default=10, help="seconds of traffic before the rollout")
    ap.add_argument("--pause", type=float, default=5,
                    help="seconds of traffic after each replacement (the window includes them)")
    ap.add_argument("--stampede", type=int, default=1000, help="concurrent requests per replica (0: skip)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(a.corral):
        sys.exit(f"no corral binary at {a.corral}: cargo build --release -p corral")
    work = tempfile.mkdtemp(prefix="rollout-")
    results = []
    try:
        for mode in a.modes.split(","):
            if mode == "varnish" and not shutil.which("varnishd"):
                print("varnish: varnishd not installed (apt-get install varnish); skipped in this run")
                continue
            results.append(rollout(mode, a, a.corral, work))
            r = results[-1]
            print(f"{mode}: {r['origin_requests']} origin requests, hit ratio {r['hit_ratio']:.3f}, "
                  f"{r['failed']} failed of {r['requests']} in {r['seconds']:.1f}s; warmed {r['warmed']}; "
                  f"p50/p99 ms steady {r['p50_ms']['steady']}/{r['p99_ms']['steady']}, "
                  f"while a replica starts {r['p50_ms']['starting']}/{r['p99_ms']['starting']}", flush=True)
        storm = stampede(a, a.corral, work) if a.stampede else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cold = next((r for r in results if r["mode"] == "cold"), None)
    print("\n| mode | origin requests during the rollout | vs cold | hit ratio | failed / requests | "
          "p99 ms steady | p99 ms while a replica starts | rollout s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        vs = f"{1 - r['origin_requests'] / cold['origin_requests']:.0%} fewer" if cold and cold["origin_requests"] else ""
        print(f"| {r['mode']} | {r['origin_requests']} | {vs} | {r['hit_ratio']:.3f} | "
              f"{r['failed']} / {r['requests']} | {r['p99_ms']['steady']} | {r['p99_ms']['starting']} | "
              f"{r['seconds']:.1f} |")
    if storm:
        print(f"\ncluster stampede (owner routing, no Redis): {storm['requests']} concurrent requests for one "
              f"cold key -> {storm['origin_requests']} origin request(s), {storm['failed']} failed")
    if a.json:
        print("JSON:" + json.dumps({"rollout": results, "stampede": storm}))


if __name__ == "__main__":
    main()
