#!/usr/bin/env bash
# sweep.sh - a concurrency sweep with gemma-bench: one JSON report per point,
# a table (sweep.md), the data (sweep.dat) and a plot (sweep.png) of output
# tokens/s against p99 TPOT and per-user tokens/s.
#
#   bench/sweep.sh [-b BUILD] [-e ENDPOINT] [-o OUTDIR] [-c LIST] [-n REQS_PER_CONC]
#                  [-d "GEMMAD ARGS"] [-- GEMMA-BENCH ARGS...]
#
#   -b BUILD   build directory holding bench/gemma-bench (default: build)
#   -e EP      gemmad endpoint (default tcp://127.0.0.1:5555)
#   -o DIR     output directory (default sweep-<date>)
#   -c LIST    concurrencies (default 1,8,64,256,1000)
#   -n K       requests per point = K x concurrency, at least 32 (default 4)
#   -d ARGS    start gemmad from BUILD/daemon/gemmad with ARGS (e.g. "--backend null")
#              on ENDPOINT for the sweep, and stop it afterwards
# Everything after -- goes to gemma-bench (e.g. --isl 128 --osl 128 --warmup 100).
set -euo pipefail
build=build
ep=tcp://127.0.0.1:5555
out=sweep-$(date +%Y%m%d-%H%M%S)
list=1,8,64,256,1000
k=4
dargs=
while getopts "b:e:o:c:n:d:h" opt; do
  case $opt in
    b) build=$OPTARG ;;
    e) ep=$OPTARG ;;
    o) out=$OPTARG ;;
    c) list=$OPTARG ;;
    n) k=$OPTARG ;;
    d) dargs=$OPTARG ;;
    h) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sweep.sh: see -h" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
bench=$build/bench/gemma-bench
[ -x "$bench" ] || { echo "sweep.sh: $bench not built" >&2; exit 2; }
mkdir -p "$out"

pid=
stop_daemon() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
  fi
}
trap stop_daemon EXIT
if [ -n "$dargs" ]; then
  # shellcheck disable=SC2086
  "$build/daemon/gemmad" $dargs --listen "$ep" >"$out/gemmad.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    "$build/client/gemma-cli" --endpoint "$ep" --health >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "sweep.sh: gemmad exited:" >&2; cat "$out/gemmad.log" >&2; exit 1; }
    sleep 0.2
  done
fi

val() { sed -n "s/^  \"$1\": \\([^,]*\\),\$/\\1/p" "$2"; }
dat=$out/sweep.dat
echo "# concurrency output_tokens_per_s tpot_p99_ms per_user_tokens_per_s ttft_p99_ms requests_per_s" >"$dat"
first=1
IFS=, read -ra points <<<"$list"
for c in "${points[@]}"; do
  n=$((k * c))
  [ "$n" -lt 32 ] && n=32
  echo "== concurrency $c, $n requests" >&2
  md=$("$bench" --endpoint "$ep" --concurrency "$c" --num-requests "$n" --json "$out/c$c.json" --markdown \
        --allow-errors "$@" | sed -n '/^|/p')
  if [ $first = 1 ]; then echo "$md" >"$out/sweep.md"; first=0; else echo "$md" | tail -1 >>"$out/sweep.md"; fi
  j=$out/c$c.json
  echo "$c $(val output_tokens_per_s "$j") $(val tpot_ms_p99 "$j") $(val per_user_tokens_per_s "$j")" \
       "$(val ttft_ms_p99 "$j") $(val request_throughput "$j")" >>"$dat"
done
cat "$out/sweep.md"

if ! command -v gnuplot >/dev/null 2>&1; then
  echo "sweep.sh: gnuplot not found (Debian: apt-get install gnuplot-nox); no plot, data in $dat" >&2
  exit 0
fi
gnuplot <<EOF
set terminal png size 1200,500
set output '$out/sweep.png'
set multiplot layout 1,2 title 'gemma-bench concurrency sweep (labels: concurrency)'
set grid
set key off
set xlabel 'p99 TPOT (ms)'
set ylabel 'output tokens/s'
plot '$dat' using 3:2 with linespoints pt 7, '' using 3:2:1 with labels offset 1,1
set xlabel 'per-user tokens/s (1000 / mean TPOT)'
plot '$dat' using 4:2 with linespoints pt 7, '' using 4:2:1 with labels offset 1,1
unset multiplot
EOF
echo "sweep.sh: $out/sweep.png, $out/sweep.md, $dat, $out/c*.json" >&2
