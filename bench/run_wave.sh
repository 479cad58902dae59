#!/usr/bin/env bash
# run_wave.sh - one GPU call that checks a build and measures it against a base build on the same card.
#
#   OUT=$OUT WAVE_BUDGET=560 bash bench/run_wave.sh [PHASE...]
#
# Carry `pack` (this build: bench/pack.sh) and `pack-base` (the build to compare with: PACK_DIR=pack-base
# bench/pack.sh on an older commit). PHASEs run in the order given (default: tests serve2b prefill b1 g23b
# serve7b), each cut to what is left of WAVE_BUDGET seconds; every GPU test runs under its own timeout:
#   tests    the GPU tests, most telling first (kernels vs CPU twins, the engine vs the CPU engine for Gemma 1,
#            2, 3, sampling extras, the Hopper prefill kernel, sizing, prefix-block copies, a gemmad smoke test)
#   serve2b  gemmad 2b FP8 (calibrated, FP8 KV and LM head), 128/128 at 1,024 streams: this build with no sizing
#            flags through the RPC and through HTTP (the same gemmad), a shared-prefix workload with the prefix
#            cache on and off, this build with the tuned flags, the base build with the tuned flags
#   serve7b  defaults, tuned and base rows for 7b
#   tests2   only the GPU tests changed since the last run (sizing, speculative decoding)
#   http2b   2b defaults: RPC, HTTP, RPC again on one gemmad, 10,240 requests each (the 5% comparison)
#   prefix2b 2b shared-prefix workload, prefix cache on and off, 2,048 requests each
#   prefill  Hopper prefill vs mma.sync vs torch SDPA (cuDNN, flash) at T = 1k..8k (bench/run_prefill.sh)
#   b1       bench_decode batch 1 and 4, 2b and 7b FP8 (static scales, FP8 LM head): this build and the base
#   g23b     bench_decode of gemma2-9b / gemma3-4b / gemma3-12b shapes, FP8, batch 1 and 64
#   beam     beam width 4 vs 1 at 1 and 64 requests in flight, 2b bf16 (bench/run_beam.sh)
#   spec     speculative decoding: verify-entry step time against k, 2b and 7b (bench/run_spec.sh)
#   shapes   the long serving shapes through gemmad with default sizing (bench/run_serving_shapes.sh)
#   gemm     FP8 GEMMs at prefill rows (fp8_gemm_bench --prefill)
# Logs: $OUT/wave.tgz (everything), $OUT/summary.txt (the lines printed last).
set -u
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null  # 1,024 HTTP streams and the bench's side of them
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
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$d
done
export LD_LIBRARY_PATH=/tmp/gm-pack/lib:${LD_LIBRARY_PATH:-}
P=/tmp/gm-pack
say "== run_wave.sh $(date -u +%Y-%m-%dT%H:%MZ) on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
export M=${GM_MODELS:-/tmp/gm-models}
mkdir -p "$M"
# calibrated FP8 checkpoints of the full random 2b/7b, made on the CPUs while the GPU runs the tests
[ -n "${WAVE_NOPREP:-}" ] || OUT=$W/prep PACK=$P FP8S_MODELS="2b 7b" bash bench/run_gpu.sh fp8sprep > /dev/null 2>&1

t() { # t NAME LIMIT CMD...: one test under a timeout; PASS/FAIL/SKIP line in the summary
  local name=$1 lim=$2 l; shift 2
  l=$(left)
  [ "$l" -lt 20 ] && { say "$(printf '%-32s SKIP(budget)' "$name")"; return; }
  [ "$lim" -gt $((l - 10)) ] && lim=$((l - 10))
  local s=$(date +%s)
  timeout --kill-after=5 "$lim" "$@" > "$W/t_$name.log" 2>&1
  local rc=$? st=PASS
  [ $rc = 77 ] && st=SKIP
  [ $rc != 0 ] && [ $rc != 77 ] && st="FAIL(rc=$rc)"
  [ $rc = 124 ] && st="TIMEOUT(${lim}s)"
  say "$(printf '%-32s %-14s %4ds %s' "$name" "$st" $(( $(date +%s) - s )) \
    "$(grep -hoE 'worst logits nerr[^,;]*|nerr [0-9.e+-]+' "$W/t_$name.log" | tail -1)")"
}
mk() { # mk NAME ARGS...: a random model, once
  [ -f "$M/$1/config.json" ] || "$P/gemma-mkmodel" --corpus data/corpus.txt --out "$M/$1" "${@:2}" > "$W/mk_$1.log" 2>&1
}

wait_up() { # wait_up EP PID: gemmad answers Health (seconds it took, or FAIL)
  local s=$(date +%s)
  for _ in $(seq 1 400); do
    "$P/gemma-cli" --endpoint "$1" --health > /dev/null 2>&1 && { echo $(( $(date +%s) - s )); return 0; }
    kill -0 "$2" 2>/dev/null || break
    sleep 0.5
  done
  echo FAIL
  return 1
}

bench() { # bench LABEL ARGS...: one gemma-bench run, its markdown row in the summary
  local label=$1 f; shift
  f=$W/bench_$(echo "$label" | tr -c 'A-Za-z0-9_.-' '_')
  [ "$(left)" -lt 40 ] && { say "bench $label: SKIP(budget)"; return; }
  timeout $(( $(left) - 20 > 150 ? 150 : $(left) - 20 )) "$P/gemma-bench" "$@" --label "$label" --markdown --quiet \
    --json "$f.json" > "$f.md" 2> "$f.err"
  say "$(grep -E '^\|' "$f.md" | tail -1) $(grep -m1 -iE 'fail|error' "$f.err")"
}

serve_model() { # serve_model 2b|7b
  local m=$1 mdir=$M/${1}fp8s ep=ipc:///tmp/gm-wave.sock kv=60G mem
  for _ in $(seq 1 400); do [ -f "$M/${m}fp8s.done" ] && break; [ "$(left)" -lt 60 ] && break; sleep 1; done
  [ -f "$mdir/config.json" ] || { say "serve $m: no calibrated checkpoint ($(tail -2 "$W/prep/fp8sprep.log" 2>/dev/null))"; return; }
  mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  [ "${mem:-0}" -gt 100000 ] && kv=80G
  kv=${WAVE_KV:-$kv}
  local qa=${WAVE_QA---quant fp8 --kv-dtype fp8 --lm-head fp8} be=${WAVE_BACKEND:-cuda}
  local common=${WAVE_COMMON:---isl 128 --osl 128 --concurrency 1024 --num-requests 2048 --warmup 1024}
  # 1. this build, no sizing flags: RPC and HTTP on the same gemmad, then the shared-prefix workload
  "$P/gemmad" --model "$mdir" --backend $be --listen $ep --http-listen 127.0.0.1:8000 $qa \
    --worker-bin "$P/gemma-worker" > "$W/gemmad_${m}_defaults.log" 2>&1 &
  local pid=$!
  say "gemmad $m defaults up in $(wait_up $ep $pid) s; $(grep -hE 'KV pool|max_seqs|max_tokens_per_step' "$W/gemmad_${m}_defaults.log" | head -3 | sed 's/.*gemmad: //' | tr '\n' ';')"
  bench "$m defaults rpc 128/128" --endpoint $ep $common
  bench "$m defaults http 128/128" --http http://127.0.0.1:8000 $common
  if [ -z "${WAVE_NOPREFIX:-}" ] && "$P/gemma-bench" --help 2>&1 | grep -q -- --shared-prefix; then
    bench "$m prefix-cache on 1000+128/128@256" --endpoint $ep --shared-prefix 1000 --isl 128 --osl 128 \
      --concurrency 256 --num-requests 512 --warmup 64
  fi
  kill $pid; wait $pid 2>/dev/null
  if [ -z "${WAVE_NOPREFIX:-}" ] && "$P/gemma-bench" --help 2>&1 | grep -q -- --shared-prefix && [ "$(left)" -gt 120 ]; then
    "$P/gemmad" --model "$mdir" --backend $be --listen $ep $qa --prefix-cache false \
      --worker-bin "$P/gemma-worker" > "$W/gemmad_${m}_nocache.log" 2>&1 &
    pid=$!
    wait_up $ep $pid > /dev/null
    bench "$m prefix-cache off 1000+128/128@256" --endpoint $ep --shared-prefix 1000 --isl 128 --osl 128 \
      --concurrency 256 --num-requests 512 --warmup 64
    kill $pid; wait $pid 2>/dev/null
  fi
  # 2. tuned flags, this build and the base build
  local tuned="--kv-memory $kv --max-seqs 1024 --max-context 2304 --max-tokens-per-step 8192"
  for b in pack base; do
    local bin=$P; [ $b = base ] && bin=/tmp/gm-base
    [ -x $bin/gemmad ] || continue
    [ "$(left)" -lt 90 ] && { say "serve $m tuned $b: SKIP(budget)"; continue; }
    LD_LIBRARY_PATH=$bin/lib:$LD_LIBRARY_PATH "$bin/gemmad" --model "$mdir" --backend $be --listen $ep $qa $tuned \
      --worker-bin "$bin/gemma-worker" > "$W/gemmad_${m}_tuned_$b.log" 2>&1 &
    pid=$!
    wait_up $ep $pid > /dev/null
    bench "$m tuned $b 128/128" --endpoint $ep $common
    kill $pid; wait $pid 2>/dev/null
  done
}

for ph in ${*:-tests serve2b prefill b1 g23b serve7b}; do
  case $ph in
  tests)
    mk tiny --preset tiny --seed 1
    mk tiny_gemma2 --preset tiny-gemma2 --seed 5
    mk tiny_gemma3 --preset tiny-gemma3 --seed 5
    mk 2b2 --preset 2b --layers 2 --seed 5
    mk hd256_mqa --preset 2b --layers 2 --hidden 256 --intermediate 512 --vocab 4096 --seed 3
    mk hd256_mha --preset 7b --layers 2 --hidden 256 --heads 4 --kv-heads 4 --intermediate 512 --vocab 4096 --seed 4
    t test_gpu_ops 240 $P/test_gpu_ops
    t model_tiny 120 $P/test_gpu_model $M/tiny
    t model_2b2 120 $P/test_gpu_model $M/2b2
    t test_gpu_sample 120 $P/test_gpu_sample $M/tiny
    t test_gpu_gemma23 150 $P/test_gpu_gemma23
    t model_g23 150 $P/test_gpu_model $M/tiny_gemma2 $M/tiny_gemma3
    t model_g23_kv8_xqa 150 env GM_TEST_KV=fp8 GM_TEST_ATTN=xqa $P/test_gpu_model $M/tiny_gemma2 $M/tiny_gemma3
    t model_tiny_fp8 120 env GM_TEST_QUANT=fp8 $P/test_gpu_model $M/tiny
    t test_gpu_xqa 200 $P/test_gpu_xqa
    t test_gpu_fp8 150 $P/test_gpu_fp8
    t prefill_hopper_small 150 env GM_PREFILL_SMALL=1 $P/test_gpu_prefill_hopper
    t model_long_prefill 150 $P/test_gpu_model $M/hd256_mqa $M/hd256_mha
    t model_long_prefill_kv8 150 env GM_TEST_KV=fp8 $P/test_gpu_model $M/hd256_mqa $M/hd256_mha
    t test_gpu_kv_copy 120 $P/test_gpu_kv_copy $M/tiny
    t test_gpu_awq 150 $P/test_gpu_awq
    t test_gpu_sizing 120 $P/test_gpu_sizing $M/tiny
    t test_gpu_spec 150 $P/test_gpu_spec $M/tiny
    t test_gpu_generate 120 bash tests/test_gpu_generate.sh $P/gemma-generate $M/tiny /tmp/gg-tiny
    # gemmad on cuda: its greedy text equals gemma-generate --backend cuda's
    ep=ipc:///tmp/gm-smoke.sock
    $P/gemmad --model $M/tiny --backend cuda --listen $ep --worker-bin $P/gemma-worker > $W/smoke.log 2>&1 &
    pid=$!
    wait_up $ep $pid > /dev/null
    $P/gemma-cli --endpoint $ep --max-tokens 24 --ignore-eos "The capital of the tiny model is" > $W/smoke_d.txt 2>> $W/smoke.log
    $P/gemma-generate --model $M/tiny --backend cuda --prompt "The capital of the tiny model is" --max-tokens 24 \
      > $W/smoke_g.txt 2>> $W/smoke.log
    t daemon_cuda_smoke 10 cmp $W/smoke_d.txt $W/smoke_g.txt
    kill $pid; wait $pid 2>/dev/null
    ;;
  tests2) # the tests that a change since the last run touched: sizing and speculative decoding
    mk tiny --preset tiny --seed 1
    t test_gpu_sizing 120 $P/test_gpu_sizing $M/tiny
    t test_gpu_spec 150 $P/test_gpu_spec $M/tiny
    grep -hE "verify vs plain|UNEXPLAINED|^prompt [0-9]+ row" "$W/t_test_gpu_spec.log" | tail -8 | sed 's/^/[spec test] /' |
      tee -a "$summary"
    ;;
  http2b) # HTTP beside the RPC on one gemmad with defaults, 2b, long enough to leave the ramp behind
    mdir=$M/2bfp8s ep=ipc:///tmp/gm-wave.sock
    for _ in $(seq 1 300); do [ -f "$M/2bfp8s.done" ] && break; sleep 1; done
    "$P/gemmad" --model "$mdir" --backend cuda --listen $ep --http-listen 127.0.0.1:8000 --quant fp8 --kv-dtype fp8 \
      --lm-head fp8 --worker-bin "$P/gemma-worker" > "$W/gemmad_2b_http.log" 2>&1 &
    pid=$!
    wait_up $ep $pid > /dev/null
    long="--isl 128 --osl 128 --concurrency 1024 --num-requests 10240 --warmup 2048"
    bench "2b defaults rpc 128/128 x10240" --endpoint $ep $long
    bench "2b defaults http 128/128 x10240" --http http://127.0.0.1:8000 $long
    bench "2b defaults rpc 128/128 x10240 again" --endpoint $ep $long
    kill $pid; wait $pid 2>/dev/null
    ;;
  prefix2b) # the shared-prefix workload with the cache on and off, 2,048 requests (steady state, not two bursts)
    mdir=$M/2bfp8s ep=ipc:///tmp/gm-wave.sock
    pre="--shared-prefix 1000 --isl 128 --osl 128 --concurrency 256 --num-requests 2048 --warmup 256"
    for pc in true false; do
      "$P/gemmad" --model "$mdir" --backend cuda --listen $ep --quant fp8 --kv-dtype fp8 --lm-head fp8 \
        --prefix-cache $pc --worker-bin "$P/gemma-worker" > "$W/gemmad_2b_prefix_$pc.log" 2>&1 &
      pid=$!
      wait_up $ep $pid > /dev/null
      bench "2b prefix-cache $pc 1000+128/128@256 x2048" --endpoint $ep $pre
      kill $pid; wait $pid 2>/dev/null
    done
    ;;
  serve2b) serve_model 2b ;;
  serve7b) serve_model 7b ;;
  prefill)
    [ "$(left)" -gt 60 ] && BIN=$P OUT=$W/pb timeout $(( $(left) - 10 )) bash bench/run_prefill.sh bench peer > /dev/null 2>&1
    [ -f "$W/pb/prefill/summary.txt" ] && sed "s/^/[prefill] /" "$W/pb/prefill/summary.txt" | tail -40 | tee -a "$summary"
    ;;
  b1)
    d8="--quant fp8 --act-scale static --lm-head fp8"
    for p in $P /tmp/gm-base; do
      [ -x $p/bench_decode ] || continue
      for m in 2b 7b; do
        [ "$(left)" -lt 40 ] && break
        LD_LIBRARY_PATH=$p/lib:$LD_LIBRARY_PATH timeout 90 $p/bench_decode --preset $m --batch 1,4 --gen 128 $d8 \
          > "$W/b1_$(basename $p)_$m.log" 2>&1
        say "[b1 $(basename $p) $m] $(grep -E 'tok/s' "$W/b1_$(basename $p)_$m.log" | tail -2 | tr '\n' ' ')"
      done
    done
    ;;
  g23b)
    for m in gemma3-4b gemma2-9b gemma3-12b; do
      [ "$(left)" -lt 40 ] && break
      timeout 90 $P/bench_decode --preset $m --batch 1,64 --gen 64 --quant fp8 --kv-dtype fp8 > "$W/g23b_$m.log" 2>&1
      say "[g23b $m fp8] $(grep -E 'tok/s' "$W/g23b_$m.log" | tail -2 | tr '\n' ' ')"
    done
    ;;
  beam) # issue 17: beam width 4 vs 1 at 1 and 64 in flight (bench/run_beam.sh)
    [ "$(left)" -gt 90 ] && PACK=$P GM_MODELS=$M OUT=$W/beam timeout $(( $(left) - 10 )) bash bench/run_beam.sh > /dev/null 2>&1
    [ -f "$W/beam/beam_summary.txt" ] && sed "s/^/[beam] /" "$W/beam/beam_summary.txt" | tee -a "$summary"
    ;;
  spec) # issue 20: verify step time against k on 2b/7b shapes (bench/run_spec.sh; no real model here)
    [ "$(left)" -gt 90 ] && PACK=$P GM_MODELS=$M OUT=$W/spec timeout $(( $(left) - 10 )) bash bench/run_spec.sh > /dev/null 2>&1
    [ -f "$W/spec/spec_summary.txt" ] && sed "s/^/[spec] /" "$W/spec/spec_summary.txt" | tee -a "$summary"
    ;;
  shapes) # issue 18: 2048/128, mixed, 128/2048, 2048/2048 through gemmad with default sizing, each run cut at
          # WAVE_SHAPE_LIM s (bench/run_serving_shapes.sh; MODELS from WAVE_SHAPE_MODELS, default 2b 7b)
    [ "$(left)" -gt 90 ] && PACK=$P GM_MODELS=$M OUT=$W LIM=${WAVE_SHAPE_LIM:-40} MODELS="${WAVE_SHAPE_MODELS:-2b 7b}" \
      timeout $(( $(left) - 10 )) bash bench/run_serving_shapes.sh 2048/128 mixed 128/2048 2048/2048 > /dev/null 2>&1
    [ -f "$W/shapes/shapes.md" ] && sed "s/^/[shapes] /" "$W/shapes/shapes.md" | tail -30 | tee -a "$summary"
    ;;
  gemm) # issue 18 item 4: FP8 GEMMs at prefill rows, heuristic vs autotuned, against the 8192^3 rate
    [ "$(left)" -gt 40 ] && timeout $(( $(left) - 10 < 150 ? $(left) - 10 : 150 )) $P/fp8_gemm_bench --prefill > "$W/gemm.log" 2>&1
    sed "s/^/[gemm] /" "$W/gemm.log" | tail -30 | tee -a "$summary"
    ;;
  *) say "unknown phase $ph" ;;
  esac
done
say "== done in $(( $(date +%s) - t0 )) s"
tar -czf "$OUT/wave.tgz" -C "$W" . 2>/dev/null
cp "$summary" "$OUT/summary.txt"
