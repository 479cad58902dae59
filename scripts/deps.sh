#!/usr/bin/env bash
# Install the Debian packages gemmad builds and tests with (skips what is there).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
      libsentencepiece-dev sentencepiece libconfig-dev libcjson-dev libcmocka-dev
      python3 python3-numpy gnuplot-nox
      libmicrohttpd-dev curl protobuf-compiler
      python3-zmq python3-protobuf python3-prometheus-client python3-setuptools python3-wheel)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The numpy reference test needs numpy in whatever python3 is first on PATH.
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install -q numpy 2>/dev/null || echo "deps: numpy not installed; the numpy reference test will skip" >&2
fi

# Python packages the tests use: prometheus_client parses /metrics, pyzmq + protobuf carry the
# Python client (python/; wheel builds it without fetching build tools), openai drives the HTTP API. Offline or failing pip is not fatal:
# the tests that need a package skip (exit 77) without it.
missing_py=()
for m in prometheus_client:prometheus-client zmq:pyzmq google.protobuf:protobuf openai:openai wheel:wheel; do
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
