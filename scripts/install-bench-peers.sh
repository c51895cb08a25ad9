#!/usr/bin/env bash
# Installs the peer tunnels that `tether-bench --only peers` measures Tether
# against, each from a package registry, each only if missing:
#   ssh -L     OpenSSH client and server (Debian apt)
#   stunnel    stunnel4 (Debian apt)
#   socat      socat (Debian apt)
#   rathole    rathole from crates.io (cargo install, noise transport; a few
#              minutes to build on two cores, once)
# A peer that fails to install is reported and the script goes on: the
# benchmark reports it as missing rather than dropping it silently.
# Needs root for apt. Prints one line per peer at the end.
set -uo pipefail

PREFIX=${TETHER_BENCH_TOOLS:-/opt/tether-bench-tools}
RATHOLE_VERSION=0.5.0

if [ "$(id -u)" != 0 ]; then
  echo "install-bench-peers: must run as root to install packages (try: sudo $0)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"
PEER_PKGS="openssh-server openssh-client stunnel4 socat"
# shellcheck disable=SC2086  # the package list is meant to split
apt_install_missing $PEER_PKGS ||
  echo "install-bench-peers: apt could not install all of $PEER_PKGS; those missing will be reported missing" >&2

# `rathole --version` prints its name, then "Build Version: X" on a line of its own.
rathole_version() { "$PREFIX/bin/rathole" --version 2>/dev/null | awk '/Build Version/ {print $3}'; }

# rathole: its own Rust program, built from crates.io with the noise
# transport only (no OpenSSL needed), into $PREFIX/bin. Not --locked: its
# lock file pins `time` 0.3.29, which current Rust no longer compiles.
if [ ! -x "$PREFIX/bin/rathole" ] ||
   [ "$(rathole_version)" != "$RATHOLE_VERSION" ]; then
  echo "cargo: installing rathole $RATHOLE_VERSION into $PREFIX (takes a few minutes)"
  cargo install --quiet --root "$PREFIX" --version "$RATHOLE_VERSION" \
    --no-default-features --features server,client,noise rathole ||
    echo "install-bench-peers: rathole did not build; it will be reported missing" >&2
fi

report() { if [ -n "$2" ]; then printf 'ok   %-8s %s\n' "$1" "$2"; else printf 'MISSING %s\n' "$1"; fi; }
report ssh "$(ssh -V 2>&1 | head -n1)"
report sshd "$([ -x /usr/sbin/sshd ] && echo /usr/sbin/sshd)"
report stunnel "$(stunnel -version 2>&1 | grep -m1 -o 'stunnel [0-9.]*')"
report socat "$(socat -V 2>/dev/null | grep -m1 -o 'socat version [0-9.]*')"
report rathole "$(v=$(rathole_version); [ -n "$v" ] && echo "rathole $v")"
