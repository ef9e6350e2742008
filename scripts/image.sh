#!/usr/bin/env bash
# Builds Corral's container image with podman: a static `corral` binary on `FROM scratch`
# (deploy/image/Containerfile), tagged localhost/corral:<version> and localhost/corral:latest.
#
#   scripts/image.sh [--save FILE] [--profile NAME]
#
#   --save FILE      also write the image as an OCI archive (for `podman load -i FILE`,
#                    `ctr -n k8s.io images import FILE`, `skopeo copy oci-archive:FILE ...`)
#   --profile NAME   the cargo profile of the binary (also CORRAL_IMAGE_PROFILE): `dist`, the
#                    default, what ships and what the tests run (release code, fat LTO,
#                    stripped: about 13 MB); any other works too, stripped here (`dev`: about
#                    33 MB, over the image's 20 MB limit).
#
# Installs podman and runc with apt-get when missing, as scripts/test.sh does for its tools.
# The static binary is built in target/static/ (its own target dir: +crt-static changes every
# artifact's flags, and a separate dir keeps the ordinary builds and their lock untouched).
#
# Podman runtime: where podman's defaults cannot start a container (seen on hosts with hybrid
# cgroups, where the runtime may not raise RLIMIT_NOFILE as podman asks), the script writes
# target/image/containers.conf (runtime runc, ulimits within the host's hard limits) and uses it
# through CONTAINERS_CONF; the host's own podman configuration is never changed. Either way it
# writes target/image/podman.env, to source before running the image by hand:
#   . target/image/podman.env && podman run --rm --network host localhost/corral:latest demo
# A CONTAINERS_CONF already set in the environment is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

save=""
profile="${CORRAL_IMAGE_PROFILE:-dist}"
while [ $# -gt 0 ]; do
  case "$1" in
    --save) save="${2:?--save needs a file name}"; shift 2 ;;
    --save=*) save="${1#--save=}"; shift ;;
    --profile) profile="${2:?--profile needs a cargo profile name}"; shift 2 ;;
    --profile=*) profile="${1#--profile=}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "image.sh: $*"; }

# --- tools ------------------------------------------------------------------------------------
need_pkgs=()
command -v podman >/dev/null || need_pkgs+=(podman)
command -v runc >/dev/null || need_pkgs+=(runc)
command -v readelf >/dev/null || need_pkgs+=(binutils)
cacert=/etc/ssl/certs/ca-certificates.crt
[ -s "$cacert" ] || need_pkgs+=(ca-certificates)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! { $SUDO apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
           "${need_pkgs[@]}" >/dev/null; }; then
    echo "image.sh: FAILED to install ${need_pkgs[*]} with apt-get: cannot build the image" >&2
    exit 1
  fi
fi
for t in podman runc readelf strip; do
  command -v "$t" >/dev/null || { echo "image.sh: $t is not installed: cannot build the image" >&2; exit 1; }
done
[ -s "$cacert" ] || { echo "image.sh: no CA bundle at $cacert" >&2; exit 1; }

# --- the static binary -----------------------------------------------------------------------
triple=x86_64-unknown-linux-gnu
static_dir="${CARGO_TARGET_DIR:-target}/static"
case "$static_dir" in /*) ;; *) static_dir="$root/$static_dir" ;; esac
out="$root/target/image"
ctx="$out/context"
profile_dir="$profile"; [ "$profile" = dev ] && profile_dir=debug
bin="$static_dir/$triple/$profile_dir/corral"

say "building the static corral binary (profile $profile, in ${static_dir#"$root"/})"
start=$SECONDS
# --target keeps build scripts and proc macros as ordinary host builds (without +crt-static,
# which they cannot be); only what runs in the image is linked statically.
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" CARGO_TARGET_DIR="$static_dir" \
  cargo build -p corral --bin corral --target "$triple" --profile "$profile"
say "built in $((SECONDS - start)) s"

if readelf -lW "$bin" | grep -q 'program interpreter' || readelf -dW "$bin" | grep -q '(NEEDED)'; then
  echo "image.sh: $bin is dynamically linked; a FROM scratch image cannot run it" >&2
  readelf -dW "$bin" | grep '(NEEDED)' >&2 || true
  exit 1
fi

rm -rf "$ctx"
mkdir -p "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp"
strip --strip-all -o "$ctx/corral" "$bin"
install -m 0644 "$cacert" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
chmod 0644 "$ctx/rootfs/etc/nsswitch.conf"
chmod 1777 "$ctx/rootfs/tmp"

# "corral 0.1.0 (0123456789ab)"
version_line="$("$ctx/corral" --version)"
version="$(sed -E 's/^corral ([^ ]+).*/\1/' <<<"$version_line")"
revision="$(sed -E 's/.*\(([^)]*)\).*/\1/' <<<"$version_line")"
source_url="${CORRAL_IMAGE_SOURCE:-https://github.com/corral-cache/corral}"
say "$version_line: $(stat -c %s "$ctx/corral") bytes, statically linked, stripped"

# --- podman's configuration -------------------------------------------------------------------
# Tried in this order: the caller's CONTAINERS_CONF; podman's defaults; our containers.conf.
mkdir -p "$out"
own_conf="$out/containers.conf"
write_own_conf() {
  local nofile nproc
  nofile="$(ulimit -Hn)"; [ "$nofile" = unlimited ] && nofile=1048576
  nproc="$(ulimit -Hu)"; { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$own_conf" <<EOF
# Written by scripts/image.sh: podman's defaults could not start a container on this host.
# Used through CONTAINERS_CONF only; the host's podman configuration is unchanged.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
EOF
}

image="localhost/corral:$version"
say "podman build $image (and :latest)"
podman build --quiet -f deploy/image/Containerfile \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg SOURCE="$source_url" \
  -t "$image" -t localhost/corral:latest "$ctx" >/dev/null
# Earlier builds' images, untagged now (this script's only: they carry its label).
podman image prune --force --filter label=org.opencontainers.image.title=corral >/dev/null

# The locked-down way the tests and the manifests run it.
probe() {
  podman run --rm --network host --read-only --cap-drop=ALL --user 65532:65532 \
    --security-opt no-new-privileges "$image" --version 2>&1
}
if [ -n "${CONTAINERS_CONF:-}" ]; then
  conf_note="CONTAINERS_CONF=$CONTAINERS_CONF (from the environment)"
  if ! err="$(probe)"; then
    echo "image.sh: the image does not start with CONTAINERS_CONF=$CONTAINERS_CONF: $err" >&2
    exit 1
  fi
  printf '# podman configuration for running Corral images here (scripts/image.sh)\nexport CONTAINERS_CONF=%q\n' \
    "$CONTAINERS_CONF" >"$out/podman.env"
elif err="$(probe)"; then
  conf_note="podman's defaults"
  printf '# podman configuration for running Corral images here (scripts/image.sh): the defaults work\n' \
    >"$out/podman.env"
else
  say "podman's defaults cannot start a container here: $(tail -n 1 <<<"$err")"
  write_own_conf
  export CONTAINERS_CONF="$own_conf"
  if ! err="$(probe)"; then
    echo "image.sh: the image does not start with runc and $own_conf either: $err" >&2
    exit 1
  fi
  conf_note="CONTAINERS_CONF=${own_conf#"$root"/} (runc, $(grep default_ulimits "$own_conf"))"
  printf '# podman configuration for running Corral images here (scripts/image.sh)\nexport CONTAINERS_CONF=%q\n' \
    "$own_conf" >"$out/podman.env"
fi
if [ "$err" != "$version_line" ]; then
  echo "image.sh: the image answered '$err' to --version, expected '$version_line'" >&2
  exit 1
fi
runtime="$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null || echo unknown)"
say "containers run with runtime $runtime, $conf_note"

size="$(podman image inspect --format '{{.Size}}' "$image")"
say "$image: $((size / 1000)) kB, user $(podman image inspect --format '{{.Config.User}}' "$image")"

if [ -n "$save" ]; then
  rm -f "$save"
  podman save --quiet --format oci-archive -o "$save" "$image"
  say "saved $image to $save ($(stat -c %s "$save") bytes, OCI archive)"
fi
