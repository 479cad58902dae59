#!/usr/bin/env bash
# run_gpu.sh - every GPU test and benchmark of the CUDA backend, in one call on the GPU machine.
#
#   LD_LIBRARY_PATH=pack/lib bash bench/run_gpu.sh [PHASE...]
#
# PHASEs (default: tests decode kernels peer):
#   tests    make the tiny model and 2-layer models at gemma-2b/7b shapes (gemma-mkmodel, into
#            $GM_MODELS, default /tmp/gm-models), then test_gpu_ops, test_gpu_model, test_gpu_nodev,
#            tests/test_gpu_generate.sh (gemma-generate --backend cuda vs cpu) and a gemmad smoke test
#            on the cuda backend (gemma-cli vs gemma-generate, same greedy text)
#   decode   bench_decode: batch 1, 8, 64 at the 2b and 7b presets (+ batch-1 variants)
#   kernels  bench_kernels (micro-benchmarks beside the measured ceilings)
#   peer     bench/hf_peer.py: transformers on the same GPU ($HF_MODES, default eager,static-loop)
#   sanitize compute-sanitizer memcheck on subsets of test_gpu_ops (not in the default set; stops
#            when $GM_TIME_BUDGET seconds, default 500, are near)
#   gate     test_gpu_ops, test_gpu_fp8, test_gpu_xqa (the kernels against their CPU twins)
#   b1final  batch-1 decode, FP8 static + FP8 LM head, 2b (+ FP8 KV) and 7b, the engine's own choices
#   sanitize3 compute-sanitizer memcheck/racecheck on the FP8 GEMV v2, decode attention, sampling, XQA
#   xsweep   xqa_bench split sweep, 2b FP8 KV;   nsys  per-kernel times of 2b batch-1 FP8 decode (Nsight Systems)
#   bench3   bench_kernels --attn, xqa_bench, fp8_gemm_bench, batch-1 and long-context decode (XQA forced too)
#   new      test_gpu_xqa, test_gpu_fp8, test_gpu_awq          newbench  xqa_bench, fp8_gemm_bench, awq_bench
#   fp8gemm  fp8_gemm_bench alone
#   engine8  test_gpu_ops + test_gpu_model with XQA forced, FP8 KV, FP8 weights (CPU FP8 twin as reference),
#            both; test_gpu_fp8; AWQ checkpoints (tiny AWQ, 2b2 RTN) through both engines (ENGINE8_LITE=1:
#            the four model variants only)
#   decode8 / decode8b  bench_decode: XQA vs not, FP8 weights, FP8 KV, long context, profiles
#   accuracy FP8 vs bf16: KL / top-1 / logits error / perplexity ($ACC_MODELS, default tiny 2bfull)
#   serve / serve2  gemma-bench against gemmad --backend cuda per $SERVE_PLAN / $SERVE_PLAN2 entries
#            MODEL:CFG:LENS[:ENV] (CFG bf16|fp8|fp8w|fp8l|fp8s|awq; LENS ISL/OSL[@CONC],...|b1; ENV
#            VAR=VALUE[,VAR=VALUE] set for gemmad and its workers)
#   sweep    real-time users: 2b FP8 128/128 at each concurrency of $SWEEP_LIST (one JSON per point)
#   peerb    transformers batched generate() as the serving peer (2b B=$PEER_B2, 7b B=$PEER_B7)
#   fp8sprep calibrated FP8 checkpoints of the full 2b/7b models in the background ($FP8S_MODELS)
#   awqprep / awqtest / awqppl  AWQ-format (RTN) checkpoints in the background; AWQ engine test; perplexity
#   fp8ckpt  FP8 checkpoints (dynamic, calibrated) on the CUDA engine vs the CPU engine, tiny and 2b2
#   actscale bench_decode with FP8 weights: dynamic vs static activation scales, 2b and 7b; + FP8 LM head
#   awq2     test_gpu_awq, awq_bench, batch-1/4 decode of the AWQ 2b/7b checkpoints
#   g23tests Gemma 2/3: test_gpu_gemma23 (the kernels' soft-cap, window, QK-norm, sandwich norm, scaled
#            RoPE against their CPU twins); test_gpu_model on tiny-gemma2/3 (bf16, FP8 KV, XQA forced, FP8
#            weights, FP8 LM head), on tiny Gemma 1, and on cuts of gemma2-9b (2 layers), gemma3-4b (6
#            layers, the last one full; vocab 262208, a multimodal checkpoint's) and gemma3-12b (2 layers),
#            window 24 so that the prompts cross it; test_gpu_xqa, test_gpu_ops (the API change)
#   g23sanitize  compute-sanitizer memcheck of the Gemma 2/3 kernel options
#   g23bench bench_decode at gemma2-9b, gemma3-4b, gemma3-12b (random weights): batch 1 and 128/128-like
#            batches (64, 128), bf16 and FP8 (static activation scales, FP8 LM head), FP8 KV; long prompts
#            past the window; the 2b preset in the same run as the Gemma 1 baseline
# Every run is cut to the time left of $GM_TIME_BUDGET (SKIP(budget) once it is spent).
# Binaries come from $PACK (default pack/, built on the development machine and carried; an
# xz tarball $PACK/bins.tar.xz of them is unpacked first);
# logs go to $OUT (default ./gpu-out): summary.txt, tests.log, decode.log, kernels.log,
# kernels.csv, peer.log, peer.jsonl (sanitize.log). The last lines printed are the summary.
set -u
OUT=${OUT:-$PWD/gpu-out}
PACK=${PACK:-pack}
M=${GM_MODELS:-/tmp/gm-models}
mkdir -p "$OUT" "$M"
# a pack may carry its executables compressed (fatbins are large): unpack them beside its lib/
if [ -f "$PACK/bins.tar.xz" ]; then
  rm -rf /tmp/gm-pack && mkdir -p /tmp/gm-pack && tar -xJf "$PACK/bins.tar.xz" -C /tmp/gm-pack && \
    cp -r "$PACK/lib" /tmp/gm-pack/ || echo "run_gpu.sh: cannot unpack $PACK/bins.tar.xz"
  PACK=/tmp/gm-pack
  LD_LIBRARY_PATH=$PACK/lib:${LD_LIBRARY_PATH:-}
fi
phases=${*:-tests decode kernels peer}
summary=$OUT/summary.txt
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
t_start=$(date +%s)
elapsed() { echo $(( $(date +%s) - t_start )); }

# Libraries the pack leaves out: the CUDA runtime and cuBLASLt from the toolkit, NCCL from
# wherever this image keeps it (the toolkit, or the nvidia-nccl Python wheel).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$d
done
have_lib() {
  ldconfig -p 2>/dev/null | grep -q "$1 " && return 0
  local d
  IFS=: read -ra _dirs <<< "${LD_LIBRARY_PATH:-}"
  for d in "${_dirs[@]}"; do [ -n "$d" ] && [ -e "$d/$1" ] && return 0; done
  return 1
}
for lib in libnccl.so.2 libcublasLt.so.13 libcudart.so.13; do
  if ! have_lib $lib; then
    f=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$lib*" -print 2>/dev/null | head -1)
    [ -n "$f" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$f")
  fi
done
export LD_LIBRARY_PATH
export NCCL_NVLS_ENABLE=0

say "== run_gpu.sh $(date -u +%Y-%m-%dT%H:%MZ) phases: $phases"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -2)"
for b in "$PACK"/*; do
  [ -f "$b" ] && [ -x "$b" ] || continue
  miss=$(ldd "$b" 2>/dev/null | grep "not found" | tr -s ' \t' ' ')
  [ -n "$miss" ] && say "MISSING LIBS for $b: $miss"
done

# run NAME TIMEOUT LOG CMD...: run with a time limit, append to LOG, record PASS/FAIL/SKIP
declare -A RES
run() {
  local name=$1 lim=$2 log=$3; shift 3
  local left=$(( ${GM_TIME_BUDGET:-100000} - $(elapsed) ))
  if [ $left -lt 15 ]; then RES[$name]=SKIP; say "$(printf '%-28s %-14s' "$name" "SKIP(budget)")"; return 77; fi
  [ $lim -gt $left ] && lim=$left
  echo "---- $name: $*" >> "$log"
  local t0=$(date +%s)
  timeout --kill-after=10 "$lim" "$@" >> "$log" 2>&1
  local rc=$?
  local st=PASS
  [ $rc = 77 ] && st=SKIP
  [ $rc != 0 ] && [ $rc != 77 ] && st="FAIL(rc=$rc)"
  [ $rc = 124 ] && st="TIMEOUT(${lim}s)"
  RES[$name]=$st
  say "$(printf '%-28s %-14s %4ds' "$name" "$st" $(( $(date +%s) - t0 )))"
  return $rc
}

mk() { # mk NAME ARGS...: make a model once
  local name=$1; shift
  [ -f "$M/$name/config.json" ] && return 0
  run "mkmodel_$name" 240 "$OUT/tests.log" "$PACK/gemma-mkmodel" --corpus data/corpus.txt --out "$M/$name" "$@"
}

for ph in $phases; do
  case $ph in
  tests)
    log=$OUT/tests.log
    mk tiny --preset tiny --seed 1
    mk 2b2 --preset 2b --layers 2 --seed 5
    mk 7b2 --preset 7b --layers 2 --seed 6
    run test_gpu_nodev 60 "$log" "$PACK/test_gpu_nodev"
    run test_gpu_ops 400 "$log" "$PACK/test_gpu_ops"
    run test_gpu_model_tiny 300 "$log" "$PACK/test_gpu_model" "$M/tiny"
    run test_gpu_model_2b2 300 "$log" "$PACK/test_gpu_model" "$M/2b2"
    run test_gpu_model_7b2 400 "$log" "$PACK/test_gpu_model" "$M/7b2"
    run test_gpu_generate_tiny 300 "$log" bash tests/test_gpu_generate.sh "$PACK/gemma-generate" "$M/tiny" /tmp/gg-tiny
    run test_gpu_generate_2b2 300 "$log" bash tests/test_gpu_generate.sh "$PACK/gemma-generate" "$M/2b2" /tmp/gg-2b2
    if [ -x "$PACK/gemmad" ] && [ -x "$PACK/gemma-cli" ] && [ -x "$PACK/gemma-worker" ]; then
      # gemmad on cuda, tp 1: its greedy text equals gemma-generate --backend cuda's
      ep=ipc:///tmp/gm-gpu-smoke.sock
      "$PACK/gemmad" --model "$M/tiny" --backend cuda --listen $ep --kv-blocks 256 --worker-bin "$PACK/gemma-worker" \
        >> "$log" 2>&1 &
      dpid=$!
      for i in $(seq 1 60); do "$PACK/gemma-cli" --endpoint $ep --health >/dev/null 2>&1 && break; sleep 1; done
      p="The capital of the tiny model is"
      "$PACK/gemma-cli" --endpoint $ep --max-tokens 24 --ignore-eos "$p" > /tmp/gm-smoke-daemon.txt 2>> "$log"
      "$PACK/gemma-generate" --model "$M/tiny" --backend cuda --prompt "$p" --max-tokens 24 > /tmp/gm-smoke-gen.txt 2>> "$log"
      { echo "daemon  : $(cat /tmp/gm-smoke-daemon.txt)"; echo "generate: $(cat /tmp/gm-smoke-gen.txt)"; } >> "$log"
      run daemon_cuda_smoke 10 "$log" cmp /tmp/gm-smoke-daemon.txt /tmp/gm-smoke-gen.txt
      kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null
    else
      say "daemon_cuda_smoke            SKIP (gemmad/gemma-cli/gemma-worker not in $PACK)"
    fi
    ;;
  decode)
    log=$OUT/decode.log
    run decode_2b 200 "$log" "$PACK/bench_decode" --preset 2b --prompt 128 --gen 256 --batch 1,8,64 --variants
    run decode_7b 240 "$log" "$PACK/bench_decode" --preset 7b --prompt 128 --gen 256 --batch 1,8,64 --variants
    ;;
  kernels)
    run bench_kernels 300 "$OUT/kernels.log" "$PACK/bench_kernels" --csv "$OUT/kernels.csv"
    ;;
  peer)
    log=$OUT/peer.log
    export PYTHONUNBUFFERED=1
    run hf_peer_2b 150 "$log" python3 bench/hf_peer.py --preset 2b --prompt 128 --gen 256 --modes "${HF_MODES:-eager,static-loop}" --json "$OUT/peer.jsonl"
    run hf_peer_7b 180 "$log" python3 bench/hf_peer.py --preset 7b --prompt 128 --gen 256 --modes "${HF_MODES:-eager,static-loop}" --json "$OUT/peer.jsonl"
    ;;
  gate)
    # the kernels against their CPU twins (test_gpu_ops: k_attn_decode_fp8 and the bf16 ops; test_gpu_fp8:
    # the FP8 quantizers and GEMVs; test_gpu_xqa: XQA)
    log=$OUT/gate.log
    run test_gpu_ops 300 "$log" "$PACK/test_gpu_ops"
    run test_gpu_fp8 200 "$log" "$PACK/test_gpu_fp8"
    run test_gpu_xqa 420 "$log" "$PACK/test_gpu_xqa"
    ;;
  b1final)
    # batch-1 decode with what the engine picks by itself (GEMV v1/v2 and the gate|up path timed at load)
    log=$OUT/b1final.log
    d8="--quant fp8 --act-scale static --lm-head fp8"
    run b1f_2b 100 "$log" "$PACK/bench_decode" --preset 2b --batch 1 --gen 128 $d8 --variants
    run b1f_2b_kv8 100 "$log" "$PACK/bench_decode" --preset 2b --batch 1 --gen 128 $d8 --kv-dtype fp8
    run b1f_7b 100 "$log" "$PACK/bench_decode" --preset 7b --batch 1 --gen 128 $d8
    grep -E "tok/s|profile|gate.up" "$log" | tee -a "$summary"
    ;;
  sanitize3)
    # compute-sanitizer on session 3's kernels: memcheck (out-of-bounds, misaligned) and racecheck
    # (shared-memory hazards: XQA's per-warp rings, the GEMV v2 reduction)
    log=$OUT/sanitize3.log
    cs="compute-sanitizer --error-exitcode 9 --leak-check no"
    run mc_gemv_v2 150 "$log" env GM_TEST_FILTER='test_gemv*' $cs --tool memcheck "$PACK/test_gpu_fp8"
    run mc_attn_decode 150 "$log" env GM_TEST_FILTER='test_attn_decode' $cs --tool memcheck "$PACK/test_gpu_ops"
    run mc_sampling 150 "$log" env GM_TEST_FILTER='test_sampling' $cs --tool memcheck "$PACK/test_gpu_ops"
    run mc_xqa_small 150 "$log" env GM_TEST_FILTER='test_xqa_small_heads' $cs --tool memcheck "$PACK/test_gpu_xqa"
    run mc_xqa_paths 200 "$log" env GM_TEST_FILTER='test_xqa_paths' $cs --tool memcheck "$PACK/test_gpu_xqa"
    run rc_xqa 200 "$log" env GM_TEST_FILTER='test_xqa_small_heads' $cs --tool racecheck "$PACK/test_gpu_xqa"
    run rc_gemv_v2 150 "$log" env GM_TEST_FILTER='test_gemv*' $cs --tool racecheck "$PACK/test_gpu_fp8"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race" "$log" | sort | uniq -c | head -40 | tee -a "$summary"
    ;;
  xsweep)
    # XQA split counts for 2b with FP8 KV (the one attention case under 80%)
    run xqa_sweep 120 "$OUT/xsweep.log" "$PACK/xqa_bench" --models 2b --kv fp8 --batch 64,256 --ctx 4096,8192 \
      --sweep
    grep -E "^xqa |best" "$OUT/xsweep.log" | tee -a "$summary"
    ;;
  nsys)
    # per-kernel times of a batch-1 2b FP8 decode (graph nodes traced), when Nsight Systems is there
    if command -v nsys >/dev/null 2>&1; then
      run nsys_b1 150 "$OUT/nsys.log" nsys profile --cuda-graph-trace=node --force-overwrite true -o /tmp/gm-b1 \
        "$PACK/bench_decode" --preset 2b --batch 1 --gen 64 --quant fp8 --act-scale static --lm-head fp8
      nsys stats -r cuda_gpu_kern_sum --format csv -o "$OUT/b1" /tmp/gm-b1.nsys-rep >> "$OUT/nsys.log" 2>&1
    else
      say "nsys: not installed"
    fi
    ;;
  bench3)
    # decode attention over FP8 pools (k_attn_decode_fp8), XQA, the FP8 GEMV v2 vs v1 (kernels), batch-1
    # decode, MHA/MQA long-context decode with FP8 KV (the engine's rule, and XQA forced)
    log=$OUT/bench3.log
    d8="--quant fp8 --act-scale static"
    run attn_kernels 150 "$log" "$PACK/bench_kernels" --attn
    run xqa_bench 150 "$log" "$PACK/xqa_bench"
    run fp8_gemm_bench 150 "$log" "$PACK/fp8_gemm_bench"
    run b1_2b 100 "$log" "$PACK/bench_decode" --preset 2b --batch 1,4 --gen 128 $d8 --lm-head fp8 --variants
    run b1_2b_kv8 100 "$log" "$PACK/bench_decode" --preset 2b --batch 1 --gen 128 $d8 --lm-head fp8 --kv-dtype fp8
    run b1_7b 100 "$log" "$PACK/bench_decode" --preset 7b --batch 1 --gen 128 $d8 --lm-head fp8
    run ctx4k_7b_kv8 120 "$log" "$PACK/bench_decode" --preset 7b --batch 64 --prompt 4096 --gen 32 $d8 --kv-dtype fp8
    run ctx4k_7b_kv8_xqa 120 "$log" "$PACK/bench_decode" --preset 7b --batch 64 --prompt 4096 --gen 32 $d8 --kv-dtype fp8 --xqa 2
    run ctx4k_2b_kv8 120 "$log" "$PACK/bench_decode" --preset 2b --batch 64,256 --prompt 4096 --gen 32 $d8 --kv-dtype fp8
    grep -E "tok/s|profile|GB/s" "$log" > "$OUT/bench3_summary.txt"
    ;;
  new)
    # FP8 / XQA / AWQ kernels against their CPU twins
    log=$OUT/new.log
    run test_gpu_xqa 240 "$log" "$PACK/test_gpu_xqa"
    run test_gpu_fp8 200 "$log" "$PACK/test_gpu_fp8"
    run test_gpu_awq 200 "$log" "$PACK/test_gpu_awq"
    ;;
  engine8)
    # the CUDA engine with XQA forced, an FP8 KV cache, FP8 weights (vs the CPU engine)
    log=$OUT/engine8.log
    mk tiny --preset tiny --seed 1
    mk 2b2 --preset 2b --layers 2 --seed 5
    mk 7b2 --preset 7b --layers 2 --seed 6
    [ -n "${ENGINE8_LITE:-}" ] || run test_gpu_ops 200 "$log" "$PACK/test_gpu_ops"
    run model_xqa 200 "$log" env GM_TEST_ATTN=xqa "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    run model_kv8 200 "$log" env GM_TEST_KV=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    run model_w8 200 "$log" env GM_TEST_QUANT=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    run model_w8kv8 200 "$log" env GM_TEST_QUANT=fp8 GM_TEST_KV=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    [ -n "${ENGINE8_LITE:-}" ] && { grep -E "^model|CUDA engine:|worst logits|agree|FAIL" "$log" > "$OUT/engine8_summary.txt"; continue; }
    run test_gpu_fp8 200 "$log" "$PACK/test_gpu_fp8"
    [ -f "$M/tinyawq/config.json" ] || run quantize_tiny_awq 120 "$log" "$PACK/gemma-quantize" --awq --model "$M/tiny" \
      --calib data/corpus.txt --out "$M/tinyawq" --group 32 --quiet
    [ -f "$M/2b2rtn/config.json" ] || run quantize_2b2_rtn 120 "$log" "$PACK/gemma-quantize" --rtn --model "$M/2b2" \
      --out "$M/2b2rtn" --group 128 --quiet
    run model_awq 200 "$log" env GM_TEST_QUANT=awq "$PACK/test_gpu_model" "$M/tinyawq" "$M/2b2rtn"
    grep -E "^model|CUDA engine:|worst logits|agree|codes differ|FAIL" "$log" | head -250 > "$OUT/engine8_summary.txt"
    ;;
  decode8)
    # decode tokens/s: XQA (auto: MQA/GQA batches >= 8) vs k_attn_decode, FP8 weights, FP8 KV
    log=$OUT/decode8.log
    run d8_2b_bf16 150 "$log" "$PACK/bench_decode" --preset 2b --batch 1,8,64,256 --gen 128
    run d8_2b_bf16_noxqa 100 "$log" "$PACK/bench_decode" --preset 2b --batch 64,256 --gen 128 --xqa 0
    run d8_2b_w8 150 "$log" "$PACK/bench_decode" --preset 2b --batch 1,8,64,256 --gen 128 --quant fp8
    run d8_2b_w8kv8 150 "$log" "$PACK/bench_decode" --preset 2b --batch 1,64,256 --gen 128 --quant fp8 --kv-dtype fp8
    run d8_2b_ctx4k 150 "$log" "$PACK/bench_decode" --preset 2b --batch 64 --prompt 4096 --gen 64
    run d8_2b_ctx4k_noxqa 150 "$log" "$PACK/bench_decode" --preset 2b --batch 64 --prompt 4096 --gen 64 --xqa 0
    run d8_7b_w8 150 "$log" "$PACK/bench_decode" --preset 7b --batch 1,8,64 --gen 128 --quant fp8
    run d8_7b_w8kv8 150 "$log" "$PACK/bench_decode" --preset 7b --batch 1,64 --gen 128 --quant fp8 --kv-dtype fp8
    grep -E "tok/s|profile" "$log" > "$OUT/decode8_summary.txt"
    ;;
  awqprep)
    # AWQ-format (RTN int4, group 128) checkpoints of the full random 2b/7b models, quantized on the CPUs
    # in the background while the GPU works; serve waits for $M/<model>awq.done
    for mdl in ${AWQ_MODELS:-2b 7b}; do
      [ -f "$M/${mdl}awq.done" ] && continue
      ( [ -f "$M/${mdl}full/config.json" ] || "$PACK/gemma-mkmodel" --corpus data/corpus.txt --out "$M/${mdl}full" \
          --preset "$mdl" --seed 7 >> "$OUT/awqprep.log" 2>&1
        "$PACK/gemma-quantize" --rtn --model "$M/${mdl}full" --out "$M/${mdl}awq" --group 128 --quiet \
          >> "$OUT/awqprep.log" 2>&1 && touch "$M/${mdl}awq.done" ) &
    done
    ;;
  fp8sprep)
    # calibrated FP8 checkpoints (gemma-quantize --fp8 --calib, $FP8S_TOKENS calibration tokens) of the full
    # random 2b/7b models, made on the CPUs in the background; serve waits for $M/<model>fp8s.done
    for mdl in ${FP8S_MODELS:-2b 7b}; do
      [ -f "$M/${mdl}fp8s.done" ] && continue
      ( [ -f "$M/${mdl}full/config.json" ] || "$PACK/gemma-mkmodel" --corpus data/corpus.txt --out "$M/${mdl}full" \
          --preset "$mdl" --seed 7 >> "$OUT/fp8sprep.log" 2>&1
        "$PACK/gemma-quantize" --fp8 --model "$M/${mdl}full" --out "$M/${mdl}fp8s" --calib data/corpus.txt \
          --max-tokens ${FP8S_TOKENS:-1024} --quiet >> "$OUT/fp8sprep.log" 2>&1 && touch "$M/${mdl}fp8s.done" ) &
    done
    ;;
  awqtest)
    log=$OUT/awqtest.log
    mk tiny --preset tiny --seed 1
    mk 2b2 --preset 2b --layers 2 --seed 5
    [ -f "$M/tinyrtn/config.json" ] || run quantize_tiny_rtn 120 "$log" "$PACK/gemma-quantize" --rtn --model "$M/tiny" \
      --out "$M/tinyrtn" --group 32 --quiet
    [ -f "$M/2b2rtn/config.json" ] || run quantize_2b2_rtn 120 "$log" "$PACK/gemma-quantize" --rtn --model "$M/2b2" \
      --out "$M/2b2rtn" --group 128 --quiet
    run model_awq 200 "$log" env GM_TEST_QUANT=awq "$PACK/test_gpu_model" "$M/tinyrtn" "$M/2b2rtn"
    grep -E "^model|CUDA engine:|worst logits|agree|FAIL" "$log" > "$OUT/awqtest_summary.txt"
    ;;
  awqppl)
    # perplexity of the 2b model in bf16 and as its RTN int4 (AWQ format) checkpoint, CUDA engine
    log=$OUT/awqppl.log
    head -c 16000 data/corpus.txt > /tmp/acc_text.txt
    for i in $(seq 1 200); do [ -f "$M/2bawq.done" ] && break; sleep 1; done
    run ppl_2b_bf16 120 "$log" bash -c "'$PACK/gemma-generate' --model '$M/2bfull' --backend cuda --perplexity /tmp/acc_text.txt > /tmp/ppl_2b_bf16.txt"
    run ppl_2b_rtn 120 "$log" bash -c "'$PACK/gemma-generate' --model '$M/2bawq' --backend cuda --quant awq --perplexity /tmp/acc_text.txt > /tmp/ppl_2b_rtn.txt"
    run ppl_2b_fp8 120 "$log" bash -c "'$PACK/gemma-generate' --model '$M/2bfull' --backend cuda --quant fp8 --perplexity /tmp/acc_text.txt > /tmp/ppl_2b_fp8.txt"
    for f in bf16 rtn fp8; do say "perplexity 2b $f: $(cat /tmp/ppl_2b_$f.txt 2>/dev/null)"; done
    ;;
  decode8b)
    log=$OUT/decode8b.log
    run d8b_2b_w8 150 "$log" "$PACK/bench_decode" --preset 2b --batch 1,64,256 --gen 128 --quant fp8 --variants
    run d8b_2b_w8kv8 150 "$log" "$PACK/bench_decode" --preset 2b --batch 1,256,512 --gen 128 --quant fp8 --kv-dtype fp8
    run d8b_7b_w8 150 "$log" "$PACK/bench_decode" --preset 7b --batch 1 --gen 128 --quant fp8 --variants
    grep -E "tok/s|profile" "$log" > "$OUT/decode8b_summary.txt"
    ;;
  accuracy)
    # FP8 against bf16 (CUDA engine): KL divergence and top-1 agreement of teacher-forced logits over a
    # text, and perplexity, per model in $ACC_MODELS
    log=$OUT/accuracy.log
    head -c 16000 data/corpus.txt > /tmp/acc_text.txt
    prompt=$(head -c 1200 data/corpus.txt | tr '\n' ' ')
    for mdl in ${ACC_MODELS:-tiny 2bfull}; do
      [ -f "$M/$mdl/config.json" ] || { say "accuracy: no model $mdl"; continue; }
      for cfg in bf16 w8 kv8 w8kv8; do
        case $cfg in
          bf16) qa="--quant none --kv-dtype bf16" ;; w8) qa="--quant fp8 --kv-dtype bf16" ;;
          kv8) qa="--quant none --kv-dtype fp8" ;; w8kv8) qa="--quant fp8 --kv-dtype fp8" ;;
        esac
        run "acc_${mdl}_${cfg}" 120 "$log" bash -c "'$PACK/gemma-generate' --model '$M/$mdl' --backend cuda $qa \
          --prompt \"\$1\" --prefill-only --dump-logits /tmp/acc_${mdl}_${cfg}.bin >/dev/null && \
          '$PACK/gemma-generate' --model '$M/$mdl' --backend cuda $qa --perplexity /tmp/acc_text.txt > /tmp/acc_${mdl}_${cfg}.ppl" _ "$prompt"
      done
      python3 - "$M/$mdl" "$mdl" >> "$OUT/accuracy.md" 2>> "$log" <<'PY'
import json, sys, numpy as np
d, name = sys.argv[1], sys.argv[2]
V = json.load(open(d + "/config.json"))["vocab_size"]
def load(c):
    return np.fromfile(f"/tmp/acc_{name}_{c}.bin", dtype=np.float32).reshape(-1, V).astype(np.float64)
def ppl(c):
    try:
        return float(open(f"/tmp/acc_{name}_{c}.ppl").read().split()[-1])
    except Exception:
        return float("nan")
ref = load("bf16")
lp = ref - ref.max(1, keepdims=True); lp -= np.log(np.exp(lp).sum(1, keepdims=True))
for c in ("bf16", "w8", "kv8", "w8kv8"):
    try:
        x = load(c)
    except Exception as e:
        print(f"| {name} | {c} | missing ({e}) |"); continue
    lq = x - x.max(1, keepdims=True); lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    kl = (np.exp(lp) * (lp - lq)).sum(1)
    top1 = (ref.argmax(1) == x.argmax(1)).mean()
    nerr = np.linalg.norm(x - ref, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"| {name} | {c} | {ref.shape[0]} | {kl.mean():.3e} | {kl.max():.3e} | {100*top1:.1f}% | {nerr.mean():.3e} | {ppl(c):.4f} |")
PY
    done
    cat "$OUT/accuracy.md" | tee -a "$summary"
    ;;
  fp8gemm)
    run fp8_gemm_bench 150 "$OUT/fp8gemm.log" "$PACK/fp8_gemm_bench"
    ;;
  newbench)
    log=$OUT/newbench.log
    run xqa_bench 150 "$log" "$PACK/xqa_bench"
    run fp8_gemm_bench 150 "$log" "$PACK/fp8_gemm_bench"
    run awq_bench 120 "$log" "$PACK/awq_bench"
    ;;
  serve|serve2)
    # gemma-bench against gemmad --backend cuda on full-size random-weight models.
    # SERVE_PLAN: entries MODEL:CFG:LENS, CFG bf16 | fp8 (FP8 weights + FP8 KV) | fp8w | awq (AWQ-format
    # checkpoint of the model, RTN int4 weights) | fp8s (calibrated FP8 checkpoint: static activation
    # scales, per-layer KV scales, FP8 KV, FP8 LM head) | fp8l (fp8 + the FP8 LM head, dynamic scales); LENS a comma list of ISL/OSL[@CONCURRENCY] or b1
    # (batch-1 decode, 128/256). gemmad's --max-seqs = the largest concurrency of the entry.
    log=$OUT/serve.log
    plan=${SERVE_PLAN:-2b:fp8:128/128@512,b1}
    [ $ph = serve2 ] && plan=${SERVE_PLAN2:-}
    for entry in $plan; do
      IFS=: read -r mdl cfg lens xenv <<< "$entry"  # xenv: VAR=VALUE[,VAR=VALUE] for gemmad and its workers
      case $cfg in
        bf16) qa="--quant none --kv-dtype bf16" ;;
        fp8) qa="--quant fp8 --kv-dtype fp8" ;;
        fp8w) qa="--quant fp8 --kv-dtype bf16" ;;
        awq) qa="--quant awq --kv-dtype bf16" ;;
        fp8s) qa="--quant fp8 --kv-dtype fp8 --lm-head fp8" ;;
        fp8l) qa="--quant fp8 --kv-dtype fp8 --lm-head fp8" ;;
        *) qa="" ;;
      esac
      left=$(( ${GM_TIME_BUDGET:-100000} - $(elapsed) ))
      [ $left -lt 40 ] && { say "serve $entry: SKIP(budget)"; continue; }
      # awqprep may be writing this model in the background: wait for it
      for i in $(seq 1 240); do pgrep -f "gemma-mkmodel.*$M/${mdl}full" >/dev/null || break; sleep 1; done
      mk "${mdl}full" --preset "$mdl" --seed 7
      mdir=$M/${mdl}full
      if [ "$cfg" = awq ]; then
        mdir=$M/${mdl}awq
        for i in $(seq 1 240); do
          [ -f "$M/${mdl}awq.done" ] && break
          pgrep -f "gemma-(quantize --rtn|mkmodel).*$M/${mdl}full" >/dev/null || break
          sleep 1
        done
        [ -f "$M/${mdl}awq.done" ] || run "quantize_${mdl}_rtn" 200 "$log" "$PACK/gemma-quantize" --rtn --model "$M/${mdl}full" \
          --out "$mdir" --group 128 --quiet
      fi
      if [ "$cfg" = fp8s ]; then
        mdir=$M/${mdl}fp8s
        for i in $(seq 1 300); do  # fp8sprep may be making it in the background
          [ -f "$M/${mdl}fp8s.done" ] && break
          pgrep -f "gemma-(quantize --fp8|mkmodel).*$M/${mdl}full" >/dev/null || break
          sleep 1
        done
        [ -f "$mdir/config.json" ] || run "quantize_${mdl}_fp8s" 300 "$log" "$PACK/gemma-quantize" --fp8 \
          --model "$M/${mdl}full" --out "$mdir" --calib data/corpus.txt --max-tokens ${FP8S_TOKENS:-1024} --quiet
      fi
      [ -f "$mdir/config.json" ] || { say "serve $mdl $cfg: no model $mdir"; continue; }
      seqs=8
      for len in ${lens//,/ }; do c=${len#*@}; [ "$c" != "$len" ] && [ "$c" -gt $seqs ] && seqs=$c; done
      ep=ipc:///tmp/gm-serve.sock
      echo "---- gemmad $mdl $cfg: $qa --max-seqs $seqs ${xenv:+(env ${xenv//,/ })}" >> "$log"
      # an explicit KV budget (before 8ed730d, --kv-memory 0 left the worker at its 64M default)
      # SERVE_FLAGS (set, even empty) replaces the sizing flags: SERVE_FLAGS= measures gemmad's own defaults
      sizing="--kv-memory ${SERVE_KV_MEM:-80G} --max-seqs $seqs --max-context ${SERVE_CTX:-2304} --max-tokens-per-step ${SERVE_TOKENS:-8192}"
      [ -n "${SERVE_FLAGS+x}" ] && sizing=$SERVE_FLAGS
      echo "---- sizing: ${sizing:-(gemmad defaults)}" >> "$log"
      env ${xenv//,/ } "$PACK/gemmad" --model "$mdir" --backend cuda --listen $ep $qa $sizing \
        --worker-bin "$PACK/gemma-worker" --log-level info >> "$log" 2>&1 &
      dpid=$!
      ok=0
      t0=$(date +%s)
      for i in $(seq 1 300); do
        "$PACK/gemma-cli" --endpoint $ep --health >/dev/null 2>&1 && { ok=1; break; }
        kill -0 $dpid 2>/dev/null || break
        sleep 1
      done
      say "gemmad $mdl $cfg up in $(( $(date +%s) - t0 )) s (ok=$ok)"
      first=1
      if [ $ok = 1 ]; then
        for len in ${lens//,/ }; do
          if [ "$len" = b1 ]; then
            run "serve_${mdl}_${cfg}_b1" 90 "$log" "$PACK/gemma-bench" --endpoint $ep --isl 128 --osl 256 \
              --concurrency 1 --num-requests 3 --warmup 1 --label "$mdl $cfg batch-1" --json "$OUT/serve_${mdl}_${cfg}_b1.json" --markdown --quiet
            continue
          fi
          conc=${len#*@}; [ "$conc" = "$len" ] && conc=$seqs
          io=${len%@*}; isl=${io%/*}; osl=${io#*/}
          n=$(( conc * 2 )) wu=0
          [ "$osl" -ge 1024 ] || [ "$isl" -ge 1024 ] && n=$conc
          # warm-up wave before an entry's first run (long sequences: a small one, it costs a whole run)
          [ $first = 1 ] && { wu=$conc; [ $n = $conc ] && [ $conc -gt 32 ] && wu=32; }
          first=0
          tag=${xenv:+_${xenv//[=,]/_}}${SERVE_TAG:+_$SERVE_TAG}
          run "serve_${mdl}_${cfg}_${isl}_${osl}_c${conc}$tag" ${SERVE_LIM:-120} "$log" "$PACK/gemma-bench" --endpoint $ep --isl "$isl" --osl "$osl" \
            --concurrency "$conc" --num-requests $n --warmup $wu --label "$mdl $cfg $isl/$osl${xenv:+ $xenv}${SERVE_TAG:+ $SERVE_TAG}" --json "$OUT/serve_${mdl}_${cfg}_${isl}_${osl}_c${conc}$tag.json" --markdown --quiet
        done
      else
        say "serve $mdl $cfg: gemmad did not come up (see serve.log)"
      fi
      kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
    done
    grep -E "^\| [27]b" "$log" | sort -u | tee -a "$summary" >/dev/null
    ;;
  sweep)
    # real-time users: 2b, FP8 weights + FP8 KV, 128/128, closed loop at each concurrency of $SWEEP_LIST;
    # one JSON per point (p99 TPOT <= 50 ms is the bar)
    log=$OUT/sweep.log
    mk 2bfull --preset 2b --seed 7
    list=${SWEEP_LIST:-64 256 512 1024 2048 3072 4096}
    most=0; for c in $list; do [ $c -gt $most ] && most=$c; done
    ep=ipc:///tmp/gm-sweep.sock
    "$PACK/gemmad" --model "$M/2bfull" --backend cuda --listen $ep --quant ${SWEEP_QUANT:-fp8} --kv-dtype ${SWEEP_KV:-fp8} \
      --kv-memory 80G --max-seqs $most --max-context 512 --max-tokens-per-step ${SWEEP_TOKENS:-8192} --worker-bin "$PACK/gemma-worker" \
      --log-level info >> "$log" 2>&1 &
    dpid=$!
    for i in $(seq 1 300); do
      "$PACK/gemma-cli" --endpoint $ep --health >/dev/null 2>&1 && break
      kill -0 $dpid 2>/dev/null || break
      sleep 1
    done
    # warm-up: one wave at the largest concurrency, short outputs (captures every graph bucket on the way down)
    run sweep_warmup 60 "$log" "$PACK/gemma-bench" --endpoint $ep --isl 128 --osl 32 --concurrency $most --num-requests $most --quiet
    for c in $list; do
      n=$(( c * 2 )); [ $n -lt 128 ] && n=128
      run "sweep_$c" ${SWEEP_LIM:-60} "$log" "$PACK/gemma-bench" --endpoint $ep --isl 128 --osl 128 --concurrency $c \
        --num-requests $n --label "2b ${SWEEP_QUANT:-fp8} conc $c" --json "$OUT/sweep_$c.json" --markdown --quiet
    done
    kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
    grep -E "^\| 2b" "$log" | tee -a "$summary"
    ;;
  peerb)
    # the transformers serving peer: batched generate() at 128/128 (2b B=$PEER_B2, 7b B=$PEER_B7)
    log=$OUT/peerb.log
    export PYTHONUNBUFFERED=1
    run hf_batch_2b ${PEER_LIM:-200} "$log" python3 bench/hf_peer.py --preset 2b --prompt 128 --gen 128 --batch ${PEER_B2:-256} \
      --batch-modes ${PEER_MODES:-eager,static} --json "$OUT/peerb.jsonl"
    run hf_batch_7b ${PEER_LIM:-200} "$log" python3 bench/hf_peer.py --preset 7b --prompt 128 --gen 128 --batch ${PEER_B7:-64} \
      --batch-modes ${PEER_MODES:-eager,static} --json "$OUT/peerb.jsonl"
    grep -E "^hf " "$log" | tee -a "$summary"
    ;;
  sanitize)
    # memcheck on the kernels' tests (slow: a subset)
    for f in "test_attn*" "test_gemm*" "test_rope_kv" "test_embed"; do
      left=$(( ${GM_TIME_BUDGET:-500} - $(elapsed) ))
      [ $left -lt 30 ] && { say "sanitize $f: skipped (time budget)"; continue; }
      export GM_TEST_FILTER="$f"
      run "sanitize_${f//\*/}" $(( left < 150 ? left : 150 )) "$OUT/sanitize.log" compute-sanitizer --tool memcheck \
        --leak-check no --error-exitcode 9 "$PACK/test_gpu_ops"
    done
    unset GM_TEST_FILTER
    ;;
  fp8ckpt)
    # FP8 checkpoints (gemma-quantize --fp8, uncalibrated and calibrated) through the CUDA engine vs the
    # CPU engine, bf16 and FP8 KV, on the tiny model and a 2-layer gemma-2b
    log=$OUT/fp8ckpt.log
    mk tiny --preset tiny --seed 1
    mk 2b2 --preset 2b --layers 2 --seed 5
    run fp8ckpt_tiny 150 "$log" bash tests/test_gpu_fp8_ckpt.sh "$PACK/gemma-quantize" "$PACK/test_gpu_model" \
      "$M/tiny" data/corpus.txt /tmp/gm-fp8ckpt-tiny
    run fp8ckpt_2b2 200 "$log" bash tests/test_gpu_fp8_ckpt.sh "$PACK/gemma-quantize" "$PACK/test_gpu_model" \
      "$M/2b2" data/corpus.txt /tmp/gm-fp8ckpt-2b2
    # the FP8 LM head (--lm-head fp8) against its CPU twin, bf16 and FP8 weights
    run lm8_models 200 "$log" env GM_TEST_LM=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2"
    run lm8_w8_models 200 "$log" env GM_TEST_LM=fp8 GM_TEST_QUANT=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2"
    grep -E "^==|CUDA engine:|worst logits|agree|FAIL|PASS" "$log" | head -160 > "$OUT/fp8ckpt_summary.txt"
    ;;
  actscale)
    # FP8 weights: dynamic vs static activation scales, decode tokens/s (same engine, same run)
    log=$OUT/actscale.log
    run act_2b 150 "$log" "$PACK/bench_decode" --preset 2b --batch 1,64,256 --gen 128 --quant fp8 --act-scale both
    run act_7b 150 "$log" "$PACK/bench_decode" --preset 7b --batch 1,64 --gen 128 --quant fp8 --act-scale both
    run lm8_2b 120 "$log" "$PACK/bench_decode" --preset 2b --batch 1,64,256 --gen 128 --quant fp8 --act-scale static \
      --lm-head fp8 --variants
    run lm8_7b 120 "$log" "$PACK/bench_decode" --preset 7b --batch 1 --gen 128 --quant fp8 --act-scale static --lm-head fp8
    grep -E "tok/s" "$log" | tee -a "$summary"
    ;;
  awq2)
    # the W4A16 kernels: tests, kernel timings, and batch-1/4 decode on AWQ-format checkpoints
    log=$OUT/awq2.log
    run test_gpu_awq 200 "$log" "$PACK/test_gpu_awq"
    run awq_bench 120 "$log" "$PACK/awq_bench"
    for mdl in ${AWQ_MODELS:-2b 7b}; do
      for i in $(seq 1 ${AWQ_WAIT:-240}); do [ -f "$M/${mdl}awq.done" ] && break; sleep 1; done
      [ -f "$M/${mdl}awq.done" ] || { say "awq2: $mdl AWQ checkpoint not ready"; continue; }
      run "awq_b1_${mdl}" 120 "$log" "$PACK/bench_decode" --model "$M/${mdl}awq" --quant awq --batch 1,4 --gen 128
    done
    grep -E "tok/s|GB/s" "$log" | tee -a "$summary"
    ;;
  g23tests)
    # most telling first: the kernels' options, the engine on the tiny Gemma 2/3, the realistic cuts, Gemma 1
    log=$OUT/g23tests.log
    mk tiny --preset tiny --seed 1
    mk tiny_gemma2 --preset tiny-gemma2 --seed 5
    mk tiny_gemma3 --preset tiny-gemma3 --seed 5
    run test_gpu_gemma23 300 "$log" "$PACK/test_gpu_gemma23"
    for v in "bf16:GM_TEST_QUANT=none" "kv8:GM_TEST_KV=fp8" "xqa:GM_TEST_ATTN=xqa" "fp8:GM_TEST_QUANT=fp8" \
             "lm8:GM_TEST_LM=fp8"; do
      run "g23_model_tiny_${v%%:*}" 300 "$log" env "${v#*:}" "$PACK/test_gpu_model" "$M/tiny_gemma2" "$M/tiny_gemma3"
    done
    run g23_model_gemma1 300 "$log" "$PACK/test_gpu_model" "$M/tiny"
    run test_gpu_xqa_g23 300 "$log" env GM_TEST_FILTER='test_xqa_gemma23' "$PACK/test_gpu_xqa"
    mk g2_9b2 --preset gemma2-9b --layers 2 --sliding-window 24 --vocab 32768 --seed 7
    mk g3_4b6 --preset gemma3-4b --layers 6 --sliding-window 24 --vocab 262208 --seed 8 # layer 5: full, RoPE x8
    mk g3_12b2 --preset gemma3-12b --layers 2 --sliding-window 24 --vocab 32768 --seed 9
    run g23_model_cuts 500 "$log" "$PACK/test_gpu_model" "$M/g2_9b2" "$M/g3_4b6" "$M/g3_12b2"
    run g23_model_cuts_xqa_kv8 500 "$log" env GM_TEST_ATTN=xqa GM_TEST_KV=fp8 "$PACK/test_gpu_model" "$M/g2_9b2" \
      "$M/g3_4b6" "$M/g3_12b2"
    run test_gpu_ops_g23 300 "$log" "$PACK/test_gpu_ops"
    run test_gpu_xqa_all 420 "$log" "$PACK/test_gpu_xqa"
    grep -E "^model|worst logits nerr|nerr .*tol|codes differ|FAIL" "$log" > "$OUT/g23tests_summary.txt"
    ;;
  g23sanitize)
    # compute-sanitizer memcheck on the Gemma 2/3 kernel options (slow: after g23tests)
    log=$OUT/g23sanitize.log
    cs="compute-sanitizer --error-exitcode 9 --leak-check no --tool memcheck"
    run mc_g23_decode 200 "$log" env GM_TEST_FILTER='test_decode_opts' $cs "$PACK/test_gpu_gemma23"
    run mc_g23_prefill 200 "$log" env GM_TEST_FILTER='test_prefill_opts' $cs "$PACK/test_gpu_gemma23"
    run mc_g23_norm 150 "$log" env GM_TEST_FILTER='test_norm_sandwich' $cs "$PACK/test_gpu_gemma23"
    run mc_g23_rope 150 "$log" env GM_TEST_FILTER='test_rope_qkn' $cs "$PACK/test_gpu_gemma23"
    run mc_g23_xqa 200 "$log" env GM_TEST_FILTER='test_xqa_gemma23' $cs "$PACK/test_gpu_xqa"
    grep -E "ERROR SUMMARY|Invalid" "$log" | sort | uniq -c | head -20 | tee -a "$summary"
    ;;
  g23bench)
    # tokens/s with the weight-read bound beside it; each preset's engine runs its batches in one process
    log=$OUT/g23bench.log
    d8="--quant fp8 --act-scale static --lm-head fp8"
    run g23b_2b_base 200 "$log" "$PACK/bench_decode" --preset 2b --batch 1,64 --gen 128 $d8
    for p in gemma2-9b gemma3-4b gemma3-12b; do
      run "g23b_${p}_bf16" 300 "$log" "$PACK/bench_decode" --preset $p --prompt 128 --gen 128 --batch 1,64,128
      run "g23b_${p}_fp8" 300 "$log" "$PACK/bench_decode" --preset $p --prompt 128 --gen 128 --batch 1,64,128 $d8
      run "g23b_${p}_fp8_kv8" 300 "$log" "$PACK/bench_decode" --preset $p --prompt 128 --gen 128 --batch 1,128 $d8 \
        --kv-dtype fp8
      # past the window (gemma3: 1024, gemma2: 4096): the sliding layers read the window only
      run "g23b_${p}_long" 300 "$log" "$PACK/bench_decode" --preset $p --prompt 6000 --gen 128 --batch 1,16 $d8
    done
    run g23b_gemma3-4b_b1_variants 200 "$log" "$PACK/bench_decode" --preset gemma3-4b --batch 1 --gen 128 $d8 \
      --variants
    grep -E "tok/s|profile" "$log" | tee -a "$summary"
    ;;
  *)
    say "unknown phase $ph"
    ;;
  esac
done

say "== results ($(elapsed) s)"
[ -f "$OUT/decode.log" ] && grep -E "tok/s" "$OUT/decode.log" | tee -a "$summary"
[ -f "$OUT/peer.log" ] && grep -E "^hf " "$OUT/peer.log" | tee -a "$summary"
[ -f "$OUT/kernels.log" ] && grep -E "^ceilings|gemm (2b|7b) (qkv|down|lm_head) T=1 |decode attn .*B=(1|64) ctx=(4096|8192)|prefill attn|sample" \
  "$OUT/kernels.log" | tee -a "$summary"
fails=0
for k in "${!RES[@]}"; do case ${RES[$k]} in FAIL*|TIMEOUT*) fails=$((fails + 1));; esac; done
say "failures: $fails"
exit 0
