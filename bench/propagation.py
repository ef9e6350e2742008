#!/usr/bin/env python3
"""Invalidation propagation latency to N replicas (default 10).

Starts N+1 `corral serve` processes on 127.0.0.11, .12, ... (same ports, static discovery,
a random cluster secret in the environment), then sends purges to the first one with
"wait": true, which answers only when every peer has acknowledged (applied) the event. Reports
p50/p99 of that round trip, and the receivers' own corral_event_propagation_seconds (event
creation -> application) from their histograms.

    bench/propagation.py [--replicas 10] [--purges 300] [--corral target/release/corral]
                         [--fanout K] [--kill-relays R] [--heartbeat 2s] [--json]

--fanout K sets [cluster] fanout on every replica (0: the direct mesh; unset: the default).
--kill-relays R SIGKILLs R replicas that relay for the sender while the purges flow (purges
then go without "wait", and the run checks that every survivor converged on the sender's last
sequence). The JSON line adds max_peer_connections (the most outgoing peer connections any
replica held, from corral_peer_connections_max) and fleet_messages_per_second (peer messages
the whole fleet sent per second at rest, heartbeats and gossip, measured over --rest seconds).
On one machine every replica shares its CPUs: past a few dozen replicas the run is CPU-bound
and the figures say more about this machine than about the design (bench/fanout_model.py).
"""
import ipaddress
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


def ip_of(i):
    """127.0.0.11, .12, ... continuing into 127.0.1.x past .255 (all of 127/8 is loopback)."""
    n = 11 + i
    return f"127.0.{n // 256}.{n % 256}"


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def relays_of(ips, sender, fanout, count):
    """The replicas the sender's tree leads with, as corral-cluster/src/ranges.rs splits:
    members sorted and rotated to start after the sender, cut into `fanout` ranges, each led
    by its first member; then the second level, and so on."""
    members = sorted((ip for ip in ips if ip != sender), key=ipaddress.ip_address)
    after = [m for m in members if ipaddress.ip_address(m) > ipaddress.ip_address(sender)]
    members = after + [m for m in members if m not in after]
    heads, level = [], [members]
    while level and len(heads) < count:
        nxt = []
        for rng in level:
            k = min(max(fanout, 1), len(rng))
            start = 0
            for i in range(k):
                size = len(rng) // k + (1 if i < len(rng) % k else 0)
                part = rng[start:start + size]
                start += size
                if part:
                    heads.append(part[0])
                    nxt.append(part[1:])
        level = [r for r in nxt if r]
    return heads[:count]


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


def converged(sender, survivors, aport, heartbeat, within=120):
    """Survivors that have not applied every event of the sender within `within` seconds."""
    _, body = http("GET", f"http://{sender}:{aport}/peers")
    me = json.loads(body)["self"]
    want, sender_addr = me["last_seq"], me["address"]
    pending = set(survivors)
    end = time.time() + within
    while pending and time.time() < end:
        for ip in list(pending):
            try:
                _, body = http("GET", f"http://{ip}:{aport}/peers")
            except OSError:
                continue
            for p in json.loads(body)["peers"]:
                if p["address"] == sender_addr and (p.get("last_seq_seen") or 0) >= want:
                    pending.discard(ip)
        time.sleep(0.5)
    return len(pending)


def rest_rate(ips, aport, seconds):
    """Peer messages per second the whole fleet sends at rest (heartbeats, gossip)."""
    def total():
        t = 0.0
        for ip in ips:
            _, text = http("GET", f"http://{ip}:{aport}/metrics")
            t += metric(text.decode(), "corral_peer_messages_sent_total")
        return t
    t0, m0 = time.time(), total()
    time.sleep(seconds)
    return (total() - m0) / (time.time() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=10, help="receivers (the sender comes on top)")
    ap.add_argument("--purges", type=int, default=300)
    ap.add_argument("--corral", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "corral"))
    ap.add_argument("--json", action="store_true", help="also print 'JSON:' and the figures as JSON")
    ap.add_argument("--fanout", type=int, default=None, help="[cluster] fanout (0 = mesh; default: corral's)")
    ap.add_argument("--kill-relays", type=int, default=0, help="SIGKILL this many of the sender's relays mid-stream")
    ap.add_argument("--heartbeat", default="2s", help="[cluster] heartbeat")
    ap.add_argument("--rest", type=float, default=10.0, help="seconds at rest over which heartbeat traffic is measured")
    a = ap.parse_args()
    if not os.path.exists(a.corral):
        sys.exit(f"no corral binary at {a.corral}: cargo build --release -p corral")
    n = a.replicas + 1
    ips = [ip_of(i) for i in range(n)]
    pport, aport = free_port(ips[0]), free_port(ips[0])
    env = dict(os.environ, CORRAL_CLUSTER_SECRET=secrets.token_hex(32), CORRAL_LOG="warn")
    peers = ", ".join(f'"{ip}:{aport}"' for ip in ips)
    tmp = tempfile.mkdtemp()
    procs = []
    deadline = time.time() + 1800  # bounds the whole run
    try:
        for ip in ips:
            cfg = os.path.join(tmp, f"{ip}.toml")
            with open(cfg, "w") as f:
                f.write(f'[server]\nlisten = "{ip}:{pport}"\nadmin_listen = "{ip}:{aport}"\n'
                        f'[cluster]\ndiscovery = {{ kind = "static", addresses = [{peers}] }}\n'
                        f'heartbeat = "{a.heartbeat}"\nwait_timeout = "10s"\n'
                        + (f'fanout = {a.fanout}\n' if a.fanout is not None else ''))
            procs.append(subprocess.Popen([a.corral, "serve", "--config", cfg], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for ip in ips:
            for _ in range(2000):
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
        doomed = relays_of(ips, ips[0], a.fanout if a.fanout is not None else 8, a.kill_relays)
        killed = set()
        for i in range(a.purges):
            if time.time() > deadline:
                break
            if doomed and i == a.purges // 3:
                for ip in doomed:
                    procs[ips.index(ip)].kill()
                    killed.add(ip)
            t0 = time.perf_counter()
            # With relays dying, purges are not waited for (a dead replica never acknowledges);
            # convergence is checked below instead.
            _, body = http("POST", sender, {"tags": [f"item-{i}"], "wait": not doomed}, timeout=30)
            rtts.append((time.perf_counter() - t0) * 1000)
            if json.loads(body).get("pending"):
                incomplete += 1
        survivors = [ip for ip in ips[1:] if ip not in killed]
        lost = converged(ips[0], survivors, aport, a.heartbeat) if doomed else 0
        p50s, p99s, most = [], [], 0
        for ip in [ips[0]] + survivors:
            _, text = http("GET", f"http://{ip}:{aport}/metrics")
            text = text.decode()
            most = max(most, metric(text, "corral_peer_connections_max"))
            if ip != ips[0]:
                p50s.append(histogram_quantile(text, 0.5))
                p99s.append(histogram_quantile(text, 0.99))
        fleet_rate = rest_rate([ips[0]] + survivors, aport, a.rest)
        print(f"| replicas | purges | all-acknowledged p50 | p99 | max | not fully acknowledged |")
        print(f"| --- | --- | --- | --- | --- | --- |")
        print(f"| {a.replicas} | {a.purges} | {percentile(rtts, 50):.2f} ms | {percentile(rtts, 99):.2f} ms | "
              f"{max(rtts):.2f} ms | {incomplete} |")
        ok = [x for x in p50s if x is not None]
        ok99 = [x for x in p99s if x is not None]
        if ok:
            print(f"\nreceivers' corral_event_propagation_seconds (bucket upper bounds): "
                  f"p50 <= {max(ok) * 1000:.1f} ms, p99 <= {max(ok99) * 1000:.1f} ms")
        print(f"\nmax_peer_connections {most:.0f}; fleet_messages_per_second at rest {fleet_rate:.1f}"
              + (f"; killed {len(killed)} relays, survivors not converged: {lost}" if doomed else ""))
        if a.json:
            print("JSON:" + json.dumps({"replicas": a.replicas, "purges": len(rtts), "p50": percentile(rtts, 50),
                                        "p99": percentile(rtts, 99), "max": max(rtts), "incomplete": incomplete,
                                        "fanout": a.fanout, "killed": len(killed), "lost": lost,
                                        "max_peer_connections": most,
                                        "fleet_messages_per_second": fleet_rate}))
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
