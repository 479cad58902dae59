#!/usr/bin/env bash
# fp8_serve.sh BUILD_DIR - an FP8 checkpoint served by gemmad on the CPU backend (CTest).
#
# gemma-quantize --fp8 --calib makes a calibrated FP8 checkpoint of the tiny model (static
# activation scales, KV scales); gemmad serves it with the FP8 LM head (--lm-head fp8), and for
# three prompts gemma-cli's greedy text equals gemma-generate's on the same checkpoint and options.
# gemmad at tp 2 serves it too (its bf16-rounded partial sums differ from tp 1, so only the
# length is checked there). Fails loudly (never skips) when a binary or the model is missing.
set -u
bin=${1:?usage: fp8_serve.sh BUILD_DIR}
src=$(cd "$(dirname "$0")/.." && pwd)
gemmad=$bin/daemon/gemmad cli=$bin/client/gemma-cli gen=$bin/tools/gemma-generate quant=$bin/tools/gemma-quantize
for f in "$gemmad" "$cli" "$gen" "$quant" "$bin/daemon/gemma-worker"; do
  [ -x "$f" ] || { echo "FAIL: $f is not built" >&2; exit 1; }
done
[ -f "$bin/models/tiny/config.json" ] || { echo "FAIL: $bin/models/tiny is missing" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gm-fp8-serve.XXXXXX")
. "$src/tests/proc_lib.sh"
pid=
stop() {
  stop_pid "$pid"
  pid=
}
trap 'stop; rm -rf "$tmp"' EXIT
ck=$tmp/tiny-fp8
"$quant" --fp8 --model "$bin/models/tiny" --out "$ck" --calib "$src/data/corpus.txt" --quiet ||
  { echo "FAIL: gemma-quantize --fp8" >&2; exit 1; }
grep -Eq '"activation_scheme":[[:space:]]*"static"' "$ck/config.json" || { echo "FAIL: no static scheme in $ck/config.json" >&2; exit 1; }

serve() { # serve TP: start gemmad on the checkpoint, wait until healthy
  ep=ipc://$tmp/gemmad-$1.sock
  "$gemmad" --backend cpu --model "$ck" --tp "$1" --lm-head fp8 --listen "$ep" >"$tmp/gemmad-$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    "$cli" --endpoint "$ep" --health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "FAIL: gemmad --tp $1 did not come up; its log:" >&2
  cat "$tmp/gemmad-$1.log" >&2
  exit 1
}

fail=0
serve 1
grep -q "weights FP8, static activation scales, LM head fp8" "$tmp/gemmad-1.log" ||
  { echo "FAIL: the worker did not report static FP8 weights and the FP8 LM head; its log:" >&2; cat "$tmp/gemmad-1.log" >&2; fail=1; }
i=0
for p in "The capital of the tiny model is" "Once upon a time" "FP8 keeps three mantissa bits, so"; do
  i=$((i + 1))
  "$cli" --endpoint "$ep" --max-tokens 24 "$p" >"$tmp/d$i.txt" 2>>"$tmp/cli.log" ||
    { echo "FAIL: gemma-cli on prompt $i" >&2; fail=1; }
  "$gen" --model "$ck" --lm-head fp8 --prompt "$p" --max-tokens 24 >"$tmp/g$i.txt" 2>/dev/null ||
    { echo "FAIL: gemma-generate on prompt $i" >&2; fail=1; }
  if cmp -s "$tmp/d$i.txt" "$tmp/g$i.txt"; then
    echo "ok: prompt $i: gemmad == gemma-generate ($(wc -c <"$tmp/d$i.txt") bytes)"
  else
    echo "FAIL: prompt $i: gemmad '$(cat "$tmp/d$i.txt")' != gemma-generate '$(cat "$tmp/g$i.txt")'" >&2
    fail=1
  fi
done
stop
serve 2
"$cli" --endpoint "$ep" --max-tokens 16 --ignore-eos "Once upon a time" >"$tmp/tp2.txt" 2>>"$tmp/cli.log"
rc=$?
if [ $rc != 0 ] || [ ! -s "$tmp/tp2.txt" ]; then
  echo "FAIL: gemmad --tp 2 on the FP8 checkpoint (rc $rc); its log:" >&2
  tail -20 "$tmp/gemmad-2.log" >&2
  fail=1
else
  echo "ok: tp 2 served '$(cat "$tmp/tp2.txt")'"
fi
stop
[ $fail = 0 ] && echo "PASS: FP8 checkpoint served by gemmad (cpu, --lm-head fp8)"
exit $fail
