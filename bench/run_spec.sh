#!/usr/bin/env bash
# run_spec.sh - speculative decoding on the GPU, in one call (docs/SPECULATIVE.md):
#
#   OUT=$OUT SPEC_MODEL=/path/to/gemma-3-270m LD_LIBRARY_PATH=pack/lib bash bench/run_spec.sh
#
# 1. test_gpu_spec on the tiny model (the CUDA engine's verify rows against the CPU sampler on the same
#    logits, against plain decoding, batched against alone).
# 2. Step time against k: bench_decode --verify 1,2,4,8,16 at batch 1 and 4 on random-weight 2b and 7b
#    (each line: ms/step of plain decode, then of verify entries of 1 + k tokens).
# 3. With $SPEC_MODEL (a real checkpoint, e.g. Gemma 3 270M; skipped without it): gemmad --backend cuda,
#    then at batch 1 for k = off, 4, 8: gemma-bench on bench/spec_copy.txt (prompts that copy their input)
#    and bench/spec_free.txt (free writing), 256 tokens each (the acceptance is printed after each run);
#    and greedy output with k = off and k = 8 compared token for token on every prompt.
# The summary goes to $OUT/spec_summary.txt, everything else to $OUT/spec.log. Binaries from $PACK (default
# pack/, made by bench/pack.sh; an xz tarball is unpacked first), models in $GM_MODELS (default /tmp/gm-models).
set -u
OUT=${OUT:-$PWD/gpu-out}
PACK=${PACK:-pack}
M=${GM_MODELS:-/tmp/gm-models}
mkdir -p "$OUT" "$M"
. "$(dirname "$0")/gpu_env.sh"
log=$OUT/spec.log
: > "$log"
: > "$OUT/spec_summary.txt"
say() { echo "$*" | tee -a "$OUT/spec_summary.txt"; }
say "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"

# 1. the verify entries' GPU test (exit 77 = no GPU)
[ -f "$M/tiny/config.json" ] || "$PACK/gemma-mkmodel" --corpus data/corpus.txt --preset tiny --seed 1 --out "$M/tiny" \
  >> "$log" 2>&1
timeout 600 "$PACK/test_gpu_spec" "$M/tiny" >> "$log" 2>&1
say "test_gpu_spec rc=$? (0 pass, 77 no GPU; details in spec.log)"

# 2. step time against k
for p in 2b 7b; do
  timeout 600 "$PACK/bench_decode" --preset $p --batch 1,4 --prompt 512 --gen 128 --verify 1,2,4,8,16 2>>"$log" |
    tee -a "$log" | grep -E "tok/s" | sed 's/^/  /' | tee -a "$OUT/spec_summary.txt"
done

# 3. a real model: acceptance and speed-up at batch 1, greedy identity
if [ -z "${SPEC_MODEL:-}" ] || [ ! -f "$SPEC_MODEL/config.json" ]; then
  say "no SPEC_MODEL (a checkpoint directory): the serving runs are skipped"
  exit 0
fi
ep=ipc:///tmp/gm-spec.sock
"$PACK/gemmad" --model "$SPEC_MODEL" --backend cuda --listen $ep --max-seqs 16 --worker-bin "$PACK/gemma-worker" \
  --log-level info >> "$log" 2>&1 &
dpid=$!
if ! gpu_wait_up $ep $dpid; then
  say "gemmad did not come up (see spec.log)"
  exit 1
fi
for f in copy free; do
  for k in -1 4 8; do
    timeout 300 "$PACK/gemma-bench" --endpoint $ep --prompts bench/spec_$f.txt --osl 256 --concurrency 1 \
      --num-requests 8 --warmup 2 --speculative-tokens $k --label "spec $f k=$k" --markdown > "$OUT/spec_${f}_$k.txt" 2>&1
    say "$f k=$k: $(grep -E '^  output' "$OUT/spec_${f}_$k.txt" | head -1 | sed 's/^ *//')"
    grep -h "speculative decoding:" "$OUT/spec_${f}_$k.txt" | sed 's/^gemma-bench: /    /' | tee -a "$OUT/spec_summary.txt"
    cat "$OUT/spec_${f}_$k.txt" >> "$log"
  done
done
same=0 diff=0
while IFS= read -r prompt; do
  a=$("$PACK/gemma-cli" --endpoint $ep --max-tokens 128 --print-ids --speculative-tokens -1 "$prompt" 2>>"$log")
  b=$("$PACK/gemma-cli" --endpoint $ep --max-tokens 128 --print-ids --speculative-tokens 8 "$prompt" 2>>"$log")
  if [ "$a" = "$b" ]; then same=$((same + 1)); else diff=$((diff + 1)); echo "differs: $prompt" >> "$log"; fi
done < <(cat bench/spec_copy.txt bench/spec_free.txt)
say "greedy, k = off vs 8: $same prompts identical, $diff differ (a difference is a near-tie between kernels)"
"$PACK/gemma-cli" --endpoint $ep --stats 2>/dev/null | grep spec_ | sed 's/^/  /' | tee -a "$OUT/spec_summary.txt"
kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
