#!/usr/bin/env bash
# run_prefix.sh - shared KV blocks on the GPU, in one call: the copy-on-write test, then gemmad with the
# prefix cache on and off on the same card.
#
#   OUT=$OUT LD_LIBRARY_PATH=pack/lib bash bench/run_prefix.sh
#
# 1. test_gpu_kv_copy (the block-copy kernel against its CPU twin; the CUDA engine decoding from a copied
#    block, bf16 and FP8 KV).
# 2. For --prefix-cache true, then false (same binary, same card): gemmad --backend cuda on a full-size
#    random-weight gemma-2b ($CFG: bf16 (default) or fp8 = FP8 weights + FP8 KV), then gemma-bench:
#      shared  a 1,000-token system prompt + a 128-token question of its own, 128 out, 256 streams
#              (--shared-prefix 1000 --isl 128 --osl 128 --concurrency 256; $N_SHARED requests after a
#              warm-up wave of 256: the cache's steady state);
#      plain   the 128/128 headline at 256 streams (random prompts: the cache never hits).
# Each run's JSON goes to $OUT/prefix_<cache>_<workload>.json; the last lines printed are the Markdown rows
# (TTFT p50/p99, output tokens/s) and the prefix-cache hit rates gemma-bench reports.
# Binaries from $PACK (default pack/, made by bench/pack.sh; an xz tarball is unpacked first), models in
# $GM_MODELS (default /tmp/gm-models).
set -u
OUT=${OUT:-$PWD/gpu-out}
PACK=${PACK:-pack}
M=${GM_MODELS:-/tmp/gm-models}
CFG=${CFG:-bf16}
N_SHARED=${N_SHARED:-768}
mkdir -p "$OUT" "$M"
. "$(dirname "$0")/gpu_env.sh"
log=$OUT/prefix.log
: > "$log"
say() { echo "$*" | tee -a "$OUT/prefix_summary.txt"; }
: > "$OUT/prefix_summary.txt"
say "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"

# 1. the copy-on-write test (exit 77 = no GPU)
[ -f "$M/tiny/config.json" ] || "$PACK/gemma-mkmodel" --corpus data/corpus.txt --preset tiny --seed 1 --out "$M/tiny" \
  >> "$log" 2>&1
timeout 300 "$PACK/test_gpu_kv_copy" "$M/tiny" >> "$log" 2>&1
say "test_gpu_kv_copy rc=$? (0 pass, 77 no GPU; details in prefix.log)"

# 2. serving
[ -f "$M/2bfull/config.json" ] ||
  timeout 240 "$PACK/gemma-mkmodel" --corpus data/corpus.txt --out "$M/2bfull" --preset 2b --seed 7 >> "$log" 2>&1
case $CFG in
  fp8) qa="--quant fp8 --kv-dtype fp8" ;;
  *) qa="--quant none --kv-dtype bf16" ;;
esac
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
kv=60G
[ "${mem:-0}" -gt 100000 ] && kv=80G
ep=ipc:///tmp/gm-prefix.sock
for cache in true false; do
  echo "---- gemmad --prefix-cache $cache $qa" >> "$log"
  "$PACK/gemmad" --model "$M/2bfull" --backend cuda --listen $ep $qa --kv-memory $kv --max-seqs 256 \
    --max-context 2304 --max-tokens-per-step 8192 --prefix-cache $cache --worker-bin "$PACK/gemma-worker" \
    --log-level info >> "$log" 2>&1 &
  dpid=$!
  if ! gpu_wait_up $ep $dpid; then
    say "gemmad --prefix-cache $cache did not come up (see prefix.log)"
    continue
  fi
  timeout 300 "$PACK/gemma-bench" --endpoint $ep --shared-prefix 1000 --isl 128 --osl 128 --concurrency 256 \
    --num-requests "$N_SHARED" --warmup 256 --label "2b $CFG shared 1000+128/128 cache=$cache" \
    --json "$OUT/prefix_${cache}_shared.json" --markdown >> "$log" 2>&1
  say "shared-prefix run, cache $cache: rc=$?"
  timeout 300 "$PACK/gemma-bench" --endpoint $ep --isl 128 --osl 128 --concurrency 256 --num-requests 768 \
    --warmup 256 --label "2b $CFG 128/128 cache=$cache" --json "$OUT/prefix_${cache}_plain.json" --markdown \
    >> "$log" 2>&1
  say "128/128 run, cache $cache: rc=$?"
  "$PACK/gemma-cli" --endpoint $ep --stats 2>/dev/null | grep -E "prefix_cache|kv_blocks" | sed "s/^/  [cache $cache] /" |
    tee -a "$OUT/prefix_summary.txt"
  kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
done
echo "==== rows"
grep -h "prefix cache:" "$log" | sed 's/^/  /'
grep -E "^\| 2b" "$log" | sort -u
