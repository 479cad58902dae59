#!/usr/bin/env bash
# test_router_netns.sh BUILD_DIR - gemma-router across two "hosts" made of network
# namespaces joined by a veth pair (10.251.0.1 = host A, 10.251.0.2 = host B):
#   host A: gemma-router + gemmad replica a;  host B: gemmad replica b (tiny CPU model).
# 1. a client on host B gets, through the router on host A, what gemma-generate prints;
# 2. both replicas take work;
# 3. the link to host B goes down (no RST: only silence): the router takes b out after
#    --dead-ms and every request still succeeds on a;
# 4. the link comes back: b is used again.
# Needs root and working `ip netns`; exits 77 (skipped) with the reason otherwise.
set -u
B=${1:?usage: test_router_netns.sh BUILD_DIR}
MODEL=$B/models/tiny
skip() { echo "SKIP: $*"; exit 77; }
fail() {
    echo "FAIL: $*"
    for f in "$T"/*.log; do echo "---- $f"; tail -n 30 "$f"; done
    exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root (ip netns add)"
command -v ip > /dev/null || skip "no 'ip' command (iproute2)"
[ -f "$MODEL/config.json" ] || skip "no tiny model at $MODEL (run the make_tiny_model test first)"
for bin in daemon/gemmad cluster/gemma-router client/gemma-cli tools/gemma-generate; do
    [ -x "$B/$bin" ] || skip "missing $B/$bin"
done

S=$$
NA=gma$S NB=gmb$S VA=gva$S VB=gvb$S
T=$(mktemp -d /tmp/gm-netns-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2> /dev/null; done
    # and anything else still inside the namespaces (gemma-worker children)
    for ns in "$NA" "$NB"; do
        for p in $(ip netns pids "$ns" 2> /dev/null); do kill -9 "$p" 2> /dev/null; done
    done
    wait 2> /dev/null
    ip netns del "$NA" 2> /dev/null
    ip netns del "$NB" 2> /dev/null
    rm -rf "$T"
}
trap cleanup EXIT

ip netns add "$NA" 2> "$T/err" || skip "ip netns add does not work here: $(cat "$T/err")"
ip netns add "$NB" || skip "ip netns add does not work here"
ip link add "$VA" type veth peer name "$VB" 2> "$T/err" || skip "cannot create a veth pair: $(cat "$T/err")"
ip link set "$VA" netns "$NA" && ip link set "$VB" netns "$NB" &&
    ip -n "$NA" addr add 10.251.0.1/24 dev "$VA" && ip -n "$NB" addr add 10.251.0.2/24 dev "$VB" &&
    ip -n "$NA" link set "$VA" up && ip -n "$NB" link set "$VB" up &&
    ip -n "$NA" link set lo up && ip -n "$NB" link set lo up || skip "cannot configure the veth pair"

A=tcp://10.251.0.1
BB=tcp://10.251.0.2
inA() { ip netns exec "$NA" "$@"; }
inB() { ip netns exec "$NB" "$@"; }

# started with `ip netns exec` itself (not through a shell function) so that $! is the
# daemon's own pid: ip execs the command
ip netns exec "$NA" "$B/daemon/gemmad" --backend cpu --model "$MODEL" --listen "$A:5555" --log-level warn \
    > "$T/gemmad-a.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NB" "$B/daemon/gemmad" --backend cpu --model "$MODEL" --listen "$BB:5555" --log-level warn \
    > "$T/gemmad-b.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NA" "$B/cluster/gemma-router" --listen "$A:5550" --replica "$A:5555" --replica "$BB:5555" \
    --heartbeat-ms 200 --dead-ms 1000 > "$T/router.log" 2>&1 &
PIDS+=($!)

# up to 60 s for both replicas to serve and the router to see both (summed KV pool, both serving)
for i in $(seq 600); do
    ka=$(inA "$B/client/gemma-cli" --endpoint "$A:5555" --timeout 1000 --stats 2> /dev/null | awk '/^kv_blocks_total:/ {print $2}')
    kr=$(inB "$B/client/gemma-cli" --endpoint "$A:5550" --timeout 1000 --stats 2> /dev/null | awk '/^kv_blocks_total:/ {print $2}')
    # the sizes are known before the workers are up: wait for the router to call both serving too
    [ -n "$ka" ] && [ -n "$kr" ] && [ "$kr" = $((2 * ka)) ] && [ "$(grep -c 'is serving' "$T/router.log")" -ge 2 ] &&
        break
    sleep 0.1
done
[ -n "${ka:-}" ] && [ "${kr:-}" = $((2 * ka)) ] || fail "the router did not see both replicas (kv $kr vs 2 x $ka)"

reqs_of() { # requests_total of the replica at $2, asked from namespace $1
    ip netns exec "$1" "$B/client/gemma-cli" --endpoint "$2" --timeout 5000 --stats | awk '/^requests_total:/ {print $2}'
}

# 1 + 2: outputs equal gemma-generate's, from a client on host B, spread over both replicas
n=0
for p in "hello world" "the quick brown fox" "one two three" "gemma" "router test" "x y z" "a b" "netns"; do
    want=$("$B/tools/gemma-generate" --model "$MODEL" --prompt "$p" --max-tokens 12 2> /dev/null) ||
        fail "gemma-generate failed"
    got=$(inB "$B/client/gemma-cli" --endpoint "$A:5550" --timeout 20000 --max-tokens 12 "$p") ||
        fail "gemma-cli through the router failed for '$p'"
    [ "$got" = "$want" ] || fail "prompt '$p': router gave '$got', gemma-generate '$want'"
    n=$((n + 1))
done
# concurrent requests so the least-loaded choice uses both
CL=()
for i in $(seq 8); do
    ip netns exec "$NB" "$B/client/gemma-cli" --endpoint "$A:5550" --timeout 20000 --max-tokens 32 "parallel $i" \
        > "$T/par$i.out" 2>&1 &
    CL+=($!)
done
for p in "${CL[@]}"; do wait "$p" || fail "a concurrent request failed: $(cat "$T"/par*.out)"; done
ra=$(reqs_of "$NA" "$A:5555")
rb=$(reqs_of "$NB" "$BB:5555")
echo "requests: replica a $ra, replica b $rb"
[ "${ra:-0}" -ge 1 ] && [ "${rb:-0}" -ge 1 ] || fail "work did not reach both replicas (a=$ra b=$rb)"

# 3: partition host B; every request still succeeds (on a) and the router takes b out
ip -n "$NB" link set "$VB" down
for i in $(seq 4); do
    got=$(inA "$B/client/gemma-cli" --endpoint "$A:5550" --timeout 30000 --max-tokens 8 "partition $i") ||
        fail "request $i failed while host B was cut off"
done
for i in $(seq 100); do
    grep -q "taken out" "$T/router.log" && break
    sleep 0.1
done
grep -q "taken out" "$T/router.log" || fail "the router did not take replica b out"
echo "host B cut off: requests kept succeeding; router: $(grep 'taken out' "$T/router.log" | head -1 | cut -d' ' -f3-)"
ra2=$(reqs_of "$NA" "$A:5555")
[ "$ra2" -gt "$ra" ] || fail "replica a did not take the work while b was cut off"

# 4: link back up: b is used again
ip -n "$NB" link set "$VB" up
for i in $(seq 300); do
    kr=$(inA "$B/client/gemma-cli" --endpoint "$A:5550" --timeout 1000 --stats 2> /dev/null | awk '/^kv_blocks_total:/ {print $2}')
    [ "$kr" = $((2 * ka)) ] && break
    sleep 0.1
done
[ "$kr" = $((2 * ka)) ] || fail "replica b was not used again after the link came back"
rb0=$(reqs_of "$NB" "$BB:5555")
CL=()
for i in $(seq 8); do
    ip netns exec "$NA" "$B/client/gemma-cli" --endpoint "$A:5550" --timeout 20000 --max-tokens 32 "back $i" \
        > /dev/null 2>&1 &
    CL+=($!)
done
for p in "${CL[@]}"; do wait "$p" || fail "a request failed after the link came back"; done
rb1=$(reqs_of "$NB" "$BB:5555")
echo "after the link came back: replica b requests $rb0 -> $rb1"
[ "$rb1" -gt "$rb0" ] || fail "replica b took no new work after coming back"
echo "PASS: two-host router test ($n prompts equal gemma-generate, partition survived, comeback used)"
exit 0
