#!/usr/bin/env bash
# test_gguf_tools.sh MKTINY GENERATE QUANTIZE GEMMAD CALIB_TEXT - the tools take a GGUF as --model (a .gguf
# file, or a directory holding one), on the tests' tiny Gemma 3 GGUF (tests/gguf_tiny.h):
#   gemma-generate runs it (file and directory alike, --dump-logits);
#   gemma-quantize --fp8 / --rtn / --awq write a safetensors checkpoint with config.json (Gemma 3's, from the GGUF
#     metadata) and tokenizer.model (serialized from the GGUF vocabulary: the same ids); the FP8 one gives
#     exactly the logits of the GGUF run with --quant fp8, the int4 ones run with --quant awq;
#   gemmad --check-config reports it;
#   a GGUF that is not Gemma, or is truncated, is refused by each of them with the file named; gemma-quantize
#     will not write into the directory holding its .gguf.
set -u
mktiny=$1 gen=$2 quant=$3 gemmad=$4 calib=$5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }

mkdir -p "$work/dir"
"$mktiny" "$work/dir/tiny.gguf" || { echo "FAIL: gguf_mktiny"; exit 1; }
"$mktiny" "$work/llama.gguf" llama || exit 1
head -c 100000 "$work/dir/tiny.gguf" > "$work/trunc.gguf"
g=$work/dir/tiny.gguf

# gemma-generate: file and directory give the same text; logits are finite
a=$("$gen" --model "$g" --prompt "hi abc" --max-tokens 6 2>/dev/null); rc1=$?
b=$("$gen" --model "$work/dir" --prompt "hi abc" --max-tokens 6 2>/dev/null); rc2=$?
[ $rc1 = 0 ] && [ $rc2 = 0 ] && [ -n "$a" ] && [ "$a" = "$b" ] && ok "generate: file and directory: '$a'" ||
  bad "generate: rc $rc1/$rc2: '$a' vs '$b'"
"$gen" --model "$g" --prompt "hi abc" --prefill-only --dump-logits "$work/l.bin" --dump-tokens "$work/t.bin" >/dev/null 2>&1 &&
  python3 -c 'import array,math,sys; a=array.array("f"); a.frombytes(open(sys.argv[1],"rb").read()); sys.exit(0 if a and all(math.isfinite(x) for x in a) else 1)' "$work/l.bin" &&
  ok "dump-logits: finite" || bad "dump-logits"

# gemma-quantize from the GGUF
for m in fp8 rtn awq; do
  extra=""
  [ $m = awq ] && extra="--calib $calib --max-tokens 256 --seq-len 64"
  [ $m = fp8 ] || extra="$extra --group 64"
  if ! "$quant" --$m --model "$g" --out "$work/$m" $extra --quiet >"$work/$m.log" 2>&1; then
    bad "quantize --$m: $(cat "$work/$m.log")"
    continue
  fi
  [ -f "$work/$m/model.safetensors" ] && [ -f "$work/$m/tokenizer.model" ] && [ -f "$work/$m/generation_config.json" ] &&
    grep -q '"model_type":.*"gemma3_text"' "$work/$m/config.json" &&
    grep -q '"quant_method":.*"'"$([ $m = fp8 ] && echo fp8 || echo awq)"'"' "$work/$m/config.json" &&
    ok "quantize --$m: checkpoint written" || bad "quantize --$m: files: $(ls "$work/$m"): $(cat "$work/$m/config.json")"
  q=none
  [ $m = fp8 ] || q=awq
  if "$gen" --model "$work/$m" --quant $q --prompt "hi abc" --prefill-only --dump-logits "$work/l_$m.bin" \
       --dump-tokens "$work/t_$m.bin" >/dev/null 2>"$work/gen_$m.log"; then
    cmp -s "$work/t.bin" "$work/t_$m.bin" && ok "$m: tokenizer.model gives the GGUF tokenizer's ids" ||
      bad "$m: prompt ids differ"
  else
    bad "$m: generate: $(cat "$work/gen_$m.log")"
  fi
done
"$gen" --model "$g" --quant fp8 --prompt "hi abc" --prefill-only --dump-logits "$work/l_fp8_gguf.bin" >/dev/null 2>&1 &&
  cmp -s "$work/l_fp8_gguf.bin" "$work/l_fp8.bin" && ok "fp8 checkpoint = the GGUF with --quant fp8, bit for bit" ||
  bad "fp8 checkpoint logits differ from the GGUF's with --quant fp8"
out=$("$quant" --rtn --model "$g" --out "$work/dir" --group 64 2>&1); rc=$?
[ $rc = 1 ] && grep -q "directory holding" <<<"$out" && ok "quantize into the .gguf's directory refused" ||
  bad "quantize into the .gguf's directory: rc $rc: $out"

# gemmad --check-config
out=$("$gemmad" --backend cpu --model "$g" --check-config 2>&1); rc=$?
[ $rc = 0 ] && grep -q "GGUF, Gemma 3, 2 layers" <<<"$out" && grep -q "tokenizer: the GGUF vocabulary (277" <<<"$out" &&
  grep -q "weights: 28 tensors" <<<"$out" && ok "check-config" || bad "check-config: rc $rc: $out"

# not Gemma, truncated: every tool says so and names the file
for f in llama trunc; do
  want=$([ $f = llama ] && echo 'is not a Gemma' || echo 'trunc.gguf')
  out=$("$gen" --model "$work/$f.gguf" --prompt hi --max-tokens 1 2>&1); rc=$?
  [ $rc = 1 ] && grep -q "$want" <<<"$out" && grep -q "$f.gguf" <<<"$out" && ok "generate refuses $f: $out" ||
    bad "generate $f: rc $rc: $out"
  for m in fp8 rtn; do
    out=$("$quant" --$m --model "$work/$f.gguf" --out "$work/q_$f" --group 64 2>&1); rc=$?
    [ $rc = 1 ] && grep -q "$want" <<<"$out" && ok "quantize --$m refuses $f" || bad "quantize --$m $f: rc $rc: $out"
  done
  out=$("$gemmad" --backend cpu --model "$work/$f.gguf" --check-config 2>&1); rc=$?
  [ $rc = 1 ] && grep -q "$want" <<<"$out" && ok "check-config refuses $f" || bad "check-config $f: rc $rc: $out"
done
exit $fail
