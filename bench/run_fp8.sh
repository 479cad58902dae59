#!/usr/bin/env bash
# run_fp8.sh - every GPU test and benchmark of the FP8 / XQA area, in one call on the GPU machine.
#
#   LD_LIBRARY_PATH=pack/lib bash bench/run_fp8.sh [PHASE...]
#
# PHASEs (default: tests xqa gemm sass):
#   tests     test_gpu_xqa (XQA vs cpu_attention_paged / its FP8 twin), test_gpu_fp8 (quantize, fused
#             norm/GeGLU, KV write, cuBLASLt FP8 GEMM vs the CPU twins)
#   xqa       xqa_bench: 2b/7b x bf16/fp8 KV x batch 1,64,256 x context 1k,4k,8k, split-count sweep,
#             with k_attn_decode (bf16) as the peer; then q_len 2 and 4 (2b, fp8) at batch 64
#   gemm      fp8_gemm_bench: Gemma shapes x T 1..4096, FP8 (accurate and fast accumulation) beside
#             bf16, and the 8192^3 ceilings measured in the same run
#   sass      tensor-core instructions in the XQA kernels (cuobjdump), register/spill report
#   sanitize  compute-sanitizer memcheck + racecheck on test_gpu_xqa (slow; not in the default set)
# Binaries come from $PACK (default pack/): test_gpu_xqa test_gpu_fp8 xqa_bench fp8_gemm_bench.
# Logs go to $OUT/fp8 (default ./gpu-out/fp8): summary.txt, tests.log, xqa.log, gemm.log
# (+ sanitize.log); 4 files. The last lines printed are the summary.
set -u
OUT=${OUT:-$PWD/gpu-out}
PACK=${PACK:-pack}
D=$OUT/fp8
mkdir -p "$D"
phases=${*:-tests xqa gemm sass}
summary=$D/summary.txt
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
t_start=$(date +%s)

for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$d
done
export LD_LIBRARY_PATH
export NCCL_NVLS_ENABLE=0

say "== run_fp8.sh $(date -u +%Y-%m-%dT%H:%MZ) phases: $phases"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -2)"
for b in test_gpu_xqa test_gpu_fp8 xqa_bench fp8_gemm_bench; do
  if [ ! -x "$PACK/$b" ]; then say "MISSING $PACK/$b"; continue; fi
  miss=$(ldd "$PACK/$b" 2>/dev/null | grep "not found" | tr -s ' \t' ' ')
  [ -n "$miss" ] && say "MISSING LIBS for $b: $miss"
done

fails=0
run() { # run NAME TIMEOUT LOG CMD...
  local name=$1 lim=$2 log=$3; shift 3
  echo "---- $name: $*" >> "$log"
  local t0=$(date +%s)
  timeout --kill-after=10 "$lim" "$@" >> "$log" 2>&1
  local rc=$? st=PASS
  [ $rc = 77 ] && st=SKIP
  [ $rc != 0 ] && [ $rc != 77 ] && st="FAIL(rc=$rc)" && fails=$((fails + 1))
  [ $rc = 124 ] && st="TIMEOUT(${lim}s)"
  say "$(printf '%-26s %-14s %4ds' "$name" "$st" $(( $(date +%s) - t0 )))"
  return $rc
}

for ph in $phases; do
  case $ph in
  tests)
    run test_gpu_xqa 400 "$D/tests.log" "$PACK/test_gpu_xqa"
    run test_gpu_fp8 400 "$D/tests.log" "$PACK/test_gpu_fp8"
    grep -E "worst normalized|FAIL|mismatch|NaN|differs|vs CPU|err " "$D/tests.log" | head -80 >> "$summary"
    ;;
  xqa)
    run xqa_bench 420 "$D/xqa.log" "$PACK/xqa_bench" --sweep
    run xqa_bench_qlen 120 "$D/xqa.log" "$PACK/xqa_bench" --models 2b --kv fp8,bf16 --batch 64 --ctx 4096 --q-len 2
    run xqa_bench_qlen4 120 "$D/xqa.log" "$PACK/xqa_bench" --models 2b --kv fp8 --batch 64 --ctx 4096 --q-len 4
    run xqa_bench_block16 120 "$D/xqa.log" "$PACK/xqa_bench" --batch 64 --ctx 4096 --block 16
    run xqa_bench_block64 120 "$D/xqa.log" "$PACK/xqa_bench" --batch 64 --ctx 4096 --block 64
    ;;
  gemm)
    run fp8_gemm_bench 420 "$D/gemm.log" "$PACK/fp8_gemm_bench"
    ;;
  sass)
    {
      echo "---- SASS instruction counts per XQA kernel (HMMA = tensor core mma.sync)"
      cuobjdump --dump-sass "$PACK/test_gpu_xqa" 2>&1 | awk '
        /Function :/ { if (fn != "") printf "%-60s HMMA %4d LDSM %4d LDGSTS %4d\n", fn, h, l, g; fn = $3; h = l = g = 0 }
        /HMMA/ { h++ } /LDSM/ { l++ } /LDGSTS/ { g++ }
        END { if (fn != "") printf "%-60s HMMA %4d LDSM %4d LDGSTS %4d\n", fn, h, l, g }' | grep -i xqa
      echo "---- resource usage"
      cuobjdump --dump-resource-usage "$PACK/test_gpu_xqa" 2>&1 | grep -A1 -i xqa | head -40
    } >> "$D/tests.log" 2>&1
    say "sass: see tests.log"
    ;;
  sanitize)
    run sanitize_xqa 500 "$D/sanitize.log" compute-sanitizer --tool memcheck --leak-check no "$PACK/test_gpu_xqa"
    run racecheck_xqa 500 "$D/sanitize.log" compute-sanitizer --tool racecheck "$PACK/test_gpu_xqa"
    ;;
  *)
    say "unknown phase $ph"
    ;;
  esac
done

say "== results ($(( $(date +%s) - t_start )) s)"
[ -f "$D/xqa.log" ] && grep -E "^device|xqa\*|picked|peer" "$D/xqa.log" | head -120 | tee -a "$summary" >/dev/null
[ -f "$D/gemm.log" ] && grep -E "8192\^3|T=1 |T=16 |T=1024 |T=4096 " "$D/gemm.log" | head -80 | tee -a "$summary" >/dev/null
tail -n 60 "$summary"
say "failures: $fails"
exit 0
