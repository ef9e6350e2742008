#!/usr/bin/env bash
# Three nest-booking replicas (127.0.0.1:3001..3003), each following its own Corral replica
# (admin 127.0.0.11..13:9090, one cluster), one shared "database". Shows that one price update
# is served by all three at once, and that a replica stopped (SIGSTOP) during the update serves
# the new price when it resumes. `demo.sh --keep` leaves everything running until Ctrl-C.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
keep="${1:-}"
corral="${CORRAL_BIN:-$root/target/debug/corral}"
if [ ! -x "$corral" ]; then (cd "$root" && cargo build -q -p corral); fi
if [ ! -d "$here/node_modules" ]; then (cd "$here" && npm ci --no-audit --no-fund --silent); fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
export CORRAL_CLUSTER_SECRET="nest-booking-demo-secret-0123456789"
peers='"127.0.0.11:9090", "127.0.0.12:9090", "127.0.0.13:9090"'
for i in 1 2 3; do
  cat > "$work/corral-$i.toml" <<TOML
[server]
listen = "127.0.0.1$i:8080"
admin_listen = "127.0.0.1$i:9090"
[cluster]
discovery = { kind = "static", addresses = [$peers] }
heartbeat = "500ms"
TOML
  CORRAL_LOG=warn "$corral" serve --config "$work/corral-$i.toml" 2> "$work/corral-$i.log" & pids+=($!)
done
for i in 1 2 3; do
  until curl -sf "http://127.0.0.1$i:9090/readyz" >/dev/null 2>&1; do sleep 0.05; done
done
pod_pid=()
for i in 1 2 3; do
  node "$here/src/main.mjs" --listen "127.0.0.1:300$i" --corral "http://127.0.0.1$i:9090" \
    --db "$work/packages.json" --name "pod-$i" > "$work/pod-$i.log" 2>&1 & pids+=($!); pod_pid[$i]=$!
done
for i in 1 2 3; do
  until curl -sf "http://127.0.0.1:300$i/health" | grep -q '"connected":true'; do sleep 0.05; done
done

price() { curl -s -D "$work/h" "http://127.0.0.1:300$1/packages/1" | grep -o '"price_cents":[0-9]*' | cut -d: -f2; }
xcache() { grep -i '^x-cache' "$work/h" | tr -d '\r' | cut -d' ' -f2; }
state() { awk '{print $3}' "/proc/$1/stat"; }
# The first answer of pod $1, and if it is not the new price yet, how long until it is (at most
# 2 s): `wait` covers the Corral replicas; each pod applies the event from its feed just after.
check_new() {
  local p t0 n=0
  p="$(price "$1")"
  echo "pod-$1: first answer $2: price_cents=$p ($(xcache))"
  [ "$p" = 5500 ] && return 0
  t0=$(date +%s%N)
  while [ "$(price "$1")" != 5500 ]; do
    n=$((n + 1)); [ "$n" -gt 200 ] && { echo "FAILED: pod-$1 still serves the old price"; return 1; }
    sleep 0.01
  done
  echo "pod-$1: new price after $(( ($(date +%s%N) - t0) / 1000000 )) ms more"
}

echo "== three replicas warm their caches"
for i in 1 2 3; do
  price "$i" >/dev/null
  until [ "$(price "$i")" ] && [ "$(xcache)" = HIT ]; do :; done
  echo "pod-$i: price_cents=$(price "$i") ($(xcache))"
done

echo "== pod-3 is stopped (SIGSTOP)"
kill -STOP "${pod_pid[3]}"
until [ "$(state "${pod_pid[3]}")" = T ]; do sleep 0.01; done

echo "== PUT /admin/packages/1/price {\"price_cents\": 5500} on pod-1 (waits for every Corral replica)"
curl -s -X PUT http://127.0.0.1:3001/admin/packages/1/price -H 'content-type: application/json' \
  -d '{"price_cents": 5500}' | python3 -c 'import json,sys; a=json.load(sys.stdin)["invalidation"]; print("acknowledged by", a["acknowledged"], "pending", a["pending"])'
for i in 1 2; do check_new "$i" "after the update"; done
echo "== pod-3 resumes (SIGCONT)"
kill -CONT "${pod_pid[3]}"
until [ "$(state "${pod_pid[3]}")" != T ]; do sleep 0.01; done
check_new 3 "after resuming"
curl -s http://127.0.0.1:3003/health | python3 -c 'import json,sys; f=json.load(sys.stdin)["feed"]; print("pod-3 feed: connected", f["connected"], "events", f["events"], "gaps", f["gaps"], "lastEventId", f["lastEventId"])'
echo "OK: one update, three replicas, the stopped one included"
if [ "$keep" = "--keep" ]; then echo "running; Ctrl-C to stop"; wait; fi
