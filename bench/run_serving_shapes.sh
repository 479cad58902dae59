#!/usr/bin/env bash
# run_serving_shapes.sh - issue 18 item 3: the prompt-heavy and long serving shapes through gemmad with its
# default sizing (no --kv-memory / --max-seqs / --max-context / --max-tokens-per-step), gemma-2b and 7b as
# calibrated FP8 checkpoints (gemma-quantize --fp8 --calib: FP8 weights with static activation scales) served
# with FP8 KV and the FP8 LM head, in one GPU call (or one per model: MODELS=2b, MODELS=7b).
#
#   OUT=$OUT LD_LIBRARY_PATH=pack/lib bash bench/run_serving_shapes.sh [SHAPE...]
#
# SHAPEs (default: all four), ISL/OSL as TensorRT-LLM's tables name them:
#   128/2048  2048/128  2048/2048
#   mixed     ISL ~ Normal(1000, 800), OSL ~ Normal(250, 200), each at least 1 token (gemma-bench
#             --isl 1000 --isl-std 800 --osl 250 --osl-std 200, lengths drawn from --seed 1)
# Closed loop (gemma-bench --concurrency C): C per model and shape from the table below, or CONC=N for every
# run; NREQ=N requests per run (default 2 x C, 1 x C where ISL or OSL is 2048); WARMUP=N requests first
# (default 32, once per gemmad start). Every run is cut at LIM seconds (default 240).
# The checkpoints (random weights at the real shapes, seed 7, as bench/run_gpu.sh serve makes them) are
# made on the CPUs by bench/run_gpu.sh fp8sprep, in the background; each model's gemmad waits for its own.
# Binaries from $PACK (default pack/; bins.tar.xz unpacked as bench/run_gpu.sh does). Output in $OUT
# (default ./gpu-out/shapes): per model serve_<model>.log (gemmad, with the sizing it chose and the prefill
# kernel its engine uses), <model>_<shape>.json (gemma-bench), shapes.md. The last lines printed are the
# Markdown table: one row per run (gemma-bench's columns: output tok/s, TTFT and TPOT p50/p99), then a
# percentile table (TTFT and TPOT p50/p90/p99 from the JSON).
set -u
OUT=${OUT:-$PWD/gpu-out}/shapes
PACK=${PACK:-pack}
M=${GM_MODELS:-/tmp/gm-models}
LIM=${LIM:-240}
mkdir -p "$OUT"
shapes=${*:-128/2048 2048/128 2048/2048 mixed}
if [ -f "$PACK/bins.tar.xz" ]; then
  rm -rf /tmp/gm-pack && mkdir -p /tmp/gm-pack && tar -xJf "$PACK/bins.tar.xz" -C /tmp/gm-pack &&
    cp -r "$PACK/lib" /tmp/gm-pack/
  PACK=/tmp/gm-pack
  export LD_LIBRARY_PATH=$PACK/lib:${LD_LIBRARY_PATH:-}
fi
export PACK GM_MODELS=$M
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$d
done
export LD_LIBRARY_PATH
gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "== run_serving_shapes.sh $(date -u +%Y-%m-%dT%H:%MZ) GPU: ${gpu:-none}; shapes: $shapes" | tee "$OUT/shapes.md"

# concurrency per model and shape (closed loop): enough streams to fill the default KV pool
conc_of() { # conc_of MODEL SHAPE
  [ -n "${CONC:-}" ] && { echo "$CONC"; return; }
  case "$1:$2" in
    2b:128/2048) echo 512 ;; 2b:2048/128) echo 512 ;; 2b:2048/2048) echo 256 ;; 2b:mixed) echo 512 ;;
    7b:128/2048) echo 256 ;; 7b:2048/128) echo 256 ;; 7b:2048/2048) echo 128 ;; 7b:mixed) echo 256 ;;
    *) echo 256 ;;
  esac
}

# the calibrated checkpoints, made in the background on the CPUs
OUT=$OUT/prep FP8S_MODELS="${MODELS:-2b 7b}" bash "$(dirname "$0")/run_gpu.sh" fp8sprep > /dev/null 2>&1

rows=$OUT/rows.md
: > "$rows"
for m in ${MODELS:-2b 7b}; do
  mdir=$M/${m}fp8s
  busy() { pgrep -f "gemma-(quantize --fp8|mkmodel).*$M/${m}full" > /dev/null; }
  for i in $(seq 1 900); do  # .done once the background quantizer exits (mkmodel, then quantize: look twice)
    [ -f "$M/${m}fp8s.done" ] && break
    busy || { sleep 3; busy; } || break
    sleep 1
  done
  if [ ! -f "$M/${m}fp8s.done" ]; then  # the background job ended early or not at all: make it here
    [ -f "$M/${m}full/config.json" ] || "$PACK/gemma-mkmodel" --corpus data/corpus.txt --out "$M/${m}full" \
      --preset "$m" --seed 7 >> "$OUT/prep.log" 2>&1
    "$PACK/gemma-quantize" --fp8 --model "$M/${m}full" --out "$mdir" --calib data/corpus.txt \
      --max-tokens ${FP8S_TOKENS:-1024} --quiet >> "$OUT/prep.log" 2>&1 && touch "$M/${m}fp8s.done"
  fi
  [ -f "$mdir/config.json" ] || { echo "| $m | no checkpoint $mdir (see $OUT/prep.log) |" | tee -a "$rows"; continue; }
  log=$OUT/serve_$m.log
  ep=ipc:///tmp/gm-shapes.sock
  echo "---- gemmad $m fp8s, default sizing" >> "$log"
  "$PACK/gemmad" --model "$mdir" --backend cuda --listen $ep --quant fp8 --kv-dtype fp8 --lm-head fp8 \
    --worker-bin "$PACK/gemma-worker" --log-level info >> "$log" 2>&1 &
  dpid=$!
  ok=0
  for i in $(seq 1 300); do
    "$PACK/gemma-cli" --endpoint $ep --health > /dev/null 2>&1 && { ok=1; break; }
    kill -0 $dpid 2>/dev/null || break
    sleep 1
  done
  if [ $ok != 1 ]; then
    echo "| $m | gemmad did not come up (see $log) |" | tee -a "$rows"
    kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
    continue
  fi
  grep -h -i "sizing\|chose\|KV cache\|prefill attention" "$log" | head -6 | sed "s/^/  [$m] /"
  wu=${WARMUP:-32}
  for sh in $shapes; do
    c=$(conc_of "$m" "$sh")
    case $sh in
      mixed) lens="--isl 1000 --isl-std 800 --osl 250 --osl-std 200 --seed 1"; n=${NREQ:-$((2 * c))} ;;
      */*) isl=${sh%/*} osl=${sh#*/}; lens="--isl $isl --osl $osl"
           n=${NREQ:-$((2 * c))}; { [ "$isl" -ge 2048 ] || [ "$osl" -ge 2048 ]; } && n=${NREQ:-$c} ;;
      *) echo "run_serving_shapes.sh: unknown shape $sh" >&2; continue ;;
    esac
    tag=${m}_${sh//\//_}
    echo "---- $m $sh: conc $c, $n requests, warm-up $wu" >> "$log"
    timeout --kill-after=10 "$LIM" "$PACK/gemma-bench" --endpoint $ep $lens --concurrency "$c" --num-requests "$n" \
      --warmup "$wu" --label "$m fp8s defaults $sh" --json "$OUT/$tag.json" --markdown --quiet >> "$log" 2>&1
    rc=$?
    [ $rc != 0 ] && echo "| $m fp8s defaults $sh | FAILED rc=$rc (see $log) |" >> "$rows"
    grep -h "^| $m fp8s defaults $sh |" "$log" | tail -1 >> "$rows"
    wu=0
  done
  kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
done

{
  echo
  echo "| setup | isl/osl | conc | rate | requests | req/s | out tok/s | total tok/s | TTFT p50/p99 ms | TPOT p50/p99 ms | ITL p99 ms | tok/s/user | errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$rows"
  echo
  echo "| run | out tok/s | TTFT p50 / p90 / p99 ms | TPOT p50 / p90 / p99 ms | mean ISL / OSL |"
  echo "|---|---|---|---|---|"
  for j in "$OUT"/*.json; do
    [ -f "$j" ] || continue
    python3 - "$j" <<'EOF' 2>/dev/null
import json, sys, os
d = json.load(open(sys.argv[1]))
d = d[0] if isinstance(d, list) else d
n = max(d.get("completed", 0), 1)
print("| %s | %.0f | %.1f / %.1f / %.1f | %.2f / %.2f / %.2f | %.0f / %.0f |" % (
    os.path.basename(sys.argv[1])[:-5], d["output_tokens_per_s"], d["ttft_ms_p50"], d["ttft_ms_p90"],
    d["ttft_ms_p99"], d["tpot_ms_p50"], d["tpot_ms_p90"], d["tpot_ms_p99"], d["input_tokens"] / n,
    d["output_tokens"] / n))
EOF
  done
} | tee -a "$OUT/shapes.md"
