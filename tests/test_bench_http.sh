#!/usr/bin/env bash
# test_bench_http.sh GEMMA_BENCH BENCH_HTTP_FAKE - gemma-bench --http against a fake
# OpenAI-compatible server (tests/bench_http_fake.c: http/http + http/oai, fake tokens).
#
# Checks exact counts from the JSON report: requests, completed, failed, output and input
# tokens, stream events; failures injected by the fake (429, 400, an error event inside the
# stream, a stream cut before [DONE]) are counted under their codes with their messages
# shown; the usage chunk's count wins when a chunk carries several tokens; chat and text
# prompts; a wrong model, a missing API key, an unreachable server and bad arguments give
# their exit status; a run timeout fails the unfinished requests and closes their
# connections (the fake sees the aborts); a reset connection, a JSON answer instead of a
# stream and an event that is not JSON fail their requests (tests/bench_http_rude.py).
# Latencies are only checked to be numbers >= 0: no timing thresholds.
set -u
bench=${1:?usage: test_bench_http.sh GEMMA_BENCH BENCH_HTTP_FAKE}
fake=${2:?usage: test_bench_http.sh GEMMA_BENCH BENCH_HTTP_FAKE}
for f in "$bench" "$fake"; do
  [ -x "$f" ] || { echo "FAIL: $f is not built" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "FAIL: curl is needed (scripts/deps.sh)" >&2; exit 1; }

. "$(dirname "$0")/proc_lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gm-bench-http.XXXXXX")
pid=
trap 'stop_pid "$pid"; rm -rf "$tmp"' EXIT

key=test-key-123
"$fake" --api-key "$key" --itl-ms 1 >"$tmp/fake.out" 2>"$tmp/fake.err" &
pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^PORT \([0-9]*\)$/\1/p' "$tmp/fake.out")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "FAIL: the fake server did not start:" >&2
  cat "$tmp/fake.err" >&2
  exit 1
fi
url=http://127.0.0.1:$port
fail=0

config() { curl -s -f -X POST "$url/config?$1" >/dev/null || { echo "FAIL: /config?$1" >&2; exit 1; }; }
stat() { curl -s "$url/stats" | sed -n "s/.*\"$1\": \\([0-9]*\\).*/\\1/p"; }

# run NAME EXPECTED_RC ARGS...: gemma-bench with the JSON report in $tmp/NAME.json
run() {
  local name=$1 want=$2
  shift 2
  "$bench" "$@" --json "$tmp/$name.json" >"$tmp/$name.out" 2>"$tmp/$name.err"
  local rc=$?
  if [ "$rc" != "$want" ]; then
    echo "FAIL: $name: gemma-bench exited $rc, expected $want; stderr:" >&2
    cat "$tmp/$name.err" >&2
    fail=1
    return 1
  fi
  echo "ok: $name exits $rc"
}

# The report is flat JSON, one key per line (with --sweep: one object per point, values joined by spaces).
val() { sed -n "s/^  \"$2\": \\([^,]*\\),\$/\\1/p" "$tmp/$1.json" | tr '\n' ' ' | sed 's/ $//'; }
check() { # NAME KEY OP EXPECTED
  local v
  v=$(val "$1" "$2")
  if [ -z "$v" ] || ! awk -v a="$v" -v b="$4" "BEGIN { exit !(a $3 b) }"; then
    echo "FAIL: $1: $2 = '$v', expected $3 $4" >&2
    fail=1
  else
    echo "ok: $1: $2 = $v"
  fi
}
check_eq_str() { # NAME KEY EXPECTED (whole value, for lists)
  local v
  v=$(val "$1" "$2")
  if [ "$v" != "$3" ]; then
    echo "FAIL: $1: $2 = '$v', expected '$3'" >&2
    fail=1
  else
    echo "ok: $1: $2 = $v"
  fi
}
check_errors() { # NAME EXPECTED_ERRORS_OBJECT
  local v
  v=$(sed -n 's/^  "errors": \(.*\)$/\1/p' "$tmp/$1.json")
  if [ "$v" != "$2" ]; then
    echo "FAIL: $1: errors = '$v', expected '$2'" >&2
    fail=1
  else
    echo "ok: $1: errors = $v"
  fi
}
check_latencies() { # NAME: every latency statistic a number >= 0
  local k
  for k in ttft_ms_mean ttft_ms_p50 ttft_ms_p99 tpot_ms_mean tpot_ms_p99 itl_ms_p50 itl_ms_p99 e2e_ms_p99; do
    check "$1" "$k" '>=' 0
  done
}
grep_err() { # NAME TEXT: stderr of the run shows TEXT
  if grep -qF -- "$2" "$tmp/$1.err"; then
    echo "ok: $1: stderr has '$2'"
  else
    echo "FAIL: $1: stderr lacks '$2':" >&2
    cat "$tmp/$1.err" >&2
    fail=1
  fi
}

common=(--http "$url" --api-key "$key" --seed 1 --timeout 60 --quiet)

# 1. synthetic token-id prompts, no failures, with warm-up: every count exact
r0=$(stat requests)
run plain 0 "${common[@]}" --num-requests 40 --concurrency 8 --isl 16 --osl 16 --warmup 4 --markdown
check plain num_requests == 40
check plain completed == 40
check plain failed == 0
check plain short_outputs == 0
check plain output_tokens == 640
check plain input_tokens == 640
check plain stream_events == 640
check plain concurrency == 8
check plain output_tokens_per_s '>' 0
check_errors plain '{}'
check_latencies plain
r1=$(stat requests)
if [ $((r1 - r0)) != 44 ]; then
  echo "FAIL: the fake counted $((r1 - r0)) requests, expected 44 (40 + 4 warm-up)" >&2
  fail=1
fi
if ! grep -q '^| http | 16/16 | 8 |' "$tmp/plain.out"; then
  echo "FAIL: no Markdown row for the http setup:" >&2
  cat "$tmp/plain.out" >&2
  fail=1
fi
grep_err plain "stream events"
# keep-alive: a connection per stream in flight, reused by the requests after it
conns=$(sed -n 's/.*; \([0-9]*\) connections opened$/\1/p' "$tmp/plain.err")
if [ -z "$conns" ] || [ "$conns" -gt 8 ] || [ "$conns" -lt 1 ]; then
  echo "FAIL: plain: '$conns' connections opened for 40 requests at concurrency 8, expected 1..8" >&2
  fail=1
else
  echo "ok: plain: $conns connections for 40 requests"
fi

# 2. injected failures: request k (in arrival order) gets 429 when k % 5 == 0 (8 of 40), else an
#    error event after 2 tokens when k % 7 == 0 (7, 14, 21, 28), else a stream cut after 1 token
#    when k % 11 == 0 (11, 22, 33): 25 complete with 16 tokens, 4 x 2 + 3 x 1 tokens more
config "fail=5&error=7&cut=11"
run failures 1 "${common[@]}" --num-requests 40 --concurrency 8 --isl 16 --osl 16
check failures num_requests == 40
check failures completed == 25
check failures failed == 15
check failures output_tokens == 411
check failures stream_events == 411
check failures input_tokens == 400
check_errors failures '{"HTTP_429": 8, "STREAM_ERROR": 4, "INCOMPLETE_STREAM": 3}'
check_latencies failures
grep_err failures "HTTP_429: HTTP 429: fake: request 5 refused, too many requests"
grep_err failures "STREAM_ERROR: fake: generation failed after 2 tokens"
grep_err failures "INCOMPLETE_STREAM: the stream ended without data: [DONE]"
grep_err failures "15 requests failed"

config "bad=3"
run bad 0 "${common[@]}" --num-requests 9 --concurrency 3 --isl 8 --osl 4 --allow-errors
check bad completed == 6
check_errors bad '{"HTTP_400": 3}'
grep_err bad "fake: request 3 is bad"

# 3. four tokens per chunk: the usage chunk's count (not the chunk count) is the output
config "pack=4"
run packed 0 "${common[@]}" --num-requests 10 --concurrency 5 --isl 8 --osl 16
check packed completed == 10
check packed output_tokens == 160
check packed stream_events == 40
check packed short_outputs == 0

# 4. chat with synthetic prompts; chat with text prompts over a sweep; completions with text and --rate
config "pack=1"
run chat 0 "${common[@]}" --chat --num-requests 8 --concurrency 4 --isl 12 --osl 8
check chat completed == 8
check chat output_tokens == 64
check chat stream_events == 64
check chat input_tokens '>' 0
printf 'Tell me a story about a lighthouse.\nWhat is 2 + 2?\n\nName three colours.\n' >"$tmp/prompts.txt"
run chat_sweep 0 "${common[@]}" --chat --prompts "$tmp/prompts.txt" --sweep 2,4 --num-requests 6 --osl 5
check_eq_str chat_sweep completed "6 6"
check_eq_str chat_sweep output_tokens "30 30"
check_eq_str chat_sweep concurrency "2 4"
run text_rate 0 "${common[@]}" --prompts "$tmp/prompts.txt" --rate 500 --num-requests 12 --osl 3
check text_rate completed == 12
check text_rate output_tokens == 36
check text_rate isl '>' 0

# 5. a model the server does not serve: every request fails with 404 and the server's message
run model 1 "${common[@]}" --model no-such-model --num-requests 4 --concurrency 2 --isl 4 --osl 4
check model failed == 4
check_errors model '{"HTTP_404": 4}'
grep_err model "no-such-model"

# 6. start-up failures: no API key (401 from /v1/models), nothing listening, bad arguments
run nokey 3 --http "$url" --num-requests 2 --quiet
grep_err nokey "HTTP 401"
closed=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 9)
run unreachable 3 --http "http://127.0.0.1:$closed" --num-requests 2 --connect-timeout 2000 --quiet
grep_err unreachable "cannot reach"
run badurl 2 --http "ftp://127.0.0.1:$port" --num-requests 2
run chat_rpc 2 --chat --num-requests 2
run rpc_opt 2 --http "$url" --endpoint tcp://127.0.0.1:5555 --num-requests 2
run conn_opt 2 --http "$url" --connections 4 --num-requests 2

# 7. a run that times out: unfinished requests fail with TIMEOUT and their connections close
config "itl=200"
a0=$(stat aborts)
run timeout 0 --http "$url" --api-key "$key" --quiet --timeout 1 --num-requests 4 --concurrency 4 --isl 4 \
  --osl 64 --allow-errors
check timeout failed == 4
check_errors timeout '{"TIMEOUT": 4}'
aborted=0
for _ in $(seq 100); do
  a1=$(stat aborts)
  [ -n "$a1" ] && [ $((a1 - a0)) -ge 4 ] && { aborted=1; break; }
  sleep 0.1
done
if [ $aborted != 1 ]; then
  echo "FAIL: the fake saw $((a1 - a0)) aborted streams after the timeout, expected 4" >&2
  fail=1
else
  echo "ok: the timed-out streams were closed (the fake saw the aborts)"
fi
config "itl=1"

# 8. a server that misbehaves (tests/bench_http_rude.py): the connection reset mid-stream, a JSON
#    body instead of a stream, an event that is not JSON; each request fails with its code
rude() { # MODE ERRORS_OBJECT MESSAGE
  local rpid rport
  rm -f "$tmp/rude.out" # the last server's PORT line must not be read before this one truncates the file
  python3 "$(dirname "$0")/bench_http_rude.py" "$1" >"$tmp/rude.out" 2>"$tmp/rude.err" &
  rpid=$!
  rport=
  for _ in $(seq 100); do
    rport=$(sed -n 's/^PORT \([0-9]*\)$/\1/p' "$tmp/rude.out")
    [ -n "$rport" ] && break
    sleep 0.1
  done
  if [ -z "$rport" ]; then
    echo "FAIL: bench_http_rude.py $1 did not start: $(cat "$tmp/rude.err")" >&2
    fail=1
  else
    run "rude_$1" 0 --http "http://127.0.0.1:$rport" --model m --quiet --timeout 30 --num-requests 3 \
      --concurrency 1 --isl 4 --osl 4 --allow-errors
    check "rude_$1" failed == 3
    check "rude_$1" output_tokens '<=' 3
    check_errors "rude_$1" "$2"
    grep_err "rude_$1" "$3"
  fi
  kill "$rpid" 2>/dev/null
  wait "$rpid" 2>/dev/null
}
rude reset '{"TRANSPORT": 3}' "TRANSPORT:"
rude json '{"BAD_STREAM": 3}' "not a text/event-stream"
rude junk '{"BAD_STREAM": 3}' "not a JSON object"

if [ $fail != 0 ]; then
  echo "FAIL: gemma-bench --http" >&2
  exit 1
fi
echo "PASS: gemma-bench --http against the fake OpenAI server"
