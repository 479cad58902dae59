#!/usr/bin/env bash
# generate_args.sh GEMMA_GENERATE MODEL_DIR - gemma-generate's option errors: every bad value exits 2
# with a message that names the option and the value it came with, in both --opt VALUE and --opt=VALUE
# forms; --help exits 0.
set -u
gen=$1 model=$2
fail=0
expect() { # expect OPTION VALUE
  for form in split joined; do
    if [ $form = split ]; then
      out=$("$gen" --model "$model" --prompt hi "$1" "$2" 2>&1 >/dev/null)
    else
      out=$("$gen" --model="$model" --prompt=hi "$1=$2" 2>&1 >/dev/null)
    fi
    rc=$?
    if [ $rc != 2 ] || ! grep -q -- "$1 '$2'" <<<"$out"; then
      echo "FAIL: $1 $2 ($form): rc $rc, said: $out"; fail=1
    else
      echo "ok: $1 $2 ($form) -> $out"
    fi
  done
}
expect --quant int3
expect --kv-dtype fp4
expect --lm-head fp16
expect --backend tpu
expect --max-tokens -5
expect --temperature nan
expect --top-k -1
expect --top-p 2
expect --kv-block-size 0
expect --presence-penalty 3
expect --frequency-penalty -2.5
expect --repetition-penalty 0
expect --repetition-penalty inf
expect --min-tokens -1
"$gen" --help >/dev/null || { echo "FAIL: --help"; fail=1; }
[ $fail = 0 ] && echo "PASS: gemma-generate option errors"
exit $fail
