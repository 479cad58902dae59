#!/usr/bin/env bash
# run_tp.sh - tensor parallelism on several GPUs (issue 9), one call on nvidia-h200-x2/-x4/-x8.
#
#   LD_LIBRARY_PATH=pack/lib bash bench/run_tp.sh
#
# 1. allreduce_bench: our communicator beside plain NCCL at the model's message sizes.
# 2. Correctness: gemmad --backend cuda --tp N (N = 1, 2, 4, 8 up to the GPU count) on a 4-layer
#    gemma-7b-shaped and gemma-2b-shaped model (2b's single KV head is replicated): greedy text
#    of several prompts through gemma-cli must equal tp=1's.
# 3. Scaling: batch-1 decode (gemma-bench --concurrency 1, 128/128: TPOT) and 128/128
#    throughput (--concurrency 256) at each tp on the full gemma-7b (GM_TP_FULL=0 skips it).
# Binaries from $PACK (default pack/, bins.tar.xz unpacked as run_gpu.sh does); logs in $OUT.
set -u
OUT=${OUT:-$PWD/tp-out}
PACK=${PACK:-pack}
M=${GM_MODELS:-/tmp/gm-models}
BUDGET=${GM_TIME_BUDGET:-540}
mkdir -p "$OUT" "$M"
if [ -f "$PACK/bins.tar.xz" ]; then
  rm -rf /tmp/gm-pack && mkdir -p /tmp/gm-pack && tar -xJf "$PACK/bins.tar.xz" -C /tmp/gm-pack && cp -r "$PACK/lib" /tmp/gm-pack/
  PACK=/tmp/gm-pack
fi
B=$(cd "$PACK" && pwd)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$d; done
export LD_LIBRARY_PATH=$B/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0          # never NVLink multicast on the shared machines
S=$OUT/summary.txt; : > "$S"
say() { echo "$*" | tee -a "$S"; }
t0=$(date +%s); left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
NG=$(nvidia-smi -L 2>/dev/null | wc -l)
say "== run_tp.sh $(date -u +%FT%H:%MZ) GPUs: $NG ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
[ "$NG" -ge 2 ] || { say "needs >= 2 GPUs"; exit 77; }
# Our gemmad/worker binaries must sit side by side (gemmad execs gemma-worker beside itself).
say "-- all-reduce (our communicator, f32, vs plain ncclAllReduce, bf16)"
"$B/allreduce_bench" --ranks "$NG" 2>&1 | tee "$OUT/allreduce.log" | tee -a "$S"

port=6100
serve() { # serve MODEL TP [extra flags]: start gemmad, wait for health
  local model=$1 tp=$2; shift 2; port=$((port + 1))
  "$B/gemmad" --model "$model" --backend cuda --tp "$tp" --listen tcp://127.0.0.1:$port --log-level warn \
    --kv-memory 0 --kv-mem-fraction 0.5 "$@" >> "$OUT/gemmad.log" 2>&1 &
  GPID=$!
  for _ in $(seq 1 300); do
    "$B/gemma-cli" --endpoint tcp://127.0.0.1:$port --health >/dev/null 2>&1 && return 0
    kill -0 $GPID 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}
stop() { kill -TERM $GPID 2>/dev/null; wait $GPID 2>/dev/null; }
prompts=("The history of the river" "Once upon a time" "Bonjour, je voudrais" "42 is the answer to")

say "-- greedy outputs at tp=N vs tp=1"
fails=0
for preset in 7b 2b; do
  dir=$M/${preset}l4
  "$B/gemma-mkmodel" --preset $preset --layers 4 --seed 7 --out "$dir" >> "$OUT/mkmodel.log" 2>&1 || { say "mkmodel $preset failed"; fails=$((fails+1)); continue; }
  for tp in 1 2 4 8; do
    [ $tp -le "$NG" ] || continue
    if ! serve "$dir" $tp; then say "$preset tp=$tp: gemmad did not start (see gemmad.log)"; fails=$((fails+1)); stop; continue; fi
    for i in "${!prompts[@]}"; do
      "$B/gemma-cli" --endpoint tcp://127.0.0.1:$port --max-tokens 48 "${prompts[$i]}" > "$OUT/out_${preset}_tp${tp}_$i.txt" 2>>"$OUT/cli.log"
    done
    stop
    if [ $tp -gt 1 ]; then
      same=0
      for i in "${!prompts[@]}"; do cmp -s "$OUT/out_${preset}_tp1_$i.txt" "$OUT/out_${preset}_tp${tp}_$i.txt" && same=$((same+1)); done
      say "$preset (4 layers) tp=$tp: $same/${#prompts[@]} greedy outputs equal tp=1's"
      [ $same -eq ${#prompts[@]} ] || fails=$((fails+1))
    fi
  done
done

if [ "${GM_TP_FULL:-1}" = 1 ] && [ "$(left)" -gt 200 ]; then
  say "-- scaling, full gemma-7b (random bf16 weights), gemma-bench through gemmad"
  "$B/gemma-mkmodel" --preset 7b --seed 7 --out "$M/7b" >> "$OUT/mkmodel.log" 2>&1
  say "| tp | batch-1 TPOT ms (p50) | batch-1 tok/s | 128/128 c=256 out tok/s | per GPU |"
  say "|---|---|---|---|---|"
  for tp in 1 2 4 8; do
    [ $tp -le "$NG" ] || continue
    [ "$(left)" -gt 60 ] || { say "time budget reached"; break; }
    serve "$M/7b" $tp --max-seqs 256 --max-tokens-per-step 8192 || { say "7b tp=$tp: gemmad did not start"; stop; continue; }
    "$B/gemma-bench" --endpoint tcp://127.0.0.1:$port --isl 128 --osl 128 --concurrency 1 --num-requests 4 --warmup 1 --quiet --json "$OUT/b1_tp$tp.json" > /dev/null 2>>"$OUT/bench.log"
    "$B/gemma-bench" --endpoint tcp://127.0.0.1:$port --isl 128 --osl 128 --concurrency 256 --num-requests 512 --quiet --json "$OUT/tput_tp$tp.json" > /dev/null 2>>"$OUT/bench.log"
    stop
    python3 - "$OUT/b1_tp$tp.json" "$OUT/tput_tp$tp.json" $tp <<'PY' | tee -a "$S"
import json, sys
def load(p):
    try:
        d = json.load(open(p)); return d[0] if isinstance(d, list) else d
    except Exception: return {}
b, t, tp = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
tpot = b.get("tpot_ms_p50", float("nan")); o = t.get("output_tokens_per_s", float("nan"))
print(f"| {tp} | {tpot:.3f} | {1000/tpot if tpot==tpot and tpot>0 else float('nan'):.1f} | {o:.0f} | {o/tp:.0f} |")
PY
  done
fi
say "failures: $fails ($(( $(date +%s) - t0 )) s)"
