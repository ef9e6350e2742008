#!/usr/bin/env python3
"""TLS and HTTP/2 benchmarks, Corral beside nginx (Debian's package) in one run: the same
certificate (ECDSA P-256), the same cipher suite (TLS 1.3 TLS_AES_128_GCM_SHA256, X25519: the
only suite the client offers), the same cached objects (/bytes/1024 and /bytes/102400 from
`corral origin`, nginx with proxy_cache as in bench.py).

Scenarios, each for 1 KiB and 100 KiB cache hits, with h2load (Debian's nghttp2-client):
  h1-keepalive   HTTP/1.1 over TLS, 32 connections kept alive
  h2             HTTP/2 over TLS (ALPN h2), 8 connections x 16 concurrent streams
  h1-handshake   a new TLS connection (full handshake, no resumption) per request, offered at
                 a fixed rate; compares server CPU-seconds per handshake and latency

Servers under test run on core 0, h2load and the origin on core 1 (as bench.py). Each run
alternates the two servers; the median of --runs is reported. The machine is shared and noisy:
read the ratios.

    bench/tls.py [--runs N] [--duration S] [--quick] [--scenario NAME]... [--sizes 1024,102400]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

TLS_PORTS = dict(corral=B.BASE + 42, nginx=B.BASE + 44)
CIPHER = "TLS_AES_128_GCM_SHA256"
SIZES = [1024, 102400]
SCENARIOS = ["h1-keepalive", "h2", "h1-handshake"]


def make_cert(work):
    cert, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def start_corral(b, cert, key):
    conf = os.path.join(b.work, "corral-tls.toml")
    with open(conf, "w") as f:
        f.write(f'[server]\nlisten = "{B.HOST}:{B.PORTS["corral"]}"\nadmin_listen = "{B.HOST}:{B.CORRAL_ADMIN}"\n'
                f'tls = {{ listen = "{B.HOST}:{TLS_PORTS["corral"]}", cert_file = "{cert}", key_file = "{key}" }}\n'
                f'[upstream]\nurl = "http://{B.HOST}:{B.PORTS["origin"]}"\n'
                f'[cache]\nmax_size = "{B.CACHE_SIZE}"\nmax_object_size = "8MiB"\n')
    env = dict(os.environ, CORRAL_LOG="warn")
    env.pop("CORRAL_ADMIN_TOKEN", None)
    b.spawn([B.CORRAL, "serve", "--config", conf], "corral", env=env)
    B.wait_http(f"http://{B.HOST}:{B.CORRAL_ADMIN}/readyz")


def start_nginx(b, cert, key):
    conf = os.path.join(b.work, "nginx-tls.conf")
    cache = os.path.join(b.work, "nginx-cache")
    with open(conf, "w") as f:
        f.write(f"""
user root; worker_processes 1; daemon off; pid {b.work}/nginx.pid; error_log {b.work}/nginx.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000;
  proxy_cache_path {cache} levels=1:2 keys_zone=bench:16m max_size=32m inactive=1h use_temp_path=off;
  upstream origin {{ server {B.HOST}:{B.PORTS['origin']}; keepalive 64; }}
  server {{ listen {B.HOST}:{TLS_PORTS['nginx']} ssl http2 backlog=4096;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache bench; proxy_cache_lock on; proxy_cache_key $uri$is_args$args;
      add_header X-Cache-Status $upstream_cache_status; }} }} }}
""")
    b.spawn(["nginx", "-c", conf, "-p", b.work], "nginx")
    fill("nginx", "/bytes/1024")


def h2load(system, path, args, log_file):
    url = f"https://{B.HOST}:{TLS_PORTS[system]}{path}"
    argv = B.LOAD_CPU + ["h2load", "--tls13-ciphers", CIPHER, "--log-file", log_file] + args + [url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    return out.stdout + out.stderr


def fill(system, path):
    """Two requests: the first stores the object, the second is a hit."""
    for _ in range(50):
        out = h2load(system, path, ["-n", "2", "-c", "1"], os.devnull)
        if "2 succeeded" in out:
            return
        time.sleep(0.1)  # not listening yet
    raise RuntimeError(f"{system} never answered {path} over TLS")


def latencies_ms(log_file):
    xs = []
    if not os.path.exists(log_file):
        return xs
    with open(log_file) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                xs.append(int(parts[2]) / 1000.0)
    return sorted(xs)


def run(b, system, name, size):
    path = f"/bytes/{size}"
    log_file = os.path.join(b.work, f"{system}-{name}-{size}.log")
    d = str(b.duration)
    args = {
        "h1-keepalive": ["--h1", "-c", "32", "-D", d],
        "h2": ["-c", "8", "-m", "16", "-D", d],
        # 1,000 connections, 250 opened every second, one request each.
        "h1-handshake": ["--h1", "-c", "1000", "-n", "1000", "-r", "250", "--rate-period", "1"],
    }[name]
    cpu0 = b.cpu_seconds(system)
    out = h2load(system, path, args, log_file)
    cpu = b.cpu_seconds(system) - cpu0
    done = ok = 0
    secs = None
    for line in out.splitlines():
        if line.startswith("requests:"):
            f = line.split()
            done, ok = int(f[1]), int(f[7])
        if line.startswith("finished in"):
            secs = float(line.split()[2].rstrip("s,"))
    lat = latencies_ms(log_file)
    if not ok or not secs or not lat:
        raise RuntimeError(f"{system} {name} {size}: h2load failed:\n{out}")
    return dict(rps=ok / secs, per_cpu=ok / cpu if cpu else float("nan"), errors=done - ok,
                p50=B.pct(lat, 50), p99=B.pct(lat, 99), proto=proto(out))


def proto(out):
    for line in out.splitlines():
        if line.startswith("Application protocol:"):
            return line.split(":", 1)[1].strip()
    return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # h2load opens a socket per connection
    work = tempfile.mkdtemp(prefix="corral-tls-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    b = B.Bench(work, a.quick, a.runs, a.duration)
    try:
        b.start_origin()
        cert, key = make_cert(work)
        start_corral(b, cert, key)
        start_nginx(b, cert, key)
        for size in sizes:
            fill("corral", f"/bytes/{size}")
            fill("nginx", f"/bytes/{size}")
        rows = []
        for name in a.scenario or SCENARIOS:
            for size in sizes:
                res = {"corral": [], "nginx": []}
                for _ in range(a.runs):
                    for system in ("corral", "nginx"):
                        res[system].append(run(b, system, name, size))
                med = {s: {k: statistics.median(r[k] for r in rs) for k in ("rps", "per_cpu", "p50", "p99", "errors")}
                       for s, rs in res.items()}
                protos = {s: rs[0]["proto"] for s, rs in res.items()}
                rows.append((name, size, med, protos))
                B.log(f"{name} {size}: {med} {protos}")
        print("| scenario | size | metric | corral | nginx | corral/nginx | target | met |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, size, med, protos in rows:
            kib = f"{size // 1024} KiB"
            for metric, key, digits, better in (("req/s", "rps", 0, "≥"), ("req per server CPU-second", "per_cpu", 0, ""),
                                                ("p50 ms", "p50", 3, ""), ("p99 ms", "p99", 3, "≤")):
                c, n = med["corral"][key], med["nginx"][key]
                if name == "h1-handshake" and key == "rps":
                    better = ""  # offered at a fixed rate: throughput is the rate, not a result
                target = f"{better} nginx" if better else ""
                met = "" if not better else ("yes" if (c >= n if better == "≥" else c <= n) else "no")
                print(f"| {name} ({protos['corral']}) | {kib} | {metric} | {B.fmt(c, digits)} | {B.fmt(n, digits)} | {B.ratio(c, n)} | {target} | {met} |")
            errs = (med["corral"]["errors"], med["nginx"]["errors"])
            if any(errs):
                print(f"| {name} | {kib} | failed requests | {errs[0]:g} | {errs[1]:g} | | 0 | {'yes' if not errs[0] else 'no'} |")
    finally:
        b.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
