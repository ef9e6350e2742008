#!/usr/bin/env bash
# One command: Corral side by side with Varnish and nginx (and a no-proxy nginx ceiling) on
# loopback. Installs what it needs from Debian's packages, builds Corral in release (or uses
# $CORRAL_BIN), runs the scenarios, prints one summary table with ratios plus a table per
# scenario, and stops everything it started.
#
#   bench/run.sh [--quick] [--scenario hits|zipf|stampede|purge|memory|coherence]... [--runs N]
#                [--duration SECONDS] [--out FILE.md]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for bin in varnishd:varnish varnishadm:varnish nginx:nginx wrk:wrk taskset:util-linux python3:python3; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian packages start system daemons on ports 80 and 6081; the benchmark runs its own
# instances on 127.0.0.1:18000-18113 and does not need (or touch) those.

if [ -z "${CORRAL_BIN:-}" ]; then
  echo "building corral (release) ..." >&2
  cargo build --release -q -p corral
  CORRAL_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/corral"
fi
export CORRAL_BIN

# The Python driver stops what it started on exit, error or signal; this trap covers the
# driver itself being interrupted before it can.
python3 bench/bench.py "$@" &
driver=$!
trap 'kill -TERM "$driver" 2>/dev/null || true; wait "$driver" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM HUP
status=0
wait "$driver" || status=$?
trap - EXIT
exit $status
