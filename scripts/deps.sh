#!/usr/bin/env bash
# Install the Debian packages gemmad builds and tests with (skips what is there).
# Survives a busy package manager: waits for apt/dpkg locks held by another process (up to
# GM_APT_WAIT seconds, default 900) and retries a failed download. Optional packages (gnuplot for
# gemma-bench --plot) never fail the script.
set -euo pipefail
required=(build-essential cmake pkg-config libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
          libsentencepiece-dev sentencepiece libconfig-dev libcjson-dev libcmocka-dev
          python3 python3-numpy libmicrohttpd-dev libcurl4-openssl-dev curl protobuf-compiler
          python3-zmq python3-protobuf python3-prometheus-client python3-setuptools python3-wheel)
optional=(gnuplot-nox)

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
wait_s=${GM_APT_WAIT:-900}

missing_of() { # the packages of "$@" that are not installed
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

# True when another process holds lock file $1 (apt and dpkg take fcntl write locks).
lock_busy() {
  [ -e "$1" ] || return 1
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$1" <<'PY' 2>/dev/null
import fcntl, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDWR)
except OSError:
    sys.exit(1)  # cannot open it: cannot tell; let apt's own lock timeout decide
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(0)  # busy
sys.exit(1)
PY
  elif command -v fuser >/dev/null 2>&1; then
    fuser "$1" >/dev/null 2>&1
  else
    return 1
  fi
}

# Wait until no other process holds apt's or dpkg's locks (an unattended upgrade, another apt-get).
# GM_APT_LOCKS (space-separated paths) replaces the lock list, for tests.
wait_for_apt() {
  local waited=0 l busy
  local locks=(${GM_APT_LOCKS:-/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock})
  while :; do
    busy=
    for l in "${locks[@]}"; do
      lock_busy "$l" && busy=$l && break
    done
    [ -z "$busy" ] && return 0
    if [ $waited -ge "$wait_s" ]; then
      echo "deps: $busy is still held after ${wait_s}s; giving up (GM_APT_WAIT raises the limit)" >&2
      return 1
    fi
    [ $((waited % 30)) = 0 ] && echo "deps: waiting for another package manager ($busy)..." >&2
    sleep 1
    waited=$((waited + 1))
  done
}

# apt-get with the lock wait and up to 3 tries (a mirror hiccup, a lock taken between our check and apt's)
apt_get() {
  local try
  for try in 1 2 3; do
    wait_for_apt || return 1
    if DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout="$wait_s" "$@"; then
      return 0
    fi
    echo "deps: apt-get $1 failed (try $try of 3)" >&2
    sleep $((try * 10))
  done
  return 1
}

if [ -n "${GM_DEPS_WAIT_ONLY:-}" ]; then # tests: only the lock wait
  wait_for_apt
  exit $?
fi
mapfile -t need < <(missing_of "${required[@]}")
mapfile -t want < <(missing_of "${optional[@]}")
if [ ${#need[@]} -gt 0 ] || [ ${#want[@]} -gt 0 ]; then
  apt_get update -qq || echo "deps: apt-get update failed; trying the package lists already here" >&2
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  apt_get install -y -qq "${need[@]}" >/dev/null
fi
if [ ${#want[@]} -gt 0 ]; then
  echo "deps: installing optional ${want[*]}" >&2
  apt_get install -y -qq "${want[@]}" >/dev/null || echo "deps: optional ${want[*]} not installed (gemma-bench --plot needs gnuplot)" >&2
fi
# The numpy reference test needs numpy in whatever python3 is first on PATH.
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install -q numpy 2>/dev/null || echo "deps: numpy not installed; the numpy reference test will skip" >&2
fi

# Python packages the tests use: prometheus_client parses /metrics, pyzmq + protobuf carry the
# Python client (python/; wheel builds it without fetching build tools), openai drives the HTTP API,
# gguf checks the GGUF dequantizers (test_gguf_py).
# Offline or failing pip is not fatal: the tests that need a package skip (exit 77) without it.
missing_py=()
for m in prometheus_client:prometheus-client zmq:pyzmq google.protobuf:protobuf openai:openai wheel:wheel gguf:gguf; do
  python3 -c "import ${m%%:*}" 2>/dev/null || missing_py+=("${m##*:}")
done
if [ ${#missing_py[@]} -gt 0 ]; then
  ok=0
  for attempt in 1 2 3; do
    # a Debian system Python refuses pip (PEP 668) unless told to
    for extra in "" "--break-system-packages"; do
      if python3 -m pip install -q --disable-pip-version-check --timeout 30 $extra "${missing_py[@]}" 2>/dev/null; then
        ok=1; break 2
      fi
    done
    sleep $((attempt * 2))
  done
  [ $ok = 1 ] || echo "deps: pip could not install ${missing_py[*]} (offline?); the tests needing them will skip" >&2
fi
