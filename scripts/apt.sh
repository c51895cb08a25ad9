# Sourced by the install scripts (not run): apt-get that waits for the apt
# lock, and installing only the packages that are missing.

# Another process may hold the apt lock: wait for it, never kill it.
apt_get() {
  local i
  for i in $(seq 1 20); do
    apt-get -q -o DPkg::Lock::Timeout=120 "$@" && return 0
    echo "apt-get $1 failed (lock held?), retry $i/20 in 15s" >&2; sleep 15
  done
  return 1
}

# apt_install_missing PKG...: installs those of the packages that are not
# installed; returns non-zero if apt fails.
apt_install_missing() {
  local p missing=()
  for p in "$@"; do
    # nodejs/npm may come from elsewhere (e.g. NodeSource); a working command is enough.
    case $p in nodejs|npm) command -v "${p/nodejs/node}" >/dev/null && continue ;; esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "apt: installing ${missing[*]}"
  apt_get update && apt_get install -y --no-install-recommends "${missing[@]}"
}
