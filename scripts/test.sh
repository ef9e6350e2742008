#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run calls it).
# Installs what the tests need when it is missing, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v redis-cli >/dev/null || need_pkgs+=(redis-tools)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v curl >/dev/null || need_pkgs+=(curl ca-certificates)
command -v nghttp >/dev/null || need_pkgs+=(nghttp2-client)
command -v dnsmasq >/dev/null || need_pkgs+=(dnsmasq)
command -v python3 >/dev/null || need_pkgs+=(python3)
# The dashboard's browser test (crates/corral/tests/ui.rs) and `corral top`'s terminal test.
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v tmux >/dev/null || need_pkgs+=(tmux)
# promtool (Debian's prometheus package): the alerting rules' checks and unit tests.
command -v promtool >/dev/null || need_pkgs+=(prometheus)
# [[sources]] tests (crates/corral/tests/sources.rs, crates/corral-source/tests/follow.rs)
# start their own server from /usr/lib/postgresql/*/bin (Debian's layout, not on PATH).
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
# kind = "mariadb" tests (crates/corral/tests/sources_mariadb.rs,
# crates/corral-source/tests/follow_mariadb.rs) start their own mariadbd (corral-testkit).
command -v mariadbd >/dev/null || need_pkgs+=(mariadb-server)
command -v mariadb >/dev/null || need_pkgs+=(mariadb-client)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# dnsmasq's Debian package starts a system daemon on port 53; the tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet dnsmasq 2>/dev/null; then
  systemctl stop dnsmasq || true
fi
# So does mariadb-server's (port 3306); the tests start their own servers.
if command -v systemctl >/dev/null && systemctl is-active --quiet mariadb 2>/dev/null; then
  systemctl stop mariadb || true
  systemctl disable mariadb 2>/dev/null || true
fi
# So does prometheus's, on port 9090 (Corral's default admin port); the tests need promtool only.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi

# Kubernetes manifests: strict validation against the Kubernetes schemas; the Helm chart,
# rendered by Helm's SDK (helm-python-sdk from PyPI, installed by validate.sh) with each of its
# ci/ values files, validated the same way (crates/corral/tests/helm.rs runs it again with
# check-config and a broken chart).
deploy/validate.sh
deploy/validate.sh deploy/helm/corral

# The container image, which crates/corral/tests/image.rs builds and runs: built here first and
# alone, so that its static release build does not compete with the timing-sensitive tests (the
# test then finds it up to date). Installs podman and runc when missing; fails if it cannot.
scripts/image.sh

# The fuzz targets (fuzz/, its own workspace, run by `cargo fuzz`): compiled here so that they
# follow corral-core's API instead of rotting unnoticed between fuzzing campaigns.
cargo check --manifest-path fuzz/Cargo.toml --bins --locked

# Replica tests bind 127.0.0.11, .12, .13 ... : loopback covers 127.0.0.0/8 on Linux.
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast "$@"
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi

# The Node.js client (clients/node): its suites start real corral processes from this build.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing: nodejs npm"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
cargo build -p corral
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
(cd clients/node && npm ci --no-audit --no-fund && CORRAL_BIN="$target_dir/debug/corral" npm test)
