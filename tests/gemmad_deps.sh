#!/usr/bin/env bash
# gemmad links no device code: no CUDA runtime, cuBLAS(Lt) or NCCL among its shared
# libraries, no CUDA fatbin section, and (when cuobjdump is there) no embedded device ELF.
# usage: gemmad_deps.sh GEMMAD [CUOBJDUMP]
set -u
bin=$1
cuobjdump=${2:-}
[ -x "$bin" ] || { echo "no executable $bin"; exit 1; }
fail=0
libs=$(ldd "$bin") || { echo "ldd $bin failed"; exit 1; }
if echo "$libs" | grep -Ei 'libcudart|libcublas|libnccl|libcuda\.so'; then
  echo "FAIL: $bin links device libraries (above)"
  fail=1
fi
if readelf -S -W "$bin" | grep -E '\.nv_fatbin|__nv_relfatbin|\.nvFatBinSegment'; then
  echo "FAIL: $bin carries a CUDA fatbin section (above)"
  fail=1
fi
if [ -n "$cuobjdump" ] && [ -x "$cuobjdump" ]; then
  out=$("$cuobjdump" --list-elf "$bin" 2>&1)
  if echo "$out" | grep -q 'ELF file'; then
    echo "FAIL: cuobjdump --list-elf finds device code in $bin:"
    echo "$out"
    fail=1
  fi
else
  echo "cuobjdump not found: checked ldd and the ELF sections only"
fi
[ $fail = 0 ] && echo "ok: $bin has no device code ($(stat -c %s "$bin") bytes)"
exit $fail
