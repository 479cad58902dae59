#!/usr/bin/env bash
# test_gpu_generate.sh GEMMA_GENERATE MODEL_DIR WORK_DIR
# gemma-generate --backend cuda against --backend cpu on one model: teacher-forced logits of a
# prompt (--dump-logits, normalized error per row), perplexity, and a greedy continuation.
# Exit 77 when there is no GPU.
set -u
gen=$1 model=$2 work=$3
mkdir -p "$work"
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: skipped"; exit 77
fi
prompt="The quick brown fox jumps over the lazy dog while the cat sleeps near the warm fire of an old house"
printf '%s\n' "$prompt" "$prompt" "Gemma is a family of open models." > "$work/text.txt"
fail=0
for b in cpu cuda; do
  "$gen" --model "$model" --backend $b --prompt "$prompt" --prefill-only \
    --dump-logits "$work/logits_$b.bin" --dump-tokens "$work/tokens_$b.bin" >/dev/null || { echo "dump on $b failed"; exit 1; }
  "$gen" --model "$model" --backend $b --perplexity "$work/text.txt" > "$work/ppl_$b.txt" || { echo "perplexity on $b failed"; exit 1; }
  "$gen" --model "$model" --backend $b --prompt "$prompt" --max-tokens 24 > "$work/gen_$b.txt" || { echo "generate on $b failed"; exit 1; }
done
cmp -s "$work/tokens_cpu.bin" "$work/tokens_cuda.bin" || { echo "prompt tokens differ"; fail=1; }
python3 - "$work" "$model" <<'PY' || fail=1
import json, sys, numpy as np
work, model = sys.argv[1], sys.argv[2]
V = json.load(open(model + "/config.json"))["vocab_size"]
a = np.fromfile(work + "/logits_cpu.bin", dtype=np.float32).reshape(-1, V)
b = np.fromfile(work + "/logits_cuda.bin", dtype=np.float32).reshape(-1, V)
assert a.shape == b.shape, (a.shape, b.shape)
err = np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1)
top1 = (a.argmax(1) == b.argmax(1)).mean()
p = [float(open(work + f"/ppl_{x}.txt").read().split()[-1]) for x in ("cpu", "cuda")]
print(f"rows {a.shape[0]}: worst logits nerr {err.max():.3e}, mean {err.mean():.3e}, top-1 agree {top1:.3f}; "
      f"perplexity cpu {p[0]:.4f} cuda {p[1]:.4f}")
ok = err.max() < 6e-2 and abs(p[1] - p[0]) / p[0] < 0.02
sys.exit(0 if ok else 1)
PY
echo "cpu : $(cat "$work/gen_cpu.txt")"
echo "cuda: $(cat "$work/gen_cuda.txt")"
[ $fail = 0 ] && echo "test_gpu_generate: ok" || echo "test_gpu_generate: FAILED"
exit $fail
