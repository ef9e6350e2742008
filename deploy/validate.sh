#!/usr/bin/env bash
# Validates Corral's Kubernetes manifests. Exits non-zero when anything is wrong.
#
#   deploy/validate.sh [DIR]        DIR defaults to deploy/kubernetes (searched recursively)
#
# 1. Schema: every manifest against the Kubernetes OpenAPI JSON schemas, strictly (an unknown
#    or misspelt field fails), with PyPI's kubernetes-validate — installed with pip when missing.
#    It ships the schemas, so nothing else is downloaded. A kind/apiVersion it has no schema
#    for fails too (the tool itself only warns). Checked against the oldest Kubernetes the
#    manifests support (1.30: the preStop `sleep` action) and the newest the tool ships;
#    override with K8S_VERSIONS="1.31.0 1.33.0".
# 2. Kustomize: every kustomization.yaml's resources exist; when kubectl is on PATH, each
#    kustomization is rendered (`kubectl kustomize`, offline) and the result validated as in 1.
# 3. Corral: every corral.toml embedded in a ConfigMap is valid TOML (python3 tomllib), and
#    the pods that run it agree with it: config and secret files mounted where the config says,
#    secrets never on the command line, probes on /readyz and /healthz, a drain budget longer
#    than shutdown_grace, a memory limit well above cache.max_size, a headless peer Service that
#    publishes not-ready addresses, least-privilege RBAC, a locked-down securityContext, and
#    the image: corral:<the workspace version>, the tag scripts/image.sh builds (also the
#    newTag of a kustomization's `images:` entry for corral).
# 4. With CORRAL_BIN=/path/to/corral, `corral check-config` accepts every embedded corral.toml.
#
#   deploy/validate.sh deploy/helm/corral
#
# 0. Helm: a DIR holding Chart.yaml is a chart. It is linted strictly and rendered by Helm
#    itself (Helm v4's Go SDK, through PyPI's helm-python-sdk, which ships it compiled: no
#    helm binary, no cluster) once per values file in its ci/ directory, and each rendering is
#    validated as a directory of manifests by 1-4. Custom resources (ServiceMonitor), which
#    the Kubernetes schemas do not cover, are checked by 3 instead (the Service they select
#    exists and has the port they scrape).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "${1:-$here/kubernetes}" && pwd)"
KV_PIN="kubernetes-validate==1.37.0"   # any version that ships the schemas asked for works
HELM_PIN="helm-python-sdk==0.2.2"      # Helm v4.2.3's SDK, compiled into the wheel

if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "installing $KV_PIN from PyPI"
  python3 -m pip install --quiet "$KV_PIN" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "$KV_PIN"
fi
if ! python3 -c 'import tomllib' 2>/dev/null; then   # Python < 3.11
  python3 -c 'import tomli' 2>/dev/null || python3 -m pip install --quiet tomli
fi
kv_version="$(python3 -m kubernetes_validate --version)"

if [ -z "${K8S_VERSIONS:-}" ]; then
  # 1.30.0 and the newest schema set this kubernetes-validate ships.
  newest="$(python3 - <<'PY'
import os, re, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
vs = [m.group(1) for n in os.listdir(d) if (m := re.fullmatch(r"v(\d+\.\d+\.\d+)-local-strict", n))]
print(max(vs, key=lambda v: tuple(map(int, v.split(".")))) if vs else "")
PY
)"
  K8S_VERSIONS="1.30.0"
  if [ -n "$newest" ] && [ "$newest" != "1.30.0" ]; then K8S_VERSIONS="1.30.0 $newest"; fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- 0 ----------------------------------------------------------------------------------------
if [ -f "$root/Chart.yaml" ]; then
  if ! python3 -c 'import helm_python' 2>/dev/null; then
    echo "installing $HELM_PIN from PyPI"
    python3 -m pip install --quiet "$HELM_PIN" 2>/dev/null ||
      python3 -m pip install --quiet --break-system-packages "$HELM_PIN"
  fi
  shopt -s nullglob
  values_files=("$root"/ci/*.yaml)
  if [ "${#values_files[@]}" -eq 0 ]; then
    echo "FAIL: no values files in $root/ci" >&2
    exit 1
  fi
  failed=0
  for values in "${values_files[@]}"; do
    name="$(basename "$values" .yaml)"
    out="$tmp/helm/$name"
    echo "== helm: $(basename "$root") with ci/$name.yaml"
    if ! python3 - "$root" "$values" "$out" <<'PY'
import os, sys
import helm_python as helm
import yaml

chart, values_file, out = sys.argv[1:]
values = yaml.safe_load(open(values_file)) or {}
# A release name that is not "corral" exercises the chart's naming too.
release = "catalog" if os.path.basename(values_file).startswith("sidecar") else "corral"
report = helm.lint(chart, values, strict=True, namespace="corral", kube_version="v1.30.0")
problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
for m in problems:
    print(f"FAIL helm lint: {m}")
with helm.Chart.load(chart) as c:
    print(f"ok   helm {helm.helm_sdk_version()}: chart {c.name} {c.version} renders as release {release!r}")
    rendered = c.render(values, name=release, namespace="corral", is_install=True)
os.makedirs(out)
custom = []
for path, text in sorted(rendered.items()):
    if path.endswith("NOTES.txt"):
        continue
    docs = [d for d in yaml.safe_load_all(text) if d]
    core = [d for d in docs if "monitoring.coreos.com" not in d.get("apiVersion", "")]
    custom += [d for d in docs if d not in core]
    if core:
        with open(os.path.join(out, os.path.basename(path)), "w") as f:
            yaml.safe_dump_all(core, f, sort_keys=False)
if custom:
    with open(os.path.join(out, "custom-resources.crd.yaml"), "w") as f:
        yaml.safe_dump_all(custom, f, sort_keys=False)
sys.exit(1 if problems else 0)
PY
    then failed=1; continue; fi
    "$0" "$out" || failed=1
  done
  if [ "$failed" -ne 0 ]; then
    echo "deploy/validate.sh: the Helm chart FAILED" >&2
    exit 1
  fi
  echo "deploy/validate.sh: the Helm chart renders valid manifests with every ci/ values file"
  exit 0
fi

# The version scripts/image.sh tags the image with: the workspace's.
CORRAL_VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$here/../Cargo.toml" 2>/dev/null || true)"
export CORRAL_VERSION

mapfile -t manifests < <(find "$root" -type f \( -name '*.yaml' -o -name '*.yml' \) \
  ! -name 'kustomization.yaml' ! -name 'kustomization.yml' ! -name '*.crd.yaml' | sort)
# Custom resources (a rendered chart's ServiceMonitor): no Kubernetes schema; checked in 3.
mapfile -t custom_resources < <(find "$root" -type f -name '*.crd.yaml' | sort)
mapfile -t kustomizations < <(find "$root" -type f \( -name 'kustomization.yaml' -o -name 'kustomization.yml' \) | sort)
if [ "${#manifests[@]}" -eq 0 ]; then
  echo "FAIL: no manifests under $root" >&2
  exit 1
fi
failed=0

# --- 2 (first, so that 1 can validate the rendered output too) -----------------------------
echo "== kustomize: ${#kustomizations[@]} kustomization(s)"
rendered=()
for k in "${kustomizations[@]}"; do
  dir="$(dirname "$k")"
  rel="${dir#"$root"}"; rel="${rel#/}"; rel="${rel:-.}"
  if ! python3 - "$k" <<'PY'
import os, sys, yaml
k = sys.argv[1]
doc = yaml.safe_load(open(k)) or {}
missing = [r for r in doc.get("resources") or [] if not os.path.exists(os.path.join(os.path.dirname(k), r))]
for r in missing:
    print(f"FAIL {os.path.relpath(k)}: resource {r} does not exist")
version = os.environ.get("CORRAL_VERSION")
stale = [i for i in doc.get("images") or [] if i.get("name") == "corral" and version
         and "newTag" in i and str(i["newTag"]) != version]
for i in stale:
    print(f"FAIL {os.path.relpath(k)}: images: corral newTag {i['newTag']!r}, but the workspace version is {version}")
sys.exit(1 if missing or stale else 0)
PY
  then failed=1; continue; fi
  if command -v kubectl >/dev/null 2>&1; then
    name="${rel//\//_}"; [ "$name" = "." ] && name="root"
    out="$tmp/kustomize:$name.yaml"
    if kubectl kustomize "$dir" >"$out" 2>"$tmp/kustomize.err"; then
      echo "ok   kubectl kustomize $rel"
      rendered+=("$out")
    else
      echo "FAIL kubectl kustomize $rel:"; sed 's/^/     /' "$tmp/kustomize.err"; failed=1
    fi
  else
    echo "ok   $rel: resources exist (kubectl not found: rendering skipped)"
  fi
done

# --- 1 ----------------------------------------------------------------------------------------
for v in $K8S_VERSIONS; do
  echo "== schema: ${#manifests[@]} manifest file(s) + ${#rendered[@]} rendered kustomization(s)," \
       "Kubernetes $v, strict ($kv_version)"
  set +e
  (cd "$root" && python3 -m kubernetes_validate --strict --kubernetes-version "$v" \
      "${manifests[@]#"$root"/}" "${rendered[@]}") >"$tmp/kv.out" 2>&1
  rc=$?
  set -e
  sed -i -e "s#$tmp/##" "$tmp/kv.out"
  if [ "$v" = "${K8S_VERSIONS%% *}" ]; then
    cat "$tmp/kv.out"                        # every resource checked, once
  else
    grep -v '^INFO .* passed for resource ' "$tmp/kv.out" || true
    echo "INFO $(grep -c '^INFO .* passed for resource ' "$tmp/kv.out") resources passed against $v"
  fi
  if [ "$rc" -ne 0 ]; then
    echo "FAIL kubernetes-validate exited $rc"; failed=1
  fi
  if grep -q "Couldn't find schema" "$tmp/kv.out"; then
    echo "FAIL a manifest has a kind/apiVersion with no schema in Kubernetes $v"; failed=1
  fi
done

# --- 3 ----------------------------------------------------------------------------------------
echo "== corral: embedded corral.toml and the pods that run it"
if ! python3 - "$root" "$tmp" "${manifests[@]}" "${custom_resources[@]}" <<'PY'
import os, posixpath, re, sys
import yaml
try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

root, tmp, files = sys.argv[1], sys.argv[2], sys.argv[3:]
errors, oks = [], []

def rel(f):
    return os.path.relpath(f, root)

def fail(where, msg):
    errors.append(f"FAIL {where}: {msg}")

docs = []  # (file, doc)
for f in files:
    try:
        for d in yaml.safe_load_all(open(f)):
            if isinstance(d, dict) and d.get("kind"):
                docs.append((f, d))
    except yaml.YAMLError as e:
        fail(rel(f), f"not valid YAML: {e}")

def named(kind, name):
    return next((d for _, d in docs if d["kind"] == kind and d.get("metadata", {}).get("name") == name), None)

def kustomize_namespace(f):
    """The namespace a kustomization.yaml in f's directory (or above, within root) sets."""
    d = os.path.dirname(os.path.abspath(f))
    while True:
        k = os.path.join(d, "kustomization.yaml")
        if os.path.exists(k):
            return (yaml.safe_load(open(k)) or {}).get("namespace")
        if os.path.samefile(d, root) or d == os.path.dirname(d):
            return None
        d = os.path.dirname(d)

SIZE = {"": 1, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
def toml_size(s):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", str(s), re.I)
    if not m:
        raise ValueError(f"not a size: {s!r}")
    return int(float(m.group(1)) * SIZE[(m.group(2) or "").lower()])

QTY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
def quantity(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?", str(s))
    if not m:
        raise ValueError(f"not a memory quantity: {s!r}")
    return int(float(m.group(1)) * QTY[m.group(2) or ""])

DUR = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "d": 86400}
def duration(s):
    parts = re.findall(r"(\d+)\s*([a-z]+)", s)
    if not parts or re.sub(r"[\d\sa-z]", "", s):
        raise ValueError(f"not a duration: {s!r}")
    return sum(int(n) * DUR[u] for n, u in parts)

# ConfigMaps: every embedded *.toml parses.
tomls = {}  # (configmap name, key) -> parsed
for f, d in docs:
    if d["kind"] != "ConfigMap":
        continue
    for key, text in (d.get("data") or {}).items():
        if not key.endswith(".toml"):
            continue
        name = d["metadata"]["name"]
        try:
            tomls[(name, key)] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            fail(f"{rel(f)} ConfigMap {name} {key}", f"not valid TOML: {e}")
            continue
        with open(os.path.join(tmp, f"{name}-{key}"), "w") as out:
            out.write(text)
        oks.append(f"ok   {rel(f)}: ConfigMap {name} {key} is valid TOML")

# RBAC: least privilege, namespaced.
for f, d in docs:
    where = f"{rel(f)} {d['kind']} {d.get('metadata', {}).get('name')}"
    if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
        fail(where, "Corral needs no cluster-wide permissions: use a Role")
    if d["kind"] == "Role":
        n_err = len(errors)
        for r in d.get("rules") or []:
            extra = (set(r.get("apiGroups") or []) - {"discovery.k8s.io"},
                     set(r.get("resources") or []) - {"endpointslices"},
                     set(r.get("verbs") or []) - {"get", "list", "watch"})
            if any(extra) or r.get("nonResourceURLs"):
                fail(where, f"grants more than get/list/watch on discovery.k8s.io endpointslices: {r}")
        if len(errors) == n_err:
            oks.append(f"ok   {where}: only get/list/watch on endpointslices")

def roles_of(sa):
    """Roles bound to ServiceAccount sa in the set."""
    out = []
    for _, b in docs:
        if b["kind"] == "RoleBinding" and any(
                s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects") or []):
            r = named("Role", b.get("roleRef", {}).get("name"))
            if r:
                out.append(r)
    return out

def corral_containers(spec):
    for c in spec.get("containers") or []:
        argv = (c.get("command") or []) + (c.get("args") or [])
        if "corral" in c.get("image", "") and "serve" in argv:
            yield c, argv

def check_security(where, spec, c):
    psc, csc = spec.get("securityContext") or {}, c.get("securityContext") or {}
    eff = lambda k: csc.get(k, psc.get(k))
    if eff("runAsNonRoot") is not True:
        fail(where, "securityContext.runAsNonRoot must be true")
    if csc.get("readOnlyRootFilesystem") is not True:
        fail(where, "securityContext.readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail(where, "securityContext.allowPrivilegeEscalation must be false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        fail(where, "securityContext.capabilities.drop must contain ALL")
    if (eff("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        fail(where, "seccompProfile.type must be RuntimeDefault")

def mounted_file(spec, c, path):
    """(volume, key inside it) for a file path the container sees, or (None, None)."""
    for m in c.get("volumeMounts") or []:
        vol = next((v for v in spec.get("volumes") or [] if v["name"] == m["name"]), None)
        if vol is None:
            continue
        mp = m["mountPath"].rstrip("/")
        if m.get("subPath"):
            if path == mp:
                return vol, m["subPath"]
        elif path.startswith(mp + "/"):
            return vol, path[len(mp) + 1:]
    return None, None

for f, d in docs:
    if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
        continue
    tpl = d["spec"]["template"]
    spec, labels = tpl["spec"], tpl.get("metadata", {}).get("labels") or {}
    wname = f"{rel(f)} {d['kind']} {d['metadata']['name']}"
    for c in spec.get("containers") or []:
        check_security(f"{wname} container {c['name']}", spec, c)
    for c, argv in corral_containers(spec):
        where = f"{wname} container {c['name']}"
        n_err = len(errors)
        env = {e["name"]: e for e in c.get("env") or []}
        # The image: the tag scripts/image.sh builds (a digest alone is fine too).
        version = os.environ.get("CORRAL_VERSION")
        m = re.fullmatch(r"(?:.*/)?corral:([^@/]+)(?:@.*)?", c.get("image", ""))
        if version and m and m.group(1) != version:
            fail(where, f"image {c['image']!r}: the workspace version is {version} (scripts/image.sh tags corral:{version})")
        # Secrets never on the command line, nor as literal env values.
        for a in argv:
            if re.search(r"token|secret", a, re.I):
                fail(where, f"command line mentions a secret ({a!r}): use token_file / secret_file")
        for k in ("CORRAL_ADMIN_TOKEN", "CORRAL_CLUSTER_SECRET"):
            if k in env and "value" in env[k]:
                fail(where, f"env {k} has a literal value: use valueFrom.secretKeyRef or a file")
        # The config file: mounted from a ConfigMap whose key parses.
        if "--config" not in argv[:-1]:
            fail(where, "runs `corral serve` without --config")
            continue
        cfg_path = argv[argv.index("--config") + 1]
        vol, key = mounted_file(spec, c, cfg_path)
        if not vol or "configMap" not in vol:
            fail(where, f"--config {cfg_path} is not mounted from a ConfigMap")
            continue
        cm = vol["configMap"]["name"]
        if (cm, key) not in tomls:
            fail(where, f"--config {cfg_path}: ConfigMap {cm} has no valid key {key}")
            continue
        cfg = tomls[(cm, key)]
        server, cache = cfg.get("server", {}), cfg.get("cache", {})
        admin, cluster = cfg.get("admin", {}), cfg.get("cluster")
        listen_port = int(server.get("listen", "127.0.0.1:8080").rsplit(":", 1)[1])
        admin_listen = server.get("admin_listen", "127.0.0.1:9090")
        admin_port = int(admin_listen.rsplit(":", 1)[1])
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        if ports.get("http") != listen_port:
            fail(where, f"port `http` should be server.listen's port {listen_port}")
        if ports.get("admin") != admin_port:
            fail(where, f"port `admin` should be server.admin_listen's port {admin_port}")
        # Secret files: under a mounted Secret that has the key (when the Secret is in the set).
        def secret_file(field, path, envname):
            if path is None:
                if envname not in env:
                    fail(where, f"neither {field} nor env {envname} is set")
                return
            vol, key = mounted_file(spec, c, path)
            if not vol or "secret" not in vol:
                fail(where, f"{field} = {path!r} is not inside a mounted Secret")
                return
            sname = vol["secret"]["secretName"]
            items = vol["secret"].get("items")
            if items is not None:
                if key not in [i["path"] for i in items]:
                    fail(where, f"{field} = {path!r}: Secret volume items have no path {key}")
                return
            s = named("Secret", sname)
            if s is not None and key not in {**(s.get("data") or {}), **(s.get("stringData") or {})}:
                fail(where, f"{field} = {path!r}: Secret {sname} has no key {key!r}")
            mode = vol["secret"].get("defaultMode", 0o644)
            psc = spec.get("securityContext") or {}
            uid = (c.get("securityContext") or {}).get("runAsUser", psc.get("runAsUser"))
            if uid not in (None, 0) and not mode & 0o004 and not (psc.get("fsGroup") is not None and mode & 0o040):
                fail(where, f"{field}: Secret {sname} mounted with mode {mode:o}: unreadable by uid {uid} (set fsGroup and a group-readable mode)")
        if not admin_listen.startswith(("127.", "[::1]", "localhost")):
            secret_file("admin.token_file", admin.get("token_file"), "CORRAL_ADMIN_TOKEN")
        if cluster is not None:
            secret_file("cluster.secret_file", cluster.get("secret_file"), "CORRAL_CLUSTER_SECRET")
            if "advertise" not in cluster and (env.get("POD_IP", {}).get("valueFrom", {})
                                               .get("fieldRef", {}).get("fieldPath") != "status.podIP"):
                fail(where, "no cluster.advertise and no POD_IP from the downward API (status.podIP)")
            disc = cluster.get("discovery") or {}
            kind = disc.get("kind")
            if kind in ("kubernetes", "dns"):
                svc_name = disc.get("service") if kind == "kubernetes" else str(disc.get("name", "")).split(".")[0]
                svc = named("Service", svc_name)
                if svc is None:
                    fail(where, f"cluster.discovery names Service {svc_name!r}, which is not in the manifests")
                else:
                    ss = svc.get("spec", {})
                    if ss.get("clusterIP") != "None" or ss.get("publishNotReadyAddresses") is not True:
                        fail(where, f"peer Service {svc_name} must be headless (clusterIP: None) with publishNotReadyAddresses: true")
                    if any(labels.get(k) != v for k, v in (ss.get("selector") or {}).items()):
                        fail(where, f"peer Service {svc_name}'s selector does not match this pod")
                    sports = ss.get("ports") or []
                    if kind == "kubernetes" and disc.get("port_name") and disc["port_name"] not in [p.get("name") for p in sports]:
                        fail(where, f"port_name {disc['port_name']!r} is not a port of Service {svc_name}")
                    if kind == "dns" and disc.get("port") not in [p.get("port") for p in sports]:
                        fail(where, f"discovery port {disc.get('port')} is not a port of Service {svc_name}")
            if kind == "kubernetes":
                ns = kustomize_namespace(f)
                if ns and disc.get("namespace") != ns:
                    fail(where, f"cluster.discovery.namespace = {disc.get('namespace')!r}, but kustomization.yaml deploys to {ns!r}")
                sa = spec.get("serviceAccountName", "default")
                if spec.get("automountServiceAccountToken") is False:
                    fail(where, "kubernetes discovery needs the ServiceAccount token mounted")
                if not any(set(r.get("verbs") or []) >= {"list", "watch"} and "endpointslices" in (r.get("resources") or [])
                           for role in roles_of(sa) for r in role.get("rules") or []):
                    fail(where, f"kubernetes discovery, but ServiceAccount {sa} is not bound to a Role that can list/watch endpointslices")
        # Probes.
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            g = (c.get(probe) or {}).get("httpGet") or {}
            if g.get("path") != path or g.get("port") not in ("admin", admin_port):
                fail(where, f"{probe} should be httpGet {path} on the admin port")
        # Drain: preStop pause + shutdown_grace must fit in terminationGracePeriodSeconds.
        pre = (c.get("lifecycle") or {}).get("preStop") or {}
        if "sleep" in pre:
            pause = int(pre["sleep"]["seconds"])
        elif "exec" in pre and "sleep" in " ".join(pre["exec"]["command"]):
            pause = int(re.findall(r"\d+", " ".join(pre["exec"]["command"]))[-1])
        else:
            fail(where, "no preStop pause: endpoints would still route to the pod while it drains")
            pause = 0
        grace = duration(server.get("shutdown_grace", "30s"))
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        if tgps <= pause + grace:
            fail(where, f"terminationGracePeriodSeconds {tgps} <= preStop {pause}s + shutdown_grace {grace:g}s")
        # Memory: comfortably above cache.max_size.
        max_size = toml_size(cache.get("max_size", "256MiB"))
        res = c.get("resources") or {}
        lim, req = (res.get("limits") or {}).get("memory"), (res.get("requests") or {}).get("memory")
        if lim is None or quantity(lim) < 1.5 * max_size:
            fail(where, f"memory limit {lim} should be at least 1.5 x cache.max_size ({cache.get('max_size', '256MiB')})")
        if req is None or quantity(req) < max_size:
            fail(where, f"memory request {req} should be at least cache.max_size")
        if len(errors) == n_err:
            oks.append(f"ok   {where}: {c.get('image')} runs {cm}/{key}; secrets from files; probes; drain {pause}s+{grace:g}s < {tgps}s;"
                       f" memory {req}/{lim} for max_size {cache.get('max_size', '256MiB')}")

# ServiceMonitors: they select a Service of the set that has the port they scrape.
for f, d in docs:
    if d["kind"] != "ServiceMonitor":
        continue
    where = f"{rel(f)} ServiceMonitor {d['metadata']['name']}"
    spec = d.get("spec") or {}
    want = (spec.get("selector") or {}).get("matchLabels") or {}
    services = [s for _, s in docs if s["kind"] == "Service" and want
                and all((s["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())]
    n_err = len(errors)
    if d.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(where, f"apiVersion {d.get('apiVersion')!r}: expected monitoring.coreos.com/v1")
    if not services:
        fail(where, f"selects no Service of the set (matchLabels {want})")
    for e in spec.get("endpoints") or [{}]:
        if not any(e.get("port") in [p.get("name") for p in s["spec"].get("ports") or []] for s in services):
            fail(where, f"endpoint port {e.get('port')!r} is not a port of the Service it selects")
        if e.get("path", "/metrics") != "/metrics":
            fail(where, f"endpoint path {e.get('path')!r}: Corral serves /metrics")
    if len(errors) == n_err:
        oks.append(f"ok   {where}: scrapes {', '.join(s['metadata']['name'] for s in services)} /metrics")

for line in oks + errors:
    print(line)
if not tomls:
    print("FAIL no ConfigMap embeds a corral.toml")
    sys.exit(1)
sys.exit(1 if errors else 0)
PY
then failed=1; fi

# --- 4 ----------------------------------------------------------------------------------------
if [ -n "${CORRAL_BIN:-}" ]; then
  echo "== corral check-config ($CORRAL_BIN)"
  for cfg in "$tmp"/*.toml; do
    # POD_IP exists only in a pod (cluster.advertise defaults from it); check-config does not
    # read the secret files.
    if out="$(POD_IP=10.0.0.1 "$CORRAL_BIN" check-config "$cfg" 2>&1)"; then
      echo "ok   ${out#"$tmp"/}"
    else
      echo "FAIL ${out//"$tmp"\//}"; failed=1
    fi
  done
fi

if [ "$failed" -ne 0 ]; then
  echo "deploy/validate.sh: FAILED" >&2
  exit 1
fi
echo "deploy/validate.sh: all manifests valid (Kubernetes $K8S_VERSIONS, $kv_version, strict)"
