#!/usr/bin/env bash
# Install the Debian packages gemmad builds and tests with (skips what is there).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
      libsentencepiece-dev sentencepiece libconfig-dev libcjson-dev libcmocka-dev
      python3 python3-numpy gnuplot-nox)
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
# test_gguf_py checks the GGUF dequantizers against the gguf Python package (it skips without it).
if ! python3 -c 'import gguf' 2>/dev/null; then
  python3 -m pip install -q gguf 2>/dev/null || echo "deps: gguf not installed; test_gguf_py will skip" >&2
fi
