#!/usr/bin/env bash
# Validates everything that deploys Tether, with the real tools, in about a
# minute and without a cluster or a container engine:
#   - the Helm chart: `helm lint --strict` and `helm template` for every
#     value set in charts/tether/ci/, each rendered manifest validated
#     against the Kubernetes schemas (kubernetes-validate --strict, oldest
#     and newest supported version) and the custom resources against the
#     cert-manager / Prometheus Operator schemas (scripts/validate-crds.mjs);
#   - yamllint on the chart's YAML and on the rendered output;
#   - the values that must fail (charts/tether/ci/invalid/): each must fail
#     lint and template, and the message must name the field;
#   - drift: every configuration key and TETHER_* variable the chart renders,
#     and every flag the systemd units pass, is in docs/configuration.md;
#   - hadolint on the Dockerfile;
#   - systemd-analyze verify and security on packaging/systemd/.
# A missing tool fails the run with what to install; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=charts/tether
# Where scripts/install-test-deps.sh puts the venv (PyYAML) and the npm
# schema packages.
TOOLS=${TETHER_TOOLS_PREFIX:-/opt/tether-test-tools}
# The chart's kubeVersion floor and the newest schemas kubernetes-validate has.
KUBE_VERSIONS="1.27.0 1.37.0"
# systemd-analyze security scores exposure 0.0 (locked down) to 10.0 (none);
# the units score 1.2. Above 2.0 fails: a unit that loses a sandboxing
# option should be noticed, not drift towards the "MEDIUM" band (>= 4.0).
SECURITY_THRESHOLD=2.0
# Custom resources kubernetes-validate has no schema for; they are checked
# by scripts/validate-crds.mjs instead.
CRD_API_VERSIONS="cert-manager.io/v1 monitoring.coreos.com/v1"
# Settings the chart renders before the binary has them, with the issue
# that brings them. The check fails once the docs have them, so the entry
# is removed when the issue lands.
PENDING_SETTINGS=""

step() { printf '\n--> %s\n' "$*"; }
die() { printf 'validate-deploy: %s\n' "$*" >&2; exit 1; }
install_hint="run scripts/install-test-deps.sh as root (it installs every tool this script needs)"

# --- tools -----------------------------------------------------------------
for tool in helm kubernetes-validate yamllint hadolint systemd-analyze node; do
  command -v "$tool" >/dev/null || die "$tool is not installed: $install_hint"
done
helm version --short | grep -qE '^v[34]\.' || die "helm $(helm version --short) is not helm 3 or 4: $install_hint"
PY=$TOOLS/venv/bin/python
"$PY" -c 'import yaml' 2>/dev/null ||
  die "no python with PyYAML at $PY (yamllint's venv): $install_hint, or set TETHER_TOOLS_PREFIX"
MODELS=$TOOLS/npm/node_modules
[ -d "$MODELS/@kubernetes-models/cert-manager" ] && [ -d "$MODELS/@kubernetes-models/prometheus-operator" ] ||
  die "the @kubernetes-models npm packages are missing under $MODELS: $install_hint"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- chart: lint, render, schemas -----------------------------------------
value_sets=("$CHART"/ci/*-values.yaml)
[ ${#value_sets[@]} -ge 4 ] || die "expected the value sets of $CHART/ci/ (defaults, HA, agent-only, cert-manager)"
for values in "${value_sets[@]}"; do
  set_name=$(basename "$values" -values.yaml)
  step "helm lint --strict ($set_name)"
  helm lint --strict "$CHART" -f "$values"
  step "helm template ($set_name)"
  out=$work/$set_name.yaml
  helm template tether "$CHART" --namespace tether --kube-version "${KUBE_VERSIONS##* }" \
    -f "$values" > "$out"
  grep -c '^kind:' "$out" | xargs printf '%s objects rendered\n'
  for version in $KUBE_VERSIONS; do
    step "kubernetes-validate --strict -k $version ($set_name)"
    rc=0
    kubernetes-validate --strict --quiet -k "$version" "$out" > "$work/kv.log" 2>&1 || rc=$?
    cat "$work/kv.log"
    [ "$rc" = 0 ] || die "$set_name does not validate against Kubernetes $version (above)"
    # A kind without a schema is only a warning to kubernetes-validate: a
    # typo in an apiVersion would pass unchecked. Only the known CRDs may.
    while IFS= read -r line; do
      known=no
      for api in $CRD_API_VERSIONS; do
        case $line in *"api version $api "*) known=yes ;; esac
      done
      [ "$known" = yes ] || die "$set_name: kubernetes-validate has no schema for: $line"
    done < <(grep '^WARN' "$work/kv.log" || true)
  done
  step "custom resources against their schemas ($set_name)"
  "$PY" - "$out" "$CRD_API_VERSIONS" > "$work/crds.json" <<'PY'
import json, sys, yaml
path, apis = sys.argv[1], sys.argv[2].split()
docs = [d for d in yaml.safe_load_all(open(path)) if d]
print(json.dumps([{"source": path.rsplit("/", 1)[-1], "resource": d}
                  for d in docs if d.get("apiVersion") in apis]))
PY
  if [ "$(cat "$work/crds.json")" = "[]" ]; then
    echo "none rendered"
  else
    node scripts/validate-crds.mjs "$MODELS" < "$work/crds.json"
  fi
  step "yamllint (rendered $set_name)"
  yamllint --strict "$out"
done

step "yamllint (the chart's own YAML)"
yamllint --strict "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART/ci" .yamllint

# --- values that must fail -------------------------------------------------
# Each file says what the error must say: `# expect:` for the schema (lint,
# template and install all check it first) and, for rules that span several
# values, `# expect-without-schema:` for the chart's own message, which is
# what `--skip-schema-validation` and schema-blind tools get.
must_fail() { # label, expected text, command...
  local label=$1 expect=$2 rc=0; shift 2
  step "must fail: $label"
  "$@" > "$work/neg.log" 2>&1 || rc=$?
  [ "$rc" != 0 ] || { cat "$work/neg.log"; die "accepted: $*"; }
  grep -F -q -- "$expect" "$work/neg.log" ||
    { cat "$work/neg.log"; die "refused, but the message does not say \"$expect\": $*"; }
  echo "refused: $(grep -F -m1 -- "$expect" "$work/neg.log" | sed 's/^[- ]*//')"
}
for values in "$CHART"/ci/invalid/*.yaml; do
  name=$(basename "$values")
  expect=$(sed -n 's/^# expect: //p' "$values" | head -n1)
  [ -n "$expect" ] || die "$values has no '# expect: <text of the error>' line"
  must_fail "helm lint ($name)" "$expect" helm lint --strict "$CHART" -f "$values"
  must_fail "helm template ($name)" "$expect" helm template tether "$CHART" -f "$values"
  expect=$(sed -n 's/^# expect-without-schema: //p' "$values" | head -n1)
  if [ -n "$expect" ]; then
    must_fail "helm template --skip-schema-validation ($name)" "$expect" \
      helm template --skip-schema-validation tether "$CHART" -f "$values"
  fi
done

# --- drift against docs/configuration.md ----------------------------------
step "drift: settings the chart and the units use are in docs/configuration.md"
"$PY" - docs/configuration.md "$PENDING_SETTINGS" "$work"/*.yaml packaging/systemd/*.service <<'PY'
import re, sys, yaml

doc_path, pending_arg, files = sys.argv[1], sys.argv[2], sys.argv[3:]
doc = open(doc_path).read()
pending = dict(p.split(":") for p in pending_arg.split())

def section(title):
    m = re.search(r"^## " + re.escape(title) + r".*?(?=^## |\Z)", doc, re.M | re.S)
    if not m:
        sys.exit(f"drift: {doc_path} has no section '## {title}'")
    return m.group(0)

# A documented key is written `key` in its binary's section.
sections = {"controlplane": section("Control plane"), "agent": section("Agent")}
def documented(binary, key):
    return f"`{key}`" in sections[binary]

errors, checked = [], 0
def check(binary, key, where):
    global checked
    checked += 1
    if key in pending:
        if documented(binary, key):
            errors.append(f"{where}: `{key}` is documented now: remove it from PENDING_SETTINGS "
                          f"(issue {pending[key]}) in scripts/validate-deploy.sh")
        return
    if not documented(binary, key):
        errors.append(f"{where}: `{key}` is not a documented {binary} setting in {doc_path}; "
                      "the binary would refuse it or ignore it")

# TETHER_FOO is the variable of key foo (one name everywhere); tetherctl's
# variables (read by `kubectl exec ... tetherctl`) are in its own table.
tetherctl = section("tetherctl")
def check_env(binary, var, where):
    key = var[len("TETHER_"):].lower()
    if f"`{var}`" in tetherctl and key not in pending:
        global checked
        checked += 1
        return
    check(binary, key, where)

for path in files:
    name = path.rsplit("/", 1)[-1]
    if path.endswith(".service"):
        binary = "agent" if "agent" in name else "controlplane"
        text = open(path).read().replace("\\\n", " ")
        for line in re.findall(r"^ExecStart=(.*)$", text, re.M):
            for flag in re.findall(r"(?<!\S)--([a-z][a-z-]*)", line):
                check(binary, flag.replace("-", "_"), f"{name} ExecStart --{flag}")
        for var in re.findall(r"\b(TETHER_[A-Z_]+)=", text):
            check_env(binary, var, f"{name} {var}")
        continue
    for obj in (d for d in yaml.safe_load_all(open(path)) if d):
        kind, meta = obj.get("kind"), obj.get("metadata", {})
        where = f"{name} {kind}/{meta.get('name')}"
        if kind == "ConfigMap":
            for file_name, binary in (("controlplane.yaml", "controlplane"), ("agent.yaml", "agent")):
                if file_name in obj.get("data", {}):
                    for key in yaml.safe_load(obj["data"][file_name]) or {}:
                        check(binary, key, f"{where} {file_name}")
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec", {}) if kind in ("Deployment", "StatefulSet") else {}
        for c in pod.get("containers", []):
            binary = "agent" if c.get("command", [""])[0] == "tether-agent" else "controlplane"
            for env in c.get("env", []):
                if env["name"].startswith("TETHER_"):
                    check_env(binary, env["name"], f"{where} env {env['name']}")
            for flag in re.findall(r"^--([a-z][a-z-]*)$", "\n".join(c.get("args", [])), re.M):
                check(binary, flag.replace("-", "_"), f"{where} args --{flag}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(f"drift: {len(errors)} setting(s) not in {doc_path}")
if checked == 0:
    sys.exit("drift: found no setting to check; the extraction is broken")
print(f"{checked} uses of settings checked; pending (not in the binary yet): "
      + ", ".join(f"{k} (issue {v})" for k, v in pending.items()))
PY

# --- container image --------------------------------------------------------
step "hadolint Dockerfile"
hadolint Dockerfile
echo "no findings"

# --- systemd units -----------------------------------------------------------
# `verify` checks that ExecStart's binary exists and is executable, and the
# units must keep their real /usr/local/bin paths. So the check runs in a
# throw-away root: the host's own unit directory (for the targets the units
# name), the units, and executable stubs at the ExecStart paths.
root=$work/systemd-root
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
for unit in packaging/systemd/*.service; do
  cp "$unit" "$root/etc/systemd/system/"
  for bin in $(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit"); do
    mkdir -p "$root$(dirname "$bin")"
    printf '#!/bin/sh\nexit 0\n' > "$root$bin"
    chmod 755 "$root$bin"
  done
done
threshold=$(awk -v t="$SECURITY_THRESHOLD" 'BEGIN { printf "%d", t * 10 }')
for unit in packaging/systemd/*.service; do
  name=$(basename "$unit")
  step "systemd-analyze verify $name"
  rc=0
  systemd-analyze verify --man=no --root="$root" "$root/etc/systemd/system/$name" > "$work/verify.log" 2>&1 || rc=$?
  # Unknown keys and bad values are only warnings to verify: any output fails.
  if [ "$rc" != 0 ] || [ -s "$work/verify.log" ]; then
    cat "$work/verify.log"; die "systemd-analyze verify $name failed (above)"
  fi
  echo "clean"
  step "systemd-analyze security $name (exposure must be <= $SECURITY_THRESHOLD)"
  rc=0
  (cd "$root/etc/systemd/system" &&
    systemd-analyze security --offline=yes --root="$root" --threshold="$threshold" --no-pager "$name") \
    > "$work/security.log" 2>&1 || rc=$?
  grep -E '✗|Overall exposure' "$work/security.log" || true
  [ "$rc" = 0 ] || { cat "$work/security.log"; die "$name: exposure above $SECURITY_THRESHOLD (above)"; }
done

step "deployment files valid"
