#!/usr/bin/env bash
# test_gemmad_startup.sh GEMMAD TINY_MODEL_DIR - what a new user meets first:
#   --check-config checks the model directory, its config.json, tokenizer and weights (exit 1 naming
#   what is wrong); a listen endpoint already in use fails at once, before any worker starts.
set -u
gemmad=$1 model=$2
work=$(mktemp -d)
trap 'rm -rf "$work"; [ -n "${holder:-}" ] && kill $holder 2>/dev/null' EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }

out=$("$gemmad" --model "$model" --check-config 2>&1); rc=$?
[ $rc = 0 ] && grep -q "tokenizer: " <<<"$out" && grep -q "weights: " <<<"$out" && ok "valid model" || bad "valid model: rc $rc: $out"
out=$("$gemmad" --model "$work/nothere" --check-config 2>&1); rc=$?
[ $rc = 1 ] && grep -q "nothere" <<<"$out" && ok "missing directory" || bad "missing directory: rc $rc: $out"
mkdir -p "$work/noweights" && cp "$model/config.json" "$work/noweights/"
out=$("$gemmad" --model "$work/noweights" --check-config 2>&1); rc=$?
[ $rc = 1 ] && grep -qi "safetensors" <<<"$out" && ok "no weights: $(tail -1 <<<"$out")" || bad "no weights: rc $rc: $out"
mkdir -p "$work/badcfg" && echo '{"model_type": "gemma", "hidden_size": "x"}' > "$work/badcfg/config.json"
out=$("$gemmad" --model "$work/badcfg" --check-config 2>&1); rc=$?
[ $rc = 1 ] && grep -q "config.json" <<<"$out" && ok "bad config.json" || bad "bad config.json: rc $rc: $out"

# a busy port: gemmad exits with the reason and never starts a worker
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -c 'import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(); open(sys.argv[2],"w").close(); time.sleep(60)' "$port" "$work/bound" &
holder=$!
for _ in $(seq 1 100); do [ -e "$work/bound" ] && break; sleep 0.1; done  # the port is taken before gemmad tries
cat > "$work/worker" <<W
#!/bin/sh
touch "$work/worker-started"
exec sleep 60
W
chmod +x "$work/worker"
out=$(timeout 60 "$gemmad" --model "$model" --listen "tcp://127.0.0.1:$port" --worker-bin "$work/worker" 2>&1); rc=$?
if [ $rc != 0 ] && [ $rc != 124 ] && grep -q "cannot listen" <<<"$out" && [ ! -e "$work/worker-started" ]; then
  ok "busy port: $(grep 'cannot listen' <<<"$out" | head -1)"
else
  bad "busy port: rc $rc, worker started: $([ -e "$work/worker-started" ] && echo yes || echo no): $out"
fi
exit $fail
