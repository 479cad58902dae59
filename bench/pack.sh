#!/usr/bin/env bash
# pack.sh [BUILD_DIR] - the executables the GPU machine runs, for the device tool's `carry`:
# pack/bins.tar.xz (xz: the fatbins are large; bench/run_gpu.sh unpacks it) and pack/lib (the shared
# libraries they need beyond glibc, the C++ runtime and CUDA, found with ldd). Build with CUDA first.
# PACK_DIR names another output folder (e.g. pack-base for a baseline build).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
# every GPU test, the programs, the benches
bins="$(cd "$B" && ls tests/test_gpu_* 2>/dev/null | tr '\n' ' ') tests/test_cpu_attn
      daemon/gemmad daemon/gemma-worker client/gemma-cli tools/gemma-generate
      tools/gemma-mkmodel tools/gemma-quantize bench/gemma-bench bench/bench_decode bench/bench_kernels
      bench/xqa_bench bench/fp8_gemm_bench bench/awq_bench bench/allreduce_bench bench/prefill_bench"
stage=$(mktemp -d)
for b in $bins; do
  if [ -x "$B/$b" ]; then cp "$B/$b" "$stage/"; else echo "pack.sh: $B/$b not built, left out" >&2; fi
done
P=${PACK_DIR:-pack}
rm -rf "$P" && mkdir -p "$P/lib"
# the libraries the GPU machine may lack: everything ldd resolves, but glibc, the C++ runtime and CUDA
ldd "$stage"/* 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
  case $(basename "$lib") in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libresolv.so*|libnsl.so*|libutil.so*|ld-linux*) ;;
    libgcc_s.so*|libstdc++.so*) ;;
    libcuda.so*|libcudart.so*|libcublas*|libnccl.so*|libnvidia*|libcufile*) ;;
    *) cp -L "$lib" "$P/lib/" ;;
  esac
done
# a dictionary larger than all the binaries together: they share the engine's kernels, so each copy after
# the first costs almost nothing
XZ_OPT="-6 --lzma2=dict=256MiB" tar -cJf "$P/bins.tar.xz" -C "$stage" .
rm -rf "$stage"
du -sh "$P/bins.tar.xz" "$P/lib"
