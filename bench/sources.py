#!/usr/bin/env python3
"""Purges from the database's change stream (issue 25): how long from `COMMIT` returning to the
entry gone on all three replicas, and how many updates per second the follower keeps up with.

One PostgreSQL (Debian's, `wal_level = logical`, on loopback) — or with `--db mariadb` one
MariaDB (Debian's, the row binlog) —, one `corral origin`, three
`corral serve` replicas on 127.0.0.11-.13 (static discovery, one cluster secret) following the
database with one rule: `packages` rows map to the tag `bytes-{id}`, which the origin puts on
`/bytes/{id}`. The lowest address leads the source; the others get the purges by fan-out.

latency     --updates times: cache /bytes/{id} on all three replicas, then a plain SQL client
            (one psql session, autocommit) runs `UPDATE packages ... WHERE id = {id}`; from the
            moment its COMMIT returns, each replica is polled with `Cache-Control:
            only-if-cached` (504 once the entry is gone, and never a fetch that would refill it)
            until all three have dropped it. p50/p99/max per replica and for "all three".
sustained   single-row UPDATEs at a fixed rate for --step seconds per rate (pgbench -R; for
            MariaDB, one `mariadb` client session fed at that pace); per rate:
            what the database committed, what the leader turned into purges, and the lag
            (`corral_source_lag_seconds`, the oldest unacknowledged commit) at its worst and
            when the step ended. "Keeps up" = the leader's transaction rate matches pgbench's
            and the lag returns to 0 within a second of the step's end.

    bench/sources.py [--db postgres|mariadb] [--updates 1000] [--rates 500,1000,2000,3000,4000,8000]
                     [--step 5] [--corral target/release/corral] [--json]

The database runs with `fsync = off`, so that this machine's disk is not what limits the
sustained figures; commits stay synchronous (`synchronous_commit = off` would hold each commit's
WAL back from the walsender for up to `wal_writer_delay`, 200 ms, and measure that instead).
The latency clock starts when COMMIT has returned.
"""
import argparse
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mariadbserver  # noqa: E402
import pgserver  # noqa: E402
from propagation import free_port  # noqa: E402
from rollout import IPS, Origin, wait_ready  # noqa: E402

HOST = {"Host": "shop.example"}


class Replicas:
    def __init__(self, corral, origin, pg, work, secret_file):
        self.port, self.admin = free_port(IPS[0]), free_port(IPS[0])
        env = dict(os.environ, CORRAL_CLUSTER_SECRET=secrets.token_hex(32), CORRAL_LOG="warn")
        env.pop("CORRAL_ADMIN_TOKEN", None)
        peers = ", ".join(f'"{ip}:{self.admin}"' for ip in IPS)
        self.procs = []
        for i, ip in enumerate(IPS):
            cfg = os.path.join(work, f"corral-{i}.toml")
            with open(cfg, "w") as f:
                f.write(f'[server]\nlisten = "{ip}:{self.port}"\nadmin_listen = "{ip}:{self.admin}"\n'
                        f'[upstream]\nurl = "http://127.0.0.1:{origin.port}"\n'
                        f'[cache]\nmax_size = "256MiB"\n'
                        f'[cluster]\ndiscovery = {{ kind = "static", addresses = [{peers}] }}\n'
                        f'heartbeat = "500ms"\n'
                        f'[[sources]]\nname = "shop"\nkind = "{pg.KIND}"\ndsn = "{pg.dsn()}"\n'
                        f'password_file = "{secret_file}"\n'
                        'rules = [ { table = "packages", tags = ["bytes-{id}"] } ]\n')
            log = open(os.path.join(work, f"corral-{i}.log"), "w")
            self.procs.append(subprocess.Popen([corral, "serve", "--config", cfg], stdout=log,
                                               stderr=subprocess.STDOUT, env=env))
        for ip in IPS:
            wait_ready(ip, self.admin, "/readyz")

    def admin_json(self, i, path):
        c = http.client.HTTPConnection(IPS[i], self.admin, timeout=5)
        try:
            c.request("GET", path)
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def metric(self, i, name):
        c = http.client.HTTPConnection(IPS[i], self.admin, timeout=5)
        try:
            c.request("GET", "/metrics")
            for line in c.getresponse().read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.split()[-1])
            return 0.0
        finally:
            c.close()

    def wait_streaming(self, secs=60):
        deadline = time.time() + secs
        while time.time() < deadline:
            try:
                if self.admin_json(0, "/sources")["sources"][0]["streaming"] is True:
                    return
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.05)
        raise RuntimeError("the leader never reported its source streaming")

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=30)


class Poller:
    """A keep-alive connection to one replica, asking whether /bytes/{id} is still stored."""

    def __init__(self, ip, port):
        self.conn = http.client.HTTPConnection(ip, port, timeout=10)

    def status(self, path, only_cached):
        headers = dict(HOST, **({"Cache-Control": "only-if-cached"} if only_cached else {}))
        self.conn.request("GET", path, headers=headers)
        r = self.conn.getresponse()
        r.read()
        return r.status


class Session:
    """One plain SQL client session in autocommit (psql, or the `mariadb` client unbuffered):
    after each statement it prints a marker line, which comes back once it has committed."""

    def __init__(self, db):
        self.db = db
        self.proc = subprocess.Popen(db.session_argv(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=db.env())
        self.n = 0

    def send(self, sql):
        self.n += 1
        self.proc.stdin.write(f"{sql};\n{self.db.marker(self.n)}\n")
        return self.n

    def wait(self, n):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the SQL client ended")
            if line.strip() == f"committed-{n}":
                return

    def run(self, sql):
        n = self.send(sql)
        self.proc.stdin.flush()
        self.wait(n)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def latency(fleet, pg, updates, rows):
    pollers = [Poller(ip, fleet.port) for ip in IPS]
    session = Session(pg)
    gone = [[] for _ in IPS]
    for n in range(updates):
        row = n % rows + 1
        path = f"/bytes/{row}"
        for p in pollers:
            p.status(path, False)
            if p.status(path, True) != 200:
                raise RuntimeError(f"{path} was not stored")
        start = threading.Event()
        times = [None] * len(IPS)

        def watch(i):
            start.wait()
            deadline = time.perf_counter() + 30
            while pollers[i].status(path, True) != 504:
                if time.perf_counter() > deadline:
                    return  # never purged: reported below, with what /sources says
            times[i] = time.perf_counter()

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(len(IPS))]
        for t in threads:
            t.start()
        session.run(f"UPDATE packages SET name = 'v{n}' WHERE id = {row}")
        t0 = time.perf_counter()
        start.set()
        for t in threads:
            t.join()
        if None in times:
            raise RuntimeError(f"{path} not purged on every replica within 30 s: "
                               f"{fleet.admin_json(0, '/sources')}")
        for i in range(len(IPS)):
            gone[i].append((times[i] - t0) * 1000)
    session.close()
    rows_out = {}
    for label, ms in [(f"replica {i + 1}{' (leader)' if i == 0 else ''}", gone[i])
                      for i in range(len(IPS))] + [("all three", [max(v) for v in zip(*gone)])]:
        rows_out[label] = {"p50_ms": percentile(ms, 0.50), "p99_ms": percentile(ms, 0.99),
                           "max_ms": max(ms)}
    return rows_out


def pgbench(pg, rate, step, rows, work):
    """Committed UPDATEs at `rate` per second for `step` seconds: (committed, seconds)."""
    script = os.path.join(work, "update.sql")
    with open(script, "w") as f:
        f.write(f"\\set id random(1, {rows})\n"
                "UPDATE packages SET name = md5(random()::text) WHERE id = :id;\n")
    t0 = time.time()
    bench = subprocess.run([os.path.join(pg.bin, "pgbench"), "-n", "-h", "127.0.0.1", "-p",
                            str(pg.port), "-U", "postgres", "-c", "4", "-j", "1", "-R", str(rate),
                            "-T", str(step), "-f", script, pgserver.DATABASE],
                           capture_output=True, text=True, env=pg.env())
    elapsed = time.time() - t0
    committed = next((int(line.split(":")[1]) for line in bench.stdout.splitlines()
                      if line.startswith("number of transactions actually processed")), 0)
    return committed, elapsed


def paced(db, rate, step, rows, work):
    """The same through one SQL client session, fed `rate` statements a second in 10 ms slices."""
    session = Session(db)
    t0, sent, last = time.time(), 0, 0
    # The client's answers are read as they come: left in the pipe, they would fill it, stop
    # the client and with it the statements this loop feeds in.
    done = threading.Event()
    final = [None]

    def drain():
        while True:
            line = session.proc.stdout.readline()
            if not line or (final[0] is not None and line.strip() == f"committed-{final[0]}"):
                done.set()
                return

    reader = threading.Thread(target=drain)
    reader.start()
    while time.time() - t0 < step:
        due = int((time.time() - t0) * rate)
        while sent < due:
            last = session.send(f"UPDATE packages SET name = '{sent}-{rate}' WHERE id = {sent % rows + 1}")
            sent += 1
        session.proc.stdin.flush()
        time.sleep(0.01)
    final[0] = last
    last = session.send("SELECT 1")  # one more marker, after `final` is set
    session.proc.stdin.flush()
    final[0] = last
    done.wait(120)
    reader.join(5)
    elapsed = time.time() - t0
    session.close()
    return sent, elapsed


def sustained(fleet, db, rates, step, rows, work):
    drive = pgbench if db.KIND == "postgres" else paced
    out = []
    for rate in rates:
        before = fleet.metric(0, 'corral_source_transactions_total{source="shop"}')
        worst, stop = [0.0], threading.Event()

        def sample():
            while not stop.is_set():
                worst[0] = max(worst[0], fleet.metric(0, 'corral_source_lag_seconds{source="shop"}'))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        committed, elapsed = drive(db, rate, step, rows, work)
        at_end = fleet.metric(0, 'corral_source_lag_seconds{source="shop"}')
        after_step = fleet.metric(0, 'corral_source_transactions_total{source="shop"}') - before
        # Caught up: the lag back at 0 within a second of the step's end.
        deadline, caught = time.time() + 1.0, False
        while time.time() < deadline:
            if fleet.metric(0, 'corral_source_lag_seconds{source="shop"}') == 0.0:
                caught = True
                break
            time.sleep(0.02)
        stop.set()
        sampler.join()
        followed = fleet.metric(0, 'corral_source_transactions_total{source="shop"}') - before
        out.append({"rate": rate, "committed_per_s": committed / elapsed,
                    "followed_per_s": after_step / elapsed, "followed_total": followed,
                    "committed_total": committed, "worst_lag_s": worst[0],
                    "lag_at_end_s": at_end, "caught_up_within_1s": caught})
        if not caught:
            # Let it drain before the next step, so each step starts from no lag.
            deadline = time.time() + 120
            while time.time() < deadline and fleet.metric(
                    0, 'corral_source_lag_seconds{source="shop"}') > 0.0:
                time.sleep(0.1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["postgres", "mariadb"], default="postgres")
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--rates", default="500,1000,2000,3000,4000,8000")
    ap.add_argument("--step", type=int, default=5)
    ap.add_argument("--corral", default=os.environ.get("CORRAL_BIN", "target/release/corral"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="corral-bench-sources-")
    os.chmod(work, 0o755)
    if a.db == "postgres":
        pg = pgserver.Postgres(work, free_port("127.0.0.1"), "fsync = off\n")
    else:
        pg = mariadbserver.MariaDb(work, free_port("127.0.0.1"))
    origin = fleet = None
    try:
        pg.create_table(a.rows)
        secret = os.path.join(work, "db-password")
        with open(secret, "w") as f:
            f.write(pg.PASSWORD)
        origin = Origin(a.corral, work)
        fleet = Replicas(a.corral, origin, pg, work, secret)
        fleet.wait_streaming()
        lat = latency(fleet, pg, a.updates, a.rows)
        sus = sustained(fleet, pg, [int(r) for r in a.rates.split(",")], a.step, a.rows, work)
    finally:
        if fleet:
            fleet.stop()
        if origin:
            origin.stop()
        pg.stop()
    if a.json:
        print(json.dumps({"latency": lat, "sustained": sus}, indent=2))
        return
    print(f"## {a.db}: COMMIT returned -> entry gone, {a.updates} updates\n")
    print("| where | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- |")
    for k, v in lat.items():
        print(f"| {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['max_ms']:.2f} |")
    print(f"\n## Sustained updates, {a.step} s per rate\n")
    print("| offered/s | committed/s | purged by the leader/s | worst lag s | lag at end s | caught up within 1 s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in sus:
        print(f"| {r['rate']} | {r['committed_per_s']:.0f} | {r['followed_per_s']:.0f} | "
              f"{r['worst_lag_s']:.2f} | {r['lag_at_end_s']:.2f} | {'yes' if r['caught_up_within_1s'] else 'no'} |")


if __name__ == "__main__":
    main()
