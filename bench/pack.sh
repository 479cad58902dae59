#!/usr/bin/env bash
# pack.sh [BUILD_DIR] - the executables the GPU machine runs, for the device tool's `carry`:
# pack/bins.tar.xz (xz: the fatbins are large; bench/run_gpu.sh unpacks it) and pack/lib (their
# non-CUDA shared libraries, from ../shared/bin/bundle-libs). Build with CUDA first.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
bins="tests/test_gpu_model tests/test_gpu_nodev tests/test_gpu_xqa tests/test_gpu_awq tests/test_gpu_ops
      tests/test_gpu_fp8 daemon/gemmad daemon/gemma-worker client/gemma-cli tools/gemma-generate
      tools/gemma-mkmodel tools/gemma-quantize bench/gemma-bench bench/bench_decode bench/bench_kernels
      bench/xqa_bench bench/fp8_gemm_bench bench/awq_bench bench/allreduce_bench"
stage=$(mktemp -d)
for b in $bins; do
  if [ -x "$B/$b" ]; then cp "$B/$b" "$stage/"; else echo "pack.sh: $B/$b not built, left out" >&2; fi
done
rm -rf pack && mkdir -p pack/lib
../shared/bin/bundle-libs pack/lib "$stage"/* > /dev/null
tar -cJf pack/bins.tar.xz -C "$stage" .
rm -rf "$stage"
du -sh pack/bins.tar.xz pack/lib
