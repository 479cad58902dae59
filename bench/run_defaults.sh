#!/usr/bin/env bash
# run_defaults.sh - what a user gets: gemmad with no sizing flags beside the tuned flags, 2b and 7b
# calibrated FP8 checkpoints (FP8 KV, FP8 LM head), 128/128 at 1,024 streams, in one GPU call.
#
#   OUT=$OUT LD_LIBRARY_PATH=pack/lib bash bench/run_defaults.sh [ROW...]
#
# ROWs (default: tuned defaults): tuned = the sizing flags bench/run_gpu.sh passes (--kv-memory 60G on an
# 80 GB card, 80G above, --max-seqs 1024 --max-context 2304 --max-tokens-per-step 8192); defaults = none of
# them; ctx8k = tuned but the model's own context (8192). MODELS (default "2b 7b") picks the models.
# EXTRA="PHASE..." runs those bench/run_gpu.sh phases first (e.g. b1final), on the GPU while the CPUs make
# the checkpoints.
# Each row's log and JSON go to $OUT/<model>-<row>/; the last lines printed are every row's table line.
set -u
OUT=${OUT:-$PWD/gpu-out}
PACK=${PACK:-pack}
rows=${*:-tuned defaults}
mkdir -p "$OUT"
if [ -f "$PACK/bins.tar.xz" ]; then  # unpack once; every row then runs from /tmp/gm-pack
  rm -rf /tmp/gm-pack && mkdir -p /tmp/gm-pack && tar -xJf "$PACK/bins.tar.xz" -C /tmp/gm-pack &&
    cp -r "$PACK/lib" /tmp/gm-pack/
  PACK=/tmp/gm-pack
  export LD_LIBRARY_PATH=$PACK/lib:${LD_LIBRARY_PATH:-}
fi
export PACK
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
kv=60G
[ "${mem:-0}" -gt 100000 ] && kv=80G
echo "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1); tuned KV $kv"
# the calibrated checkpoints are made on the CPUs in the background; each serve waits for its own
OUT=$OUT/prep FP8S_MODELS="${MODELS:-2b 7b}" bash bench/run_gpu.sh fp8sprep > /dev/null
for ph in ${EXTRA:-}; do
  OUT=$OUT/$ph bash bench/run_gpu.sh $ph > /dev/null 2>&1
  cat "$OUT/$ph/summary.txt"
done
for m in ${MODELS:-2b 7b}; do
  for row in $rows; do
    o=$OUT/$m-$row
    case $row in
      tuned) OUT=$o SERVE_KV_MEM=$kv SERVE_TAG=$row SERVE_PLAN="$m:fp8s:128/128@1024" bash bench/run_gpu.sh serve ;;
      ctx8k) OUT=$o SERVE_KV_MEM=$kv SERVE_CTX=8192 SERVE_TAG=$row SERVE_PLAN="$m:fp8s:128/128@1024" \
               bash bench/run_gpu.sh serve ;;
      defaults) OUT=$o SERVE_FLAGS= SERVE_TAG=$row SERVE_PLAN="$m:fp8s:128/128@1024" bash bench/run_gpu.sh serve ;;
      *) echo "run_defaults.sh: unknown row $row" ;;
    esac > /dev/null 2>&1
    grep -h "KV cache\|sizing\|chose\|serving .* on" "$o/serve.log" 2>/dev/null | head -8 | sed "s/^/  [$m $row] /"
  done
done
echo "==== rows"
cat "$OUT"/*/summary.txt 2>/dev/null | grep -E "^\| [27]b" | sort -u
