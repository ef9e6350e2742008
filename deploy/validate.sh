#!/usr/bin/env bash
# Validates every Kubernetes manifest against the Kubernetes JSON schemas (PyPI's
# kubernetes-validate, which ships them: no network needed once installed), strictly (unknown
# fields fail), and checks that every embedded corral.toml is valid TOML that `corral
# check-config` accepts when a corral binary is given as $CORRAL_BIN.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${K8S_VERSION:-1.30.0}"

if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install -q kubernetes-validate
fi

mapfile -t files < <(find kubernetes -name '*.yaml' ! -name kustomization.yaml | sort)
echo "validating ${#files[@]} manifest files against Kubernetes ${K8S_VERSION} schemas (strict)"
kubernetes-validate --strict --kubernetes-version "$K8S_VERSION" "${files[@]}"

# Embedded configuration files: TOML-valid, and accepted by corral itself when available.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp" "${files[@]}" <<'PY'
import sys, tomllib, yaml, pathlib
out = pathlib.Path(sys.argv[1])
n = 0
for f in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(f)):
        if doc and doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".toml"):
                    tomllib.loads(text)
                    n += 1
                    (out / f"{doc['metadata']['name']}-{key}").write_text(text)
print(f"{n} embedded TOML file(s) parse")
PY
if [ -n "${CORRAL_BIN:-}" ]; then
  for cfg in "$tmp"/*.toml; do
    # The secrets and POD_IP exist only in a pod; check-config validates the rest.
    POD_IP=10.0.0.1 "$CORRAL_BIN" check-config "$cfg"
  done
fi
echo "all manifests valid"
