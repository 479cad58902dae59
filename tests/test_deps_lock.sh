#!/usr/bin/env bash
# test_deps_lock.sh SRC - scripts/deps.sh waits while another process holds an apt/dpkg lock (here a
# stand-in lock file) and goes on when it is released; it gives up with exit 1 after GM_APT_WAIT.
set -u
src=$1
lock=$(mktemp)
hold() { # hold SECONDS: take the lock as apt does (fcntl) in the background
  python3 -c "import fcntl,os,sys,time; fd=os.open(sys.argv[1],os.O_RDWR); fcntl.lockf(fd,fcntl.LOCK_EX); open(sys.argv[1]+'.held','w').close(); time.sleep(float(sys.argv[2]))" "$lock" "$1" &
  holder=$!
  for _ in $(seq 1 50); do [ -e "$lock.held" ] && break; sleep 0.1; done
}
fail=0
hold 3
t0=$(date +%s)
GM_DEPS_WAIT_ONLY=1 GM_APT_LOCKS=$lock GM_APT_WAIT=60 bash "$src/scripts/deps.sh" 2>/dev/null
rc=$? dt=$(( $(date +%s) - t0 ))
if [ $rc = 0 ] && [ $dt -ge 1 ]; then echo "ok: waited ${dt}s for the lock, then went on"; else echo "FAIL: rc $rc after ${dt}s"; fail=1; fi
wait
rm -f "$lock.held"
hold 30
t0=$(date +%s)
GM_DEPS_WAIT_ONLY=1 GM_APT_LOCKS=$lock GM_APT_WAIT=2 bash "$src/scripts/deps.sh" 2>/dev/null
rc=$? dt=$(( $(date +%s) - t0 ))
if [ $rc = 1 ] && [ $dt -lt 20 ]; then echo "ok: gave up after ${dt}s"; else echo "FAIL: rc $rc after ${dt}s"; fail=1; fi
kill "$holder" 2>/dev/null
wait
rm -f "$lock" "$lock.held"
exit $fail
