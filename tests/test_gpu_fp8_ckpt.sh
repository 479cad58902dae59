#!/usr/bin/env bash
# test_gpu_fp8_ckpt.sh GEMMA_QUANTIZE TEST_GPU_MODEL MODEL_DIR CALIB_TEXT WORK_DIR
# FP8 checkpoints on the CUDA engine: gemma-quantize --fp8 makes an uncalibrated (dynamic activation
# scales) and a calibrated (static input scales, per-layer KV scales) checkpoint of MODEL_DIR, and
# test_gpu_model runs each through the CUDA engine against the CPU engine (its FP8 twin), with a bf16
# and with an FP8 KV cache, and the calibrated one with the FP8 LM head too. Exit 77 when there is no GPU.
set -u
quant=$1 tgm=$2 model=$3 calib=$4 work=$5
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: skipped"; exit 77
fi
rm -rf "$work" && mkdir -p "$work"
"$quant" --fp8 --model "$model" --out "$work/dyn" --quiet || { echo "quantize (dynamic) failed"; exit 1; }
"$quant" --fp8 --model "$model" --out "$work/static" --calib "$calib" --quiet || { echo "quantize (static) failed"; exit 1; }
fail=0
for ck in dyn static; do
  for kv in bf16 fp8; do
    echo "== $ck checkpoint, KV $kv"
    GM_TEST_QUANT=fp8 GM_TEST_KV=$kv "$tgm" "$work/$ck" > "$work/out_${ck}_$kv.txt" 2>&1
    rc=$?
    cat "$work/out_${ck}_$kv.txt"
    [ $rc = 77 ] && exit 77
    [ $rc != 0 ] && { echo "FAIL: $ck checkpoint, KV $kv (rc $rc)"; fail=1; }
    # the engine says which activation scales it took (static only from the calibrated checkpoint)
    want=dynamic; [ $ck = static ] && want=static
    grep -q "FP8 checkpoint, $want activation scales" "$work/out_${ck}_$kv.txt" ||
      { echo "FAIL: $ck checkpoint: the CUDA engine did not report $want activation scales"; fail=1; }
  done
done
echo "== static checkpoint, KV fp8, FP8 LM head"
GM_TEST_QUANT=fp8 GM_TEST_KV=fp8 GM_TEST_LM=fp8 "$tgm" "$work/static" || { echo "FAIL: static checkpoint + FP8 LM head"; fail=1; }
[ $fail = 0 ] && echo "PASS: FP8 checkpoints on the CUDA engine"
exit $fail
