#!/usr/bin/env bash
# run_prefill.sh - the Hopper prefill attention kernel's GPU checks and benchmarks in one call.
#
#   LD_LIBRARY_PATH=pack/lib BIN=<dir with the binaries> bash bench/run_prefill.sh [PHASE...]
#
# PHASEs (default: tests engine bench peer sass):
#   tests     test_gpu_prefill_hopper (vs the CPU twin, every case) and test_cpu_attn
#   engine    the CUDA engine vs the CPU engine on long prompts under each prefill mode (test_gpu_model on two
#             head_dim-256 models made by gemma-mkmodel, bf16 and FP8 KV), then bench_decode's prefill tok/s
#             at 2b/7b shapes with a 2,048-token prompt, --prefill-attn mma vs hopper (bf16 and FP8 KV) vs e4m3
#             (FP8 KV: the Hopper kernel on e4m3 tensor cores)
#   gemm      fp8_gemm_bench --prefill: cuBLASLt heuristic vs top-8 vs wide search at T 2048..16384
#   sanitize  compute-sanitizer memcheck, racecheck and synccheck on the small cases
#             (GM_PREFILL_SMALL=1); slow, not in the default set
#   bench     prefill_bench: Hopper and mma.sync kernels, 2b/7b x bf16/fp8/e4m3 x T 1k..8k
#   peer      bench/sdpa_peer.py: torch SDPA (cuDNN, flash, efficient) on the same shapes
#   sass      HGMMA / UTMALDG / UBLKCP counts, spills and registers of the kernels
# Binaries from $BIN (default pack/): test_gpu_prefill_hopper test_cpu_attn prefill_bench test_gpu_model
# gemma-mkmodel bench_decode fp8_gemm_bench (a pack's bins.tar.xz is unpacked first, as run_gpu.sh does).
# Logs in $OUT/prefill (default ./gpu-out/prefill): summary.txt, tests.log, bench.csv, sanitize.log.
set -u
OUT=${OUT:-$PWD/gpu-out}
BIN=${BIN:-pack}
D=$OUT/prefill
mkdir -p "$D"
phases=${*:-tests engine bench peer sass}
if [ -f "$BIN/bins.tar.xz" ]; then
  rm -rf /tmp/gm-pack && mkdir -p /tmp/gm-pack && tar -xJf "$BIN/bins.tar.xz" -C /tmp/gm-pack &&
    cp -r "$BIN/lib" /tmp/gm-pack/ && LD_LIBRARY_PATH=/tmp/gm-pack/lib:${LD_LIBRARY_PATH:-}
  BIN=/tmp/gm-pack
fi
summary=$D/summary.txt
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$d
done
export LD_LIBRARY_PATH
say "== run_prefill.sh $(date -u +%Y-%m-%dT%H:%MZ) phases: $phases"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -2)"

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
  say "$(printf '%-28s %-14s %4ds' "$name" "$st" $(( $(date +%s) - t0 )))"
  return $rc
}

for ph in $phases; do
  case $ph in
  tests)
    run test_cpu_attn 60 "$D/tests.log" "$BIN/test_cpu_attn"
    run test_gpu_prefill_hopper 900 "$D/tests.log" "$BIN/test_gpu_prefill_hopper"
    grep -E "nerr|FAIL|fail|differ|unwritten [1-9]|skipped" "$D/tests.log" | head -80 >> "$summary"
    ;;
  sanitize)
    export GM_PREFILL_SMALL=1
    run memcheck 900 "$D/sanitize.log" compute-sanitizer --tool memcheck --leak-check no "$BIN/test_gpu_prefill_hopper"
    run racecheck 900 "$D/sanitize.log" compute-sanitizer --tool racecheck "$BIN/test_gpu_prefill_hopper"
    run synccheck 900 "$D/sanitize.log" compute-sanitizer --tool synccheck "$BIN/test_gpu_prefill_hopper"
    unset GM_PREFILL_SMALL
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard|Invalid" "$D/sanitize.log" | sort | uniq -c | head -20 >> "$summary"
    ;;
  engine)
    M=${GM_MODELS:-/tmp/gm-models}/hd256
    [ -f "$M/mqa/config.json" ] || "$BIN/gemma-mkmodel" --preset 2b --layers 2 --hidden 256 --intermediate 512 \
      --vocab 4096 --seed 3 --out "$M/mqa" > /dev/null
    [ -f "$M/mha/config.json" ] || "$BIN/gemma-mkmodel" --preset 7b --layers 2 --hidden 256 --heads 4 --kv-heads 4 \
      --intermediate 512 --vocab 4096 --seed 4 --out "$M/mha" > /dev/null
    run model_long_bf16kv 600 "$D/engine.log" "$BIN/test_gpu_model" "$M/mqa" "$M/mha"
    run model_long_fp8kv 600 "$D/engine.log" env GM_TEST_KV=fp8 "$BIN/test_gpu_model" "$M/mqa" "$M/mha"
    grep -E "^model|CUDA engine|prefill attention|hopper|mma |auto |FAIL|fail" "$D/engine.log" | head -80 >> "$summary"
    for m in 2b 7b; do
      for kv in bf16 fp8; do
        pas="mma hopper"; [ $kv = fp8 ] && pas="mma hopper e4m3"
        for pa in $pas; do
          run "decode_${m}_${kv}_${pa}" 300 "$D/engine.log" "$BIN/bench_decode" --preset $m --quant fp8 --kv-dtype $kv \
            --prompt 2048 --gen 16 --batch 8 --prefill-attn $pa
        done
      done
    done
    grep -E "tok/s" "$D/engine.log" | sed 's/^/  /' >> "$summary"
    ;;
  gemm)
    run fp8_gemm_prefill 600 "$D/gemm.log" "$BIN/fp8_gemm_bench" --prefill
    grep -E "^\||8192\^3" "$D/gemm.log" >> "$summary"
    ;;
  bench)
    run prefill_bench 600 "$D/bench.log" "$BIN/prefill_bench"
    grep "^prefill," "$D/bench.log" >> "$D/bench.csv"
    ;;
  peer)
    run sdpa_peer 600 "$D/peer.log" python3 "$(dirname "$0")/sdpa_peer.py"
    grep "^prefill," "$D/peer.log" | grep -v "^prefill,kernel" >> "$D/bench.csv"
    ;;
  sass)
    {
      echo "---- SASS per prefill kernel (HGMMA/QGMMA = wgmma bf16-f16/e4m3, UTMALDG = TMA, UBLKCP = bulk copy, LDL/STL = local memory)"
      cuobjdump --dump-sass "$BIN/prefill_bench" 2>&1 | awk '
        function out() { printf "%-90s HGMMA %3d QGMMA %3d UTMALDG %3d UBLKCP %2d LDL %3d STL %3d\n", fn, h, q, t, b, l, s }
        /Function :/ { if (fn != "") out(); fn = $3; h = q = t = b = l = s = 0 }
        /HGMMA/ { h++ } /QGMMA/ { q++ } /UTMALDG/ { t++ } /UBLKCP/ { b++ } /LDL/ { l++ } /STL/ { s++ }
        END { if (fn != "") out() }' |
        grep -E "hp_prefill|h8_prefill|attn_prefill"
      echo "---- resource usage"
      cuobjdump --dump-resource-usage "$BIN/prefill_bench" 2>&1 | grep -A1 -E "hp_prefill|h8_prefill|attn_prefill" | head -40
    } >> "$D/tests.log" 2>&1
    say "sass: see tests.log"
    ;;
  *)
    say "unknown phase $ph"
    ;;
  esac
done

say "== results"
[ -f "$D/bench.csv" ] && sort -t, -k3,3 -k4,4 -k5,5n -k2,2 "$D/bench.csv" | tee -a "$summary" > /dev/null
tail -n 80 "$summary"
say "failures: $fails"
exit 0
