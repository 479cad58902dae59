#!/usr/bin/env bash
# run_beam.sh - beam search on the GPU: output tokens/s of beam width 4 against 1 (plain greedy decoding),
# at 1 and 64 requests in flight, on one gemmad.
#
#   OUT=$OUT LD_LIBRARY_PATH=pack/lib bash bench/run_beam.sh
#
# gemmad --backend cuda on a full-size random-weight gemma-2b ($CFG: bf16 (default) or fp8), 256 sequence
# slots (64 requests x 4 beams), then gemma-bench --isl 128 --osl 128 (EOS ignored: every hypothesis runs to
# 128 tokens) for each (concurrency, width) in {1, 64} x {1, 4}; width 4 returns the best hypothesis
# whole, so its output tokens are the returned ones (1 per beam step) while it computes 4 per step.
# Each run's JSON goes to $OUT/beam_c<concurrency>_w<width>.json; the last lines printed are the Markdown
# rows and the forks/shared blocks gemmad counted. Binaries from $PACK (default pack/, made by
# bench/pack.sh; an xz tarball is unpacked first), models in $GM_MODELS (default /tmp/gm-models).
# BACKEND=cpu MODEL=DIR N1=4 N64=64 OSL=16 try it on a CPU with a small model.
set -u
OUT=${OUT:-$PWD/gpu-out}
PACK=${PACK:-pack}
M=${GM_MODELS:-/tmp/gm-models}
CFG=${CFG:-bf16}
BACKEND=${BACKEND:-cuda}
N1=${N1:-32}   # requests measured at concurrency 1
N64=${N64:-256} # at concurrency 64
ISL=${ISL:-128}
OSL=${OSL:-128}
mkdir -p "$OUT" "$M"
. "$(dirname "$0")/gpu_env.sh"
log=$OUT/beam.log
: > "$log"
say() { echo "$*" | tee -a "$OUT/beam_summary.txt"; }
: > "$OUT/beam_summary.txt"
say "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"

MODEL=${MODEL:-$M/2bfull}
[ -f "$MODEL/config.json" ] ||
  timeout 240 "$PACK/gemma-mkmodel" --corpus data/corpus.txt --out "$MODEL" --preset 2b --seed 7 >> "$log" 2>&1
case $CFG in
  fp8) qa="--quant fp8 --kv-dtype fp8" ;;
  *) qa="--quant none --kv-dtype bf16" ;;
esac
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
kv="--kv-memory 60G"
[ "${mem:-0}" -gt 100000 ] && kv="--kv-memory 80G"
[ "$BACKEND" = cpu ] && { qa=""; kv="--kv-blocks 2048"; }
ep=ipc:///tmp/gm-beam.sock
"$PACK/gemmad" --model "$MODEL" --backend "$BACKEND" --listen $ep $qa $kv --max-seqs 256 --max-context 512 \
  --max-tokens-per-step 8192 --worker-bin "$PACK/gemma-worker" --log-level info >> "$log" 2>&1 &
dpid=$!
if ! gpu_wait_up $ep $dpid; then
  say "gemmad did not come up (see beam.log)"
  exit 1
fi
for c in 1 64; do
  n=$N1
  [ $c = 64 ] && n=$N64
  for w in 1 4; do
    timeout 600 "$PACK/gemma-bench" --endpoint $ep --isl $ISL --osl $OSL --concurrency $c --num-requests "$n" \
      --warmup $c --beam-width $w --label "2b $CFG beam width $w, $c in flight" \
      --json "$OUT/beam_c${c}_w${w}.json" --markdown >> "$log" 2>&1
    say "concurrency $c, beam width $w: rc=$?"
  done
done
"$PACK/gemma-cli" --endpoint $ep --stats 2>/dev/null | grep -E "kv_blocks|preemptions|beam" | tee -a "$OUT/beam_summary.txt"
kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
echo "==== rows"
grep -E "^\| 2b" "$log" | sort -u
