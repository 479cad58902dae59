#!/usr/bin/env bash
# run_wave.sh - one GPU call that checks and measures a build against the previous one on the same card.
#
#   OUT=$OUT WAVE_BUDGET=560 bash bench/run_wave.sh [PHASE...]
#
# Carry `pack` (this build, bench/pack.sh) and `pack-base` (the build to compare with, made the same way
# with PACK_DIR=pack-base from an older commit). PHASEs, run in the order given (default: tests serve2b
# prefill b1 serve7b), each cut to what is left of WAVE_BUDGET seconds:
#   tests    run_gpu.sh tests + gate, test_gpu_awq, test_gpu_sizing, the Hopper prefill test (small cases)
#   serve2b  gemmad 2b FP8 (calibrated) 128/128 at 1,024 streams: this build with no sizing flags, this
#            build with the tuned flags, the base build with the tuned flags
#   serve7b  the same for 7b
#   prefill  prefill_bench (Hopper kernel vs mma.sync) and torch SDPA on the same shapes
#   b1       bench_decode batch 1, 2b and 7b FP8 (static scales, FP8 LM head): this build and the base
#   prefillfull  the Hopper prefill test with every case (long CPU references)
# Everything lands in $OUT/wave.tgz; the last lines printed are the summary.
set -u
OUT=${OUT:-$PWD/gpu-out}
W=/tmp/wave
mkdir -p "$OUT" "$W"
t0=$(date +%s)
budget=${WAVE_BUDGET:-560}
left() { echo $(( budget - ($(date +%s) - t0) )); }
summary=$W/summary.txt
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
unpack() { # unpack PACKDIR DEST
  rm -rf "$2" && mkdir -p "$2" && tar -xJf "$1/bins.tar.xz" -C "$2" && cp -r "$1/lib" "$2/"
}
unpack pack /tmp/gm-pack || { say "no pack"; exit 1; }
[ -d pack-base ] && unpack pack-base /tmp/gm-base
export LD_LIBRARY_PATH=/tmp/gm-pack/lib:${LD_LIBRARY_PATH:-}
say "== run_wave.sh $(date -u +%Y-%m-%dT%H:%MZ) on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
export M=${GM_MODELS:-/tmp/gm-models}
mkdir -p "$M"
# calibrated FP8 checkpoints of the full random 2b/7b, made on the CPUs while the GPU runs the tests
OUT=$W/prep PACK=/tmp/gm-pack FP8S_MODELS="2b 7b" bash bench/run_gpu.sh fp8sprep > /dev/null 2>&1

gpu() { # gpu SUBDIR PACKDIR PHASES... with env: bench/run_gpu.sh on the time left
  local sub=$1 p=$2; shift 2
  local l=$(left)
  [ "$l" -lt 30 ] && { say "$sub: SKIP(budget)"; return; }
  OUT=$W/$sub PACK=$p GM_TIME_BUDGET=$l LD_LIBRARY_PATH=$p/lib:${LD_LIBRARY_PATH} bash bench/run_gpu.sh "$@" > /dev/null 2>&1
  sed "s/^/[$sub] /" "$W/$sub/summary.txt" | tee -a "$summary"
}

serve() { # serve MODEL
  local m=$1
  SERVE_FLAGS= SERVE_TAG=defaults SERVE_PLAN="$m:fp8s:128/128@1024" gpu serve-$m-defaults /tmp/gm-pack serve
  local mem kv=60G
  mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  [ "${mem:-0}" -gt 100000 ] && kv=80G
  SERVE_KV_MEM=$kv SERVE_TAG=tuned SERVE_PLAN="$m:fp8s:128/128@1024" gpu serve-$m-tuned /tmp/gm-pack serve
  [ -d /tmp/gm-base ] && SERVE_KV_MEM=$kv SERVE_TAG=base-tuned SERVE_PLAN="$m:fp8s:128/128@1024" \
    gpu serve-$m-base /tmp/gm-base serve
  grep -h "KV pool\|max_seqs\|max_tokens_per_step\|max_context\|KV cache" "$W/serve-$m-defaults/serve.log" 2>/dev/null |
    head -6 | sed "s/^/[serve-$m-defaults] /" | tee -a "$summary"
}

for ph in ${*:-tests serve2b prefill b1 serve7b}; do
  case $ph in
  tests)
    gpu tests /tmp/gm-pack tests gate
    d=$W/tests-more
    mkdir -p "$d"
    for t in test_gpu_awq test_gpu_sizing; do
      [ "$(left)" -lt 30 ] && break
      timeout 240 /tmp/gm-pack/$t > "$d/$t.log" 2>&1
      say "[tests] $t rc=$? $(grep -E 'PASSED|FAILED' "$d/$t.log" | tail -1)"
    done
    [ "$(left)" -gt 60 ] && GM_PREFILL_SMALL=1 BIN=/tmp/gm-pack OUT=$W timeout $(( $(left) > 200 ? 200 : $(left) - 20 )) \
      bash bench/run_prefill.sh tests > /dev/null 2>&1
    [ -f "$W/prefill/summary.txt" ] && sed "s/^/[prefill-small] /" "$W/prefill/summary.txt" | tee -a "$summary"
    ;;
  serve2b) serve 2b ;;
  serve7b) serve 7b ;;
  prefill)
    [ "$(left)" -gt 60 ] && BIN=/tmp/gm-pack OUT=$W/pb timeout $(( $(left) - 10 )) bash bench/run_prefill.sh bench peer > /dev/null 2>&1
    [ -f "$W/pb/prefill/summary.txt" ] && sed "s/^/[prefill] /" "$W/pb/prefill/summary.txt" | tee -a "$summary"
    ;;
  prefillfull)
    [ "$(left)" -gt 60 ] && BIN=/tmp/gm-pack OUT=$W/pf timeout $(( $(left) - 10 )) bash bench/run_prefill.sh tests > /dev/null 2>&1
    [ -f "$W/pf/prefill/summary.txt" ] && sed "s/^/[prefill-full] /" "$W/pf/prefill/summary.txt" | tee -a "$summary"
    ;;
  b1)
    d8="--quant fp8 --act-scale static --lm-head fp8"
    for p in /tmp/gm-pack /tmp/gm-base; do
      [ -x $p/bench_decode ] || continue
      for m in 2b 7b; do
        [ "$(left)" -lt 40 ] && break
        LD_LIBRARY_PATH=$p/lib:$LD_LIBRARY_PATH timeout 100 $p/bench_decode --preset $m --batch 1 --gen 128 $d8 \
          > "$W/b1_$(basename $p)_$m.log" 2>&1
        say "[b1 $(basename $p) $m] $(grep -E 'tok/s' "$W/b1_$(basename $p)_$m.log" | tail -2 | tr '\n' ' ')"
      done
    done
    ;;
  *) say "unknown phase $ph" ;;
  esac
done
say "== done in $(( $(date +%s) - t0 )) s"
tar -czf "$OUT/wave.tgz" -C "$W" . 2>/dev/null
cp "$summary" "$OUT/summary.txt"
