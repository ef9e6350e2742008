#!/usr/bin/env bash
# Three booking-service replicas on 127.0.0.11, .12, .13 (port 3000), each with a Corral sidecar
# (admin on :9090, clustered), one SQLite database. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p corral -p booking-service
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM
export CORRAL_CLUSTER_SECRET="booking-demo-secret-0123456789"
peers='"127.0.0.11:9090", "127.0.0.12:9090", "127.0.0.13:9090"'
for i in 1 2 3; do
  ip="127.0.0.1$i"
  cat > "$work/corral-$i.toml" <<TOML
[server]
listen = "$ip:8080"
admin_listen = "$ip:9090"
[upstream]
url = "http://$ip:3000"
[cluster]
discovery = { kind = "static", addresses = [$peers] }
TOML
  CORRAL_LOG=warn "$bin/corral" serve --config "$work/corral-$i.toml" & pids+=($!)
done
for i in 1 2 3; do
  ip="127.0.0.1$i"
  seed=(); [ "$i" = 1 ] && seed=(--seed)
  BOOKING_LOG=warn "$bin/booking-service" --listen "$ip:3000" --db "$work/booking.db" \
    --name "booking-$i" --sidecar "http://$ip:9090" "${seed[@]}" & pids+=($!)
  until curl -sf "http://$ip:3000/readyz" >/dev/null 2>&1; do sleep 0.1; done
done
cat <<'TXT'
Three replicas are up: http://127.0.0.11:3000, http://127.0.0.12:3000, http://127.0.0.13:3000

  for i in 1 2 3; do curl -si http://127.0.0.1$i:3000/packages/1 | grep -iE 'x-cache|price'; done
  curl -s -X PUT http://127.0.0.12:3000/admin/packages/1/price -H 'content-type: application/json' -d '{"price_cents": 5500}'
  for i in 1 2 3; do curl -s http://127.0.0.1$i:3000/packages/1 | grep -o '"price_cents":[0-9]*'; done
  curl -s http://127.0.0.11:3000/metrics | grep corral_library_

Ctrl-C to stop.
TXT
wait
