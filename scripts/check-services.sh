#!/usr/bin/env bash
# Checks that the local services and clients the end-to-end tests use are
# present and reachable (scripts/test.sh runs this before the tests). Prints
# one `ok   <what>` or `MISSING <what>: <fix>` line per check, runs every
# check, then exits 1 if any failed. Never skips: a missing service is a
# failure that says how to fix it. Addresses are fixed (127.0.0.1).
set -uo pipefail

T="timeout 10"   # no probe may hang CI
failed=0
ok()      { printf 'ok   %s\n' "$1"; }
missing() { printf 'MISSING %s: %s\n' "$1" "$2"; failed=1; }
# first line of a probe's output, for the failure message
first() { local s=${1%%$'\n'*}; printf '%s' "${s:-no output}"; }

# Clients on PATH.
for c in psql mysql grpcurl tinyproxy mitmdump ssh ssh-keygen; do
  if command -v "$c" >/dev/null; then ok "$c on PATH"
  else missing "$c on PATH" "run scripts/install-test-deps.sh as root"; fi
done
if [ -x /usr/sbin/sshd ]; then ok "sshd (/usr/sbin/sshd)"
else missing "sshd (/usr/sbin/sshd)" "run scripts/install-test-deps.sh as root (package openssh-server)"; fi

# PostgreSQL on 127.0.0.1:5432, database test, user postgres, trust auth.
pg_ver=$(ls -1 /etc/postgresql 2>/dev/null | sort -V | tail -n1)
if [ -n "$pg_ver" ]; then
  pg_fix="start it: pg_ctlcluster --skip-systemctl-redirect $pg_ver main start"
else
  pg_fix="no cluster under /etc/postgresql: install the postgresql server package, then pg_ctlcluster --skip-systemctl-redirect <version> main start"
fi
pg_fix="$pg_fix; the tests expect trust auth for 127.0.0.1 (pg_hba.conf: host all all 127.0.0.1/32 trust) and a database 'test' (createdb -h 127.0.0.1 -U postgres test)"
if ! command -v psql >/dev/null; then
  missing "PostgreSQL 127.0.0.1:5432/test" "psql not installed, cannot probe; $pg_fix"
elif out=$($T psql -X -w -h 127.0.0.1 -p 5432 -U postgres -d test -tA -c 'select 1' </dev/null 2>&1); then
  ok "PostgreSQL 127.0.0.1:5432/test"
else
  missing "PostgreSQL 127.0.0.1:5432/test" "$(first "$out") -- $pg_fix"
fi

# MariaDB on 127.0.0.1:3306, database test, user root without password.
my_fix="start it: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; the tests expect user root without password from 127.0.0.1 and a database 'test'"
if ! command -v mysql >/dev/null; then
  missing "MariaDB 127.0.0.1:3306/test" "mysql not installed, cannot probe; $my_fix"
elif out=$($T mysql --connect-timeout=5 -h 127.0.0.1 -P 3306 -u root test -e 'select 1' </dev/null 2>&1); then
  ok "MariaDB 127.0.0.1:3306/test"
else
  missing "MariaDB 127.0.0.1:3306/test" "$(first "$out") -- $my_fix"
fi

# Java runtime and the real JDBC drivers, pgJDBC and MariaDB Connector/J
# (tests/java/JdbcQuery.java).
if out=$($T java -version 2>&1); then
  ok "java ($(first "$out"))"
else
  missing "java" "$(first "$out") -- run scripts/install-test-deps.sh as root (installs default-jre-headless)"
fi
if [ -f /usr/share/java/postgresql.jar ]; then
  ok "/usr/share/java/postgresql.jar"
else
  missing "/usr/share/java/postgresql.jar" "run scripts/install-test-deps.sh as root (installs libpostgresql-jdbc-java)"
fi
if [ -f /usr/share/java/mariadb-java-client.jar ]; then
  ok "/usr/share/java/mariadb-java-client.jar"
else
  missing "/usr/share/java/mariadb-java-client.jar" "run scripts/install-test-deps.sh as root (installs libmariadb-java)"
fi
for jar in HikariCP.jar slf4j-api.jar; do
  if [ -f "/usr/share/java/$jar" ]; then ok "/usr/share/java/$jar"
  else missing "/usr/share/java/$jar" "run scripts/install-test-deps.sh as root (installs libhikaricp-java)"; fi
done

# The Python Dial client's venv (clients/python; tests/e2e_python_client.rs).
py_fix="run scripts/install-test-deps.sh as root (a venv from clients/python/requirements.txt, run as tether-python-client)"
if ! command -v tether-python-client >/dev/null; then
  missing "tether-python-client on PATH" "$py_fix"
elif out=$($T tether-python-client -c 'import grpc, grpc_tools, psycopg' </dev/null 2>&1); then
  ok "tether-python-client (grpc, grpc_tools, psycopg)"
else
  # the last line of a traceback names what is missing
  missing "tether-python-client (grpc, grpc_tools, psycopg)" "${out##*$'\n'} -- $py_fix"
fi

if [ "$failed" != 0 ]; then
  echo "check-services: some services or tools the end-to-end tests need are missing (see MISSING lines above)" >&2
  exit 1
fi
