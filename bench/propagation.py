#!/usr/bin/env python3
"""Invalidation propagation latency to N replicas (default 10).

Starts N+1 `corral serve` processes on 127.0.0.11, .12, ... (same ports, static discovery,
a random cluster secret in the environment), then sends purges to the first one with
"wait": true, which answers only when every peer has acknowledged (applied) the event. Reports
p50/p99 of that round trip, and the receivers' own corral_event_propagation_seconds (event
creation -> application) from their histograms.

    bench/propagation.py [--replicas 10] [--purges 300] [--corral target/release/corral]
"""
import argparse, json, os, secrets, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.error, urllib.request


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def percentile(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def histogram_quantile(text, q):
    """Approximates a quantile from Prometheus cumulative buckets (upper bound of the bucket)."""
    buckets = []
    for line in text.splitlines():
        if line.startswith("corral_event_propagation_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=10, help="receivers (the sender comes on top)")
    ap.add_argument("--purges", type=int, default=300)
    ap.add_argument("--corral", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "corral"))
    ap.add_argument("--json", action="store_true", help="also print 'JSON:' and the figures as JSON")
    a = ap.parse_args()
    if not os.path.exists(a.corral):
        sys.exit(f"no corral binary at {a.corral}: cargo build --release -p corral")
    n = a.replicas + 1
    ips = [f"127.0.0.{11 + i}" for i in range(n)]
    pport, aport = free_port(ips[0]), free_port(ips[0])
    env = dict(os.environ, CORRAL_CLUSTER_SECRET=secrets.token_hex(32), CORRAL_LOG="warn")
    peers = ", ".join(f'"{ip}:{aport}"' for ip in ips)
    tmp = tempfile.mkdtemp()
    procs = []
    deadline = time.time() + 600  # bounds the whole run
    try:
        for ip in ips:
            cfg = os.path.join(tmp, f"{ip}.toml")
            with open(cfg, "w") as f:
                f.write(f'[server]\nlisten = "{ip}:{pport}"\nadmin_listen = "{ip}:{aport}"\n'
                        f'[cluster]\ndiscovery = {{ kind = "static", addresses = [{peers}] }}\n')
            procs.append(subprocess.Popen([a.corral, "serve", "--config", cfg], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for ip in ips:
            for _ in range(200):
                try:
                    if http("GET", f"http://{ip}:{aport}/readyz")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.05)
        # Without coherence (no /peers on the admin API) there is nothing to measure: exit 3.
        try:
            http("GET", f"http://{ips[0]}:{aport}/peers")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                print("needs coherence (issue: Coherent invalidation across replicas)")
                sys.exit(3)
            raise
        sender = f"http://{ips[0]}:{aport}/purge"
        # Warm the peer connections.
        for i in range(10):
            http("POST", sender, {"tags": [f"warm-{i}"], "wait": True})
        rtts, incomplete = [], 0
        for i in range(a.purges):
            if time.time() > deadline:
                break
            t0 = time.perf_counter()
            _, body = http("POST", sender, {"tags": [f"item-{i}"], "wait": True})
            rtts.append((time.perf_counter() - t0) * 1000)
            if json.loads(body).get("pending"):
                incomplete += 1
        p50s, p99s = [], []
        for ip in ips[1:]:
            _, text = http("GET", f"http://{ip}:{aport}/metrics")
            text = text.decode()
            p50s.append(histogram_quantile(text, 0.5))
            p99s.append(histogram_quantile(text, 0.99))
        print(f"| replicas | purges | all-acknowledged p50 | p99 | max | not fully acknowledged |")
        print(f"| --- | --- | --- | --- | --- | --- |")
        print(f"| {a.replicas} | {a.purges} | {percentile(rtts, 50):.2f} ms | {percentile(rtts, 99):.2f} ms | "
              f"{max(rtts):.2f} ms | {incomplete} |")
        ok = [x for x in p50s if x is not None]
        ok99 = [x for x in p99s if x is not None]
        if ok:
            print(f"\nreceivers' corral_event_propagation_seconds (bucket upper bounds): "
                  f"p50 <= {max(ok) * 1000:.1f} ms, p99 <= {max(ok99) * 1000:.1f} ms")
        if a.json:
            print("JSON:" + json.dumps({"replicas": a.replicas, "purges": len(rtts), "p50": percentile(rtts, 50),
                                        "p99": percentile(rtts, 99), "max": max(rtts), "incomplete": incomplete}))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
