#!/usr/bin/env python3
"""The Redis tier's benchmark: what an L2 hit costs, and what a Redis outage costs.

Starts a redis-server, the example origin (`corral origin`) and two Corral replicas sharing
`[cache.l2]`, all on 127.0.0.1, then measures request latency (sequential keep-alive requests,
one client) for:

  * L1 hit            a key already in the replica's own memory
  * L2 hit            a key another replica fetched (first request on this replica)
  * miss, Redis up    a cold key: L2 lookup + fill lease + origin
  * miss, no L2       the same on a replica without [cache.l2] (the baseline)
  * miss, Redis SIGSTOP, breaker open      a hung Redis once the breaker has opened
  * miss, Redis SIGSTOP, before open       the first requests after Redis hung (worst case)
  * miss, Redis killed                     connection refused
  * L1 hit, Redis SIGSTOP                  hits never touch Redis

    bench/redis.py [--keys N] [--out FILE.md]

CORRAL_BIN selects the binary (default target/release/corral; run
`cargo build --release -p corral` first). Python 3 standard library only. Everything it starts
is stopped on exit. See bench/README.md.
"""
import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
CORRAL = os.environ.get("CORRAL_BIN", os.path.join(ROOT, "..", "target", "release", "corral"))
HOST = "127.0.0.1"  # loopback only
PROCS = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, **kw)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


def wait_port(port, secs=20):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Client:
    """One keep-alive connection; reconnects when the server closes it."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def get(self, path):
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
            try:
                t = time.perf_counter()
                self.conn.request("GET", path, headers={"host": "bench.test"})
                r = self.conn.getresponse()
                body = r.read()
                took = time.perf_counter() - t
                return r.status, r.getheader("cache-status", ""), took, body
            except (http.client.HTTPException, OSError):
                self.conn = None
        raise SystemExit(f"GET {path} failed twice")


def metric(admin, name):
    c = http.client.HTTPConnection(HOST, admin, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def corral(tmp, name, origin, redis_port, l2=True):
    port, admin = free_port(), free_port()
    cfg = os.path.join(tmp, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "{HOST}:{port}"\nadmin_listen = "{HOST}:{admin}"\n')
        f.write(f'[upstream]\nurl = "http://{HOST}:{origin}"\n')
        if l2:
            f.write(f'[cache.l2]\nkind = "redis"\nurl = "redis://{HOST}:{redis_port}"\n')
    spawn([CORRAL, "serve", "--config", cfg], env=dict(os.environ, CORRAL_LOG="error"))
    wait_port(port)
    wait_port(admin)
    return port, admin


def stats(samples):
    ms = sorted(s * 1000 for s in samples)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
    return dict(n=len(ms), p50=statistics.median(ms), p99=p(0.99), max=ms[-1])


def measure(client, paths, expect=None):
    out = []
    for path in paths:
        status, cs, took, _ = client.get(path)
        if status != 200:
            raise SystemExit(f"{path}: status {status}")
        if expect and expect not in cs:
            raise SystemExit(f"{path}: expected {expect!r} in Cache-Status {cs!r}")
        out.append(took)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not os.access(CORRAL, os.X_OK):
        raise SystemExit(f"{CORRAL}: build it first (cargo build --release -p corral) or set CORRAL_BIN")
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is missing (apt-get install redis-server)")
    n = args.keys
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rport = free_port()
            redis = spawn(["redis-server", "--port", str(rport), "--bind", HOST, "--save", "",
                           "--appendonly", "no", "--dir", tmp])
            wait_port(rport)
            oport = free_port()
            spawn([CORRAL, "origin", "--listen", f"{HOST}:{oport}"])
            wait_port(oport)
            a, a_admin = corral(tmp, "a", oport, rport)
            b, b_admin = corral(tmp, "b", oport, rport)
            plain, _ = corral(tmp, "plain", oport, rport, l2=False)
            ca, cb, cp = Client(a), Client(b), Client(plain)
            keys = lambda p, k=n: [f"/key/{p}{i}?size=1024" for i in range(k)]
            log("warming: replica A fills L2 ...")
            measure(ca, keys("w"))
            deadline = time.time() + 30
            while metric(a_admin, 'corral_l2_writes_total{kind="stored"}') < n and time.time() < deadline:
                time.sleep(0.1)
            rows.append(("L2 hit (another replica's fill)", stats(measure(cb, keys("w"), "l2"))))
            rows.append(("L1 hit", stats(measure(cb, keys("w"), "hit"))))
            rows.append(("miss, Redis up (L2 lookup + lease + origin)", stats(measure(cb, keys("m")))))
            rows.append(("miss, no L2 configured", stats(measure(cp, keys("p")))))
            log("Redis SIGSTOP ...")
            os.kill(redis.pid, signal.SIGSTOP)
            before = measure(cb, keys("s0", 50))
            rows.append(("miss, Redis SIGSTOP, first 50 requests", stats(before)))
            state = metric(b_admin, "corral_redis_breaker_state")
            rows.append(("miss, Redis SIGSTOP, breaker open" if state == 1 else
                         "miss, Redis SIGSTOP (breaker NOT open!)", stats(measure(cb, keys("s")))))
            rows.append(("L1 hit, Redis SIGSTOP", stats(measure(cb, keys("w")))))
            os.kill(redis.pid, signal.SIGCONT)
            redis.kill()
            redis.wait()
            log("Redis killed ...")
            time.sleep(0.2)
            rows.append(("miss, Redis killed", stats(measure(cb, keys("k")))))
        finally:
            stop_all()
    lines = [
        f"Redis tier, {n} keys of 1 KiB, sequential keep-alive requests, latency in ms "
        f"({os.path.basename(CORRAL)} at {CORRAL})",
        "",
        "| case | requests | p50 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in rows:
        lines.append(f"| {name} | {s['n']} | {s['p50']:.3f} | {s['p99']:.3f} | {s['max']:.3f} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
