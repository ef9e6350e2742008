#!/usr/bin/env python3
"""A discrete-event model of event propagation: mesh vs relay tree, past what one machine runs.

Every replica has its own CPU (unlike bench/propagation.py, where all share two cores). The
model is fed with per-hop costs measured by bench/propagation.py on this machine:

  hop      one signed POST to a peer and its answer (round trip, no relaying): lognormal with
           the p50/p99 measured for 1 receiver (--hop-p50, --hop-p99, milliseconds);
  send     the sender's extra CPU per additional peer it sends to, from the slope between the
           1-receiver and the 10-receiver mesh runs (--send-ms).

A relay's answer arrives after its own hop plus the slowest of its children's answers; its
children's requests leave one `send` apart (one CPU). The mesh is the tree with fanout N-1.
Heartbeat messages per period: N(N-1) for the mesh, 3N for gossip (corral-cluster/src/gossip.rs).

    bench/fanout_model.py [--replicas 30,100,300,1000,10000] [--fanout 8] [--trials 2000]
                          [--hop-p50 0.45] [--hop-p99 2.0] [--send-ms 0.07] [--json]
                          [--cores C --cpu-ms 0.18]

With --cores C the whole fleet shares C cores, as on the machine bench/propagation.py runs on:
every delivery costs --cpu-ms of CPU somewhere, so an event cannot be acknowledged by N-1
replicas sooner than (N-1) * cpu_ms / C, whatever the tree. That bound is what the
measurements past a few dozen replicas show (bench/RESULTS.md); without --cores the model is
the fleet the design is for, one CPU per replica.
"""
import argparse, json, math, random


def lognormal(p50, p99):
    mu = math.log(p50)
    sigma = max(1e-6, (math.log(p99) - mu) / 2.326)  # z(0.99)
    return lambda: random.lognormvariate(mu, sigma)


def split(n, k):
    """Range sizes below a head, as corral-cluster/src/ranges.rs cuts them."""
    k = max(1, min(k, n))
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def tree_time(n, k, hop, send):
    """Time until every one of `n` members below the caller has answered."""
    if n == 0:
        return 0.0
    worst = 0.0
    for i, size in enumerate(split(n, k)):
        # The i-th request leaves after i sends; the head answers after its hop and its subtree.
        t = i * send + hop() + tree_time(size - 1, k, hop, send)
        worst = max(worst, t)
    return worst


def run(n, k, trials, hop, send, cores=None, cpu_ms=0.0):
    members = n - 1
    k = members if k == 0 else k
    floor = members * cpu_ms / cores if cores else 0.0
    xs = sorted(max(floor, tree_time(members, k, hop, send)) for _ in range(trials))
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    depth, m = 0, members
    while m > 0:
        m = math.ceil(m / k) - 1
        depth += 1
    return {"replicas": n, "fanout": k, "depth": depth, "p50": p(0.5), "p99": p(0.99),
            "messages_per_event": members,
            "sender_messages_per_event": min(k, members),
            "heartbeats_per_period_mesh": n * (n - 1),
            "heartbeats_per_period_gossip": 3 * n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", default="30,100,300,1000,10000")
    ap.add_argument("--fanout", default="0,8")
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--hop-p50", type=float, default=0.45)
    ap.add_argument("--hop-p99", type=float, default=2.0)
    ap.add_argument("--send-ms", type=float, default=0.07)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cores", type=int, default=None)
    ap.add_argument("--cpu-ms", type=float, default=0.18)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    random.seed(a.seed)
    hop = lognormal(a.hop_p50, a.hop_p99)
    rows = []
    print("| replicas | fanout | depth | p50 ms | p99 ms | sender msgs/event | heartbeats/period |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in [int(x) for x in a.replicas.split(",")]:
        for k in [int(x) for x in a.fanout.split(",")]:
            trials = a.trials if n <= 1000 or k else max(50, a.trials // 20)
            r = run(n, k, trials, hop, a.send_ms, a.cores, a.cpu_ms)
            beats = r["heartbeats_per_period_mesh"] if k == 0 else r["heartbeats_per_period_gossip"]
            print(f"| {n} | {'mesh' if k == 0 else k} | {r['depth']} | {r['p50']:.2f} | {r['p99']:.2f} | "
                  f"{r['sender_messages_per_event']} | {beats} |")
            rows.append(r)
    if a.json:
        print("JSON:" + json.dumps(rows))


if __name__ == "__main__":
    main()
