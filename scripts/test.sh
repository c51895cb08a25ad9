#!/usr/bin/env bash
# The one test command (README): installs what the tests need, then runs
# formatting, lints, the proto lint and every test of the workspace.
# Fails loudly on the first problem; never skips a test silently.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test tools (scripts/install-test-deps.sh, scripts/install-bench-peers.sh)"
for script in scripts/install-test-deps.sh scripts/install-bench-peers.sh; do
  if [ "$(id -u)" = 0 ]; then
    "$script"
  elif command -v sudo >/dev/null; then
    sudo "$script"
  else
    echo "test.sh: $script needs root; run it as root once, then re-run" >&2
    exit 1
  fi
done

step "checking local services (scripts/check-services.sh)"
scripts/check-services.sh

step "deployment: helm, kubernetes-validate, yamllint, hadolint, systemd-analyze (scripts/validate-deploy.sh)"
scripts/validate-deploy.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "buf lint (proto/)"
buf lint proto
# Once a contract is released (a v* tag), new changes must stay compatible.
last_release=$(git tag --list 'v*' --sort=-v:refname 2>/dev/null | head -n1 || true)
if [ -n "$last_release" ]; then
  step "buf breaking against $last_release"
  buf breaking proto --against ".git#tag=$last_release,subdir=proto"
fi

# The end-to-end tests start the real binaries from target/debug.
step "cargo build --workspace --bins"
cargo build --workspace --bins --locked

step "cargo test --workspace (store: SQLite; the store's own tests also run on PostgreSQL)"
cargo test --workspace --locked

# The side-by-side benchmark suite, tiny sizes, so that it cannot rot; a
# missing peer fails it (--require-peers).
step "benchmark suite smoke run (tether-bench --only peers, about a minute)"
target/debug/tether-bench --only peers --require-peers --peers-bulk-mib 8 --reps 1 \
  --round-trips 200 --connections 100 --idle 20 --peers-far-mib 4

# The end-to-end suite again with every control plane on PostgreSQL: one
# database for this run (a schema per control plane inside it), dropped
# afterwards whatever happens.
pg_db="tether_e2e_$$"
pg_server="${TETHER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
step "end-to-end tests on PostgreSQL (database $pg_db)"
psql "$pg_server/postgres" -qc "CREATE DATABASE $pg_db"
trap 'psql "$pg_server/postgres" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" || true' EXIT
TETHER_TEST_STORE=postgres TETHER_TEST_PG_DATABASE="$pg_db" cargo test -p tether --tests --locked

step "all tests passed"
