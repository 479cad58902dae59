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
    run test_gpu_ops 200 "$log" "$PACK/test_gpu_ops"
    run model_xqa 200 "$log" env GM_CUDA_XQA=2 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    run model_kv8 200 "$log" env GM_TEST_KV=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    run model_w8 200 "$log" env GM_TEST_QUANT=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    run model_w8kv8 200 "$log" env GM_TEST_QUANT=fp8 GM_TEST_KV=fp8 "$PACK/test_gpu_model" "$M/tiny" "$M/2b2" "$M/7b2"
    grep -E "^model|CUDA engine:|worst logits|agree" "$log" | head -150 > "$OUT/engine8_summary.txt"
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
          --prompt \"\$1\" --max-tokens 0 --dump-logits /tmp/acc_${mdl}_${cfg}.bin >/dev/null && \
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
  serve)
    # gemma-bench against gemmad --backend cuda on full-size random-weight models.
    # SERVE_MODELS (2b 7b), SERVE_CFGS (bf16 | fp8 = FP8 weights + FP8 KV | fp8w | awq),
    # SERVE_LENS (ISL/OSL list), SERVE_CONC (closed-loop concurrency), SERVE_SEQS (--max-seqs)
    log=$OUT/serve.log
    for mdl in ${SERVE_MODELS:-2b}; do
      mk "${mdl}full" --preset "$mdl" --seed 7
      for cfg in ${SERVE_CFGS:-bf16}; do
        case $cfg in
          bf16) qa="--quant none --kv-dtype bf16" ;;
          fp8) qa="--quant fp8 --kv-dtype fp8" ;;
          fp8w) qa="--quant fp8 --kv-dtype bf16" ;;
          awq) qa="--quant awq --kv-dtype bf16" ;;
          *) qa="" ;;
        esac
        mdir=$M/${mdl}full
        [ "$cfg" = awq ] && mdir=$M/${mdl}awq
        [ -f "$mdir/config.json" ] || { say "serve $mdl $cfg: no model $mdir"; continue; }
        ep=ipc:///tmp/gm-serve.sock
        seqs=${SERVE_SEQS:-512}
        echo "---- gemmad $mdl $cfg: $qa --max-seqs $seqs" >> "$log"
        # --kv-memory 0 does not reach the worker (its own 64M default wins): give the budget explicitly
        "$PACK/gemmad" --model "$mdir" --backend cuda --listen $ep $qa --kv-memory ${SERVE_KV_MEM:-80G} --max-seqs "$seqs" \
          --max-tokens-per-step ${SERVE_TOKENS:-8192} --worker-bin "$PACK/gemma-worker" --log-level info >> "$log" 2>&1 &
        dpid=$!
        ok=0
        for i in $(seq 1 240); do
          "$PACK/gemma-cli" --endpoint $ep --health >/dev/null 2>&1 && { ok=1; break; }
          kill -0 $dpid 2>/dev/null || break
          sleep 1
        done
        if [ $ok = 1 ]; then
          for len in ${SERVE_LENS:-128/128 128/2048 2048/128 b1}; do
            if [ "$len" = b1 ]; then
              run "serve_${mdl}_${cfg}_b1" 90 "$log" "$PACK/gemma-bench" --endpoint $ep --isl 128 --osl 256 \
                --concurrency 1 --num-requests 3 --warmup 1 --label "$mdl $cfg batch-1" --json "$OUT/serve_${mdl}_${cfg}_b1.json" --quiet
              continue
            fi
            isl=${len%/*}; osl=${len#*/}
            conc=${SERVE_CONC:-$seqs}
            n=$(( conc * 2 )) wu=$conc
            [ "$osl" -ge 1024 ] && n=$conc wu=0
            run "serve_${mdl}_${cfg}_${isl}_${osl}" ${SERVE_LIM:-120} "$log" "$PACK/gemma-bench" --endpoint $ep --isl "$isl" --osl "$osl" \
              --concurrency "$conc" --num-requests $n --warmup $wu --label "$mdl $cfg $isl/$osl" --json "$OUT/serve_${mdl}_${cfg}_${isl}_${osl}.json" --markdown --quiet
          done
        else
          say "serve $mdl $cfg: gemmad did not come up (see serve.log)"
        fi
        kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
      done
    done
    grep -E "^\|" "$log" | tee -a "$summary"
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
