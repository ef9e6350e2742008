#!/usr/bin/env bash
# One command: Corral side by side with Varnish and nginx (and a no-proxy nginx ceiling) on
# loopback. Installs what it needs from Debian's packages, builds Corral in release, runs the
# scenarios, prints tables with ratios, and stops everything it started.
#
#   bench/run.sh [--quick] [--scenario hits|zipf|stampede|purge|memory|propagation]...
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for bin in varnishd:varnish nginx:nginx wrk:wrk taskset:util-linux; do
  command -v "${bin%%:*}" >/dev/null || need+=("${bin##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -z "${CORRAL_BIN:-}" ]; then
  cargo build --release -q -p corral
  CORRAL_BIN="$PWD/target/release/corral"
fi
export CORRAL_BIN
exec python3 bench/bench.py "$@"
