#!/usr/bin/env bash
# test_http_load.sh GEMMAD HTTP_LOAD TINY_MODEL_DIR - many concurrent streams over HTTP, correct.
#   gemmad on the null backend with the tiny model's tokenizer (so every stream carries text) and
#   tests/http_load driving 300 keep-alive connections through 1,500 streamed completions, then
#   chat: every request must end with its usage event and [DONE] (http_load exits 1 otherwise).
#   The tokens/s it prints are for reading, not asserted. Also: an HTTP port already in use fails
#   gemmad at once, before any worker starts.
set -u
gemmad=$1 load=$2 model=$3
. "$(dirname "$0")/proc_lib.sh"
work=$(mktemp -d)
pid=
trap 'stop_pid "$pid"; rm -rf "$work"' EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }

"$gemmad" --backend null --model "$model" --listen "ipc://$work/g.sock" --http-listen 127.0.0.1:0 \
  --max-seqs 512 --kv-blocks 20000 --max-tokens-per-step 8192 > "$work/log" 2>&1 &
pid=$!
port=
for _ in $(seq 300); do
  port=$(sed -n 's/.*OpenAI-compatible HTTP API on .* (port \([0-9]*\)).*/\1/p' "$work/log")
  [ -n "$port" ] && grep -q "serving" "$work/log" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  cat "$work/log"
  echo "FAIL: gemmad did not start"
  exit 1
fi

out=$(timeout 300 "$load" --port "$port" --conns 300 --requests 1500 --warmup 100 --max-tokens 32 2>&1); rc=$?
[ $rc = 0 ] && grep -q "errors 0" <<<"$out" && ok "completions: $out" || bad "completions: rc $rc: $out"
out=$(timeout 300 "$load" --port "$port" --conns 50 --requests 200 --warmup 0 --max-tokens 16 --chat 2>&1); rc=$?
[ $rc = 0 ] && grep -q "errors 0" <<<"$out" && ok "chat: $out" || bad "chat: rc $rc: $out"
m=$(curl -s "http://127.0.0.1:$port/metrics")
grep -q '^gemmad_kv_cache_blocks_used 0$' <<<"$m" && ok "KV blocks all back" || bad "KV blocks in use after the load"
grep -q '^gemmad_request_success_total{finished_reason="length"} 1700$' <<<"$m" && ok "1700 requests finished" \
  || bad "finished count: $(grep success_total <<<"$m")"

# the HTTP port is taken: a second gemmad says so and starts no worker
cat > "$work/worker" <<W
#!/bin/sh
touch "$work/worker-started"
exec sleep 60
W
chmod +x "$work/worker"
out=$(timeout 60 "$gemmad" --backend null --listen "ipc://$work/g2.sock" --http-listen "127.0.0.1:$port" \
  --worker-bin "$work/worker" 2>&1); rc=$?
if [ $rc != 0 ] && [ $rc != 124 ] && grep -q "cannot listen on 127.0.0.1:$port" <<<"$out" && [ ! -e "$work/worker-started" ]; then
  ok "busy HTTP port"
else
  bad "busy HTTP port: rc $rc: $out"
fi

stop_pid "$pid"
wait $pid; rc=$?
pid=
[ $rc = 0 ] && ok "clean exit" || { bad "gemmad exit $rc"; tail -20 "$work/log"; }
exit $fail
