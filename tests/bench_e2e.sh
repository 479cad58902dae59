#!/usr/bin/env bash
# bench_e2e.sh BUILD_DIR null|tiny - gemma-bench against a live gemmad (CTest, loopback).
#
# Starts gemmad on a free port (the null backend, or the CPU backend with the
# tiny fixture model), runs a small load (64 requests, concurrency 16, 16/16)
# and checks the JSON report: every request done, 64*16 output tokens,
# tokens/s > 0. Fails loudly (never skips) when a binary is missing.
set -u
bin=${1:?usage: bench_e2e.sh BUILD_DIR null|tiny}
mode=${2:?usage: bench_e2e.sh BUILD_DIR null|tiny}
gemmad=$bin/daemon/gemmad
bench=$bin/bench/gemma-bench
for f in "$gemmad" "$bench" "$bin/client/gemma-cli"; do
  if [ ! -x "$f" ]; then
    echo "FAIL: $f is not built (build gemmad, gemma-cli and gemma-bench first)" >&2
    exit 1
  fi
done
case $mode in
  null) dargs=(--backend null) ;;
  tiny)
    if [ ! -f "$bin/models/tiny/config.json" ]; then
      echo "FAIL: $bin/models/tiny is missing (the tiny_model fixture did not run)" >&2
      exit 1
    fi
    dargs=(--backend cpu --model "$bin/models/tiny") ;;
  *) echo "FAIL: unknown mode '$mode' (null or tiny)" >&2; exit 1 ;;
esac

. "$(dirname "$0")/proc_lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gm-bench-e2e.XXXXXX")
pid=
cleanup() {
  stop_pid "$pid"
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free loopback port: ask the kernel for one, retry if gemmad loses the race.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000))
}

started=0
for attempt in 1 2 3; do
  port=$(free_port)
  ep=tcp://127.0.0.1:$port
  "$gemmad" "${dargs[@]}" --listen "$ep" >"$tmp/gemmad.log" 2>&1 &
  pid=$!
  # wait until it answers a health probe (gemma-bench --connect-timeout would do too,
  # but a dead daemon should be reported with its log, not as a timeout)
  for _ in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    if "$bin/client/gemma-cli" --endpoint "$ep" --health >/dev/null 2>&1; then started=1; break; fi
    sleep 0.2
  done
  [ $started = 1 ] && break
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  echo "attempt $attempt: gemmad did not come up on $ep; its log:" >&2
  cat "$tmp/gemmad.log" >&2
  pid=
done
if [ $started != 1 ]; then
  echo "FAIL: gemmad ${dargs[*]} never became healthy" >&2
  exit 1
fi

json=$tmp/bench.json
"$bench" --endpoint "$ep" --num-requests 64 --concurrency 16 --isl 16 --osl 16 --seed 1 \
  --timeout 120 --json "$json" --markdown --quiet
rc=$?
if [ $rc != 0 ]; then
  echo "FAIL: gemma-bench exited with $rc; gemmad log:" >&2
  tail -50 "$tmp/gemmad.log" >&2
  exit 1
fi

# The report is flat JSON, one key per line.
val() { sed -n "s/^  \"$1\": \\([^,]*\\),\$/\\1/p" "$json"; }
fail=0
check() { # key op expected
  v=$(val "$1")
  if [ -z "$v" ] || ! awk -v a="$v" -v b="$3" "BEGIN { exit !(a $2 b) }"; then
    echo "FAIL: $1 = '${v}', expected $2 $3" >&2
    fail=1
  else
    echo "ok: $1 = $v"
  fi
}
check num_requests == 64
check completed == 64
check failed == 0
check short_outputs == 0
check output_tokens == 1024
check input_tokens == 1024
check concurrency == 16
check output_tokens_per_s '>' 0
check total_tokens_per_s '>' 0
check request_throughput '>' 0
check ttft_ms_p50 '>' 0
# On a fast machine a whole 16-token stream can arrive in one poll, so
# TPOT and ITL may be exactly zero; they must never be negative.
check tpot_ms_p99 '>=' 0
check itl_ms_p50 '>=' 0
if [ $fail != 0 ]; then cat "$json" >&2; exit 1; fi

# The prefix cache's workload: a 32-token prefix shared by every prompt, 8 tokens each after it.
"$bench" --endpoint "$ep" --num-requests 32 --concurrency 4 --shared-prefix 32 --isl 8 --osl 8 --seed 2 \
  --timeout 120 --json "$json" --quiet || { echo "FAIL: gemma-bench --shared-prefix" >&2; exit 1; }
check completed == 32
check input_tokens == 1280
check output_tokens == 256
hits=$("$bin/client/gemma-cli" --endpoint "$ep" --stats | sed -n 's/^prefix_cache_hits: //p')
if [ -z "$hits" ] || [ "$hits" -le 0 ]; then
  echo "FAIL: prefix_cache_hits = '$hits' after the shared-prefix run" >&2
  exit 1
fi
echo "ok: prefix_cache_hits = $hits"
if [ $fail != 0 ]; then cat "$json" >&2; exit 1; fi
# beam search: 4 beams each, the best hypothesis back whole (osl tokens: EOS is ignored)
"$bench" --endpoint "$ep" --num-requests 16 --concurrency 4 --isl 8 --osl 8 --seed 3 --beam-width 4 \
  --timeout 120 --json "$json" --quiet || { echo "FAIL: gemma-bench --beam-width" >&2; exit 1; }
check completed == 16
check failed == 0
check output_tokens == 128
if [ $fail != 0 ]; then cat "$json" >&2; exit 1; fi
echo "PASS: gemma-bench against gemmad ($mode)"
