#!/usr/bin/env bash
# bench_router.sh [BUILD_DIR] - gemma-router's overhead and failover time, measured with
# gemma-bench on the null backend (no model: the cost measured is the serving path).
#   overhead: the same load straight to one gemmad and through gemma-router to that gemmad
#             (latency at concurrency 1, requests/s at concurrency 64), then router + 2 gemmad;
#   failover: kill -9 / SIGSTOP of one of two replicas under load: time from the signal to
#             the router taking the replica out (its log), and what the clients saw.
# Prints Markdown tables (docs/CLUSTER.md). Runs everything on this host, on loopback TCP.
set -u
B=${1:-build}
B=$(cd "$B" && pwd)
RUNS=${RUNS:-3}
T=$(mktemp -d /tmp/gm-bench-router-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2> /dev/null; done
    wait 2> /dev/null
    rm -rf "$T"
}
trap cleanup EXIT
BASE=${BASE_PORT:-6300}
P1=tcp://127.0.0.1:$((BASE + 1))
P2=tcp://127.0.0.1:$((BASE + 2))
R1=tcp://127.0.0.1:$((BASE + 10))
R2=tcp://127.0.0.1:$((BASE + 20))

now() { date +%Y-%m-%dT%H:%M:%S.%3N; }
ms_between() { # two "YYYY-MM-DDTHH:MM:SS.mmm" stamps -> milliseconds
    python3 -c "import datetime,sys;f=lambda s:datetime.datetime.fromisoformat(s);print(round((f(sys.argv[2])-f(sys.argv[1])).total_seconds()*1000))" "$1" "$2"
}
gemmad() { # endpoint log -> pid in $!
    "$B/daemon/gemmad" --backend null --listen "$1" --max-seqs 256 --kv-blocks 65536 --log-level warn > "$T/$2" 2>&1 &
    PIDS+=($!)
    disown $! # no "Killed" notice from the shell when we kill it on purpose
}
router() { # listen log replicas...
    local l=$1 log=$2
    shift 2
    local a=()
    for r in "$@"; do a+=(--replica "$r"); done
    "$B/cluster/gemma-router" --listen "$l" "${a[@]}" --max-in-flight 1024 > "$T/$log" 2>&1 &
    PIDS+=($!)
}
wait_kv() { # endpoint expected_kv_total
    for i in $(seq 300); do
        k=$("$B/client/gemma-cli" --endpoint "$1" --timeout 1000 --stats 2> /dev/null | awk '/^kv_blocks_total:/ {print $2}')
        [ "$k" = "$2" ] && return 0
        sleep 0.05
    done
    echo "endpoint $1 never reached kv $2" >&2
    exit 1
}
bench() { # endpoint args... -> json in $T/b.json
    "$B/bench/gemma-bench" --endpoint "$@" --vocab 1000 --quiet --json "$T/b.json" > /dev/null 2>&1
    return 0
}
field() { # one number from gemma-bench's JSON
    python3 -c "import json,sys;d=json.load(open('$T/b.json'));d=d[0] if isinstance(d,list) else d;print(d[sys.argv[1]])" "$1"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

gemmad "$P1" g1.log
gemmad "$P2" g2.log
wait_kv "$P1" 65536
wait_kv "$P2" 65536
router "$R1" r1.log "$P1"
router "$R2" r2.log "$P1" "$P2"
wait_kv "$R1" 65536
wait_kv "$R2" 131072

echo "host: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); median of $RUNS runs"
echo
echo "| path | isl / osl | concurrency | requests/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | E2E p50 ms |"
echo "|---|---|---|---|---|---|---|---|"
row() { # label endpoint concurrency n isl osl
    local rps=() t50=() t99=() itl=() e2e=()
    for r in $(seq "$RUNS"); do
        bench "$2" --concurrency "$3" --num-requests "$4" --isl "$5" --osl "$6"
        rps+=("$(field request_throughput)")
        t50+=("$(field ttft_ms_p50)")
        t99+=("$(field ttft_ms_p99)")
        itl+=("$(field itl_ms_p50)")
        e2e+=("$(field e2e_ms_p50)")
    done
    local itl_s=-
    [ "$6" -gt 1 ] && itl_s=$(printf '%.3f' "$(printf '%s\n' "${itl[@]}" | median)")
    printf '| %s | %s / %s | %s | %.0f | %.3f | %.3f | %s | %.3f |\n' "$1" "$5" "$6" "$3" \
        "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${t50[@]}" | median)" \
        "$(printf '%s\n' "${t99[@]}" | median)" "$itl_s" "$(printf '%s\n' "${e2e[@]}" | median)"
}
row "gemmad direct" "$P1" 1 500 16 16
row "router -> 1 gemmad" "$R1" 1 500 16 16
row "gemmad direct" "$P1" 64 4000 16 16
row "router -> 1 gemmad" "$R1" 64 4000 16 16
row "router -> 2 gemmad" "$R2" 64 4000 16 16
row "gemmad direct" "$P1" 256 8000 16 1
row "router -> 1 gemmad" "$R1" 256 8000 16 1
row "router -> 2 gemmad" "$R2" 256 8000 16 1

echo
echo "| failure (1 of 2 replicas, 64 streams in flight) | signal -> taken out | requests ok / failed | router afterwards |"
echo "|---|---|---|---|"
failover() { # label signal
    "$B/bench/gemma-bench" --endpoint "$R2" --concurrency 64 --num-requests 256 --isl 16 --osl 4000 --vocab 1000 \
        --quiet --allow-errors --json "$T/b.json" > "$T/fo.out" 2>&1 &
    local bp=$!
    # wait until both replicas stream (each has running sequences)
    for i in $(seq 200); do
        r2=$("$B/client/gemma-cli" --endpoint "$P2" --timeout 1000 --stats 2> /dev/null | awk '/^running:/ {print $2}')
        [ "${r2:-0}" -gt 0 ] && break
        sleep 0.02
    done
    local before
    before=$(grep -c "taken out" "$T/r2.log")
    local t0
    t0=$(now)
    kill "-$2" "${PIDS[1]}"
    for i in $(seq 500); do
        [ "$(grep -c "taken out" "$T/r2.log")" -gt "$before" ] && break
        sleep 0.01
    done
    local t1
    t1=$(grep "taken out" "$T/r2.log" | tail -1 | cut -d' ' -f1)
    wait "$bp"
    local ok fail
    ok=$(field completed)
    fail=$(field failed)
    local h
    h=$("$B/client/gemma-cli" --endpoint "$R2" --timeout 5000 --max-tokens 4 --tokens "2,5" > /dev/null 2>&1 && echo serving || echo FAILED)
    printf '| %s | %s ms | %s / %s | %s |\n' "$1" "$(ms_between "$t0" "$t1")" "$ok" "$fail" "$h"
}
failover "kill -9 (connection drops)" KILL
# bring it back and measure how soon the router uses it again
while kill -0 "${PIDS[1]}" 2> /dev/null; do sleep 0.01; done
tb=$(now)
gemmad "$P2" g2b.log
PIDS[1]=${PIDS[-1]}
wait_kv "$R2" 131072
ta=$(grep "is up" "$T/r2.log" | tail -1 | cut -d' ' -f1)
comeback=$(ms_between "$tb" "$ta")
failover "SIGSTOP (silent, default --dead-ms 2000)" STOP
kill -CONT "${PIDS[1]}"
echo
echo "restarted replica used again: $comeback ms from its start to the router's 'is up' (includes gemmad's own start)"
